"""Normalisation layers.

`BatchStatNorm` is BatchNorm as DIP-style zero-shot methods use it: always in training mode
(statistics of the current batch), no running averages, so `apply` needs no mutable collections.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchStatNorm(nn.Module):
    """Normalise over every axis but the last (channels) with the batch's own statistics.

    Matches `torch.nn.BatchNorm2d` in train mode: biased variance, `eps` inside the square root,
    learnable per-channel `scale` (init 1) and `bias` (init 0). Input `(..., C)`: on `(B,H,W,C)` the
    statistics pool the batch (like torch); under `jax.vmap` over images each image is normalised by
    its own statistics.
    """

    eps: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        # two-pass (mean, then centred second moment): as accurate as torch's Welford variance
        mean = jnp.mean(x, axis=axes)
        xc = x - mean
        var = jnp.mean(jnp.square(xc), axis=axes)
        mul = jax.lax.rsqrt(var + self.eps)
        if self.use_scale:
            mul = mul * self.param("scale", self.scale_init, (c,), jnp.float32)
        y = xc * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (c,), jnp.float32)
        return y
