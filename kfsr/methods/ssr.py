"""SSR (Lin et al., ECCV 2024, arXiv 2403.05808): SVKR + AMF-conditioned diffusion for blind SR.

Source: shared/reference/methods/blinddiff_ssr.md §2 ("report"), a reconstruction (SSR has no
public code and its equations are stripped); every unspecified choice is a field of
configs/ssr.py (its docstring lists the choices and the deviations). Tags: [P] paper prose,
[R] report's reconstruction, [I] our choice.

Pipeline (`run_full`):
  1. SVKR (`kfsr.svkr.refine`): N = 3 iterations of
         depth from the latest SR (a kfsr.depth provider: MiDaS stand-in, or the user's map)
         -> kernel field from LR + depth (DKENet, kfsr.nets.dkenet)
         -> SR from the field (RRDB-SFT on the field's per-pixel PCA codes, kfsr.nets.rrdb)
     with the Eq.-2 update of the field (config.svkr.rule, beta = 0.9) [P, R].
  2. Reverse diffusion (DDPM or DDIM, kfsr.diffusion) with a pixel-space denoiser conditioned
     on LR, depth and the field's PCA codes through encoders of different sizes and the AMF
     (kfsr.nets.ssr_unet, kfsr.nets.amf) [P, R]; one `kfsr.train.loop.run` step per reverse step.

Fields are on the LR grid, (h, w, K, K), one sum-1 cross-correlation kernel per LR pixel, with
MANet's gather forward model y = S_s(k_p * P(x)) (kfsr.degrade.spatial.degrade_spatial, stride
sampling). PCA codes: an uncentred rank-L basis fitted once to `pca.samples` kernels of the
training family (MANet's representation; `pca_basis`), codes = <k_p, basis_r>.

Training (`make_task`, driven by kfsr.train.supervised; config.part selects the trainable part):
  "dkenet":   L1 between predicted and true per-pixel kernels (sum over K x K, mean over pixels;
              MANet stage 1's loss up to its constant scale), input LR + true synthetic depth;
  "rrdb":     L1 between RRDB-SFT(LR, PCA codes of the TRUE field) and HR (MANet stage 2);
  "denoiser": diffusion loss (eps or v MSE) of the AMF-conditioned denoiser, conditioned on the
              true field's codes and the true depth.
Data: HR crops degraded on the device with synthetic depth-dependent SV fields
(`config.data.kernel.family = 'depth_field'`, kfsr/train/depth_fields.py); data dict hr
(b, H, W, 3), lr (b, h, w, 3), kernel (b, h, w, K, K), depth (b, h, w).

Result (`run`): Result(hr (s h, s w, 3) the diffusion sample in [0, 1], kernel = the MEAN kernel of
the final field (K, K) (non-negative, sum 1: what kfsr's CLI and benchmark tables take), history =
the reverse steps' metrics). `run_full` returns the whole field (h, w, K, K), the depth map and
the SVKR (RRDB) SR image as well. `kernel=` makes a run an oracle: a (K', K') kernel (K' <= K,
zero-padded, centred) or an (h, w, K, K) field replaces DKENet's estimate (SVKR then only
re-estimates depth, and R and the diffusion use the true field). `use_depth=False` is the
depth-free variant (MANet's estimator, AMF without the depth encoder).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kfsr import svkr
from kfsr.degrade.spec import Degradation
from kfsr.errors import KfsrInputError
from kfsr.methods.base import Result, register
from kfsr.nets import amf as amf_nets
from kfsr.nets import dkenet as dk
from kfsr.nets import rrdb as rrdb_nets
from kfsr.nets import ssr_unet
from kfsr.train.depth_fields import DepthFieldFamily

PARTS = ("dkenet", "rrdb", "denoiser")
PREDICTIONS = ("eps", "v")
SVKR_INITS = ("bicubic",)
DEPTH_SOURCES = ("user", "constant", "synthetic", "sharpness", "position")
State = dict


# --------------------------------------------------------------------------------------------
# static set-up
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
    """Hashable description of an SSR model, its training part and its sampler."""

    scale: int
    kernel_size: int
    spec: Degradation
    use_depth: bool
    part: str
    dkenet: dk.DKENet
    rrdb: rrdb_nets.RRDBSFTNet
    denoiser: ssr_unet.SSRDenoiser
    family: DepthFieldFamily
    pca_rank: int
    pca_samples: int
    pca_seed: int
    prediction: str
    T: int
    schedule: str
    beta_start: float
    beta_end: float
    respace_train: Any
    respace_sample: Any
    sampler: str
    eta: float
    clip: bool
    svkr_n: int
    svkr_beta: float
    svkr_update: str
    svkr_init: str
    depth_source: str
    depth_kwargs: tuple
    depth_normalise: str
    crop: int

    def schedules(self, which: str):
        """(respaced schedule, timestep_map) for 'train' or 'sample' (cached, concrete)."""
        return _schedules(self.schedule, self.T, self.beta_start, self.beta_end,
                          self.respace_train if which == "train" else self.respace_sample)

    @property
    def hr_multiple(self) -> int:
        return ssr_unet.hr_multiple(self.denoiser.mult)

    def meta(self, part: str) -> dict:
        """What exported weights of `part` must match (JSON-able)."""
        m = {"model": f"ssr.{part}", "scale": self.scale, "kernel_size": self.kernel_size}
        if part == "dkenet":
            n = self.dkenet
            m.update(use_depth=self.use_depth, nf=n.nf, nf_depth=n.nf_depth,
                     sft_hidden=n.sft_hidden)
        elif part == "rrdb":
            n = self.rrdb
            m.update(nf=n.nf, nb=n.nb, gc=n.gc, sft_hidden=n.sft_hidden, **self._pca_meta())
        else:
            n = self.denoiser
            m.update(use_depth=self.use_depth, ch=n.ch, mult=list(n.mult), n_res=n.n_res,
                     enc_n_res=n.enc_n_res, kernel_width=n.kernel_width,
                     depth_width=n.depth_width, amf_hidden=n.amf_hidden, amf_norm=n.amf_norm,
                     injection=n.injection, groups=n.groups, prediction=self.prediction,
                     T=self.T, schedule=self.schedule, beta_start=self.beta_start,
                     beta_end=self.beta_end, **self._pca_meta())
        return m

    def _pca_meta(self) -> dict:
        f = self.family
        return {"pca_rank": self.pca_rank, "pca_samples": self.pca_samples,
                "pca_seed": self.pca_seed, "lambda_range": list(lambda_range(self)),
                "anisotropy": list(f.anisotropy), "recenter": f.recenter}


@functools.lru_cache(maxsize=16)
def _schedules(schedule, T, beta_start, beta_end, respace):
    from kfsr.diffusion.samplers import resolve_timesteps
    from kfsr.diffusion.schedule import get_schedule

    base = (get_schedule(schedule, T, beta_start=beta_start, beta_end=beta_end)
            if schedule == "linear" else get_schedule(schedule, T))
    return resolve_timesteps(base, respace)


def _req(cond, msg):
    if not cond:
        raise KfsrInputError(msg)


def _pos_int(v, name):
    _req(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1,
         f"config.{name}: an integer >= 1, got {v!r}")
    return int(v)


def _depth_kwargs(dc) -> tuple:
    src = dc.source
    if src == "user":
        _req(bool(dc.get("path", None)), "config.depth.path: required with depth.source='user' "
             "(a .npy or greyscale image depth map; larger = farther)")
        return (("source", str(dc.path)), ("normalise", str(dc.get("normalise", "minmax"))),
                ("invert", bool(dc.get("invert", False))))
    if src == "constant":
        v = float(dc.get("value", 0.5))
        _req(0.0 <= v <= 1.0, f"config.depth.value: in [0, 1], got {v}")
        return (("value", v),)
    if src == "synthetic":
        return (("kind", str(dc.get("kind", "mixed"))), ("seed", int(dc.get("seed", 0))))
    sigma = dc.get("sigma", None)
    return (("sigma", None if sigma is None else float(sigma)),)


def make_setup(config) -> Setup:
    """Validate `config` (configs/ssr.py) and build the static description; KfsrInputError
    naming the field for a bad value."""
    from kfsr.depth import get_provider
    from kfsr.diffusion.samplers import SAMPLERS
    from kfsr.train.depth_fields import from_config

    _req(config.get("method", "ssr") == "ssr",
         f"config.method={config.get('method')!r}: this is SSR ('ssr')")
    for section in ("dkenet", "rrdb", "denoiser", "diffusion", "svkr", "depth", "pca", "data"):
        _req(section in config, f"config.{section}: missing (use configs/ssr.py as the template)")
    s = _pos_int(config.scale, "scale")
    K = _pos_int(config.kernel_size, "kernel_size")
    _req(config.get("sampling", "stride") == "stride",
         f"config.sampling={config.get('sampling')!r}: SSR's fields live on the LR grid, "
         "use 'stride' (MANet's direct subsampling)")
    padding = config.get("padding", "reflect")
    _req(padding in ("reflect", "circular", "zero"),
         f"config.padding: 'reflect', 'circular' or 'zero', got {padding!r}")
    offset = int(config.get("offset", 0))
    _req(0 <= offset < s, f"config.offset: in [0, scale), got {offset}")
    spec = Degradation(scale=s, padding=padding, sampling="stride", offset=offset)
    part = config.get("part", "denoiser")
    _req(part in PARTS, f"config.part: one of {PARTS}, got {part!r}")
    use_depth = config.get("use_depth", True)
    _req(isinstance(use_depth, bool), f"config.use_depth: True or False, got {use_depth!r}")

    dc, rc, nc = config.dkenet, config.rrdb, config.denoiser
    dke = dk.DKENet(kernel_size=K, nf=_pos_int(dc.nf, "dkenet.nf"),
                    nf_depth=_pos_int(dc.nf_depth, "dkenet.nf_depth"),
                    sft_hidden=_pos_int(dc.sft_hidden, "dkenet.sft_hidden"), scale=s,
                    output="lr", use_depth=use_depth)
    rr = rrdb_nets.RRDBSFTNet(nf=_pos_int(rc.nf, "rrdb.nf"), nb=_pos_int(rc.nb, "rrdb.nb"),
                              gc=_pos_int(rc.gc, "rrdb.gc"), scale=s,
                              sft_hidden=_pos_int(rc.sft_hidden, "rrdb.sft_hidden"))
    mult = tuple(int(m) for m in nc.mult)
    _req(len(mult) >= 1 and all(m >= 1 for m in mult),
         f"config.denoiser.mult: positive channel multipliers, got {nc.mult!r}")
    _req(nc.amf_norm in amf_nets.NORMS,
         f"config.denoiser.amf_norm: one of {amf_nets.NORMS}, got {nc.amf_norm!r}")
    _req(nc.injection in ssr_unet.INJECTIONS,
         f"config.denoiser.injection: one of {ssr_unet.INJECTIONS}, got {nc.injection!r}")
    den = ssr_unet.SSRDenoiser(
        ch=_pos_int(nc.ch, "denoiser.ch"), mult=mult, n_res=_pos_int(nc.n_res, "denoiser.n_res"),
        enc_n_res=_pos_int(nc.enc_n_res, "denoiser.enc_n_res"),
        kernel_width=_pos_int(nc.kernel_width, "denoiser.kernel_width"),
        depth_width=_pos_int(nc.depth_width, "denoiser.depth_width"),
        amf_hidden=_pos_int(nc.amf_hidden, "denoiser.amf_hidden"), amf_norm=str(nc.amf_norm),
        injection=str(nc.injection), zero_init=bool(nc.zero_init), use_depth=use_depth,
        scale=s, groups=_pos_int(nc.groups, "denoiser.groups"))

    kc = config.data.kernel
    _req(kc.get("family", "depth_field") == "depth_field",
         f"config.data.kernel.family: SSR trains on 'depth_field', got {kc.get('family')!r}")
    family = from_config(kc, K)
    pc = config.pca
    rank = _pos_int(pc.rank, "pca.rank")
    _req(rank <= K * K, f"config.pca.rank: at most K*K = {K * K}, got {rank}")

    d = config.diffusion
    _req(d.prediction in PREDICTIONS,
         f"config.diffusion.prediction: one of {PREDICTIONS}, got {d.prediction!r}")
    _req(d.schedule in ("linear", "cosine"),
         f"config.diffusion.schedule: 'linear' or 'cosine', got {d.schedule!r}")
    _req(d.sampler in SAMPLERS, f"config.diffusion.sampler: one of {SAMPLERS}, got {d.sampler!r}")
    _req(int(d.T) >= 2, f"config.diffusion.T: an integer >= 2, got {d.T!r}")
    _req(0.0 <= float(d.eta) <= 1.0, f"config.diffusion.eta: in [0, 1], got {d.eta!r}")

    sv = config.svkr
    svkr.check_params(sv.n_iter, sv.beta, sv.rule)
    _req(sv.init in SVKR_INITS, f"config.svkr.init: one of {SVKR_INITS}, got {sv.init!r}")
    dpc = config.depth
    _req(dpc.source in DEPTH_SOURCES,
         f"config.depth.source: one of {DEPTH_SOURCES}, got {dpc.source!r}")
    _req(dpc.get("normalise", "minmax") in ("minmax", "none"),
         f"config.depth.normalise: 'minmax' or 'none', got {dpc.get('normalise')!r}")
    dkw = _depth_kwargs(dpc)
    if dpc.source != "user":
        get_provider(dpc.source, **dict(dkw))  # validates the provider's own fields

    crop = _pos_int(config.data.crop, "data.crop")

    def respace(v):
        return None if v in (None, 0, "") else (int(v) if str(v).isdigit() else str(v))

    setup = Setup(
        scale=s, kernel_size=K, spec=spec, use_depth=use_depth, part=part, dkenet=dke, rrdb=rr,
        denoiser=den, family=family, pca_rank=rank,
        pca_samples=_pos_int(pc.samples, "pca.samples"), pca_seed=int(pc.seed),
        prediction=str(d.prediction), T=int(d.T), schedule=str(d.schedule),
        beta_start=float(d.beta_start), beta_end=float(d.beta_end),
        respace_train=respace(d.respace_train), respace_sample=respace(d.respace_sample),
        sampler=str(d.sampler), eta=float(d.eta), clip=bool(d.clip),
        svkr_n=int(sv.n_iter), svkr_beta=float(sv.beta), svkr_update=str(sv.rule),
        svkr_init=str(sv.init), depth_source=str(dpc.source), depth_kwargs=dkw,
        depth_normalise=str(dpc.get("normalise", "minmax")), crop=crop)
    m = setup.hr_multiple
    _req(crop % s == 0 and crop % m == 0,
         f"config.data.crop={crop}: must be a multiple of the scale {s} and of {m} "
         f"(2^(len(denoiser.mult) - 1))")
    try:
        setup.schedules("train"), setup.schedules("sample")
    except KfsrInputError as e:
        raise KfsrInputError(f"config.diffusion.respace_*: {e}") from None
    return setup


def validate(config) -> None:
    """Raise KfsrInputError naming the bad field (called by kfsr.cli before a run)."""
    try:
        make_setup(config)
    except KfsrInputError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise KfsrInputError(f"config (ssr): {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------
# PCA kernel codes
# --------------------------------------------------------------------------------------------
def lambda_range(setup: Setup) -> tuple[float, float]:
    """The training family's variance range (px^2)."""
    from kfsr.degrade.kernels import dkp_test_range

    lo, hi = dkp_test_range(setup.scale)
    f = setup.family
    return (lo if f.lambda_min is None else f.lambda_min,
            hi if f.lambda_max is None else f.lambda_max)


def pca_basis(setup: Setup) -> np.ndarray:
    """The uncentred rank-L PCA basis (L, K, K) of the training family's kernels (MANet: 150k
    random kernels, 15 components): `pca.samples` kernels with defocus amount g ~ U[0, 1],
    anisotropy ~ U[data.kernel.anisotropy], theta ~ U[0, pi), built exactly as the family's
    fields (`spatial.depth_gaussian_field`'s law), seeded by `pca.seed` (cached)."""
    lo, hi = lambda_range(setup)
    f = setup.family
    return _pca_basis(setup.kernel_size, setup.scale, setup.pca_rank, setup.pca_samples,
                      setup.pca_seed, lo, hi, f.anisotropy, f.recenter)


@functools.lru_cache(maxsize=8)
def _pca_basis(size, scale, rank, samples, seed, lo, hi, anisotropy, recenter):
    from kfsr.degrade.spatial import fit_pca_basis, gaussian_field

    rng = np.random.default_rng(seed)
    g = rng.random(samples)
    theta = rng.uniform(0.0, math.pi, samples)
    a = rng.uniform(anisotropy[0], anisotropy[1], samples)
    l1 = lo + (hi - lo) * g
    l2 = np.maximum(l1 * (1.0 - a * g), lo)
    ks = gaussian_field(size, l1.astype(np.float32), l2.astype(np.float32),
                        theta.astype(np.float32), scale=scale, recenter=recenter)
    basis, _ = fit_pca_basis(ks, rank, center=False)
    return np.asarray(basis)


def kernel_codes(basis, field):
    """Per-pixel PCA codes (..., L) of a field (..., K, K) in an uncentred basis (L, K, K)."""
    return jnp.einsum("...mn,rmn->...r", field, jnp.asarray(basis, field.dtype))


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def _zero_layer(setup: Setup):
    """Predicate on a parameter path: layers the denoiser zero-initialises (AMF gamma / beta
    output layers; the FTB projections when denoiser.zero_init)."""
    def zero(names):
        if any(n.endswith(("gamma_fc2", "beta_fc2")) for n in names):
            return True
        return setup.denoiser.zero_init and any("_ftb" in n for n in names)
    return zero


def torch_like_init(module, key, *inputs, zero=None, host: bool = False):
    """PyTorch-default-like parameters from ONE uniform draw: conv / dense kernels
    U(+-1/sqrt(fan_in)), biases 0, norm scales 1, and kernels of the layers `zero(path names)`
    selects 0. One draw instead of one threefry per layer keeps XLA:CPU's compile short (flax's
    own init of the tiny denoiser compiled for 84 s on 2 loaded cores). Jittable; `host=True`
    draws with numpy from the int seed `key` instead (eager callers: nothing to compile).
    (`kfsr.nets.dkenet.init_params` is the host version for DKENet / RRDB-SFT.)"""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [math.prod(leaf.shape) for _, leaf in leaves]
    n = max(sum(sizes), 1)
    xp = np if host else jnp
    if host:  # key: an int seed (numpy's generator: no XLA program at all)
        u = np.random.default_rng(int(key)).uniform(-1.0, 1.0, n).astype(np.float32)
    else:
        u = jax.random.uniform(key, (n,), jnp.float32, -1.0, 1.0)
    out, off = [], 0
    for (path, leaf), n in zip(leaves, sizes):
        names = [str(getattr(p, "key", p)) for p in path]
        if names[-1] == "kernel" and not (zero is not None and zero(names[:-1])):
            val = u[off:off + n].reshape(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
        elif names[-1] == "scale":
            val = xp.ones(leaf.shape)
        else:
            val = xp.zeros(leaf.shape)
        out.append(jnp.asarray(val, leaf.dtype) if host else val.astype(leaf.dtype))
        off += n
    return jax.tree_util.tree_unflatten(treedef, out)


def _example_inputs(setup: Setup, part: str, lr_size: int):
    s, z = setup.scale, jnp.zeros
    lr = z((1, lr_size, lr_size, 3), jnp.float32)
    depth = z((1, lr_size, lr_size, 1), jnp.float32)
    if part == "dkenet":
        return (lr, depth if setup.use_depth else None)
    codes = z((1, lr_size, lr_size, setup.pca_rank), jnp.float32)
    if part == "rrdb":
        return (lr, codes)
    x = z((1, lr_size * s, lr_size * s, 3), jnp.float32)
    return (x, z((1,), jnp.int32), lr, codes, depth if setup.use_depth else None)


def init_part(setup: Setup, part: str, key, lr_size: int | None = None, host: bool = False):
    """Initial parameters of one part ("dkenet" | "rrdb" | "denoiser"), PyTorch-like
    (`torch_like_init`; the denoiser's AMF output layers, and its FTB with zero_init, start at
    zero). Jittable with a PRNG key; host=True takes an int seed (numpy draw)."""
    lr_size = setup.crop // setup.scale if lr_size is None else lr_size
    net = {"dkenet": setup.dkenet, "rrdb": setup.rrdb, "denoiser": setup.denoiser}[part]
    inputs = _example_inputs(setup, part, lr_size)
    zero = _zero_layer(setup) if part == "denoiser" else None
    return torch_like_init(net, key, *inputs, zero=zero, host=host)


def param_template(setup: Setup, part: str):
    """The params tree of `part` as ShapeDtypeStructs (no allocation; one trace of the
    module's init, whose shapes `init_part` reproduces)."""
    net = {"dkenet": setup.dkenet, "rrdb": setup.rrdb, "denoiser": setup.denoiser}[part]
    inputs = _example_inputs(setup, part, max(setup.hr_multiple, 8))
    return jax.eval_shape(net.init, jax.random.PRNGKey(0), *inputs)


def init_params(setup: Setup, seed: int = 0) -> dict:
    """Random parameters of every part, dict(dkenet, rrdb, denoiser), drawn on the host with
    numpy from `seed` (untrained: for tests and smoke runs)."""
    return {p: init_part(setup, p, 3 * int(seed) + i, lr_size=max(setup.hr_multiple, 8),
                         host=True) for i, p in enumerate(PARTS)}


def load_params(config, setup: Setup | None = None, parts=PARTS) -> dict:
    """Weights of `parts` from config.checkpoints.<part> (training workdirs of
    `python -m kfsr.train.supervised --config=configs/ssr.py:... --config.part=<part>`)."""
    from kfsr.train.supervised import load_model

    setup = make_setup(config) if setup is None else setup
    out = {}
    for part in parts:
        path = config.get("checkpoints", {}).get(part, None)
        if not path:
            raise KfsrInputError(
                f"config.checkpoints.{part}: not set; SSR needs a trained {part} (python -m "
                f"kfsr.train.supervised --config=configs/ssr.py:cpu --config.part={part} "
                f"--workdir=DIR, then --config.checkpoints.{part}=DIR)")
        out[part], _ = load_model(str(path), param_template(setup, part), setup.meta(part),
                                  field=f"config.checkpoints.{part}")
    return out


# --------------------------------------------------------------------------------------------
# training: the Task of each part for kfsr.train.supervised
# --------------------------------------------------------------------------------------------
def dkenet_loss(setup: Setup, params, data: dict, keys):
    """Per-pixel kernel L1 (sum over K x K, mean over pixels) of DKENet(lr, true depth)."""
    depth = data["depth"][..., None] if setup.use_depth else None
    k = setup.dkenet.apply(params, data["lr"], depth)
    l1 = jnp.mean(jnp.sum(jnp.abs(k - data["kernel"]), axis=(-2, -1)))
    return l1, {"kernel_l1": l1}


def rrdb_loss(setup: Setup, basis, params, data: dict, keys):
    """L1 between RRDB-SFT(lr, PCA codes of the true field) and the HR crop."""
    sr = setup.rrdb.apply(params, data["lr"], kernel_codes(basis, data["kernel"]))
    l1 = jnp.mean(jnp.abs(sr - data["hr"]))
    return l1, {"sr_l1": l1}


def denoiser_loss(setup: Setup, basis, params, data: dict, keys):
    """Diffusion loss: t ~ U over the respaced training chain, x_t = q_sample(2 hr - 1, t, eps);
    MSE of the denoiser's eps (or v) prediction, conditioned on 2 lr - 1, the true field's codes
    and the true depth."""
    from kfsr.diffusion.param import q_sample, v_from_x0_eps
    from kfsr.diffusion.samplers import normal

    sched, tmap = setup.schedules("train")
    x0 = 2.0 * data["hr"] - 1.0

    def draw(k):
        kt, ke = jax.random.split(k)
        return jax.random.randint(kt, (), 0, sched.num_steps), normal(ke, x0.shape[1:])

    t, eps = jax.vmap(draw)(keys)
    x_t = q_sample(sched, x0, t, eps)
    depth = data["depth"][..., None] if setup.use_depth else None
    out = setup.denoiser.apply(params, x_t, tmap[t], 2.0 * data["lr"] - 1.0,
                               kernel_codes(basis, data["kernel"]), depth)
    target = eps if setup.prediction == "eps" else v_from_x0_eps(sched, x0, t, eps)
    mse = jnp.mean(jnp.square(out - target))
    return mse, {"mse": mse}


def make_task(config):
    """The supervised-training Task (kfsr.train.supervised) of config.part."""
    from kfsr.train.supervised import Task

    setup = make_setup(config)
    part = setup.part
    if part == "dkenet":
        loss = functools.partial(dkenet_loss, setup)
    else:
        basis = np.asarray(pca_basis(setup), np.float32)     # a constant of the step
        loss = functools.partial(rrdb_loss if part == "rrdb" else denoiser_loss, setup, basis)
    return Task(name=f"ssr.{part}", init=functools.partial(init_part, setup, part),
                loss=loss, meta=setup.meta(part))


# --------------------------------------------------------------------------------------------
# inference: SVKR + conditioned reverse diffusion
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _estimate_field(setup: Setup, params, lr, depth):
    """DKENet: lr (h, w, 3), depth (h, w) or None -> (h, w, K, K)."""
    d = None if depth is None else depth[None, ..., None]
    return setup.dkenet.apply(params, lr[None], d)[0]


@functools.partial(jax.jit, static_argnums=0)
def _sr_from_field(setup: Setup, params, basis, lr, field):
    """RRDB-SFT on the field's PCA codes: (h, w, 3), (h, w, K, K) -> (s h, s w, 3) in [0, 1]."""
    out = setup.rrdb.apply(params, lr[None], kernel_codes(basis, field)[None])[0]
    return jnp.clip(out, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def _bicubic(setup: Setup, lr):
    from kfsr.degrade.imresize import imresize

    return jnp.clip(imresize(lr, scale=setup.scale), 0.0, 1.0)


def depth_provider(setup: Setup, depth=None) -> Callable:
    """M: a kfsr.depth provider. `depth` (a path, an (H, W) array or a provider callable)
    overrides config.depth."""
    from kfsr.depth import UserDepth, get_provider

    if depth is not None:
        return depth if callable(depth) else UserDepth(depth)
    return get_provider(setup.depth_source, **dict(setup.depth_kwargs))


def _pad_lr(setup: Setup, lr):
    """Pad (h, w, C) at the bottom/right (reflect) so that s*h, s*w are multiples of the
    denoiser's `hr_multiple`."""
    m = setup.hr_multiple // math.gcd(setup.hr_multiple, setup.scale)
    h, w = lr.shape[0], lr.shape[1]
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return lr
    mode = "reflect" if (ph < h and pw < w) else "symmetric"
    return jnp.pad(lr, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _pad_map(x, hw):
    """Edge-pad the leading two axes of x to hw."""
    ph, pw = hw[0] - x.shape[0], hw[1] - x.shape[1]
    return jnp.pad(x, ((0, ph), (0, pw)) + ((0, 0),) * (x.ndim - 2), mode="edge")


def oracle_field(setup: Setup, kernel, hw) -> jax.Array:
    """A known kernel as a field on the LR grid hw: (K', K') with K' <= K (zero-padded, centred,
    normalised, the same at every pixel) or an (h, w, K, K) field."""
    from kfsr.degrade import kernels as kern

    k = np.asarray(kernel, np.float32)
    K = setup.kernel_size
    if k.ndim == 2:
        _req(k.shape[0] == k.shape[1] and k.shape[0] <= K,
             f"ssr: a known kernel must be (K, K) with K <= {K}, got {k.shape}")
        k = np.asarray(kern.normalize(kern.pad_to(jnp.asarray(k), K)))
        return jnp.broadcast_to(jnp.asarray(k), tuple(hw) + (K, K))
    _req(k.ndim == 4 and k.shape[:2] == tuple(hw) and k.shape[2:] == (K, K),
         f"ssr: a known field must be (h, w, {K}, {K}) = {tuple(hw) + (K, K)}, got {k.shape}")
    return svkr.renormalise(jnp.asarray(k))


def run_svkr(setup: Setup, params: dict, lr, *, kernel=None, depth=None,
             valid_hw=None) -> svkr.SVKROutput:
    """SVKR on an LR image (h, w, 3) (already padded for the denoiser if needed).

    params: dict with 'rrdb' (and 'dkenet' unless `kernel` is given). kernel: oracle kernel or
    field on lr's grid (`oracle_field`). depth: overrides config.depth (`depth_provider`).
    valid_hw: the unpadded LR size (h0, w0): depth is computed on the matching crop of the SR
    image (a user map has the image's aspect ratio) and edge-padded to lr's grid."""
    lr = jnp.asarray(lr, jnp.float32)
    hw = (lr.shape[0], lr.shape[1])
    vh, vw = hw if valid_hw is None else valid_hw
    s = setup.scale
    basis = jnp.asarray(pca_basis(setup))
    if kernel is not None:
        field = oracle_field(setup, kernel, hw)
        kernel_fn = lambda y, d: field  # noqa: E731
    else:
        kernel_fn = functools.partial(_estimate_field, setup, params["dkenet"])
    depth_fn = None
    if setup.use_depth:
        provider = depth_provider(setup, depth)

        def depth_fn(sr):
            d = svkr.depth_on_lr_grid(provider, sr[: vh * s, : vw * s], (vh, vw),
                                      normalise=setup.depth_normalise)
            return _pad_map(d, hw)
    return svkr.refine(lr, kernel_fn=kernel_fn,
                       sr_fn=functools.partial(_sr_from_field, setup, params["rrdb"], basis),
                       init_sr=functools.partial(_bicubic, setup), depth_fn=depth_fn,
                       n_iter=setup.svkr_n, beta=setup.svkr_beta, update=setup.svkr_update)


def init_sampling(setup: Setup, params, lr, codes, depth, key) -> State:
    """Sampling state: dict(params, y (1, h, w, 3) in [-1, 1], codes (1, h, w, L), depth
    (1, h, w, 1) (zeros without depth), x (1, s h, s w, 3) ~ N(0, I), x0 (latest x0 prediction),
    i (reverse steps done), key)."""
    from kfsr.diffusion.samplers import normal

    k_x, k_run = jax.random.split(key)
    h, w = lr.shape[0], lr.shape[1]
    s = setup.scale
    x = normal(k_x, (1, h * s, w * s, 3))
    d = jnp.zeros((h, w), jnp.float32) if depth is None else jnp.asarray(depth, jnp.float32)
    return {"params": params, "y": 2.0 * jnp.asarray(lr, jnp.float32)[None] - 1.0,
            "codes": jnp.asarray(codes, jnp.float32)[None], "depth": d[None, ..., None],
            "x": x, "x0": jnp.zeros_like(x), "i": jnp.zeros((), jnp.int32), "key": k_run}


def _reverse_step(setup: Setup, state: State) -> tuple[State, dict]:
    """One reverse step (DDPM ancestral or DDIM) of the conditioned denoiser."""
    from kfsr.diffusion.param import to_x0
    from kfsr.diffusion.samplers import ddim_step, ddpm_step

    sched, tmap = setup.schedules("sample")
    t = sched.num_steps - 1 - state["i"]
    key, sub = jax.random.split(state["key"])
    x = state["x"]
    tb = jnp.full((x.shape[0],), tmap[t], jnp.int32)
    out = setup.denoiser.apply(state["params"], x, tb, state["y"], state["codes"],
                               state["depth"] if setup.use_depth else None)
    x0 = to_x0(sched, x, t, out, setup.prediction)
    if setup.clip:
        x0 = jnp.clip(x0, -1.0, 1.0)
    if setup.sampler == "ddpm":
        x_new = ddpm_step(sched, sub, x, t, x0, clip=setup.clip)
    else:
        x_new = ddim_step(sched, sub, x, t, t - 1, x0, eta=setup.eta, clip=setup.clip)
    new = dict(state, x=x_new, x0=x0, i=state["i"] + 1, key=key)
    return new, {"t": tmap[t].astype(jnp.float32)}


@functools.lru_cache(maxsize=32)
def make_step(setup: Setup) -> Callable[[State], tuple[State, dict]]:
    """step_fn(state) -> (state, metrics), one function object per setup (the loop driver
    caches its compiled program per step function)."""
    return functools.partial(_reverse_step, setup)


def num_steps(setup: Setup) -> int:
    return int(setup.schedules("sample")[0].num_steps)


@dataclasses.dataclass(frozen=True)
class SSROutput:
    """hr (s h, s w, 3): the diffusion sample in [0, 1]; sr_svkr (s h, s w, 3): SVKR's RRDB-SFT
    image; field (h, w, K, K): the final kernel field on the LR grid; depth (h, w) (None without
    depth); svkr: the `kfsr.svkr.SVKROutput` (cropped arrays are above; its trace is padded);
    history: reverse-step metrics."""

    hr: Any
    sr_svkr: Any
    field: Any
    depth: Any
    svkr: Any
    history: list


def run_full(config, lr, key=None, *, checkpoint_dir=None, progress=True, kernel=None,
             monitor=None, params=None, depth=None) -> SSROutput:
    """SSR on `lr` (h, w, C) in [0, 1] (module docstring); see `run` for the arguments."""
    from kfsr.io import check_lr
    from kfsr.train import loop

    setup = make_setup(config)
    lr = check_lr(lr, setup.scale, name="ssr input")
    h, w, c = lr.shape
    s = setup.scale
    if params is None:
        params = load_params(config, setup,
                             parts=("rrdb", "denoiser") if kernel is not None else PARTS)
    key = jax.random.key(int(config.seed)) if key is None else key
    y = _pad_lr(setup, jnp.asarray(np.repeat(lr, 3, axis=-1) if c == 1 else lr))
    hp, wp = y.shape[0], y.shape[1]
    if kernel is not None and np.ndim(kernel) == 4:
        kernel = _pad_map(oracle_field(setup, kernel, (h, w)), (hp, wp))
    out = run_svkr(setup, params, y, kernel=kernel, depth=depth, valid_hw=(h, w))
    codes = kernel_codes(jnp.asarray(pca_basis(setup)), out.field)
    state = init_sampling(setup, params["denoiser"], y, codes, out.depth, key)

    on_chunk = None
    if monitor is not None:
        mean_k = _mean_kernel(out.field[:h, :w])

        def on_chunk(n, st, history):
            img = jnp.clip((st["x0"][0] + 1.0) / 2.0, 0.0, 1.0)[: h * s, : w * s]
            monitor(n, np.asarray(img), np.asarray(mean_k))

    state, history = loop.run(make_step(setup), state, num_steps(setup),
                              chunk=int(config.loop.chunk), checkpoint_dir=checkpoint_dir,
                              loop=config.loop.get("mode", "auto"), progress=progress,
                              desc="ssr", on_chunk=on_chunk)
    hr = jnp.clip((state["x"][0] + 1.0) / 2.0, 0.0, 1.0)[: h * s, : w * s]
    sr = out.sr[: h * s, : w * s]
    if c == 1:
        hr, sr = jnp.mean(hr, -1, keepdims=True), jnp.mean(sr, -1, keepdims=True)
    field = out.field[:h, :w]
    dmap = None if out.depth is None else out.depth[:h, :w]
    return SSROutput(hr=hr, sr_svkr=sr, field=field, depth=dmap, svkr=out, history=history)


def _mean_kernel(field):
    k = jnp.mean(field.reshape((-1,) + field.shape[-2:]), axis=0)
    return k / jnp.sum(k)


@register("ssr")
def run(config, lr, key=None, *, checkpoint_dir=None, progress=True, kernel=None, monitor=None,
        params=None, depth=None) -> Result:
    """SSR SR of `lr` (h, w, C) in [0, 1]: Result(hr (s h, s w, C) in [0, 1], kernel, history).

    Result.kernel is the MEAN kernel (K, K) of the estimated spatially variant field (sum 1);
    the field itself (h, w, K, K), the depth map and SVKR's RRDB image: `run_full`.
    key: default jax.random.key(config.seed). kernel (optional): oracle kernel (K', K') or field
    (h, w, K, K) (`oracle_field`). params: dict(dkenet, rrdb, denoiser) (default: loaded from
    config.checkpoints). depth: a depth map path / array / provider overriding config.depth.
    checkpoint_dir: orbax checkpoints of the sampling loop (resume). monitor(step, hr, kernel):
    after every loop chunk, the current x0 prediction and the mean kernel. A grey image is
    replicated to RGB and the result averaged back.
    """
    out = run_full(config, lr, key, checkpoint_dir=checkpoint_dir, progress=progress,
                   kernel=kernel, monitor=monitor, params=params, depth=depth)
    return Result(hr=out.hr, kernel=_mean_kernel(out.field), history=out.history)


__all__ = ["Setup", "make_setup", "validate", "make_task", "pca_basis", "kernel_codes",
           "init_part", "init_params", "param_template", "load_params", "run_svkr",
           "oracle_field", "depth_provider", "run_full", "run", "SSROutput", "PARTS"]
