"""SSR's static set-up: config validation (`make_setup`), the hashable `Setup`, PCA kernel codes.

Part of the SSR method (kfsr/methods/ssr.py has the overview; configs/ssr.py the fields and the
choices). Everything here is a function of the config alone.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from kfsr import svkr
from kfsr.degrade.spec import Degradation
from kfsr.errors import KfsrInputError
from kfsr.methods.base import check_config
from kfsr.nets import amf as amf_nets
from kfsr.nets import dkenet as dk
from kfsr.nets import rrdb as rrdb_nets
from kfsr.nets import ssr_unet
from kfsr.train.depth_fields import DepthFieldFamily

PARTS = ("dkenet", "rrdb", "denoiser")
PREDICTIONS = ("eps", "v")
SVKR_INITS = ("bicubic",)
DEPTH_SOURCES = ("user", "constant", "synthetic", "sharpness", "position")


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
    t_start: int | None  # sampling starts from SVKR's image noised to this base timestep [I]
    train_t_max: int | None  # denoiser training draws base timesteps <= this (None: all) [I]
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
        svkr_init=str(sv.init),
        t_start=None if d.get("t_start") is None else int(d.t_start),
        train_t_max=None if d.get("train_t_max") is None else int(d.train_t_max),
        depth_source=str(dpc.source), depth_kwargs=dkw,
        depth_normalise=str(dpc.get("normalise", "minmax")), crop=crop)
    _req(setup.t_start is None or 0 <= setup.t_start < setup.T,
         f"config.diffusion.t_start={setup.t_start}: None or in [0, T={setup.T})")
    _req(setup.train_t_max is None or 0 <= setup.train_t_max < setup.T,
         f"config.diffusion.train_t_max={setup.train_t_max}: None or in [0, T={setup.T})")
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
    check_config(make_setup, config, "ssr")


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


__all__ = ["Setup", "make_setup", "validate", "lambda_range", "pca_basis", "kernel_codes",
           "PARTS", "PREDICTIONS", "SVKR_INITS", "DEPTH_SOURCES"]
