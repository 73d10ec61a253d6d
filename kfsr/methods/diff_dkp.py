"""Diff-DKP: DKP's kernel prior interleaved with the reverse steps of a diffusion prior
(Yang et al., CVPR 2024, paper §4.3, Eq. 21-24, Algorithm 3; shared/reference/papers/003_dkp.txt
"paper", shared/reference/methods/dkp.md "dkp.md").

The paper's SR formulation (dkp.md §10.9 option (a)), NOT the released code: the release does
blind deblurring of a bicubic down/up 256x256 image, with classifier guidance to ImageNet class
950 and a kernel net whose only effective gradient step is a KL step towards the GROUND-TRUTH
kernel (dkp.md §1.3, §4.3). Here nothing reads a true kernel: the kernel net is initialised by
DKP's warm-up on random prior kernels and learns from the LR image only.

Per reverse step (respaced index i = n-1 ... 0, model timestep t = timestep_map[i]):

    x0     = to_x0(prior(x_t, t))  (clipped to [-1, 1])                         Eq. 21
    img0   = (x0 + 1) / 2                                                       [0, 1] units
    if i < kernel_steps:                      (DKP on the latest x0; last kernel_frac of the steps)
        RKS: L candidates scored on img0, weights w_l (kfsr/methods/rks.py)     Eq. 14, Alg. 1
        Adam_theta on sum_l w_l MSE(k_l, k_theta)                               Eq. 11
        data_steps x Adam_theta on MSE(D_s(img0 *_P k_theta), y)                Eq. 10, 15
    k      = k_theta
    img~   = img0 - eta * grad_img 1/2 ||D_s(img *_P k) - y||^2   (dc.steps times)   Eq. 23-24
             or (dc.mode='tikhonov') argmin ||D_s(x *_circ k) - y||^2 + a ||x - img0||^2
    x_{t-1} = DDPM (or DDIM) posterior step from x0~ = 2 img~ - 1 and x_t       Eq. 22
    return img~ and k of the last step (i = 0)

The data-consistency step size is normalised: eta = dc.step_size / lambda_max(A A^T), where
lambda_max(A A^T) = sum_m ac_k(s m) (ac_k the autocorrelation of k; exact for circular padding,
since the LR-grid circulant A A^T has non-negative entries and peaks at frequency 0), so
dc.step_size = 1 removes the constant part of the LR residual in one step whatever the kernel
and scale, and any step_size in (0, 2) decreases ||A img - y|| (tested). The closed form is
the SR analogue of the release's Fourier Tikhonov step (`dc_tikhonov`; cpu and test presets).

Presets (configs/diff_dkp.py): `paper` follows the paper / release sampler (noise start, 100
DDPM steps, L = 1, one data step, gradient DC); `cpu` and `test` start from the bicubic
upscale noised to t = 50 and take DDIM steps (a small zero-shot PD cannot generate an image from
pure noise: 24.1 vs 31.2 dB on Set5 baby, measured in the config).

Prior (pluggable, `Prior`): by default KernelFusion's zero-shot Patch Denoiser
(kfsr/nets/patch_denoiser.py, v-prediction, T = 1000 linear), trained by KernelFusion's Phase 1
(`kfsr.methods.kernelfusion.train_pd`) on the LR image itself, so the method runs on any image
without a checkpoint; `config.pd_checkpoint` reuses a PD saved by either method (`pd_save`,
`<checkpoint_dir>/pd`). Any unconditional pixel-space model can be passed instead:
`run(..., prior=Prior(apply=fn, parameterization='eps', T=1000, ...), prior_params=params)` with
`fn(params, x_t (1, H, W, C) in [-1, 1], t (1,) int32 on the model's own T-step chain)`.
The paper uses guided-diffusion's ImageNet-256 model (eps, learned sigma, 100 respaced steps);
its weights are not part of kfsr.

Forward model (as DIP-DKP, dkp.md §2): circular padding, cross-correlation, stride s from offset
0, K = min(4s+3, 21), kernels in DKP's centre convention (the RKS prior's centre).

Loop: `kfsr.train.loop.run` over ONE jitted step (one reverse step); Phase 1 is its own loop.
State: one dict pytree (prior params, kernel-net params + Adam state, code z_k, LR image, RKS
chain, x_t, key, step counter, last HR estimate and kernel), so checkpoints and resume work as
for the other methods.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kfsr import losses
from kfsr.degrade import kernels as kern
from kfsr.degrade.spec import Degradation
from kfsr.diffusion.param import check_parameterization, q_sample, to_x0
from kfsr.diffusion.samplers import ddim_step, ddpm_step, normal, split_model_output
from kfsr.diffusion.schedule import get_schedule, respace, space_timesteps
from kfsr.errors import KfsrInputError
from kfsr.methods import dkp as dkp_method
from kfsr.methods import kernelfusion as kf
from kfsr.methods.base import Result, check_config, register
from kfsr.methods.rks import RKS, prior_loss
from kfsr.nets.kernel_mlp import KernelMLP, kernel_code
from kfsr.nets.patch_denoiser import PatchDenoiser

State = dict

INITS = ("noise", "bicubic")
SAMPLERS = ("ddpm", "ddim")
PRIORS = ("patch_denoiser", "external")
DC_MODES = ("gradient", "tikhonov")


# --------------------------------------------------------------------------------------------
# the diffusion prior
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prior:
    """An unconditional pixel-space diffusion model on images in [-1, 1] (hashable: closed over
    by the jitted step; its params live in the state).

    apply(params, x_t (B, H, W, C), t (B,) int32 index into the model's own T-step chain) -> the
    prediction in `parameterization` ('eps' | 'v' | 'x0'); with learned_var the output has 2C
    channels (prediction, variance) and the variance half is ignored (fixed posterior variance,
    as the released Diff-DKP samples, dkp.md §4.1).
    """

    apply: Callable[..., jax.Array]
    parameterization: str = "eps"
    T: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    learned_var: bool = False

    def __post_init__(self):
        check_parameterization(self.parameterization)
        if self.schedule not in ("linear", "cosine"):
            raise KfsrInputError(f"Prior.schedule: 'linear' or 'cosine', got {self.schedule!r}")
        if int(self.T) < 2:
            raise KfsrInputError(f"Prior.T: must be >= 2, got {self.T}")

    def sched(self):
        if self.schedule == "linear":
            return get_schedule("linear", self.T, beta_start=self.beta_start, beta_end=self.beta_end)
        return get_schedule("cosine", self.T)


def _kf_config(config) -> ml_collections.ConfigDict:
    """The KernelFusion config whose Phase 1 trains (or whose PD format matches) this prior."""
    from kfsr.api import default_config

    kc = default_config("kernelfusion", "paper")
    kc.scale = int(config.scale)
    kc.seed = int(config.seed)
    p = config.prior
    for section in ("pd", "phase1", "diffusion"):
        for name, value in p[section].items():
            kc[section][name] = value
    kc.loop.chunk = int(config.prior.get("chunk", config.loop.chunk))
    kc.loop.mode = config.loop.get("mode", "auto")
    return kc


def pd_prior(config) -> Prior:
    """The default prior: KernelFusion's Patch Denoiser as configured in config.prior."""
    p = config.prior
    pd = PatchDenoiser(width=int(p.pd.width), n_blocks=int(p.pd.n_blocks),
                       time_dim=int(p.pd.time_dim) if p.pd.get("time_dim", None) else None)
    d = p.diffusion
    return Prior(apply=pd.apply, parameterization="v", T=int(d.T), schedule=str(d.schedule),
                 beta_start=float(d.beta_start), beta_end=float(d.beta_end))


def train_prior(config, lr, key, *, checkpoint_dir=None, progress=True):
    """Default prior params for `lr`: KernelFusion's Phase 1 (or the PD in config.pd_checkpoint).

    Returns (params, history). With checkpoint_dir, Phase 1 checkpoints go to
    `checkpoint_dir/phase1` and the trained PD to `checkpoint_dir/pd` (and config.pd_save)."""
    kc = _kf_config(config)
    lr = jnp.asarray(lr, jnp.float32)
    setup = kf.make_setup(kc, channels=lr.shape[-1], lr_shape=lr.shape[:2])
    ckpt = config.get("pd_checkpoint", "")
    if ckpt:  # host copies: restored arrays are committed to a device, which would make jit
        #       trace the reverse step again on every run (committedness is in jit's cache key)
        return jax.tree.map(np.asarray, kf.load_pd(os.fspath(ckpt), setup)), []
    params, hist = kf.train_pd(kc, lr, key, checkpoint_dir=checkpoint_dir, progress=progress)
    for d in (None if checkpoint_dir is None else os.path.join(checkpoint_dir, "pd"),
              config.get("pd_save", "")):
        if d:
            kf.save_pd(os.fspath(d), setup, params)
    return params, hist


# --------------------------------------------------------------------------------------------
# static set-up
# --------------------------------------------------------------------------------------------
def kernel_size_of(config) -> int:
    ks = config.get("kernel_size", None)
    return int(ks) if ks else kern.dkp_kernel_size(int(config.scale))


@dataclasses.dataclass(frozen=True)
class Setup:
    """Hashable description of a run. Has the attributes dkp's kernel-net helpers and
    `dkp.forward_model` read (scale, padding, offset, kmlp, rks, kp_tx, warmup_steps,
    langevin_noise)."""

    scale: int
    kernel_size: int
    channels: int
    padding: str
    offset: int
    prior: Prior
    # sampler
    n_steps: int
    t_start: int
    init: str
    sampler: str
    eta: float
    clip_x0: bool
    # DKP
    kmlp: KernelMLP
    rks: RKS
    kp_lr: float
    warmup_steps: int
    code_dim: int
    langevin_noise: float
    data_steps: int
    kernel_steps: int   # kernel updates on the last `kernel_steps` reverse steps
    # data consistency (Eq. 23-24)
    dc_mode: str
    dc_steps: int
    dc_step_size: float
    dc_alpha: float

    @property
    def kp_tx(self):
        return optax.adam(self.kp_lr)

    @property
    def timesteps(self) -> tuple[int, ...]:
        """Model timesteps kept by the respaced chain, increasing (the last is t_start)."""
        kept = space_timesteps(self.t_start + 1, self.n_steps)
        return tuple(sorted(set(kept) | {self.t_start}))[-self.n_steps:]

    def spec(self) -> Degradation:
        return Degradation(scale=self.scale, padding=self.padding, sampling="stride",
                           offset=self.offset)


@functools.lru_cache(maxsize=16)
def _respaced(setup: Setup):
    """(respaced Schedule, timestep_map (n,)) of the kept timesteps (concrete constants, also
    when first called inside a trace)."""
    with jax.ensure_compile_time_eval():
        return respace(setup.prior.sched(), setup.timesteps)


def _req(cond, msg):
    if not cond:
        raise KfsrInputError(msg)


def make_setup(config, channels: int = 3, prior: Prior | None = None) -> Setup:
    """Validate `config` and build the static description of a run (`prior`: an external prior,
    else the Patch Denoiser of config.prior)."""
    _req(config.get("method", "diff_dkp") == "diff_dkp",
         f"config.method={config.get('method')!r}: this is the Diff-DKP method ('diff_dkp')")
    for section in ("prior", "sampler", "rks", "pke", "dc", "loop"):
        _req(section in config, f"config.{section}: missing (use configs/diff_dkp.py as the template)")
    s = int(config.scale)
    padding = config.get("padding", "circular")
    offset = int(config.get("offset", 0))
    Degradation(scale=s, padding=padding, sampling="stride", offset=offset)  # validates
    K = kernel_size_of(config)
    _req(config.prior.kind in PRIORS, f"config.prior.kind: one of {PRIORS}, got {config.prior.kind!r}")
    if prior is None:
        _req(config.prior.kind == "patch_denoiser",
             "config.prior.kind='external': pass the model as run(..., prior=Prior(...), prior_params=...)")
        prior = pd_prior(config)
    sm, p, dc = config.sampler, config.pke, config.dc
    n, t_start = int(sm.steps), int(sm.t_start)
    _req(0 <= t_start < prior.T, f"config.sampler.t_start: in [0, T={prior.T}), got {t_start}")
    _req(1 <= n <= t_start + 1, f"config.sampler.steps: in [1, t_start + 1 = {t_start + 1}], got {n}")
    _req(sm.init in INITS, f"config.sampler.init: one of {INITS}, got {sm.init!r}")
    _req(sm.kind in SAMPLERS, f"config.sampler.kind: one of {SAMPLERS}, got {sm.kind!r}")
    _req(int(p.warmup_steps) >= 0 and int(p.data_steps) >= 0,
         "config.pke.warmup_steps and config.pke.data_steps must be >= 0")
    _req(int(p.code_dim) >= 1 and int(p.hidden) >= 1, "config.pke.code_dim and hidden must be >= 1")
    frac = float(p.kernel_frac)
    _req(0.0 <= frac <= 1.0, f"config.pke.kernel_frac: in [0, 1], got {frac}")
    _req(dc.mode in DC_MODES, f"config.dc.mode: one of {DC_MODES}, got {dc.mode!r}")
    _req(dc.mode != "tikhonov" or padding == "circular",
         "config.dc.mode='tikhonov' needs circular padding (A A^T circulant); use 'gradient'")
    _req(float(dc.alpha) > 0, f"config.dc.alpha: must be > 0, got {dc.alpha}")
    _req(int(dc.steps) >= 0, f"config.dc.steps: must be >= 0, got {dc.steps}")
    _req(0.0 <= float(dc.step_size) < 2.0, f"config.dc.step_size: in [0, 2), got {dc.step_size}")
    return Setup(
        scale=s, kernel_size=K, channels=int(channels), padding=padding, offset=offset, prior=prior,
        n_steps=n, t_start=t_start, init=str(sm.init), sampler=str(sm.kind), eta=float(sm.eta),
        clip_x0=bool(sm.clip_x0),
        kmlp=KernelMLP(kernel_size=K, hidden=int(p.hidden)),
        rks=RKS.from_config(config.rks, s, K, padding=padding, offset=offset),
        kp_lr=float(p.lr), warmup_steps=int(p.warmup_steps), code_dim=int(p.code_dim),
        langevin_noise=float(p.langevin_noise), data_steps=int(p.data_steps),
        kernel_steps=int(round(frac * n)), dc_mode=str(dc.mode), dc_steps=int(dc.steps),
        dc_step_size=float(dc.step_size), dc_alpha=float(dc.alpha))


def validate(config) -> None:
    """Raise KfsrInputError naming the bad field (called by kfsr.cli before a run)."""
    check_config(lambda c: (make_setup(c), _kf_config(c)), config, "diff_dkp")


# --------------------------------------------------------------------------------------------
# data consistency (Eq. 23-24)
# --------------------------------------------------------------------------------------------
def dc_lipschitz(k: jax.Array, scale: int) -> jax.Array:
    """lambda_max(A A^T) of A = D_s(. *_circ k): sum over lags m of the autocorrelation of k at s m
    (the LR-grid circulant A A^T has these non-negative entries; its largest eigenvalue is their
    sum, at frequency 0). 1 for a delta kernel, ~1/s^2 for kernels much wider than s."""
    K = k.shape[-1]
    ac = jax.scipy.signal.correlate2d(k, k, mode="full")  # (2K-1, 2K-1), lag 0 at K-1
    o = (K - 1) % scale
    return jnp.sum(ac[o::scale, o::scale])


def dc_tikhonov(setup: Setup, img: jax.Array, k: jax.Array, y: jax.Array,
                alpha: float | None = None) -> jax.Array:
    """Closed-form refinement argmin_x ||D_s(x *_circ k) - y||^2 + a ||x - img||^2, a = alpha *
    lambda_max(A A^T):  x = img + A^T (A A^T + a I)^{-1} (y - A img).

    A A^T is a circulant on the LR grid (circular padding), so the inverse is one FFT division
    there; its symbol is the FFT of A A^T applied to a unit impulse. The SR analogue of the
    released code's Fourier Tikhonov step (which has no D_s; dkp.md §4.3); alpha -> 0 projects
    img onto {x : A x = y} (DDNM's range-space correction)."""
    alpha = setup.dc_alpha if alpha is None else float(alpha)
    k = jax.lax.stop_gradient(k)
    y = jax.lax.stop_gradient(y)

    def A(x):
        return dkp_method.forward_model(setup, x, k, y.shape)

    r, vjp = jax.vjp(A, img)
    delta = jnp.zeros(y.shape[:2] + (1,), y.dtype).at[0, 0, 0].set(1.0)
    _, vjp1 = jax.vjp(lambda x: dkp_method.forward_model(setup, x, k, delta.shape),
                      jnp.zeros(img.shape[:2] + (1,), img.dtype))
    c = dkp_method.forward_model(setup, vjp1(delta)[0], k, delta.shape)[..., 0]  # (h, w)
    sym = jnp.real(jnp.fft.fft2(c))                                   # eigenvalues of A A^T
    a = alpha * jnp.max(sym)
    z = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(y - r, axes=(0, 1)) / (sym + a)[..., None], axes=(0, 1)))
    return img + vjp(z.astype(img.dtype))[0]


def dc_refine(setup: Setup, img: jax.Array, k: jax.Array, y: jax.Array, *,
              steps: int | None = None, step_size: float | None = None) -> jax.Array:
    """Eq. 23-24: `steps` gradient steps on 1/2 ||D_s(img *_P k) - y||^2 (img (H, W, C) in [0, 1]
    units), step eta = step_size / lambda_max(A A^T) (see `dc_lipschitz`); with
    config.dc.mode = 'tikhonov' the closed form `dc_tikhonov` instead."""
    if setup.dc_mode == "tikhonov" and steps is None and step_size is None:
        return dc_tikhonov(setup, img, k, y)
    steps = setup.dc_steps if steps is None else int(steps)
    step_size = setup.dc_step_size if step_size is None else step_size
    if steps == 0:
        return img
    k = jax.lax.stop_gradient(k)
    y = jax.lax.stop_gradient(y)
    eta = step_size / jnp.maximum(dc_lipschitz(k, setup.scale), 1e-12)

    def A(x):
        return dkp_method.forward_model(setup, x, k, y.shape)

    def body(_, x):
        r, vjp = jax.vjp(A, x)
        (g,) = vjp(r - y)
        return x - eta * g

    return jax.lax.fori_loop(0, steps, body, img)


# --------------------------------------------------------------------------------------------
# init / step
# --------------------------------------------------------------------------------------------
def _to_pm1(img):
    return 2.0 * img - 1.0


def _to_01(x):
    return (x + 1.0) / 2.0


def init(config, lr, key, *, prior: Prior | None = None, prior_params=None) -> State:
    """Reverse-process state for `lr` (h, w, C) in [0, 1] (kernel-net warm-up included).

    prior_params: the prior's params (default prior: from `train_prior`, which this calls when
    they are not given, with split(key)[0]; the state then uses split(key)[1], as `run`)."""
    lr = jnp.asarray(lr, jnp.float32)
    setup = make_setup(config, channels=lr.shape[-1], prior=prior)
    k1, k2 = jax.random.split(key)
    if prior_params is None:
        if prior is not None:
            raise KfsrInputError("diff_dkp.init: an external prior needs its prior_params")
        prior_params, _ = train_prior(config, lr, k1, progress=False)
    return _init_jit(setup, lr, prior_params, k2)


def _init_state(setup: Setup, lr, prior_params, key) -> State:
    h, w, c = lr.shape
    s = setup.scale
    sched, _ = _respaced(setup)
    k_kp, k_zk, k_warm, k_rks, k_x, k_run = jax.random.split(key, 6)
    zk = kernel_code(k_zk, setup.code_dim)
    kp = setup.kmlp.init(k_kp, zk)
    kp_opt = setup.kp_tx.init(kp)
    kp, kp_opt = dkp_method.warmup_kernel_net(setup, kp, kp_opt, zk, k_warm)
    k0 = setup.kmlp.apply(kp, zk)
    start = kf.bicubic_start(lr, s)                            # (1, sH, sW, C) in [-1, 1]
    eps = normal(k_x, start.shape)
    if setup.init == "noise":
        x_T = eps
    else:  # SDEdit-style start: the bicubic upscale noised to t_start
        x_T = q_sample(sched, start, setup.n_steps - 1, eps)
    return {
        "prior": prior_params, "kp": kp, "kp_opt": kp_opt, "zk": zk, "lr": lr,
        "chain": setup.rks.init(k_rks), "key": k_run, "it": jnp.zeros((), jnp.int32),
        "x_t": x_T, "hr": jnp.clip(_to_01(start[0]), 0.0, 1.0), "kernel": k0,
    }


def _init_jit(setup: Setup, lr, prior_params, key) -> State:
    """`_init_state` compiled once per setup and shapes at XLA optimisation level 0 (as
    KernelFusion's inits: the kernel-net init and warm-up draw many threefry streams, slow to
    optimise on XLA:CPU; measured 6.2 -> 4.1 CPU s to compile, the test preset)."""
    return kf._jit_o0(_init_state, setup, jnp.asarray(lr, jnp.float32), prior_params, key)


def _kernel_updates(setup: Setup, img0, y, zk, args):
    """DKP on the latest x0: one RKS prior step + data_steps data-consistency steps on k_theta."""
    kp, kp_opt, chain, k_rks, k_lang = args
    kernel_of = lambda p: setup.kmlp.apply(p, zk)  # noqa: E731
    m = {}
    if setup.rks.num_samples > 0:
        ks, wts, chain, rm = setup.rks.step(chain, k_rks, img0, y, kernel_of(kp))
        lp, g = jax.value_and_grad(lambda p: prior_loss(kernel_of(p), ks, wts))(kp)
        kp, kp_opt = dkp_method.kernel_net_update(setup, kp, kp_opt, g, jax.random.fold_in(k_lang, 0))
        m.update(rm)
        m["prior_loss"] = lp
    lk = jnp.zeros((), jnp.float32)
    for j in range(setup.data_steps):
        lk, g = jax.value_and_grad(
            lambda p: losses.mse(dkp_method.forward_model(setup, img0, kernel_of(p), y.shape), y))(kp)
        kp, kp_opt = dkp_method.kernel_net_update(setup, kp, kp_opt, g,
                                                  jax.random.fold_in(k_lang, j + 1))
    m["loss_k"] = lk
    return (kp, kp_opt, chain), m


def _step(setup: Setup, state: State) -> tuple[State, dict]:
    """One reverse step (see the module docstring)."""
    st = dict(state)
    sched, tmap = _respaced(setup)
    i = setup.n_steps - 1 - st["it"]                    # respaced index, n-1 ... 0
    key, k_rks, k_lang, k_noise = jax.random.split(st["key"], 4)
    x_t, y, zk = st["x_t"], st["lr"], st["zk"]
    pr = setup.prior

    # Eq. 21: the prior's x0 prediction (frozen prior)
    t_model = jnp.full((x_t.shape[0],), tmap[i], jnp.int32)
    out = pr.apply(jax.lax.stop_gradient(st["prior"]), x_t, t_model)
    pred, _ = split_model_output(out, pr.learned_var)
    x0 = to_x0(sched, x_t, i, pred, pr.parameterization)
    if setup.clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    img0 = jax.lax.stop_gradient(_to_01(x0[0]))

    # DKP kernel updates on the latest x0 (RKS prior step + PKE data steps)
    args = (st["kp"], st["kp_opt"], st["chain"], k_rks, k_lang)
    upd = functools.partial(_kernel_updates, setup, img0, y, zk)
    _, m_shape = jax.eval_shape(upd, args)

    def skip(a):
        return a[:3], jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)

    do_k = i < setup.kernel_steps
    (kp, kp_opt, chain), km = jax.lax.cond(do_k, upd, skip, args)
    k = setup.kmlp.apply(kp, zk)

    # Eq. 23-24: data-consistency refinement of x0 with the current kernel
    img_dc = dc_refine(setup, img0, k, y)
    x0_dc = _to_pm1(img_dc)[None]

    # Eq. 22: the reverse step from the refined x0
    if setup.sampler == "ddpm":
        x_prev = ddpm_step(sched, k_noise, x_t, i, x0_dc, clip=setup.clip_x0)
    else:
        x_prev = ddim_step(sched, k_noise, x_t, i, i - 1, x0_dc, eta=setup.eta, clip=setup.clip_x0)

    A = lambda x: dkp_method.forward_model(setup, x, k, y.shape)  # noqa: E731
    mse0, mse_dc = losses.mse(A(img0), y), losses.mse(A(img_dc), y)
    st.update(kp=kp, kp_opt=kp_opt, chain=chain, key=key, it=st["it"] + 1, x_t=x_prev,
              hr=jnp.clip(img_dc, 0.0, 1.0), kernel=k)
    metrics = dict(km)
    metrics.update(t=tmap[i].astype(jnp.float32), kernel_step=do_k.astype(jnp.float32),
                   lr_mse_x0=mse0, lr_mse=mse_dc,
                   lr_psnr=-10.0 * jnp.log10(jnp.maximum(mse_dc, 1e-12)))
    return st, metrics


@functools.lru_cache(maxsize=16)
def _step_fn(setup: Setup) -> Callable:
    return functools.partial(_step, setup)


def make_step(config, lr=None, *, prior: Prior | None = None) -> Callable[[State], tuple[State, dict]]:
    """step_fn(state) -> (state, metrics): one reverse step (jit it; `loop.run` does)."""
    channels = 3 if lr is None else int(np.shape(lr)[-1])
    return _step_fn(make_setup(config, channels=channels, prior=prior))


def num_steps(config) -> int:
    return int(config.sampler.steps)


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def sample(config, lr, prior_params, key, *, prior: Prior | None = None, checkpoint_dir=None,
           progress=True, monitor=None):
    """The reverse process with given prior params -> (hr, kernel, history, final state)."""
    from kfsr.train import loop

    lr = jnp.asarray(lr, jnp.float32)
    setup = make_setup(config, channels=lr.shape[-1], prior=prior)
    state = _init_jit(setup, lr, prior_params, key)
    on_chunk = None
    if monitor is not None:
        def on_chunk(n, st, history):  # the state is donated next: hand over host copies
            monitor(n, np.asarray(st["hr"]), np.asarray(st["kernel"]))

    state, history = loop.run(
        _step_fn(setup), state, setup.n_steps, chunk=int(config.loop.chunk),
        checkpoint_dir=None if checkpoint_dir is None else os.path.join(checkpoint_dir, "reverse"),
        loop=config.loop.get("mode", "auto"), progress=progress, desc="diff_dkp",
        on_chunk=on_chunk)
    return state["hr"], state["kernel"], history, state


@register("diff_dkp")
def run(config, lr, key=None, *, checkpoint_dir=None, progress=True, kernel=None, monitor=None,
        prior: Prior | None = None, prior_params=None) -> Result:
    """Blind SR of `lr` (h, w, C) in [0, 1] with Diff-DKP. Returns Result(hr, kernel, history).

    `key` defaults to jax.random.key(config.seed); the prior (default: Phase 1 of KernelFusion on
    `lr`) uses split(key)[0], the reverse process split(key)[1]. `prior`/`prior_params`: an
    external diffusion model instead (see `Prior`). `monitor(step, hr, kernel)` gets host copies
    after every loop chunk. History rows carry "phase" (1.0: prior training, 2.0: reverse steps).
    Blind only: a `kernel` is refused (nothing in the method may see a true kernel).
    """
    from kfsr.io import check_lr

    if kernel is not None:
        raise KfsrInputError("diff_dkp is a blind method: it estimates the kernel (no --kernel)")
    setup0 = make_setup(config, prior=prior)
    lr = jnp.asarray(check_lr(lr, setup0.scale, max(1, setup0.kernel_size // setup0.scale),
                              name="diff_dkp input"))
    key = jax.random.key(int(config.seed)) if key is None else key
    k1, k2 = jax.random.split(key)
    h1 = []
    if prior_params is None:
        if prior is not None:
            raise KfsrInputError("diff_dkp: an external prior needs its prior_params")
        prior_params, h1 = train_prior(config, lr, k1, checkpoint_dir=checkpoint_dir,
                                       progress=progress)
    hr, k, h2, _ = sample(config, lr, prior_params, k2, prior=prior,
                          checkpoint_dir=checkpoint_dir, progress=progress, monitor=monitor)
    history = [dict(r, phase=1.0) for r in h1] + [dict(r, phase=2.0) for r in h2]
    return Result(hr=hr, kernel=k, history=history)
