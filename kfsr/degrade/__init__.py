"""The forward model y = S_s(k * P(x)) + n, pure and differentiable.

    from kfsr.degrade import Degradation, degrade, kernels
    lr = degrade(hr, k, Degradation.div2krk(2))             # (H,W,C) -> (H/2, W/2, C)
    f = jax.jit(degrade, static_argnames="spec")            # spec is hashable
"""
from __future__ import annotations

import jax.numpy as jnp

from kfsr.degrade import kernels  # noqa: F401  (kernel generators, kfsr/degrade/kernels.py)
from kfsr.degrade.imresize import imresize
from kfsr.degrade.ops import (_blur_direct_strided, _resolve_method, add_noise, blur, blur_direct,
                              blur_fft, blur_many, downsample, quantize)
from kfsr.degrade.spec import Degradation
from kfsr.errors import KfsrInputError
from kfsr.degrade import spatial  # noqa: E402  (spatially variant blur, kfsr/degrade/spatial.py)
from kfsr.degrade.spatial import degrade_spatial, sv_blur  # noqa: E402


def degrade(hr, kernel, spec: Degradation, key=None):
    """Apply y = S_s(k * P(x)) + n as described by `spec`.

    Args:
      hr: (H, W, C) or (B, H, W, C) float image.
      kernel: (K, K), or (B, K, K) with one kernel per batch element; cross-correlation anchored at
        K//2 (docs/CONTRACT.md), blur method chosen by `ops.blur(method="auto")`.
      spec: a `Degradation` (static under jit: `jax.jit(degrade, static_argnames="spec")`).
      key: jax.random key; required iff spec.noise_sigma > 0.
    Returns:
      LR image, same rank as hr. Stride sampling: x[offset::s, offset::s] of the blurred image
      (ceil((H' - offset) / s) rows, H' = H or H-K+1 for 'valid'); bicubic: MATLAB imresize by 1/s
      to ceil(H' / s) rows. Not clipped or quantised (see `ops.quantize`).
    """
    if not isinstance(spec, Degradation):
        raise KfsrInputError(f"degrade: spec must be a kfsr.degrade.Degradation, got {type(spec)}")
    if spec.noise_sigma > 0 and key is None:
        raise KfsrInputError("degrade: spec.noise_sigma > 0 needs a jax.random key (key=...)")
    hr = jnp.asarray(hr)
    kernel = jnp.asarray(kernel)
    s = spec.scale
    if spec.sampling == "stride":
        if _resolve_method("auto", kernel.shape[-1]) == "direct":
            # Direct conv evaluated only on the sampling grid: 1/s^2 of the work.
            y = _blur_direct_strided(hr, kernel, spec.padding, stride=s, offset=spec.offset)
        else:
            y = downsample(blur_fft(hr, kernel, spec.padding), s, spec.offset)
    else:  # "bicubic": blur, then MATLAB bicubic downscale by 1/s
        y = blur(hr, kernel, spec.padding)
        h, w = y.shape[-3], y.shape[-2]
        y = imresize(y, scale=1.0 / s, output_shape=(-(-h // s), -(-w // s)))
    if spec.noise_sigma > 0:
        y = add_noise(y, spec.noise_sigma, key)
    return y


__all__ = ["Degradation", "degrade", "blur", "blur_direct", "blur_fft", "blur_many", "downsample",
           "add_noise", "quantize", "imresize", "kernels", "spatial", "degrade_spatial", "sv_blur"]
