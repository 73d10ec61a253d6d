"""Supervised training on synthetic degradations of HR image folders (BlindDiff now, SSR later).

    python -m kfsr.train.supervised --config=configs/blinddiff.py:cpu --workdir=runs/bd_cpu
    python -m kfsr.train.supervised --config=configs/blinddiff.py:cpu --workdir=runs/bd_cpu \
        --config.train.steps=2000 --config.data.batch=4        # any field can be overridden

Run it again with the same workdir to resume (bit-identically: same batches, same keys). The
workdir holds `checkpoints/` (the full training state, orbax, via kfsr.train.loop), `model/` (the
exported weights a method loads: `config.checkpoint=<workdir>`), `config.json` and `history.json`.

Data pipeline (deterministic in (seed, step), so a resumed run sees the same batches):
  host, numpy: rng = np.random.default_rng([seed, step]); `batch` random crops of `crop` x `crop`
        from the HR images (image uniform, position uniform, then one of the 8 dihedral
        transforms if `augment`: h-flip, v-flip, transpose, as BasicSR's augment); the kernel
        family's random parameters (KERNEL_FAMILIES).
  device, jax (inside the jitted step, per device): kernels built from the parameters with
        kfsr.degrade.kernels; LR = kfsr.degrade.degrade(hr, k, Degradation(scale, padding,
        sampling)) [+ noise]; quantised to 8 bits if `quantize`.
The host part enters the jitted step through `jax.pure_callback` keyed by the step counter in
the state, so the whole step (data, loss, gradient, optimiser, EMA) is one program driven by
`kfsr.train.loop.run` (progress bar, NaN guard, orbax checkpoints, resume).

Model: the method module `kfsr.methods.<config.method>` provides `make_task(config)` returning a
`Task`: `init(key) -> params` and `loss(params, data, keys) -> (loss, metrics)` where data =
dict(hr (b, H, W, C), lr (b, h, w, C), kernel (b, K, K)) in [0, 1] and keys (b,) per-example PRNG
keys (so the result does not depend on how the batch is split over devices).

Data parallel: the batch axis is split over a 1-D device mesh ("batch", kfsr.parallel); each
device runs the device part of the pipeline and the loss on its slice under `jax.shard_map`, the
gradients and metrics are averaged with `pmean`, and the replicated optimiser step follows. One
device runs the same per-device function without the mesh (no shard_map, no pmean). (shard_map rather than the SPMD partitioner:
XLA:CPU's FFT rejects partitioned layouts, kfsr/parallel.py.)

Optimiser: Adam (b1, b2), learning rate halved (gamma) at the milestones, EMA of the parameters
(decay), and BlindDiff's loss-spike guard: an update whose loss exceeds `spike_factor` times the
last accepted loss is skipped (0 turns it off).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from kfsr import parallel
from kfsr.errors import KfsrInputError

__all__ = ["Task", "KERNEL_FAMILIES", "HRImages", "Pipeline", "TrainSetup", "make_pipeline",
           "make_setup", "init_state", "make_step", "train", "export_model", "load_model"]


# --------------------------------------------------------------------------------------------
# what a method provides
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A trainable model: `init(key) -> params`; `loss(params, data, keys) -> (loss, metrics)`
    (data: dict hr/lr/kernel of a (local) batch in [0, 1]; keys: (b,) typed PRNG keys; metrics:
    dict of scalars); `meta`: JSON-able dict stored with exported weights (checked on load).
    Hashed by identity."""

    name: str
    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
    meta: dict


# --------------------------------------------------------------------------------------------
# kernel families: host draw (numpy) + device build (jax, kfsr.degrade.kernels)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GaussianFamily:
    """BlindDiff's training kernels (report §1.1; official `deg_util.py`), size x size, centre
    (size-1)/2 (grid -10..10 for 21), applied by cross-correlation:

      isotropic  (probability rate_iso): sigma ~ U[iso_sigma], k ~ exp(-(u^2+v^2) / (2 sigma^2));
      anisotropic: sigma_x, sigma_y ~ U[aniso_sigma] independently (STANDARD DEVIATIONS),
                 theta ~ U[-pi, pi], Sigma = R diag(sigma_x^2, sigma_y^2) R^T, then the
                 multiplicative perturbation k <- k * (1 + U(0, noise)) per entry;
      normalised to sum 1. Built with kfsr.degrade.kernels.gaussian_from_params (no re-centring).
    """

    size: int = 21
    rate_iso: float = 1.0
    iso_sigma: tuple = (0.2, 4.0)
    aniso_sigma: tuple = (0.6, 5.0)
    noise: float = 0.25

    def draw(self, rng: np.random.Generator, n: int) -> dict:
        iso = rng.random(n) < self.rate_iso
        s_iso = rng.uniform(*self.iso_sigma, size=n)
        s_an = rng.uniform(*self.aniso_sigma, size=(n, 2))
        theta = rng.uniform(-math.pi, math.pi, size=n)
        noise = rng.uniform(0.0, self.noise, size=(n, self.size, self.size))
        sig = np.where(iso[:, None], s_iso[:, None], s_an)
        return {"k_sigma": sig.astype(np.float32),
                "k_theta": np.where(iso, 0.0, theta).astype(np.float32),
                "k_noise": np.where(iso[:, None, None], 0.0, noise).astype(np.float32)}

    def spec(self, n: int) -> dict:
        f = np.float32
        return {"k_sigma": jax.ShapeDtypeStruct((n, 2), f), "k_theta": jax.ShapeDtypeStruct((n,), f),
                "k_noise": jax.ShapeDtypeStruct((n, self.size, self.size), f)}

    def build(self, p: dict) -> jax.Array:
        from kfsr.degrade import kernels as kern

        c = (self.size - 1) / 2.0

        def one(sig, th, noise):
            return kern.gaussian_from_params(self.size, sig[0] ** 2, sig[1] ** 2, th, c,
                                             noise=noise, recenter="none")

        return jax.vmap(one)(p["k_sigma"], p["k_theta"], p["k_noise"])

    def mean_kernel(self, n: int = 4096, seed: int = 12345) -> np.ndarray:
        """Monte-Carlo mean of the family (the 'predict the mean kernel' baseline)."""
        p = self.draw(np.random.default_rng(seed), n)
        return np.asarray(jax.jit(self.build)(p)).mean(0)


def _gaussian_family(kc, size: int) -> GaussianFamily:
    return GaussianFamily(size=size, rate_iso=float(kc.rate_iso),
                          iso_sigma=tuple(float(v) for v in kc.iso_sigma),
                          aniso_sigma=tuple(float(v) for v in kc.aniso_sigma),
                          noise=float(kc.noise))


def _depth_field_family(kc, size: int):
    # SSR's depth-dependent spatially variant fields (kfsr/train/depth_fields.py): the family
    # synthesises the LR image itself (`synthesize`, see Pipeline.device)
    from kfsr.train import depth_fields

    return depth_fields.from_config(kc, size)


KERNEL_FAMILIES: dict[str, Callable] = {"gaussian": _gaussian_family,
                                        "depth_field": _depth_field_family}


# --------------------------------------------------------------------------------------------
# HR images and the data pipeline
# --------------------------------------------------------------------------------------------
class HRImages:
    """HR training images from folders, kept in memory as uint8 (H, W, 3) arrays.

    folders: folders (or single image files), absolute or relative to `root` (default
    kfsr.data.SHARED_DATA, i.e. ../shared/data); every image must be at least `min_size` on both sides (RGB; grey replicated)."""

    def __init__(self, folders, root: str | None = None, min_size: int = 1,
                 max_images: int | None = None):
        from kfsr import io
        from kfsr.data import SHARED_DATA

        root = SHARED_DATA if root is None else root
        paths = []
        for f in folders:
            d = f if os.path.isabs(f) else os.path.join(root, f)
            if os.path.isfile(d):
                paths.append(d)
                continue
            if not os.path.isdir(d):
                raise KfsrInputError(f"config.data.folders: {d} is not a folder or an image file")
            found = io.list_images(d)
            if not found:
                raise KfsrInputError(f"config.data.folders: no images in {d}")
            paths += found
        paths = sorted(paths)[:max_images] if max_images else sorted(paths)
        self.paths = paths
        self.images = []
        for p in paths:
            img = io.load_image(p)
            if min(img.shape[:2]) < min_size:
                raise KfsrInputError(f"{p}: {img.shape[0]}x{img.shape[1]} is smaller than the "
                                     f"{min_size}x{min_size} training crop")
            self.images.append(np.round(img * 255.0).astype(np.uint8))

    def __len__(self):
        return len(self.images)


def random_crops(images, rng: np.random.Generator, n: int, size: int, augment: bool,
                 crop_at=None) -> np.ndarray:
    """n crops (n, size, size, 3) float32 in [0, 1]: image and position uniform (or the fixed
    (top, left) `crop_at`), then (augment) h-flip, v-flip, transpose each with probability 1/2
    (the 8 dihedral transforms)."""
    out = np.empty((n, size, size, 3), np.float32)
    idx = rng.integers(0, len(images), size=n)
    flips = rng.random((n, 3)) < 0.5
    pos = rng.random((n, 2))
    for i in range(n):
        img = images[idx[i]]
        if crop_at is None:
            top = int(pos[i, 0] * (img.shape[0] - size + 1))
            left = int(pos[i, 1] * (img.shape[1] - size + 1))
        else:
            top, left = crop_at
        c = img[top:top + size, left:left + size]
        if augment:
            if flips[i, 0]:
                c = c[:, ::-1]
            if flips[i, 1]:
                c = c[::-1]
            if flips[i, 2]:
                c = c.transpose(1, 0, 2)
        out[i] = c.astype(np.float32) / 255.0
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
    """Host draw (numpy, from (seed, step)) + device synthesis (jax); see the module docstring.

    `host(step)` -> dict of numpy arrays (hr crops + kernel parameters, leading axis batch);
    `spec` the matching ShapeDtypeStructs; `device(host_batch, key)` -> dict(hr, lr, kernel) in
    jax (runs per device, on any leading batch size); `batch(step)` both, for evaluation.
    Hashed by identity (it holds the images)."""

    images: HRImages
    batch_size: int
    crop: int
    augment: bool
    seed: int
    family: Any
    degradation: Any   # kfsr.degrade.Degradation
    noise_sigma: float
    quantize: bool
    crop_at: tuple | None = None  # fixed (top, left) of every crop (kernel-only variation)

    def host(self, step) -> dict:
        step = int(np.asarray(step))
        rng = np.random.default_rng([self.seed, step])
        hr = random_crops(self.images.images, rng, self.batch_size, self.crop, self.augment,
                          self.crop_at)
        return {"hr": hr, **self.family.draw(rng, self.batch_size)}

    @property
    def spec(self) -> dict:
        n, c = self.batch_size, self.crop
        return {"hr": jax.ShapeDtypeStruct((n, c, c, 3), np.float32), **self.family.spec(n)}

    def device(self, hb: dict, keys: jax.Array | None = None) -> dict:
        """hb: a host batch (any leading size b); keys: (b,) per-example keys (AWGN only)."""
        from kfsr.degrade import degrade, quantize

        extra = {}
        if hasattr(self.family, "synthesize"):
            # a family with its own forward model (spatially variant fields): it returns lr,
            # kernel and extra per-example data (e.g. depth), noise-free
            extra = dict(self.family.synthesize(hb, self.degradation))
            k, lr = extra.pop("kernel"), extra.pop("lr")
        else:
            k = self.family.build(hb)
            lr = degrade(hb["hr"], k, self.degradation)
        if self.noise_sigma > 0:
            noise = jax.vmap(lambda kk: jax.random.normal(
                jax.random.fold_in(kk, _NOISE_STREAM), lr.shape[1:], lr.dtype))(keys)
            lr = lr + self.noise_sigma * noise
        if self.quantize:
            lr = quantize(lr)
        return {"hr": hb["hr"], "lr": lr, "kernel": k, **extra}

    def batch(self, step: int, key: jax.Array | None = None) -> dict:
        """The full batch of `step` (host + device), outside any training step."""
        key = jax.random.key(0) if key is None else key
        keys = jax.random.split(key, self.batch_size)
        return _device_jit(self, jax.tree.map(jnp.asarray, self.host(step)), keys)


_NOISE_STREAM = 0x5EED  # fold_in constant: the LR noise stream of an example key


@functools.partial(jax.jit, static_argnums=0)
def _device_jit(pipeline: Pipeline, hb, keys):
    return pipeline.device(hb, keys)


def make_pipeline(config, images: HRImages | None = None) -> Pipeline:
    """The data pipeline of `config.data` with the config's forward model."""
    from kfsr.degrade.spec import Degradation

    d = config.data
    s = int(config.scale)
    spec = Degradation(scale=s, padding=config.get("padding", "reflect"),
                       sampling=config.get("sampling", "bicubic"), offset=int(config.get("offset", 0)))
    crop = int(d.crop)
    if crop % s:
        raise KfsrInputError(f"config.data.crop={crop}: must be a multiple of scale {s}")
    fam = d.kernel.family
    if fam not in KERNEL_FAMILIES:
        raise KfsrInputError(f"config.data.kernel.family={fam!r}: known {sorted(KERNEL_FAMILIES)}")
    if images is None:
        images = HRImages(tuple(d.folders), d.get("root", None), min_size=crop,
                          max_images=d.get("max_images", None))
    crop_at = d.get("crop_at", None)
    if crop_at is not None:
        crop_at = (int(crop_at[0]), int(crop_at[1]))
        for img, p in zip(images.images, images.paths):
            if crop_at[0] + crop > img.shape[0] or crop_at[1] + crop > img.shape[1]:
                raise KfsrInputError(f"config.data.crop_at={crop_at}: the {crop}x{crop} crop does "
                                     f"not fit {p} ({img.shape[0]}x{img.shape[1]})")
    return Pipeline(images=images, batch_size=int(d.batch), crop=crop, crop_at=crop_at,
                    augment=bool(d.augment), seed=int(config.seed),
                    family=KERNEL_FAMILIES[fam](d.kernel, int(config.kernel_size)),
                    degradation=spec, noise_sigma=float(d.get("noise_sigma", 0.0)),
                    quantize=bool(d.quantize))


# --------------------------------------------------------------------------------------------
# training state and step
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class TrainSetup:
    """Everything static about a training run (hashed by identity)."""

    task: Task
    pipeline: Pipeline
    tx: Any                 # optax GradientTransformation
    ema_decay: float
    spike_factor: float
    num_devices: int

    @functools.cached_property
    def mesh(self):
        return parallel.batch_mesh(self.num_devices)


def make_optimizer(tc) -> optax.GradientTransformation:
    """Adam(b1, b2) with the learning rate multiplied by gamma at each milestone (MultiStepLR)."""
    lr = optax.piecewise_constant_schedule(
        float(tc.lr), {int(m): float(tc.lr_gamma) for m in tc.get("lr_milestones", ()) or ()})
    chain = []
    if float(tc.get("grad_clip", 0.0) or 0.0) > 0:
        chain.append(optax.clip_by_global_norm(float(tc.grad_clip)))
    chain.append(optax.adam(lr, b1=float(tc.b1), b2=float(tc.b2), eps=float(tc.get("eps", 1e-8))))
    return optax.chain(*chain)


def get_task(config) -> Task:
    """`kfsr.methods.<config.method>.make_task(config)`."""
    try:
        module = importlib.import_module(f"kfsr.methods.{config.method}")
    except ModuleNotFoundError:
        raise KfsrInputError(f"config.method={config.method!r}: no such kfsr method") from None
    if not hasattr(module, "make_task"):
        raise KfsrInputError(f"config.method={config.method!r}: the method has no supervised training")
    return module.make_task(config)


def make_setup(config, *, pipeline: Pipeline | None = None, num_devices: int | None = None,
               task: Task | None = None) -> TrainSetup:
    """Validate the training fields of `config` and build the static description of a run
    (task: default `get_task(config)`, the method's model)."""
    for section in ("data", "train"):
        if section not in config:
            raise KfsrInputError(f"config.{section}: missing (supervised training needs it)")
    tc = config.train
    if int(tc.steps) < 0 or int(config.data.batch) < 1 or int(tc.chunk) < 1:
        raise KfsrInputError("config.train.steps must be >= 0, train.chunk and data.batch >= 1")
    if not 0.0 <= float(tc.ema_decay) < 1.0:
        raise KfsrInputError(f"config.train.ema_decay: in [0, 1), got {tc.ema_decay}")
    pipeline = make_pipeline(config) if pipeline is None else pipeline
    n_dev = parallel.usable_devices(pipeline.batch_size, num_devices)
    return TrainSetup(task=get_task(config) if task is None else task, pipeline=pipeline,
                      tx=make_optimizer(tc),
                      ema_decay=float(tc.ema_decay), spike_factor=float(tc.spike_factor),
                      num_devices=n_dev)


# Fields that do not change the compiled training step (run length, logging, sampling options).
_RUN_ONLY = {"train": ("steps", "chunk", "checkpoint_every", "log_every", "max_minutes"),
             "data": ("fixed",),
             None: ("checkpoint", "guidance", "sample", "loop", "preset")}
_SETUPS: dict = {}


def cached_setup(config, num_devices: int | None = None) -> TrainSetup:
    """`make_setup(config)`, reused for configs that differ only in run-length / logging /
    sampling fields (so repeated or resumed runs in one process share the compiled step and the
    loaded images). Keeps the 4 most recent setups."""
    d = config.to_dict()
    for section, fields in _RUN_ONLY.items():
        node = d if section is None else d.get(section, {})
        for f in fields:
            node.pop(f, None)
    key = (json.dumps(d, sort_keys=True, default=str), num_devices)
    if key not in _SETUPS:
        while len(_SETUPS) >= 4:
            _SETUPS.pop(next(iter(_SETUPS)))
        _SETUPS[key] = make_setup(config, num_devices=num_devices)
    return _SETUPS[key]


def init_state(setup: TrainSetup, key: jax.Array, *, fixed_batch: bool = False) -> dict:
    """dict(params, ema, opt, step, data_step, data_stride, last_loss, skipped, key).

    params: the model's pytree; ema and the optimiser state live on the flat parameter vector
    (`jax.flatten_util.ravel_pytree` order; `ema_params(setup, state)` gives the EMA as a tree).

    data_step is the index of the next host draw (and of the step's noise keys); it advances by
    data_stride per step: 1 (fresh data every step, data_step == step) or 0 with `fixed_batch`
    (every step sees draw 0 with the same timesteps and noise: overfitting checks run the same
    compiled step)."""
    k_init, k_run = jax.random.split(key)
    state = _init_jit(setup, k_init, k_run, jnp.int32(0 if fixed_batch else 1))
    if setup.num_devices > 1:
        # replicated on the mesh, as the step's outputs are: the first step then has the same
        # input placement as the later ones (one compiled program instead of two)
        state = jax.device_put(state, jax.sharding.NamedSharding(setup.mesh, P()))
    return state


def init_key(key: jax.Array) -> jax.Array:
    """An 'rbg' key derived from `key` for parameter initialisation: flax draws every parameter
    with its own threefry call, which XLA:CPU compiles slowly (tiny MCFormer init: 47 s with
    threefry keys, 14 s with rbg, 2 loaded cores). rbg streams are deterministic for a given
    jax/XLA version and platform (the run's own data and noise keys stay threefry)."""
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(setup: TrainSetup, k_init, k_run, stride):
    params = setup.task.init(init_key(k_init))
    flat = ravel_pytree(params)[0]
    zero = jnp.zeros((), jnp.int32)
    return {"params": params, "ema": flat, "opt": setup.tx.init(flat), "step": zero, "data_step": zero, "data_stride": stride,
            "last_loss": jnp.full((), jnp.inf, jnp.float32), "skipped": zero, "key": k_run}


def _local_grads(setup: TrainSetup, params, hb, key_data, reduce: bool = True):
    """Per device: synthesise the local batch, loss and gradient; averaged over devices."""
    keys = jax.random.wrap_key_data(key_data)
    data = setup.pipeline.device(hb, keys)
    (loss, metrics), grads = jax.value_and_grad(setup.task.loss, has_aux=True)(params, data, keys)
    return jax.lax.pmean((loss, metrics, grads), "batch") if reduce else (loss, metrics, grads)


def train_step(setup: TrainSetup, state: dict, hb: dict):
    """One optimisation step on the host batch `hb` (numpy draw of this step); pure."""
    b = setup.pipeline.batch_size
    # keyed by the draw index: a fixed-batch run (data_stride 0) also repeats t and the noise
    key = jax.random.fold_in(state["key"], state["data_step"])
    key_data = jax.random.key_data(jax.random.split(key, b))  # one key per example
    if setup.num_devices == 1:
        # no mesh: the step's outputs then keep the inputs' (uncommitted, single-device)
        # placement, so the loop's jitted step is not compiled a second time for the
        # NamedSharding outputs of a 1-device shard_map (measured: 2 x 45-57 s on the test model)
        loss, metrics, grads = _local_grads(setup, state["params"], hb, key_data, reduce=False)
    else:
        grads_fn = jax.shard_map(functools.partial(_local_grads, setup), mesh=setup.mesh,
                                 in_specs=(P(), P("batch"), P("batch")),
                                 out_specs=P(), check_vma=False)
        loss, metrics, grads = grads_fn(state["params"], hb, key_data)
    # The update runs on flat vectors (one concatenation): per-leaf updates would be one small
    # fused kernel per parameter array, and XLA:CPU's compile time grows with their number.
    flat_p, unravel = ravel_pytree(state["params"])
    flat_g = ravel_pytree(grads)[0]
    updates, opt = setup.tx.update(flat_g, state["opt"], flat_p)
    new_p = flat_p + updates
    d = setup.ema_decay
    new_e = d * state["ema"] + (1.0 - d) * new_p
    gnorm = jnp.sqrt(jnp.sum(jnp.square(flat_g)))
    accept = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    if setup.spike_factor > 0:
        accept = accept & (loss <= setup.spike_factor * state["last_loss"])

    def pick(new, old):
        return jax.tree.map(lambda a, o: jnp.where(accept, a, o), new, old)

    new = dict(state, params=unravel(jnp.where(accept, new_p, flat_p)),
               ema=jnp.where(accept, new_e, state["ema"]),
               opt=pick(opt, state["opt"]), step=state["step"] + 1,
               data_step=state["data_step"] + state["data_stride"],
               last_loss=jnp.where(accept, loss, state["last_loss"]),
               skipped=state["skipped"] + (~accept).astype(jnp.int32))
    # A non-finite loss or gradient is a skipped update (accept above), not a failed run: the
    # loop driver aborts on non-finite metrics, so they are reported as -1 (with accepted=0).
    # Non-finite parameters still abort the run (the loop checks the state).
    out = {k: jnp.where(jnp.isfinite(v), v, -1.0)
           for k, v in dict(metrics, loss=loss, grad_norm=gnorm).items()}
    return new, dict(out, accepted=accept.astype(jnp.float32))


def ema_params(state: dict):
    """The EMA weights of a training state as a params tree."""
    return ravel_pytree(state["params"])[1](state["ema"])


def make_step(setup: TrainSetup) -> Callable:
    """state -> (state, metrics) for kfsr.train.loop.run: the host draw `state['data_step']`
    enters through `jax.pure_callback`, then `train_step`."""
    p = setup.pipeline

    def step(state):
        hb = jax.pure_callback(p.host, p.spec, state["data_step"])
        return train_step(setup, state, hb)

    return step


# --------------------------------------------------------------------------------------------
# exported weights
# --------------------------------------------------------------------------------------------
MODEL_DIR = "model"


def export_model(directory: str, params, meta: dict, step: int) -> None:
    """Save `params` (orbax, kfsr.train.checkpoint) with `meta` at `step` into `directory`."""
    from kfsr.train.checkpoint import CheckpointStore

    with CheckpointStore(directory, max_to_keep=1) as store:
        store.save(int(step), {"params": params}, [], meta=dict(meta, kfsr_model=1))


def load_model(path: str, template, meta: dict, field: str = "config.checkpoint"):
    """Params exported by `train` from `path` (a training workdir or its model/ folder).

    template: the params tree (arrays or ShapeDtypeStructs) to restore into; meta: what the saved
    model must match (KfsrInputError naming the differing fields otherwise)."""
    from kfsr.train.checkpoint import CheckpointStore

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise KfsrInputError(f"{field}: {path} does not exist (train a model with "
                             "python -m kfsr.train.supervised --workdir=DIR)")
    d = os.path.join(path, MODEL_DIR) if os.path.isdir(os.path.join(path, MODEL_DIR)) else path
    with CheckpointStore(d, max_to_keep=1) as store:
        step = store.latest_step()
        saved = store.meta(step) if step is not None else None
        if not saved or saved.get("kfsr_model") != 1:
            raise KfsrInputError(f"{field}: no trained model in {path} (expected {path}/{MODEL_DIR}/, "
                                 "written by python -m kfsr.train.supervised)")
        bad = [k for k in meta if saved.get(k) != meta[k]]
        if bad:
            raise KfsrInputError(
                f"{field}: {path} holds a model with "
                + ", ".join(f"{k}={saved.get(k)!r}" for k in bad) + "; this config needs "
                + ", ".join(f"{k}={meta[k]!r}" for k in bad))
        state, _ = store.restore(step, {"params": template})
    return jax.tree.map(jnp.asarray, state["params"]), int(step)


def warm_start(setup: TrainSetup, state: dict, path: str) -> dict:
    """`state` with params and EMA set to the model exported in `path` (config.train.init_from).

    A fine-tune is a new run: the optimiser state, step counter and data stream start afresh
    (so a longer or lower-lr schedule can continue a finished run in a new workdir; resuming the
    same workdir with changed train.steps is refused). The saved model must match this config's
    architecture (`setup.task.meta`); a checkpoint in the new workdir, if any, still wins (resume).
    """
    params, _ = load_model(path, state["params"], dict(setup.task.meta), field="config.train.init_from")
    flat, _ = ravel_pytree(params)
    return dict(state, params=params, ema=flat.astype(state["ema"].dtype))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    params: Any
    ema: Any
    history: list
    state: Any
    budget_stop: bool = False  # stopped by config.train.max_minutes before train.steps


class _BudgetReached(Exception):
    """Raised by the chunk callback to leave the loop after a checkpointed chunk."""

    def __init__(self, state, history):
        super().__init__("train.max_minutes reached")
        self.state, self.history = state, history


def _write_json(path, obj):
    from kfsr import io

    io.write_json(path, obj)


def train(config, workdir: str | None = None, *, progress: bool = True,
          num_devices: int | None = None, setup: TrainSetup | None = None,
          log_every: int | None = None, on_chunk: Callable | None = None) -> TrainResult:
    """Train `config.method`'s model for config.train.steps steps (resuming from `workdir`).

    workdir (optional): checkpoints/ (resume), model/ (EMA weights + meta, exported at every
    checkpoint), config.json, history.json. `setup`: a TrainSetup to use (default
    `cached_setup(config, num_devices)`, shared by configs that differ only in run length).

    Wall-clock budget: with config.train.max_minutes > 0 the run stops after the first
    checkpointed chunk (train.checkpoint_every) that ends at least max_minutes after this call
    started (set-up and compilation included); that checkpoint and the exported model hold its
    state, `budget_stop` is set, and running again with the same workdir resumes from it
    (bit-identically: chunk boundaries do not depend on where a session stopped). The budget
    counts this session only.

    Warm start: config.train.init_from (a workdir or model/ of an earlier run of the same
    architecture) initialises params and EMA from that model in a new run (`warm_start`).
    """
    from kfsr.train import loop

    t_start = time.time()
    max_minutes = float(config.train.get("max_minutes", 0.0) or 0.0)
    setup = cached_setup(config, num_devices) if setup is None else setup
    tc = config.train
    steps = int(tc.steps)
    state = init_state(setup, jax.random.key(int(config.seed)),
                       fixed_batch=bool(config.data.get("fixed", False)))
    init_from = tc.get("init_from", None)
    if init_from:
        state = warm_start(setup, state, init_from)
    chunk = int(tc.chunk)
    ckpt_every = int(tc.checkpoint_every)
    ckpt_dir = model_dir = None
    meta = dict(setup.task.meta)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        ckpt_dir = os.path.join(workdir, "checkpoints")
        model_dir = os.path.join(workdir, MODEL_DIR)
        _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    t0 = time.time()

    def after_chunk(done, st, history):
        n_chunk = -(-done // chunk)
        saved = n_chunk % ckpt_every == 0 or done == steps  # loop.run's checkpoint rule
        if model_dir is not None and saved:
            export_model(model_dir, jax.device_get(ema_params(st)), meta, done)
            _write_json(os.path.join(workdir, "history.json"),
                        {"steps_done": done, "seconds_this_session": time.time() - t0,
                         "history": history})
        if on_chunk is not None:
            on_chunk(done, st, history)
        if max_minutes > 0 and saved and done < steps and time.time() - t_start >= 60 * max_minutes:
            raise _BudgetReached(st, history)  # st is not donated: the loop stops here

    try:
        state, history = loop.run(
            make_step_cached(setup), state, steps, chunk=chunk, checkpoint_dir=ckpt_dir,
            checkpoint_every=ckpt_every, loop=config.get("loop", {}).get("mode", "auto"),
            progress=progress, desc=f"train {setup.task.name}", log_every=log_every,
            on_chunk=after_chunk)
        stopped = False
    except _BudgetReached as b:
        state, history, stopped = b.state, list(b.history), True
        from absl import logging

        logging.info("train %s: train.max_minutes=%g reached after %d of %d steps (%.1f min); "
                     "run again with the same workdir to continue", setup.task.name, max_minutes,
                     len(history), steps, (time.time() - t_start) / 60)
    return TrainResult(params=state["params"], ema=ema_params(state), history=history, state=state,
                       budget_stop=stopped)


_STEPS: dict = {}


def make_step_cached(setup: TrainSetup) -> Callable:
    """`make_step(setup)`, one function object per setup (the loop caches its compiled program
    per step function, so repeated or resumed runs in one process compile once)."""
    if setup not in _STEPS:
        _STEPS[setup] = make_step(setup)
    return _STEPS[setup]


def main(argv):  # pragma: no cover - exercised by hand / the README command
    from absl import logging

    del argv
    logging.set_verbosity(logging.INFO)
    config = _CONFIG.value
    t0 = time.time()
    res = train(config, _WORKDIR.value, progress=True, log_every=int(config.train.get("log_every", 0)) or None)
    last = res.history[-1] if res.history else {}
    print(json.dumps({"workdir": _WORKDIR.value, "steps": len(res.history),
                      "budget_stop": res.budget_stop,
                      "seconds": round(time.time() - t0, 1),
                      "last": {k: round(float(v), 6) for k, v in last.items()}}))


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags
    from ml_collections import config_flags

    import kfsr  # noqa: F401  (XLA flags)

    _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<method>.py[:preset]",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "run folder (created; resumed if it exists)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
