"""Normalisation layers.

`BatchStatNorm` is BatchNorm as DIP-style zero-shot methods use it: always in training mode
(statistics of the current batch), no running averages, so `apply` needs no mutable collections.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

STATS = ("reduce", "dot", "fused")


def _csum(x2d, how):
    """Per-channel sum of a (N, C) array: a reduction, or a (1,N)@(N,C) matmul (multi-threaded
    GEMM on XLA:CPU, where large reductions become slow reduce-windows)."""
    if how == "reduce":
        return jnp.sum(x2d, axis=0)
    ones = jnp.ones((1, x2d.shape[0]), x2d.dtype)
    return jnp.dot(ones, x2d, precision=jax.lax.Precision.HIGHEST)[0]


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, eps=1e-5, how="dot"):
    """y = (x - mean) / sqrt(var + eps) * scale + bias over all axes but the last.

    Biased variance (two-pass), like torch BatchNorm in train mode. Hand-written backward
    (two channel sums and one elementwise pass, as torch's), which XLA cannot always find itself.
    """
    return _bn_fwd(x, scale, bias, eps, how)[0]


def _bn_fwd(x, scale, bias, eps, how):
    c = x.shape[-1]
    n = x.size // c
    x2 = x.reshape(n, c)
    mean = _csum(x2, how) / n
    xc = x - mean
    var = _csum(jnp.square(xc).reshape(n, c), how) / n
    inv = jax.lax.rsqrt(var + eps)
    y = xc * (inv * scale) + bias
    return y, (x, mean, inv, scale)


def _bn_bwd(eps, how, res, dy):
    x, mean, inv, scale = res
    c = x.shape[-1]
    n = x.size // c
    xhat = (x - mean) * inv
    dbias = _csum(dy.reshape(n, c), how)
    dscale = _csum((dy * xhat).reshape(n, c), how)
    dx = (inv * scale) * (dy - dbias / n - xhat * (dscale / n))
    return dx, dscale, dbias


batch_norm_train.defvjp(lambda x, s, b, eps, how: _bn_fwd(x, s, b, eps, how), _bn_bwd)


class BatchStatNorm(nn.Module):
    """Normalise over every axis but the last (channels) with the batch's own statistics.

    Matches `torch.nn.BatchNorm2d` in train mode: biased variance, `eps` inside the square root,
    learnable per-channel `scale` (init 1) and `bias` (init 0). Input `(..., C)`: on `(B,H,W,C)` the
    statistics pool the batch (like torch); under `jax.vmap` over images each image is normalised by
    its own statistics.

    `stats`: "reduce" (plain jnp reductions, autodiff backward), "dot" (channel sums as matmuls with
    a ones vector, autodiff backward) or "fused" (matmul sums and a hand-written backward, the
    fastest on XLA:CPU). Same numbers up to float32 rounding.
    """

    eps: float = 1e-5
    stats: str = "fused"
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stats not in STATS:
            raise ValueError(f"BatchStatNorm.stats: {self.stats!r} not in {STATS}")
        c = x.shape[-1]
        scale = (self.param("scale", self.scale_init, (c,), jnp.float32) if self.use_scale
                 else jnp.ones((c,), x.dtype))
        bias = (self.param("bias", self.bias_init, (c,), jnp.float32) if self.use_bias
                else jnp.zeros((c,), x.dtype))
        if self.stats == "fused":
            return batch_norm_train(x, scale, bias, self.eps, "dot")
        n = x.size // c
        # two-pass (mean, then centred second moment): as accurate as torch's variance
        mean = _csum(x.reshape(n, c), self.stats) / n
        xc = x - mean
        var = _csum(jnp.square(xc).reshape(n, c), self.stats) / n
        return xc * (jax.lax.rsqrt(var + self.eps) * scale) + bias
