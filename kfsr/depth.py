"""Depth maps for depth-informed kernel estimation (SSR's DKENet / SVKR), behind one interface.

Convention: a depth map is float32 `(H, W)` in [0, 1], **larger = farther** (a relative,
normalised depth, not metres; MiDaS-style inverse depth must be inverted first, `invert=True`).
It lives on the grid of the image it was computed from or resized to (`resize_depth`).

Providers (all callables `provider(image, key=None) -> (H, W)` depth on the image's grid, with
`image` float `(H, W, C)` in [0, 1]; frozen dataclasses, so they are hashable config values):

  * `UserDepth(source)`     a user-supplied map: a path (.npy, or a single-channel image such as a
                            16-bit PNG) or an array; validated (`load_depth`: shape, finiteness,
                            range) with one-line `KfsrInputError`s, min-max normalised (or checked
                            to lie in [0, 1] with `normalise="none"`), resized to the image if the
                            aspect ratio matches. The primary path for real use.
  * `ConstantDepth(value)`  the depth-free ablation.
  * `SyntheticDepth(kind)`  seeded synthetic ground truth for benchmarks and training
                            (`synthetic_depth`): tilted planes, a ground-plane ramp, smooth random
                            fields and planes with near "objects" (Gaussian blobs).
  * `ProxyDepth(method)`    an image-based heuristic, no learned weights (`proxy_depth`):
      - "sharpness": a defocus cue. Local high-frequency energy (Gaussian-smoothed |Laplacian| of
        the luminance) divided by the local contrast; sharp regions are taken as near (in focus),
        blurry ones as far, matching `spatial.depth_gaussian_field(focus=0)`, where blur grows
        with depth. Known failure modes: textureless regions look blurry (far), and a real focal
        plane in the middle of the scene makes the cue two-sided.
      - "position": luminance + vertical position. Scenes are mostly "ground below, sky/far
        away above", and distant regions are brighter and hazier (aerial perspective): depth =
        0.7 * (1 - row / (H - 1)) + 0.3 * smoothed luminance, min-max normalised.
    SSR computes depth from the current SR estimate with MiDaS (blinddiff_ssr.md §2.2, §4.2);
    this proxy stands in where no monocular-depth weights are available. Like MiDaS in SVKR it
    can be re-run on each new SR estimate.

`get_provider(name, **kwargs)` builds one by name: "user", "constant", "synthetic", "sharpness",
"position" (config strings, `depth.source` in the SSR config).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.degrade import kernels as _kernels
from kfsr.degrade.ops import blur
from kfsr.errors import KfsrInputError

_F32 = jnp.float32
_EPS = 1e-6
SYNTHETIC_KINDS = ("plane", "ground", "smooth", "blobs", "mixed")
PROXY_METHODS = ("sharpness", "position")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def normalise_depth(depth, mode: str = "minmax"):
    """`"minmax"`: (d - min) / (max - min) (a constant map becomes all zeros); `"none"`: as is."""
    depth = jnp.asarray(depth, _F32)
    if mode == "none":
        return depth
    if mode != "minmax":
        raise KfsrInputError(f"depth normalise: unknown mode {mode!r}, use 'minmax' or 'none'")
    lo, hi = jnp.min(depth), jnp.max(depth)
    return jnp.where(hi - lo > _EPS, (depth - lo) / jnp.maximum(hi - lo, _EPS), 0.0)


def resize_depth(depth, hw):
    """Resize an (h, w) depth map to hw = (H, W) (bilinear, antialiased when shrinking)."""
    depth = jnp.asarray(depth, _F32)
    hw = (int(hw[0]), int(hw[1]))
    if depth.shape == hw:
        return depth
    return _resize_jit(depth, hw)


@functools.partial(jax.jit, static_argnums=1)
def _resize_jit(depth, hw):
    return jax.image.resize(depth, hw, "linear", antialias=True)


def _gauss_smooth(x, sigma: float):
    """Gaussian smoothing of an (H, W) map (reflect padding, truncation at 3 sigma)."""
    size = 2 * int(np.ceil(3 * sigma)) + 1
    k = _kernels.gaussian_kernel(size, jnp.eye(2, dtype=_F32) * sigma ** 2, size // 2)
    return blur(x[..., None], k, "reflect")[..., 0]


def _luminance(image):
    image = jnp.asarray(image, _F32)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise KfsrInputError(f"depth: image must be (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[-1] == 1:
        return image[..., 0]
    return image @ jnp.array([0.299, 0.587, 0.114], _F32)


def _image_hw(image, name):
    shape = np.shape(image)
    if len(shape) != 3:
        raise KfsrInputError(f"{name}: image must be (H, W, C), got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


# ----------------------------------------------------------------------------------------------
# user depth
# ----------------------------------------------------------------------------------------------
def load_depth(source, normalise: str = "minmax", invert: bool = False) -> np.ndarray:
    """Read and validate a depth map; returns float32 (H, W) in [0, 1] (larger = farther).

    Args:
      source: a path to a `.npy` file (2-D, or (H, W, 1)) or to a single-channel image (8/16-bit
        PNG, TIFF, ...; kfsr.io.load_image), or an array.
      normalise: "minmax" (any finite range; a constant map becomes zeros) or "none" (values
        must already lie in [0, 1]).
      invert: flip near/far (1 - d) after normalising, e.g. for MiDaS inverse depth.
    Raises:
      KfsrInputError (one line naming the file or "depth array") for a missing / unreadable file,
      an unsupported extension, a colour image, a wrong shape, an empty map, non-finite values,
      or (normalise="none") values outside [0, 1].
    """
    name = "depth array"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = path
        if not os.path.exists(path):
            raise KfsrInputError(f"{path}: depth file not found")
        if os.path.isdir(path):
            raise KfsrInputError(f"{path}: is a directory, expected a depth file")
        ext = os.path.splitext(path)[1].lower()
        if ext == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise KfsrInputError(f"{path}: cannot read depth .npy ({e})") from e
        elif ext in (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".pgm", ".webp"):
            from kfsr import io as _io
            img = _io.load_image(path, keep_grey=True)
            if img.shape[-1] != 1:
                raise KfsrInputError(
                    f"{path}: depth image must be single-channel (greyscale), got "
                    f"{img.shape[-1]} channels")
            arr = img
        else:
            raise KfsrInputError(
                f"{path}: unsupported depth file type {ext!r} (use .npy or a greyscale image)")
    else:
        arr = source
    try:
        arr = np.asarray(arr)
    except Exception as e:  # noqa: BLE001  (ragged lists, objects)
        raise KfsrInputError(f"{name}: not an array ({e})") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise KfsrInputError(f"{name}: depth must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise KfsrInputError(f"{name}: depth must be (H, W) or (H, W, 1), got shape {arr.shape}")
    if arr.size == 0:
        raise KfsrInputError(f"{name}: empty depth map (shape {arr.shape})")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise KfsrInputError(f"{name}: depth contains NaN or Inf")
    if normalise == "minmax":
        lo, hi = arr.min(), arr.max()
        arr = (arr - lo) / (hi - lo) if hi - lo > 0 else np.zeros_like(arr)
    elif normalise == "none":
        if arr.min() < 0 or arr.max() > 1:
            raise KfsrInputError(
                f"{name}: depth values must lie in [0, 1] with normalise='none', got "
                f"[{arr.min():.4g}, {arr.max():.4g}]")
    else:
        raise KfsrInputError(f"{name}: unknown normalise {normalise!r}, use 'minmax' or 'none'")
    if invert:
        arr = 1.0 - arr
    return arr.astype(np.float32)


def _match_grid(depth, hw, name):
    """Resize depth to hw when the aspect ratios agree (within one pixel), else raise."""
    dh, dw = depth.shape
    h, w = hw
    if (dh, dw) == (h, w):
        return jnp.asarray(depth, _F32)
    if abs(dh * w / dw - h) > 1.0 + 1e-9 and abs(dw * h / dh - w) > 1.0 + 1e-9:
        raise KfsrInputError(
            f"{name}: depth map {dh}x{dw} does not match the image {h}x{w} (different aspect "
            f"ratio; crop or resize it first)")
    return resize_depth(depth, hw)


@dataclasses.dataclass(frozen=True)
class UserDepth:
    """User-supplied depth (path or array, see `load_depth`), resized to each image's grid."""

    source: Any
    normalise: str = "minmax"
    invert: bool = False

    def __hash__(self):  # arrays are not hashable: hash the path, or the identity of the array
        src = self.source
        return hash((os.fspath(src) if isinstance(src, (str, os.PathLike)) else id(src),
                     self.normalise, self.invert))

    def __call__(self, image, key=None):
        hw = _image_hw(image, "UserDepth")
        name = (os.fspath(self.source) if isinstance(self.source, (str, os.PathLike))
                else "depth array")
        return _match_grid(load_depth(self.source, self.normalise, self.invert), hw, name)


@dataclasses.dataclass(frozen=True)
class ConstantDepth:
    """A constant map (the depth-free ablation)."""

    value: float = 0.5

    def __post_init__(self):
        if not 0.0 <= float(self.value) <= 1.0:
            raise KfsrInputError(f"ConstantDepth.value: must be in [0, 1], got {self.value!r}")

    def __call__(self, image, key=None):
        return jnp.full(_image_hw(image, "ConstantDepth"), float(self.value), _F32)


# ----------------------------------------------------------------------------------------------
# synthetic ground truth
# ----------------------------------------------------------------------------------------------
def _coords(hw):
    h, w = hw
    r = jnp.linspace(0.0, 1.0, h, dtype=_F32)[:, None] * jnp.ones((1, w), _F32)
    c = jnp.ones((h, 1), _F32) * jnp.linspace(0.0, 1.0, w, dtype=_F32)[None, :]
    return r, c


# Each generator maps a vector of uniforms u (the first _N_PARAMS entries are scalars, the rest
# an (H, W) noise field) to a depth map, so one `jax.random.uniform` call draws everything: each
# threefry call is a separate, slow-to-compile loop on XLA:CPU (kfsr/degrade/kernels.py).
_N_PARAMS = 16


def _plane(u, hw):
    r, c = _coords(hw)
    ang = 2 * jnp.pi * u[0]
    d = jnp.cos(ang) * (r - 0.5) + jnp.sin(ang) * (c - 0.5)
    span = 0.5 + 0.5 * u[1]                                # depth range covered, in [0.5, 1]
    return normalise_depth(d) * span + u[2] * (1.0 - span)


def _ground(u, hw):
    # Far at the top, near at the bottom, flat (far) above a random horizon, slight roll.
    r, c = _coords(hw)
    horizon = 0.15 + 0.35 * u[0]
    tilt = (u[1] - 0.5) * 0.4
    rr = r + tilt * (c - 0.5)
    return jnp.clip((1.0 - rr) / (1.0 - horizon), 0.0, 1.0)


def _smooth(u, hw):
    h, w = hw
    # Zero-mean white noise (uniform; after low-pass filtering it is close to Gaussian).
    noise = u[_N_PARAMS:].reshape(h, w) - 0.5
    corr = 0.1 + 0.2 * u[0]                     # correlation length, fraction of the image size
    fyn = jnp.fft.fftfreq(h)[:, None]           # cycles / pixel
    fxn = jnp.fft.rfftfreq(w)[None, :]
    sig_r, sig_c = corr * h, corr * w           # spatial std of the Gaussian filter, pixels
    filt = jnp.exp(-2 * jnp.pi ** 2 * ((sig_r * fyn) ** 2 + (sig_c * fxn) ** 2))
    d = jnp.fft.irfft2(jnp.fft.rfft2(noise) * filt, s=(h, w))
    return normalise_depth(d)


def _blobs(u, hw, n_blobs: int = 3):
    base = _plane(u, hw) * 0.5 + 0.5                       # background in the far half
    r, c = _coords(hw)
    d = base
    for i in range(n_blobs):
        v = u[3 + 4 * i: 7 + 4 * i]
        cy, cx, rad, near = v[0], v[1], 0.08 + 0.17 * v[2], 0.4 * v[3]
        bump = jnp.exp(-0.5 * ((r - cy) ** 2 + (c - cx) ** 2) / rad ** 2)
        d = d * (1 - bump) + near * bump                   # an object at depth `near`
    return jnp.clip(d, 0.0, 1.0)


_SYNTH: dict[str, Callable] = {"plane": _plane, "ground": _ground, "smooth": _smooth,
                               "blobs": _blobs}


def synthetic_depth(key, hw, kind: str = "mixed"):
    """Seeded synthetic depth (H, W) in [0, 1] (larger = farther) for benchmarks and training.

    kind: "plane" (a tilted plane with a random direction, range and offset), "ground" (a
    ground-plane ramp: near at the bottom, far above a random horizon, slight roll), "smooth" (a
    Gaussian-filtered white-noise field, correlation length 10-30 % of the image, min-max
    normalised), "blobs" (a far background plane with three near Gaussian "objects"), or "mixed"
    (one of the four, chosen by the key). Jittable with static hw and kind; vmappable over keys.
    All randomness comes from one `jax.random.uniform` call.
    """
    hw = (int(hw[0]), int(hw[1]))
    if kind != "mixed" and kind not in _SYNTH:
        raise KfsrInputError(f"synthetic_depth: unknown kind {kind!r}, expected {SYNTHETIC_KINDS}")
    return _synthetic_jit(key, hw, kind)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _synthetic_jit(key, hw, kind):
    n_noise = hw[0] * hw[1] if kind in ("mixed", "smooth") else 0
    u = jax.random.uniform(key, (_N_PARAMS + 1 + n_noise,), _F32)
    if kind == "mixed":
        idx = jnp.minimum((u[_N_PARAMS] * 4).astype(jnp.int32), 3)
        branches = [lambda v, f=f: f(v, hw) for f in _SYNTH.values()]
        noise_and_params = jnp.concatenate([u[:_N_PARAMS], u[_N_PARAMS + 1:]])
        return jax.lax.switch(idx, branches, noise_and_params)
    return _SYNTH[kind](jnp.concatenate([u[:_N_PARAMS], u[_N_PARAMS + 1:]]), hw)


@dataclasses.dataclass(frozen=True)
class SyntheticDepth:
    """Synthetic ground-truth depth on the image grid (`synthetic_depth`); the image content is
    ignored. Uses `key` if given, else `jax.random.PRNGKey(seed)`."""

    kind: str = "mixed"
    seed: int = 0

    def __post_init__(self):
        if self.kind not in SYNTHETIC_KINDS:
            raise KfsrInputError(
                f"SyntheticDepth.kind: unknown {self.kind!r}, expected {SYNTHETIC_KINDS}")

    def __call__(self, image, key=None):
        key = jax.random.PRNGKey(self.seed) if key is None else key
        return synthetic_depth(key, _image_hw(image, "SyntheticDepth"), self.kind)


# ----------------------------------------------------------------------------------------------
# image-based proxy
# ----------------------------------------------------------------------------------------------
def proxy_depth(image, method: str = "sharpness", sigma: float | None = None):
    """Heuristic depth from an image (no learned weights); see the module docstring.

    Args:
      image: (H, W, C) float in [0, 1], C = 1 or 3.
      method: "sharpness" (defocus cue: blurry = far) or "position" (vertical position +
        luminance).
      sigma: smoothing scale in pixels (default max(H, W) / 32, at least 1).
    Returns:
      (H, W) float32 in [0, 1], larger = farther.
    """
    if method not in PROXY_METHODS:
        raise KfsrInputError(f"proxy_depth: unknown method {method!r}, expected {PROXY_METHODS}")
    lum = _luminance(image)
    h, w = lum.shape
    sigma = max(1.0, max(h, w) / 32.0) if sigma is None else float(sigma)
    return _proxy_core(lum, method, sigma)


@functools.partial(jax.jit, static_argnames=("method", "sigma"))
def _proxy_core(lum, method, sigma):
    h, w = lum.shape
    if method == "sharpness":
        lap_k = jnp.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], _F32)
        lap = blur(lum[..., None], lap_k, "reflect")[..., 0]
        energy = _gauss_smooth(jnp.abs(lap), sigma)
        contrast = _gauss_smooth(jnp.abs(lum - _gauss_smooth(lum, sigma)), sigma)
        sharp = energy / (contrast + 1e-2)
        # Robust range: the 2nd / 98th percentiles map to 0 / 1.
        lo, hi = jnp.percentile(sharp, 2.0), jnp.percentile(sharp, 98.0)
        sharp = jnp.clip((sharp - lo) / jnp.maximum(hi - lo, _EPS), 0.0, 1.0)
        return _gauss_smooth(1.0 - sharp, sigma)
    r, _ = _coords((h, w))      # "position"
    d = 0.7 * (1.0 - r) + 0.3 * _gauss_smooth(lum, sigma)
    return normalise_depth(d)


@dataclasses.dataclass(frozen=True)
class ProxyDepth:
    """Image-based heuristic depth (`proxy_depth`)."""

    method: str = "sharpness"
    sigma: float | None = None

    def __post_init__(self):
        if self.method not in PROXY_METHODS:
            raise KfsrInputError(
                f"ProxyDepth.method: unknown {self.method!r}, expected {PROXY_METHODS}")

    def __call__(self, image, key=None):
        _image_hw(image, "ProxyDepth")
        return proxy_depth(image, self.method, self.sigma)


_PROVIDERS = {"user": UserDepth, "constant": ConstantDepth, "synthetic": SyntheticDepth,
              "sharpness": lambda **kw: ProxyDepth("sharpness", **kw),
              "position": lambda **kw: ProxyDepth("position", **kw)}


def get_provider(name: str, **kwargs):
    """A depth provider by name: "user" (needs source=...), "constant", "synthetic", "sharpness",
    "position"; kwargs go to the dataclass."""
    if name not in _PROVIDERS:
        raise KfsrInputError(
            f"depth source: unknown {name!r}, expected one of {tuple(_PROVIDERS)}")
    try:
        return _PROVIDERS[name](**kwargs)
    except TypeError as e:
        raise KfsrInputError(f"depth source {name!r}: bad arguments ({e})") from e


__all__ = ["UserDepth", "ConstantDepth", "SyntheticDepth", "ProxyDepth", "get_provider",
           "load_depth", "synthetic_depth", "proxy_depth", "normalise_depth", "resize_depth",
           "SYNTHETIC_KINDS", "PROXY_METHODS"]
