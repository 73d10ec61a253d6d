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

Modules: ssr_setup.py (config -> Setup, PCA codes), ssr_train.py (parameters, Tasks), this file
(inference). The names of both are re-exported here.
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
from kfsr.methods.base import Result, register
from kfsr.methods.ssr_setup import (PARTS, Setup, _req, kernel_codes, lambda_range,  # noqa: F401
                                    make_setup, pca_basis, validate)
from kfsr.methods.ssr_train import (init_part, init_params, load_params,  # noqa: F401
                                    make_task, param_template)

State = dict


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
             valid_hw=None, keep_trace: bool = False) -> svkr.SVKROutput:
    """SVKR on an LR image (h, w, 3) (already padded for the denoiser if needed).

    params: dict with 'rrdb' (and 'dkenet' unless `kernel` is given). kernel: oracle kernel or
    field on lr's grid (`oracle_field`). depth: overrides config.depth (`depth_provider`).
    valid_hw: the unpadded LR size (h0, w0): depth is computed on the matching crop of the SR
    image (a user map has the image's aspect ratio) and edge-padded to lr's grid.
    keep_trace: keep every iteration's depth / fields / SR (`kfsr.svkr.refine`)."""
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
                       n_iter=setup.svkr_n, beta=setup.svkr_beta, update=setup.svkr_update,
                       keep_trace=keep_trace)


def first_step(setup: Setup) -> int:
    """Index of the first reverse step of the sampling schedule: 0 (start from noise at T), or
    with `diffusion.t_start` the last respaced step whose base timestep is <= t_start."""
    sched, tmap = setup.schedules("sample")
    n = int(sched.num_steps)
    if setup.t_start is None:
        return 0
    below = np.nonzero(np.asarray(tmap) <= setup.t_start)[0]
    return n - 1 - int(below[-1]) if len(below) else n - 1


def init_sampling(setup: Setup, params, lr, codes, depth, key, sr=None) -> State:
    """Sampling state: dict(params, y (1, h, w, 3) in [-1, 1], codes (1, h, w, L), depth
    (1, h, w, 1) (zeros without depth), x (1, s h, s w, 3), x0 (latest x0 prediction),
    i (reverse steps done), key). x ~ N(0, I), or with `diffusion.t_start` SVKR's image `sr`
    ((s h, s w, 3) in [0, 1]) noised to the first step's timestep (q_sample): the reverse
    diffusion refines the SVKR image instead of drawing one from noise [I]."""
    from kfsr.diffusion.param import q_sample
    from kfsr.diffusion.samplers import normal

    k_x, k_run = jax.random.split(key)
    h, w = lr.shape[0], lr.shape[1]
    s = setup.scale
    x = normal(k_x, (1, h * s, w * s, 3))
    i0 = first_step(setup)
    if setup.t_start is not None:
        if sr is None:
            raise ValueError("init_sampling: diffusion.t_start needs the SVKR image sr")
        sched = setup.schedules("sample")[0]
        x = q_sample(sched, 2.0 * jnp.asarray(sr, jnp.float32)[None] - 1.0,
                     int(sched.num_steps) - 1 - i0, x)
    d = jnp.zeros((h, w), jnp.float32) if depth is None else jnp.asarray(depth, jnp.float32)
    return {"params": params, "y": 2.0 * jnp.asarray(lr, jnp.float32)[None] - 1.0,
            "codes": jnp.asarray(codes, jnp.float32)[None], "depth": d[None, ..., None],
            "x": x, "x0": jnp.zeros_like(x), "i": jnp.asarray(i0, jnp.int32), "key": k_run}


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
    """Reverse steps a sampling run takes (fewer with diffusion.t_start)."""
    return int(setup.schedules("sample")[0].num_steps) - first_step(setup)


@dataclasses.dataclass(frozen=True)
class SSROutput:
    """hr (s h, s w, 3): the diffusion sample in [0, 1]; sr_svkr (s h, s w, 3): SVKR's RRDB-SFT
    image; field (h, w, K, K): the final kernel field on the LR grid; depth (h, w) (None without
    depth); svkr: the `kfsr.svkr.SVKROutput` on the padded LR grid (its trace only with
    `run_full(..., keep_trace=True)`); history: reverse-step metrics."""

    hr: Any
    sr_svkr: Any
    field: Any
    depth: Any
    svkr: Any
    history: list


def run_full(config, lr, key=None, *, checkpoint_dir=None, progress=True, kernel=None,
             monitor=None, params=None, depth=None, keep_trace: bool = False) -> SSROutput:
    """SSR on `lr` (h, w, C) in [0, 1] (module docstring); see `run` for the arguments;
    keep_trace: keep SVKR's per-iteration depth / fields / SR images (out.svkr.trace)."""
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
    out = run_svkr(setup, params, y, kernel=kernel, depth=depth, valid_hw=(h, w),
                   keep_trace=keep_trace)
    codes = kernel_codes(jnp.asarray(pca_basis(setup)), out.field)
    state = init_sampling(setup, params["denoiser"], y, codes, out.depth, key, sr=out.sr)

    on_chunk = None
    if monitor is not None:
        mean_k = mean_kernel(out.field[:h, :w])

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


def mean_kernel(field):
    """The mean kernel (K, K) of a field (..., K, K), renormalised to sum 1 (Result.kernel)."""
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
    return Result(hr=out.hr, kernel=mean_kernel(out.field), history=out.history)


__all__ = ["Setup", "make_setup", "validate", "make_task", "pca_basis", "kernel_codes",
           "init_part", "init_params", "param_template", "load_params", "run_svkr", "mean_kernel",
           "oracle_field", "depth_provider", "run_full", "run", "SSROutput", "PARTS"]
