"""MATLAB-compatible bicubic `imresize` in JAX (jittable, differentiable).

Port of MATLAB's `imresize(A, scale)` / `imresize(A, [rows cols])` with the default 'bicubic'
method and antialiasing, which SR papers use to make and evaluate LR images:

  * cubic kernel with a = -0.5 (Keys), support 4;
  * when downscaling (scale < 1) with antialiasing the kernel is widened: h(x) = s * cubic(s * x),
    support 4 / s;
  * output pixel x (1-based) reads input coordinate u = x / s + 0.5 * (1 - 1 / s);
  * taps outside the image are mirrored (half-sample symmetric: aux = [1:n, n:-1:1]), not clipped;
    this is where `jax.image.resize` and Pillow differ (they drop out-of-range taps and
    renormalise);
  * weights of each output pixel are normalised to sum 1;
  * dimensions are resized one at a time, the one with the smaller scale first (MATLAB's
    `[~, order] = sort(scale)`, stable: H first on ties).

The per-axis weights are dense (out, in) matrices built in numpy from the static shapes (cached) and
applied with `jnp.einsum`, so the resize is linear, jittable and differentiable in x.
"""
from __future__ import annotations

import functools
import math
import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

from kfsr.errors import KfsrInputError


def cubic(x):
    """MATLAB's bicubic kernel (Keys, a = -0.5), vectorised numpy, float64."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out_len, in_len) float64 M with y = M @ x along one axis (MATLAB's contributions)."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        # Widen the kernel to low-pass before decimating (MATLAB's antialiasing).
        h = lambda t: scale * cubic(scale * t)  # noqa: E731
        kernel_width = kernel_width / scale
    else:
        h = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)           # 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)                      # input coordinate they map to
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]             # 1-based input indices
    w = h(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # MATLAB mirrors out-of-range indices: aux = [1:n, n:-1:1], idx -> aux(mod(idx-1, 2n) + 1).
    j = np.mod(idx.astype(np.int64) - 1, 2 * in_len)
    j = np.where(j < in_len, j, 2 * in_len - 1 - j)            # 0-based, in range
    m = np.zeros((out_len, in_len), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_len), taps), j.ravel()), w.ravel())
    return m


def _as_pair(v, name):
    if isinstance(v, (numbers.Real, np.floating, np.integer)) and not isinstance(v, bool):
        return (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise KfsrInputError(f"imresize: {name} must be a number or a pair, got {v!r}") from None
    return (a, b)


def output_size(in_hw, scale=None, output_shape=None):
    """MATLAB's size/scale resolution -> ((out_h, out_w), (scale_h, scale_w)).

    scale only: out = ceil(scale * in) (with a 1e-9 tolerance so 30 * 0.1 gives 3, not 4);
    output_shape only: scale = out / in; both: used as given (e.g. exact x1/s of a multiple of s).
    """
    if scale is None and output_shape is None:
        raise KfsrInputError("imresize: give scale or output_shape")
    if scale is not None:
        sc = tuple(float(s) for s in _as_pair(scale, "scale"))
        if not all(math.isfinite(s) and s > 0 for s in sc):
            raise KfsrInputError(f"imresize: scale must be > 0, got {scale!r}")
    if output_shape is not None:
        out = _as_pair(output_shape, "output_shape")
        if not all(int(o) == o and o >= 1 for o in out):
            raise KfsrInputError(
                f"imresize: output_shape must be positive ints, got {output_shape!r}")
        out = tuple(int(o) for o in out)
        if scale is None:
            sc = (out[0] / in_hw[0], out[1] / in_hw[1])
    else:
        out = tuple(max(1, int(math.ceil(s * n - 1e-9))) for s, n in zip(sc, in_hw))
    return out, sc


def imresize(x, scale=None, output_shape=None, antialias=True):
    """MATLAB `imresize(x, scale, 'bicubic')` (or to `output_shape`) for float images.

    Args:
      x: (H, W, C) or (B, H, W, C) float array (values are not clipped or rounded).
      scale: number or (scale_h, scale_w); e.g. 1/4 downscales by 4.
      output_shape: (out_h, out_w); if only this is given, scale = out / in per axis.
      antialias: MATLAB's antialiasing (kernel widening) when downscaling.
    Returns:
      (out_h, out_w, C) or (B, out_h, out_w, C) array of x's float dtype.
    """
    x = jnp.asarray(x)
    if x.ndim not in (3, 4):
        raise KfsrInputError(f"imresize: image must be (H,W,C) or (B,H,W,C), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    in_hw = (x.shape[-3], x.shape[-2])
    out, sc = output_size(in_hw, scale, output_shape)
    # MATLAB: [~, order] = sort(scale), stable -> the dimension with the smaller scale goes first
    # (fewer pixels to process in the second pass when downscaling).
    order = sorted(range(2), key=lambda d: sc[d])
    for dim in order:
        if sc[dim] == 1.0 and out[dim] == in_hw[dim]:
            continue  # identity weights (cubic is 1 at 0 and 0 at other integers)
        m = jnp.asarray(resize_matrix(in_hw[dim], out[dim], sc[dim], bool(antialias)), x.dtype)
        spec = "oh,...hwc->...owc" if dim == 0 else "ow,...hwc->...hoc"
        x = jnp.einsum(spec, m, x, precision=lax.Precision.HIGHEST)
    return x


__all__ = ["imresize", "resize_matrix", "output_size", "cubic"]
