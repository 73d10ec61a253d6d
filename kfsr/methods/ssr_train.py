"""SSR's parameters and training: initialisation, exported weights, the Task of each part.

Part of the SSR method (kfsr/methods/ssr.py has the overview). `make_task(config)` is what
kfsr.train.supervised calls (through kfsr.methods.ssr); config.part selects the part:
  "dkenet":   per-pixel kernel L1 of DKENet(LR, true depth) against the true field;
  "rrdb":     L1 of RRDB-SFT(LR, PCA codes of the TRUE field) against the HR crop;
  "denoiser": eps (or v) MSE of the AMF-conditioned denoiser given the true codes and depth.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.errors import KfsrInputError
from kfsr.methods.ssr_setup import PARTS, Setup, kernel_codes, make_setup, pca_basis


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


def num_train_steps(setup: Setup) -> int:
    """How many steps of the respaced training chain the denoiser trains on: all of them, or
    with diffusion.train_t_max the first ones, whose base timesteps are <= train_t_max (at least
    one; the timestep map is increasing)."""
    sched, tmap = setup.schedules("train")
    if setup.train_t_max is None:
        return int(sched.num_steps)
    return max(1, int(np.sum(np.asarray(tmap) <= setup.train_t_max)))


def denoiser_loss(setup: Setup, basis, params, data: dict, keys):
    """Diffusion loss: t ~ U over the respaced training chain (only its steps at base timesteps
    <= diffusion.train_t_max when set), x_t = q_sample(2 hr - 1, t, eps); MSE of the denoiser's
    eps (or v) prediction, conditioned on 2 lr - 1, the true field's codes and the true depth."""
    from kfsr.diffusion.param import q_sample, v_from_x0_eps
    from kfsr.diffusion.samplers import normal

    sched, tmap = setup.schedules("train")
    x0 = 2.0 * data["hr"] - 1.0
    n_t = num_train_steps(setup)

    def draw(k):
        kt, ke = jax.random.split(k)
        return jax.random.randint(kt, (), 0, n_t), normal(ke, x0.shape[1:])

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


__all__ = ["torch_like_init", "init_part", "param_template", "init_params", "load_params",
           "dkenet_loss", "rrdb_loss", "num_train_steps", "denoiser_loss", "make_task"]
