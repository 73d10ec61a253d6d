"""BlindDiff (Li et al., arXiv 2403.10211): MAP-unfolded reverse diffusion with a kernel-aware gradient.

Source: shared/reference/methods/blinddiff_ssr.md §1 ("report" below), a report on the official
code lifengcs/BlindDiff; every choice where the paper and the code differ is a field of
configs/blinddiff.py (its docstring lists them).

Training (Algorithm 1 as implemented, report §1.3; driven by kfsr.train.supervised, `make_task`):

    x0 = HR crops, k = random kernels, y = quantise(bicubic_down_s(reflect_blur(x0, k)))
    i ~ U{0 .. n-1} over the respaced chain, tau = timestep_map[i], eps ~ N(0, I)
    x_t = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps
    (eps_hat, v), k_hat = MCFormer(x_t, tau, y)
    L = mean (eps - eps_hat)^2 + L_vb(v; eps_hat stop-gradiented) + lambda_k mean_441 (k - k_hat)^2

Sampling (Algorithm 2 as implemented, report §1.4; one `kfsr.train.loop.run` step per reverse step):

    pad y (reflect) so that the HR size is a multiple of 8;  x ~ N(0, I) at s x the LR size
    for i = n-1 .. 0:
        (eps_hat, v), k_hat = MCFormer(x, tau_i, y)                one forward, graph kept
        x0_hat = (x - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i)     not clipped
        x'     = DDPM ancestral step from x0_hat with the learned-range variance (v clipped to
                 [-1, 1] by default, sample.clip_learned_var; the code does not clip)
        E      = ||y - D(x0_hat * k_hat)||_2 + 0.1 ||x0_hat||_2     (norms, not squared)
        x      = x' - zeta * dE/dx                                  through x0_hat AND k_hat
    the kernel is re-estimated by the network at the next step from the corrected x.

`kfsr.diffusion.guided_aux.guided_step_aux` (a wrapper of the shared `guided_step`) takes the
step; E is evaluated on [0, 1] images with kfsr's forward model (`Degradation(scale, 'reflect',
'bicubic')`, kernels cross-correlated, centred at (K-1)/2). With data_range '-1,1' the diffusion
variable is x = 2 img - 1 and the guidance weight is zeta * 2^2, which is the same image-space
step as the code's zeta on [0, 1] data (dE/dx = dE/dimg / 2 and img moves by half of x).

`run(config, lr, key, kernel=K)` is the same sampler with a known kernel ("oracle"): K replaces
k_hat in the energy and (sample.oracle_kernel_in_model) in MCFormer's modulation. The choice is
state (`use_kernel`), not structure: blind and oracle runs share one compiled reverse step.

Images are [0, 1] at the API; the diffusion works in `config.data_range` ('0,1' as the code,
'-1,1' kfsr's convention). The trained weights come from `config.checkpoint` (a training workdir
or its model/ folder) or `run(..., params=...)`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.degrade import degrade
from kfsr.degrade.spec import Degradation
from kfsr.diffusion.guided_aux import guided_step_aux
from kfsr.diffusion.param import q_sample
from kfsr.diffusion.samplers import normal, resolve_timesteps, split_model_output
from kfsr.diffusion.schedule import get_schedule
from kfsr.diffusion.vlb import vb_terms
from kfsr.errors import KfsrInputError
from kfsr.methods.base import Result, check_config, register
from kfsr.nets.mcformer import MCFormer, param_shapes

State = dict  # see init()

DATA_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
ENERGIES = ("norm", "squared_norm")
GUIDANCE_KERNELS = ("estimated", "none")
_TINY = 1e-20


# --------------------------------------------------------------------------------------------
# static set-up
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
    """Hashable description of a BlindDiff model and sampler (closed over by jitted code)."""

    scale: int
    kernel_size: int
    spec: Degradation
    net: MCFormer
    learned_var: bool
    data_range: str
    T: int
    schedule: str
    beta_start: float
    beta_end: float
    respace_train: Any
    respace_sample: Any
    vb: bool
    kernel_weight: float
    # the balance weight is sampling STATE (init's zeta): setups that differ only in zeta are
    # equal, so they share the cached step function and its compiled program
    zeta: float = dataclasses.field(compare=False)
    energy: str
    x0_norm_weight: float
    guidance_kernel: str
    clip_denoised: bool
    oracle_in_model: bool
    clip_learned_var: bool = True

    # -- data range ----------------------------------------------------------------------------
    @property
    def range_width(self) -> float:
        lo, hi = DATA_RANGES[self.data_range]
        return hi - lo

    def to_model(self, img):
        lo, hi = DATA_RANGES[self.data_range]
        return img * (hi - lo) + lo

    def to_img(self, x):
        lo, hi = DATA_RANGES[self.data_range]
        return (x - lo) / (hi - lo)

    # -- schedules -----------------------------------------------------------------------------
    def schedules(self, which: str):
        """(respaced schedule, timestep_map) for 'train' or 'sample' (cached, concrete)."""
        return _schedules(self.schedule, self.T, self.beta_start, self.beta_end,
                          self.respace_train if which == "train" else self.respace_sample)

    def meta(self) -> dict:
        """What exported weights must match (JSON-able)."""
        n = self.net
        return {"model": "blinddiff.mcformer", "scale": self.scale, "kernel_size": self.kernel_size,
                "dim": n.dim, "num_blocks": list(n.num_blocks),
                "num_refinement_blocks": n.num_refinement_blocks, "heads": list(n.heads),
                "ffn_expansion": n.ffn_expansion, "predictor_width": n.predictor_width,
                "predictor_strides": list(n.predictor_strides), "learned_var": self.learned_var,
                "data_range": self.data_range, "T": self.T, "schedule": self.schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end,
                # only when set: weights exported before the option existed still load
                **({"kernel_input_norm": True} if n.kernel_input_norm else {})}


@functools.lru_cache(maxsize=16)
def _schedules(schedule, T, beta_start, beta_end, respace):
    base = (get_schedule(schedule, T, beta_start=beta_start, beta_end=beta_end)
            if schedule == "linear" else get_schedule(schedule, T))
    return resolve_timesteps(base, None if respace in (None, 0, "") else respace)


def _req(cond, msg):
    if not cond:
        raise KfsrInputError(msg)


def _tuple(v):
    return tuple(int(x) for x in v)


def make_setup(config) -> Setup:
    """Validate `config` (configs/blinddiff.py) and build the static description."""
    _req(config.get("method", "blinddiff") == "blinddiff",
         f"config.method={config.get('method')!r}: this is BlindDiff ('blinddiff')")
    for section in ("net", "diffusion", "loss", "guidance", "sample"):
        _req(section in config, f"config.{section}: missing (use configs/blinddiff.py as the template)")
    s = int(config.scale)
    K = int(config.kernel_size)
    _req(s >= 1 and K >= 1, f"config.scale and config.kernel_size must be >= 1, got {s}, {K}")
    spec = Degradation(scale=s, padding=config.get("padding", "reflect"),
                       sampling=config.get("sampling", "bicubic"), offset=int(config.get("offset", 0)))
    dr = str(config.get("data_range", "0,1"))
    _req(dr in DATA_RANGES, f"config.data_range: one of {sorted(DATA_RANGES)}, got {dr!r}")
    n, d, lo, g = config.net, config.diffusion, config.loss, config.guidance
    blocks, heads = _tuple(n.num_blocks), _tuple(n.heads)
    _req(len(blocks) == len(heads) >= 2,
         "config.net.num_blocks and heads: one entry per level, >= 2 levels (BlindDiff: 4)")
    dim = int(n.dim)
    for lvl, h in enumerate(heads):
        ch = dim * 2 ** lvl
        _req(h >= 1 and ch % h == 0, f"config.net.heads[{lvl}]={h} must divide {ch} channels")
    _req(dim % 2 == 0 and dim >= 2, f"config.net.dim: an even number >= 2, got {dim}")
    _req(len(_tuple(n.predictor_strides)) >= 1, "config.net.predictor_strides: at least one conv")
    _req(d.schedule in ("linear", "cosine"), f"config.diffusion.schedule: 'linear' or 'cosine', got {d.schedule!r}")
    _req(int(d.T) >= 2, f"config.diffusion.T: must be >= 2, got {d.T}")
    _req(g.energy in ENERGIES, f"config.guidance.energy: one of {ENERGIES}, got {g.energy!r}")
    _req(g.kernel in GUIDANCE_KERNELS, f"config.guidance.kernel: one of {GUIDANCE_KERNELS}, got {g.kernel!r}")
    learned_var = bool(n.learned_var)
    net = MCFormer(dim=dim, num_blocks=blocks, num_refinement_blocks=int(n.num_refinement_blocks),
                   heads=heads, ffn_expansion=float(n.ffn_expansion), kernel_size=K, scale=s,
                   in_channels=3, out_channels=6 if learned_var else 3,
                   predictor_width=int(n.predictor_width),
                   predictor_strides=_tuple(n.predictor_strides), remat=bool(n.get("remat", False)),
                   detach_kernel=bool(n.get("detach_kernel", False)),
                   kernel_input_norm=bool(n.get("kernel_input_norm", False)))

    def respace(v):
        return None if v in (None, 0, "") else (int(v) if str(v).isdigit() else str(v))

    setup = Setup(
        scale=s, kernel_size=K, spec=spec, net=net, learned_var=learned_var, data_range=dr,
        T=int(d.T), schedule=str(d.schedule), beta_start=float(d.beta_start),
        beta_end=float(d.beta_end), respace_train=respace(d.respace_train),
        respace_sample=respace(d.respace_sample), vb=bool(lo.vb),
        kernel_weight=float(lo.kernel_weight), zeta=float(g.zeta), energy=str(g.energy),
        x0_norm_weight=float(g.x0_norm_weight), guidance_kernel=str(g.kernel),
        clip_denoised=bool(config.sample.clip_denoised),
        oracle_in_model=bool(config.sample.oracle_kernel_in_model),
        clip_learned_var=bool(config.sample.get("clip_learned_var", True)))
    try:
        setup.schedules("train"), setup.schedules("sample")
    except KfsrInputError as e:
        raise KfsrInputError(f"config.diffusion.respace_*: {e}") from None
    return setup


def validate(config) -> None:
    """Raise KfsrInputError naming the bad field (called by kfsr.cli before a run)."""
    check_config(make_setup, config, "blinddiff")


# --------------------------------------------------------------------------------------------
# training (Algorithm 1): the Task for kfsr.train.supervised
# --------------------------------------------------------------------------------------------
HEAD_INITS = ("torch", "mean", "mean_bias")


def init_params(setup: Setup, key, hr_size: int, head_bias=None, zero_head: bool = True):
    """MCFormer parameters initialised on a (1, hr_size, hr_size, 3) input.

    head_bias (K*K,) (kernel_head_init 'mean'): the kernel head's Dense gets zero weights and this
    bias, so the initial estimate is softmax(head_bias) for every input (log of the training
    family's mean kernel: the estimator starts at the best constant prediction and learns only
    the input dependence; Adam moves the softmax logits by ~lr per step, so starting from a
    uniform 441-way softmax costs thousands of steps on a CPU budget)."""
    s = setup.scale
    x = jnp.zeros((1, hr_size, hr_size, 3), jnp.float32)
    y = jnp.zeros((1, hr_size // s, hr_size // s, 3), jnp.float32)
    params = setup.net.init(key, x, jnp.zeros((1,), jnp.int32), y)
    if head_bias is not None:
        head = params["params"]["predictor"]["head"]
        head = {"kernel": jnp.zeros_like(head["kernel"]) if zero_head else head["kernel"],
                "bias": jnp.asarray(head_bias, jnp.float32).reshape(head["bias"].shape)}
        params = {**params, "params": {**params["params"], "predictor": {
            **params["params"]["predictor"], "head": head}}}
    return params


def training_loss(setup: Setup, params, data: dict, keys) -> tuple[jax.Array, dict]:
    """Algorithm 1's loss on a batch: data hr (b, H, W, 3), lr (b, H/s, W/s, 3) in [0, 1], kernel
    (b, K, K); keys (b,) per-example keys (timestep and noise). Returns (loss, metrics)."""
    sched, tmap = setup.schedules("train")
    n = sched.num_steps
    x0 = setup.to_model(data["hr"])
    y = setup.to_model(data["lr"])
    b = x0.shape[0]

    def draw(k):
        kt, ke = jax.random.split(k)
        return jax.random.randint(kt, (), 0, n), normal(ke, x0.shape[1:])

    t, eps = jax.vmap(draw)(keys)
    x_t = q_sample(sched, x0, t, eps)
    out, k_hat = setup.net.apply(params, x_t, tmap[t], y)
    pred, v = split_model_output(out, setup.learned_var)
    mse = jnp.mean(jnp.square(eps - pred))
    if setup.learned_var and setup.vb:
        vb = jnp.mean(vb_terms(sched, x0, x_t, t, jax.lax.stop_gradient(pred), v))
    else:
        vb = jnp.zeros((), jnp.float32)
    k_mse = jnp.mean(jnp.square(data["kernel"].reshape(b, -1) - k_hat))
    loss = mse + vb + setup.kernel_weight * k_mse
    return loss, {"mse": mse, "vb": vb, "kernel_mse": k_mse}


def make_task(config):
    """The supervised-training Task (kfsr.train.supervised) of a blinddiff config."""
    from kfsr.train.supervised import Task

    setup = make_setup(config)
    crop = int(config.data.crop)
    m = hr_multiple(setup)
    _req(crop % m == 0 and crop % setup.scale == 0,
         f"config.data.crop={crop}: must be a multiple of {m} and of the scale")
    head_init = config.net.get("kernel_head_init", "torch")
    _req(head_init in HEAD_INITS, f"config.net.kernel_head_init: one of {HEAD_INITS}, got {head_init!r}")
    head_bias = None
    if head_init in ("mean", "mean_bias"):
        from kfsr.train.supervised import KERNEL_FAMILIES

        _req(config.data.kernel.family in KERNEL_FAMILIES,
             f"config.data.kernel.family={config.data.kernel.family!r}: unknown")
        family = KERNEL_FAMILIES[config.data.kernel.family](config.data.kernel, setup.kernel_size)
        mean_k = family.mean_kernel(n=4096, seed=int(config.seed) + 1)
        logk = np.log(np.maximum(mean_k, 1e-12)).ravel()
        head_bias = tuple(float(v) for v in logk - logk.mean())
    return Task(name="blinddiff",
                init=functools.partial(init_params, setup, hr_size=crop, head_bias=head_bias,
                                       zero_head=head_init == "mean"),
                loss=functools.partial(training_loss, setup), meta=setup.meta())


def kernel_predictions(setup: Setup, params, data: dict, keys) -> jax.Array:
    """k_hat (b, K*K) for a batch noised as in training (same draws as `training_loss`)."""
    sched, tmap = setup.schedules("train")
    x0, y = setup.to_model(data["hr"]), setup.to_model(data["lr"])

    def draw(k):
        kt, ke = jax.random.split(k)
        return jax.random.randint(kt, (), 0, sched.num_steps), normal(ke, x0.shape[1:])

    t, eps = jax.vmap(draw)(keys)
    return setup.net.apply(params, q_sample(sched, x0, t, eps), tmap[t], y)[1]


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def param_template(setup: Setup):
    """The params tree as ShapeDtypeStructs (no allocation)."""
    return param_shapes(setup.net, hr_size=hr_multiple(setup) * setup.scale)


def load_params(config, setup: Setup | None = None):
    """MCFormer weights from `config.checkpoint`; one-line KfsrInputError if unset or missing."""
    from kfsr.train.supervised import load_model

    setup = make_setup(config) if setup is None else setup
    path = config.get("checkpoint", None)
    if not path:
        raise KfsrInputError(
            "config.checkpoint: not set; BlindDiff needs a trained MCFormer (python -m "
            "kfsr.train.supervised --config=configs/blinddiff.py:cpu --workdir=DIR, then "
            "--config.checkpoint=DIR)")
    params, _ = load_model(str(path), param_template(setup), setup.meta())
    return params


# --------------------------------------------------------------------------------------------
# sampling (Algorithm 2)
# --------------------------------------------------------------------------------------------
def hr_multiple(setup: Setup) -> int:
    """HR sizes must be multiples of 2^(levels-1) (8 for BlindDiff's 4 levels)."""
    return 2 ** (len(setup.net.num_blocks) - 1)


def pad_lr(setup: Setup, lr):
    """Reflect-pad (h, w, C) at the bottom/right so that s*h and s*w are multiples of
    `hr_multiple` (the code pads y to even sizes at x4)."""
    m = hr_multiple(setup) // math.gcd(hr_multiple(setup), setup.scale)
    h, w = lr.shape[0], lr.shape[1]
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return lr
    mode = "reflect" if (ph < h and pw < w) else "symmetric"
    return jnp.pad(lr, ((0, ph), (0, pw), (0, 0)), mode=mode)


def init(setup: Setup, params, y_img, key, *, kernel=None, zeta=None) -> State:
    """Sampling state for a padded LR image y_img (1, h, w, 3) in [0, 1].

    dict(params, y (model range), x (1, s h, s w, 3) ~ N(0, I), i (reverse steps done), key,
    zeta (the balance weight, a traced scalar), x0 / kernel (latest x0_hat and k_hat),
    true_kernel (1, K*K) and use_kernel (bool): the given kernel, or a uniform placeholder and
    False (blind). Both are always present, so the blind and the known-kernel sampler are one
    compiled program."""
    k_x, k_run = jax.random.split(key)
    b, h, w, c = y_img.shape
    K2 = setup.kernel_size ** 2
    x = normal(k_x, (b, h * setup.scale, w * setup.scale, c))
    st = {"params": params, "y": setup.to_model(jnp.asarray(y_img, jnp.float32)), "x": x,
          "i": jnp.zeros((), jnp.int32), "key": k_run,
          "zeta": jnp.asarray(setup.zeta if zeta is None else zeta, jnp.float32),
          "x0": jnp.zeros_like(x), "kernel": jnp.full((b, K2), 1.0 / K2, jnp.float32)}
    given = jnp.full((1, K2), 1.0 / K2, jnp.float32) if kernel is None else kernel
    st["true_kernel"] = jnp.broadcast_to(jnp.asarray(given, jnp.float32).reshape(1, K2), (b, K2))
    st["use_kernel"] = jnp.asarray(kernel is not None)
    return st


def data_energy(setup: Setup, x0_img, y_img, kernel):
    """Per-image residual norms ||y - D(x0 * k)||_2, (B,), on [0, 1] images (kernel (B, K*K) or
    None for the bicubic-only ablation)."""
    b = x0_img.shape[0]
    if kernel is None:
        pred = degrade(x0_img, jnp.ones((1, 1), x0_img.dtype), setup.spec)
    else:
        k = kernel.reshape(b, setup.kernel_size, setup.kernel_size)
        pred = degrade(x0_img, k, setup.spec)
    return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(y_img - pred), axis=(1, 2, 3)), _TINY))


def _energy(setup: Setup, y_model, given, use_given, x0, k_hat):
    img, y_img = setup.to_img(x0), setup.to_img(y_model)
    k = k_hat if given is None else jnp.where(use_given, given, k_hat)
    r = data_energy(setup, img, y_img, None if setup.guidance_kernel == "none" else k)
    xn = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(img), axis=(1, 2, 3)), _TINY))
    if setup.energy == "norm":          # the code: ||r|| + 0.1 ||x0||
        e = jnp.sum(r) + setup.x0_norm_weight * jnp.sum(xn)
    else:                               # Gaussian likelihood: ||r||^2 (+ w ||x0||^2)
        e = jnp.sum(r ** 2) + setup.x0_norm_weight * jnp.sum(xn ** 2)
    return e, {"kernel": k, "residual": jnp.mean(r)}


def _step(setup: Setup, state: State) -> tuple[State, dict]:
    """One reverse step with the kernel-aware gradient (Algorithm 2)."""
    sched, tmap = setup.schedules("sample")
    t = sched.num_steps - 1 - state["i"]
    key, sub = jax.random.split(state["key"])
    given, use = state.get("true_kernel"), state.get("use_kernel", True)
    in_model = given if (given is not None and setup.oracle_in_model) else None
    params, y = state["params"], state["y"]

    def model_fn(x, t_model):
        out, k = setup.net.apply(params, x, t_model, y, kernel=in_model,
                                 use_kernel=None if in_model is None else use)
        if setup.learned_var and setup.clip_learned_var:
            # v in [-1, 1]: the log-variance stays between the posterior's and beta's [I]
            c = out.shape[-1] // 2
            out = jnp.concatenate([out[..., :c], jnp.clip(out[..., c:], -1.0, 1.0)], axis=-1)
        return out, k

    x, aux = guided_step_aux(
        sched, sub, state["x"], t, model_fn, functools.partial(_energy, setup, y, given, use),
        state["zeta"] * setup.range_width ** 2, parameterization="eps", sampler="ddpm",
        clip=setup.clip_denoised, normalize=False, has_aux=True, timestep_map=tmap,
        learned_var=setup.learned_var)
    e_aux = aux["energy_aux"]
    new = dict(state, x=x, i=state["i"] + 1, key=key, x0=aux["x0_hat"], kernel=e_aux["kernel"])
    return new, {"energy": aux["energy"], "residual": e_aux["residual"],
                 "grad_norm": aux["grad_norm"], "t": tmap[t].astype(jnp.float32)}


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(setup: Setup, params, y, key, kernel, zeta):
    return init(setup, params, y, key, kernel=kernel, zeta=zeta)


@functools.lru_cache(maxsize=32)
def make_step(setup: Setup) -> Callable[[State], tuple[State, dict]]:
    """step_fn(state) -> (state, metrics), one function object per setup (the loop driver
    caches its compiled program per step function)."""
    return functools.partial(_step, setup)


def num_steps(setup: Setup) -> int:
    return int(setup.schedules("sample")[0].num_steps)


def _output(setup: Setup, state: State, h: int, w: int, x=None):
    """(hr (h*s, w*s, 3) in [0, 1], kernel (K, K)) of image 0 of a state."""
    x = state["x"] if x is None else x
    hr = jnp.clip(setup.to_img(x[0]), 0.0, 1.0)[: h * setup.scale, : w * setup.scale]
    K = setup.kernel_size
    return hr, state["kernel"][0].reshape(K, K)


@register("blinddiff")
def run(config, lr, key=None, *, checkpoint_dir=None, progress=True, kernel=None, monitor=None,
        params=None) -> Result:
    """BlindDiff SR of `lr` (h, w, C) in [0, 1]. Returns Result(hr (s h, s w, C), kernel (K, K),
    history).

    key: defaults to jax.random.key(config.seed). kernel (optional, (K', K') with K' <= K): the
    same sampler with this known kernel (zero-padded to K x K, centred). params: MCFormer weights
    (default: loaded from config.checkpoint). checkpoint_dir: orbax checkpoints of the sampling
    loop (resume). monitor(step, hr, kernel): after every loop chunk, the current x0_hat (clipped,
    [0, 1]) and k_hat. A grey image (C = 1) is replicated to RGB and the result averaged back.
    """
    from kfsr.degrade import kernels as kern
    from kfsr.io import check_lr
    from kfsr.train import loop

    setup = make_setup(config)
    lr = check_lr(lr, setup.scale, name="blinddiff input")
    h, w, c = lr.shape
    if params is None:
        params = load_params(config, setup)
    if kernel is not None:
        kernel = np.asarray(kernel, np.float32)
        _req(kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1]
             and kernel.shape[0] <= setup.kernel_size,
             f"blinddiff: a known kernel must be (K, K) with K <= {setup.kernel_size}, got {kernel.shape}")
        kernel = np.asarray(kern.normalize(kern.pad_to(jnp.asarray(kernel), setup.kernel_size)))
    key = jax.random.key(int(config.seed)) if key is None else key
    y = pad_lr(setup, jnp.asarray(np.repeat(lr, 3, axis=-1) if c == 1 else lr))[None]
    state = _init_jit(setup, params, y, key, kernel, jnp.float32(setup.zeta))

    on_chunk = None
    if monitor is not None:
        def on_chunk(n, st, history):
            hr_i, k_i = _output(setup, st, h, w, x=st["x0"])
            monitor(n, np.asarray(hr_i), np.asarray(k_i))

    state, history = loop.run(make_step(setup), state, num_steps(setup),
                              chunk=int(config.loop.chunk), checkpoint_dir=checkpoint_dir,
                              loop=config.loop.get("mode", "auto"), progress=progress,
                              desc="blinddiff", on_chunk=on_chunk)
    hr, k = _output(setup, state, h, w)
    if c == 1:
        hr = jnp.mean(hr, axis=-1, keepdims=True)
    return Result(hr=hr, kernel=k, history=history)
