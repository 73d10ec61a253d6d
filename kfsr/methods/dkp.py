"""DIP-DKP: DIP image prior + DKP kernel prior (Yang et al., CVPR 2024), as the released code runs it.

Source: XYLGroup/DKP `DIPDKP/model/model.py::DIPDKP.train` (commit 8a04570), restated in
shared/reference/methods/dkp.md §3.3 ("dkp.md" below). Per image:

    warm-up  (pke.warmup_steps = 200): Adam_theta on MSE(k_rand, k_theta), k_rand ~ prior family
    for it in 0 .. outer_iters-1:                       # ONE jitted step function = one iteration
        x = DIP(z)                                        (also the first inner step's forward)
        RKS: L candidate kernels scored on x (one batched FFT blur), weights w_l   (methods/rks.py)
        Adam_theta step on sum_l w_l * MSE(k_l, k_theta)                          (prior step)
        acc = 0
        for i in 0 .. i_loop_x-1:       (unrolled in Python inside the jitted step; t = it*5 + i + 1)
            k = k_theta ; x = DIP(z)
            L_x = D(D_s(x *circ stopgrad(k)), y + disturbance) + gradient_prior(x)
                  D = 1 - SSIM if it <= ssim_iters (80) else MSE       (traced switch, jnp.where)
            Adam_phi step on L_x
            acc += grad_theta D(D_s(stopgrad(x) *circ k_theta), y)     (x: pre-update DIP output)
            if t % i_loop_k == 0: Adam_theta step on acc; acc = 0      (lax.cond on the traced t)
    return the last inner step's x (pre-update DIP output) and k        (as the code does)

The prior and data steps share one Adam state (also with the warm-up), as in the code. Because the
kernel net does not change between the accumulated data losses, summing their gradients equals the
code's backward of the summed loss.

Forward model (`Degradation.dkp(scale)`): circular padding, cross-correlation, stride s from offset
0; kernel K = min(4s+3, 21); kernels are centred at DKP's convention (centre of mass (K-s)/2, the
prior's centre), so the returned kernel is in DKP's convention (kernels.target_center(.., 'dkp')).
`rks.center='aligned'` centres the prior (and so the estimate) at K//2 + (s-1)/2 instead, for
images made in that convention (DIV2KRK, kfsr's spatially variant sets): the HR estimate is then
not shifted against a ground truth made that way.

Paper vs code (dkp.md §10): the paper's single NLD update (Eq. 12) is split into the two Adam steps
above; Eq. 13's Langevin "disturbation" is `config.pke.langevin_noise` (0 in the released code: the
random kernels are the only noise); the "MCMC" of the paper is i.i.d. sampling in the code
(`rks.mode='code'`); `rks.mode='mcmc'` runs real Metropolis-Hastings chains (methods/rks.py).

State: one dict pytree (DIP params, kernel-net params, both optax states, fixed inputs, LR image,
RKS chain state, PRNG key, outer-iteration counter, last HR estimate and kernel), so
`kfsr.train.loop.run`, `jax.vmap` over same-size images (`run_batch`) and orbax checkpoints all
work on it unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kfsr import losses, parallel
from kfsr.degrade import kernels as kern
from kfsr.errors import KfsrInputError
from kfsr.methods.base import Result, check_config, register, register_batch
from kfsr.methods.rks import RKS, prior_loss
from kfsr.nets.kernel_mlp import KernelMLP, kernel_code

State = dict  # see init()


# --------------------------------------------------------------------------------------------
# static set-up (hashable; closed over by the jitted functions)
# --------------------------------------------------------------------------------------------
def kernel_size_of(config) -> int:
    ks = config.get("kernel_size", None)
    return int(ks) if ks else kern.dkp_kernel_size(int(config.scale))


@dataclasses.dataclass(frozen=True)
class Setup:
    scale: int
    kernel_size: int
    channels: int
    net: Any                      # SkipNet (a frozen, hashable Linen module)
    kmlp: KernelMLP
    rks: RKS
    dip_lr: float
    kp_lr: float
    warmup_steps: int
    code_dim: int
    langevin_noise: float
    i_loop_x: int
    i_loop_k: int
    ssim_iters: int
    grad_weight: float
    grad_exponent: float
    grad_eps: float
    padding: str
    offset: int
    disturbance: float
    track_best: bool
    fixed_kernel: bool

    @property
    def dip_tx(self):
        return optax.adam(self.dip_lr)  # torch Adam defaults: betas (0.9, 0.999), eps 1e-8

    @property
    def kp_tx(self):
        return optax.adam(self.kp_lr)


def make_setup(config, channels: int = 3, fixed_kernel: bool = False) -> Setup:
    """Validate `config` and build the static description of a run."""
    from kfsr.degrade.spec import Degradation
    from kfsr.nets.dip import SkipNet

    if config.get("method", "dkp") != "dkp":
        raise KfsrInputError(f"config.method={config.method!r}: this is the DIP-DKP method ('dkp')")
    for section in ("rks", "pke", "dip", "schedule", "loss", "loop"):
        if section not in config:
            raise KfsrInputError(f"config.{section}: missing (use configs/dkp.py as the template)")
    s = int(config.scale)
    padding = config.get("padding", "circular")
    offset = int(config.get("offset", 0))
    Degradation(scale=s, padding=padding, sampling="stride", offset=offset)  # validates
    k = kernel_size_of(config)
    sch, d, p, lo = config.schedule, config.dip, config.pke, config.loss
    for name, v in (("schedule.i_loop_x", sch.i_loop_x), ("schedule.i_loop_k", sch.i_loop_k)):
        if int(v) < 1:
            raise KfsrInputError(f"config.{name}: must be >= 1, got {v}")
    if int(sch.outer_iters) < 0 or int(p.warmup_steps) < 0:
        raise KfsrInputError("config.schedule.outer_iters and config.pke.warmup_steps must be >= 0")
    if int(d.input_channels) < 1 or int(p.code_dim) < 1 or int(p.hidden) < 1:
        raise KfsrInputError("config.dip.input_channels, config.pke.code_dim and config.pke.hidden must be >= 1")
    net = SkipNet(out_channels=channels, num_scales=int(d.num_scales),
                  channels_down=d.channels_down, channels_up=d.channels_up,
                  channels_skip=d.channels_skip, nonlocal_from=d.nonlocal_from)
    return Setup(
        scale=s, kernel_size=k, channels=channels, net=net,
        kmlp=KernelMLP(kernel_size=k, hidden=int(p.hidden)),
        rks=RKS.from_config(config.rks, s, k, padding=padding, offset=offset),
        dip_lr=float(d.lr), kp_lr=float(p.lr), warmup_steps=int(p.warmup_steps),
        code_dim=int(p.code_dim), langevin_noise=float(p.langevin_noise),
        i_loop_x=int(sch.i_loop_x), i_loop_k=int(sch.i_loop_k), ssim_iters=int(sch.ssim_iters),
        grad_weight=float(lo.grad_weight), grad_exponent=float(lo.grad_exponent),
        grad_eps=float(lo.grad_eps), padding=padding, offset=offset,
        disturbance=float(config.get("disturbance", 0.0)),
        track_best=bool(config.get("track_best", False)), fixed_kernel=fixed_kernel)


def validate(config) -> None:
    """Raise KfsrInputError naming the bad field (called by kfsr.cli before a run)."""
    check_config(make_setup, config, "dkp")


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def forward_model(setup: Setup, x: jax.Array, k: jax.Array, lr_shape) -> jax.Array:
    """D_s(x *_P k): blur with padding P, stride sampling from `offset` -> (h, w, C)."""
    from kfsr.degrade import ops

    y = ops.blur(x, k, padding=setup.padding)
    y = y[setup.offset::setup.scale, setup.offset::setup.scale]
    return y[:lr_shape[0], :lr_shape[1]]


def _data_loss(use_ssim, a, b):
    """1 - SSIM (DKP's SSIM module) while use_ssim, else MSE; traced switch."""
    return jnp.where(use_ssim, losses.ssim_loss(a, b), losses.mse(a, b))


def kernel_net_update(setup, params, opt_state, grads, key):
    """One kernel-net Adam step (+ the optional Eq. 13 Langevin noise). Pure; `setup` is anything
    with `kp_tx` (optax transform) and `langevin_noise` (float) -- a dkp or diff_dkp Setup."""
    updates, opt_state = setup.kp_tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if setup.langevin_noise > 0:  # paper Eq. 13 disturbance (off in the released code)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        leaves = [p + setup.langevin_noise * jax.random.normal(kk, p.shape, p.dtype)
                  for p, kk in zip(leaves, keys)]
        params = jax.tree.unflatten(tree, leaves)
    return params, opt_state


def warmup_kernel_net(setup, kp, kp_opt, zk, key):
    """pke.warmup_steps Adam steps on MSE(k_rand, k_theta), k_rand fresh prior draws (MC_warm_up).

    Pure; `setup` is anything with `warmup_steps`, `rks` (RKS), `kmlp` (KernelMLP) and `kp_tx`
    (a dkp or diff_dkp Setup)."""
    def body(i, carry):
        params, opt = carry
        k_rand = setup.rks.sample(jax.random.fold_in(key, i))
        g = jax.grad(lambda p: losses.mse(k_rand, setup.kmlp.apply(p, zk)))(params)
        updates, opt = setup.kp_tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt

    return jax.lax.fori_loop(0, setup.warmup_steps, body, (kp, kp_opt))


# --------------------------------------------------------------------------------------------
# init / step
# --------------------------------------------------------------------------------------------
def init(config, lr, key, *, kernel=None) -> State:
    """Initial state of a DIP-DKP run on `lr` (h, w, C) in [0,1], including the kernel-net warm-up.

    With `kernel` (K, K) given, the kernel net is replaced by that fixed kernel (non-blind DIP with
    DIP-DKP's network, schedule and losses; no warm-up, RKS or kernel steps).
    Jittable / vmappable over (lr, key) for a fixed config.
    """
    lr = jnp.asarray(lr, jnp.float32)
    if lr.ndim != 3:
        raise KfsrInputError(f"dkp: expected an LR image of shape (h, w, C), got {lr.shape}")
    setup = make_setup(config, channels=lr.shape[-1], fixed_kernel=kernel is not None)
    return _init_jit(setup, int(config.dip.input_channels), lr, key, kernel)


def _init_state(setup: Setup, in_ch: int, lr, key, kernel=None) -> State:
    from kfsr.nets.dip import dip_input

    h, w, _ = lr.shape
    s = setup.scale
    k_net, k_z, k_kp, k_zk, k_warm, k_rks, k_run = jax.random.split(key, 7)
    z = dip_input(k_z, (h * s, w * s), channels=in_ch)
    dip_params = setup.net.init(k_net, z)
    dip_opt = setup.dip_tx.init(dip_params)
    zk = kernel_code(k_zk, setup.code_dim)
    kp = setup.kmlp.init(k_kp, zk)
    kp_opt = setup.kp_tx.init(kp)
    if kernel is None:
        kp, kp_opt = warmup_kernel_net(setup, kp, kp_opt, zk, k_warm)
        k0 = setup.kmlp.apply(kp, zk)
    else:
        k0 = jnp.asarray(kernel, jnp.float32)
        if k0.shape != (setup.kernel_size, setup.kernel_size):
            if k0.ndim != 2 or k0.shape[0] != k0.shape[1] or k0.shape[0] > setup.kernel_size:
                raise KfsrInputError(f"dkp: fixed kernel of shape {k0.shape} does not fit "
                                     f"kernel_size {setup.kernel_size}")
            k0 = kern.pad_to(k0, setup.kernel_size)
    # placeholder for the HR estimate, overwritten by every step (a DIP forward here would add its
    # own compilation to init; `run` with 0 outer iterations returns the untrained DIP output)
    hr0 = jnp.zeros((h * s, w * s, setup.channels), jnp.float32)
    state = {
        "dip": dip_params, "dip_opt": dip_opt, "kp": kp, "kp_opt": kp_opt,
        "z": z, "zk": zk, "lr": lr, "chain": setup.rks.init(k_rks), "key": k_run,
        "it": jnp.zeros((), jnp.int32), "hr": hr0, "kernel": k0,
        "k_fixed": k0 if kernel is not None else jnp.zeros((0,), jnp.float32),
    }
    if setup.track_best:
        state["best_hr"] = hr0
        state["best_kernel"] = k0
        state["best_err"] = jnp.full((), jnp.inf, jnp.float32)
    return state


_init_jit = jax.jit(_init_state, static_argnums=(0, 1))


def _step(setup: Setup, state: State) -> tuple[State, dict]:
    """One outer iteration (RKS prior step + i_loop_x DIP steps + scheduled kernel steps)."""
    st = dict(state)
    key, k_rks, k_dist, k_lang = jax.random.split(st["key"], 4)
    it = st["it"]
    use_ssim = it <= setup.ssim_iters
    y = st["lr"]
    z, zk = st["z"], st["zk"]
    dip, dip_opt, kp, kp_opt = st["dip"], st["dip_opt"], st["kp"], st["kp_opt"]
    net, kmlp = setup.net, setup.kmlp
    blind = not setup.fixed_kernel
    metrics: dict[str, jax.Array] = {}

    def dip_fwd(p):
        return net.apply(p, z)

    kernel_of = (lambda p: kmlp.apply(p, zk)) if blind else (lambda p: st["k_fixed"])

    # one DIP forward: RKS scoring and the first inner step (same params, deterministic net)
    sr, vjp = jax.vjp(dip_fwd, dip)

    # ---- RKS prior step on the kernel net
    if blind and setup.rks.num_samples > 0:
        ks, wts, st["chain"], m = setup.rks.step(st["chain"], k_rks, sr, y, kernel_of(kp))
        lp, g = jax.value_and_grad(lambda p: prior_loss(kernel_of(p), ks, wts))(kp)
        kp, kp_opt = kernel_net_update(setup, kp, kp_opt, g, jax.random.fold_in(k_lang, 0))
        metrics.update(m)
        metrics["prior_loss"] = lp

    # ---- y with the (optional) image disturbance, for the DIP data term only
    y_x = y
    if setup.disturbance > 0:
        ks_, kn_ = jax.random.split(k_dist)
        sigma = jax.random.uniform(ks_, (), jnp.float32, 0.0, setup.disturbance)
        y_x = y + sigma * jax.random.normal(kn_, y.shape, jnp.float32)

    grad_norm = float(np.prod(y.shape))  # DKP divides by lr.numel() = 3hw (dkp.md §3.3)
    acc = jax.tree.map(jnp.zeros_like, kp)
    best = (st["best_hr"], st["best_kernel"], st["best_err"]) if setup.track_best else None
    lk = jnp.zeros((), jnp.float32)
    n_kstep = jnp.zeros((), jnp.int32)
    for i in range(setup.i_loop_x):
        t = it * setup.i_loop_x + (i + 1)  # global DIP step, 1-based
        k = kernel_of(kp)
        if i > 0:
            sr, vjp = jax.vjp(dip_fwd, dip)

        def loss_x(x):
            yh = forward_model(setup, x, jax.lax.stop_gradient(k), y.shape)
            data = _data_loss(use_ssim, yh, y_x)
            gp = losses.gradient_prior(x, setup.grad_weight, setup.grad_exponent, setup.grad_eps,
                                       normalizer=grad_norm)
            return data + gp, (data, gp, yh)

        (lx, (data_x, gp, yh)), g_sr = jax.value_and_grad(loss_x, has_aux=True)(sr)
        (g_dip,) = vjp(g_sr)
        upd, dip_opt = setup.dip_tx.update(g_dip, dip_opt, dip)
        lr_mse = losses.mse(yh, y)
        if best is not None:
            better = lr_mse < best[2]
            best = (jnp.where(better, sr, best[0]), jnp.where(better, k, best[1]),
                    jnp.where(better, lr_mse, best[2]))
        if i == setup.i_loop_x - 1:
            st["hr"], st["kernel"] = sr, k  # the code returns the pre-update x and its k
        dip = optax.apply_updates(dip, upd)

        if blind:
            sr_c = jax.lax.stop_gradient(sr)
            lk, gk = jax.value_and_grad(
                lambda p: _data_loss(use_ssim, forward_model(setup, sr_c, kernel_of(p), y.shape), y))(kp)
            acc = jax.tree.map(jnp.add, acc, gk)
            do = (t % setup.i_loop_k) == 0

            def apply_acc(args, i=i):
                p, o, a = args
                p, o = kernel_net_update(setup, p, o, a, jax.random.fold_in(k_lang, i + 1))
                return p, o, jax.tree.map(jnp.zeros_like, a)

            kp, kp_opt, acc = jax.lax.cond(do, apply_acc, lambda args: args, (kp, kp_opt, acc))
            n_kstep = n_kstep + do.astype(jnp.int32)

    st.update(dip=dip, dip_opt=dip_opt, kp=kp, kp_opt=kp_opt, key=key, it=it + 1)
    if best is not None:
        st["best_hr"], st["best_kernel"], st["best_err"] = best
    metrics.update(loss_x=lx, data_x=data_x, grad_prior=gp, lr_mse=lr_mse,
                   lr_psnr=-10.0 * jnp.log10(jnp.maximum(lr_mse, 1e-12)))
    if blind:
        metrics.update(loss_k=lk, kernel_steps=n_kstep.astype(jnp.float32))
    return st, metrics


def make_step(config, lr=None, *, fixed_kernel: bool = False) -> Callable[[State], tuple[State, dict]]:
    """step_fn(state) -> (state, metrics): one outer iteration (jit it; `loop.run` does)."""
    channels = 3 if lr is None else int(np.shape(lr)[-1])
    setup = make_setup(config, channels=channels, fixed_kernel=fixed_kernel)
    return functools.partial(_step, setup)


# --------------------------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _dip_output(setup: Setup, state: State) -> jax.Array:
    return setup.net.apply(state["dip"], state["z"])


def _result_of(setup: Setup, state, num_steps: int, batched: bool = False):
    """(hr, kernel) as the code returns them: the last inner step's DIP output and kernel
    (or the best-LR-consistency iterate with config.track_best)."""
    if num_steps == 0:  # nothing ran: the untrained DIP output and the warmed-up kernel
        f = functools.partial(_dip_output, setup)
        hr = (jax.vmap(f) if batched else f)(state)
        return hr, state["kernel"]
    if setup.track_best:
        return state["best_hr"], state["best_kernel"]
    return state["hr"], state["kernel"]


def _loop(config, step, state, checkpoint_dir, progress, desc, monitor=None):
    from kfsr.train import loop

    on_chunk = None
    if monitor is not None:
        def on_chunk(n, st, history):  # the state is donated next: hand over host copies
            monitor(n, np.asarray(st["hr"]), np.asarray(st["kernel"]))

    return loop.run(step, state, int(config.schedule.outer_iters), chunk=int(config.loop.chunk),
                    checkpoint_dir=checkpoint_dir, loop=config.loop.get("mode", "auto"),
                    progress=progress, desc=desc, on_chunk=on_chunk)


@register("dkp")
def run(config, lr, key=None, *, checkpoint_dir=None, progress=True, kernel=None,
        monitor=None) -> Result:
    """Blind SR of `lr` (h, w, C) in [0, 1] with DIP-DKP. Returns Result(hr, kernel, history).

    `key` defaults to jax.random.key(config.seed). `kernel` (optional, (K, K)): run non-blind
    with that fixed kernel instead (see `run_fixed_kernel`). `monitor(step, hr, kernel)` (numpy
    copies of the latest iterate) is called after every loop chunk, e.g. to log PSNR curves.
    """
    from kfsr.io import check_lr

    lr = jnp.asarray(check_lr(lr, int(config.scale), kernel_size_of(config) // int(config.scale),
                              name="dkp input"))
    key = jax.random.key(int(config.seed)) if key is None else key
    setup = make_setup(config, channels=lr.shape[-1], fixed_kernel=kernel is not None)
    state = _init_jit(setup, int(config.dip.input_channels), lr, key, kernel)
    state, history = _loop(config, functools.partial(_step, setup), state, checkpoint_dir,
                           progress, "dkp", monitor)
    hr, k = _result_of(setup, state, int(config.schedule.outer_iters))
    return Result(hr=hr, kernel=k, history=history)


@register_batch("dkp")
def run_batch(config, lrs, key=None, *, checkpoint_dir=None, progress=True,
              num_devices: int | None = None) -> Result:
    """DIP-DKP on a batch of same-size LR images (B, h, w, C): `jax.vmap` of init and step (one
    compiled program). Image b uses key `jax.random.split(key, B)[b]`, so the result equals
    `run(config, lrs[b], keys[b])` up to float rounding (BatchNorm statistics are per image).

    The batch axis is sharded over the visible devices (`kfsr.parallel`; at most `num_devices`,
    the largest count that divides B): each device optimises its own images, no communication.
    """
    lrs = jnp.asarray(lrs, jnp.float32)
    if lrs.ndim != 4:
        raise KfsrInputError(f"dkp.run_batch: expected LR images (B, h, w, C), got {lrs.shape}")
    key = jax.random.key(int(config.seed)) if key is None else key
    keys = jax.random.split(key, lrs.shape[0])
    setup = make_setup(config, channels=lrs.shape[-1])
    in_ch = int(config.dip.input_channels)
    state = jax.jit(jax.vmap(lambda l, k: _init_state(setup, in_ch, l, k)))(lrs, keys)
    n_dev = parallel.usable_devices(lrs.shape[0], num_devices)
    if n_dev > 1:
        mesh = parallel.batch_mesh(n_dev)
        state = parallel.shard_batch(state, lrs.shape[0], mesh)
        step = parallel.shard_vmapped(functools.partial(_step, setup), mesh)
    else:
        step = jax.vmap(functools.partial(_step, setup))

    def bstep(s):
        s, m = step(s)
        return s, jax.tree.map(jnp.mean, m)  # loop metrics must be scalars: batch means

    state, history = _loop(config, bstep, state, checkpoint_dir, progress, "dkp[batch]")
    hr, k = _result_of(setup, state, int(config.schedule.outer_iters), batched=True)
    return Result(hr=hr, kernel=k, history=history)


def run_fixed_kernel(config, lr, kernel, key=None, *, checkpoint_dir=None, progress=True,
                     monitor=None) -> Result:
    """Non-blind DIP with DIP-DKP's network, schedule and losses and the kernel fixed.

    `config` is a dkp config, or any config with a `dip_preset` field naming a preset of
    configs/dkp.py (e.g. configs/nonblind.py), whose `scale`, `seed`, `padding`, `offset` and
    `kernel_size` (if set) override the preset's.
    """
    if config.get("method", None) != "dkp":
        from configs import dkp as dkp_configs  # the repo's configs package

        base = dkp_configs.get_config(config.get("dip_preset", "cpu"))
        for f in ("scale", "seed", "padding", "offset"):
            if f in config:
                base[f] = config[f]
        if config.get("kernel_size", None):
            base.kernel_size = int(config.kernel_size)
        config = base
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise KfsrInputError(f"dkp: a fixed kernel must be (K, K), got {kernel.shape}")
    if not config.get("kernel_size", None):
        config = ml_collections.ConfigDict(config.to_dict())  # unlocked, unfrozen copy
        config.kernel_size = int(kernel.shape[0])
    return run(config, lr, key, checkpoint_dir=checkpoint_dir, progress=progress, kernel=kernel,
               monitor=monitor)
