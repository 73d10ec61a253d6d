"""Losses shared by the DIP-style methods, written to match DKP's official code.

- `ssim_loss`: 1 - SSIM exactly as DKP's `model/SSIM.py` (the pytorch-ssim module): 11x11 Gaussian
  window with sigma 1.5, per channel, ZERO padding 5 ('same' output), C1 = 0.01^2, C2 = 0.03^2,
  the mean of the SSIM map over all pixels and channels (and the batch).
- `mse`: mean squared error (torch.nn.MSELoss, reduction 'mean').
- `gradient_prior`: DKP's hyper-Laplacian prior on the HR estimate (dkp.md §3.3 "Gradient
  filters"): 4 first differences (x minus its up, up-left, left, down-left neighbour) per channel
  after reflect padding 1 (torch 'reflect' = numpy 'reflect', edge not repeated), summed as
  (|d| + eps)^p and divided by `normalizer`. The official code divides by the LR element count
  `lr.numel()` = 3*h*w (not the HR count), so pass that explicitly.

All functions take (H, W, C) or (B, H, W, C) float arrays and are jittable and differentiable.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11   # DKP SSIM(window_size=11)
SSIM_SIGMA = 1.5   # create_window: gaussian(window_size, 1.5)
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _gauss1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    g = np.array([math.exp(-((x - size // 2) ** 2) / float(2 * sigma ** 2)) for x in range(size)],
                 dtype=np.float64)
    return (g / g.sum()).astype(np.float32)


def _filter_same_zero(x: jax.Array, g: np.ndarray) -> jax.Array:
    """Separable 2-D correlation of (B,H,W,C) with outer(g, g), zero padding len(g)//2 ('same').

    The window is an outer product, so two zero-padded 1-D depthwise convolutions equal the torch
    grouped conv2d with padding=5 exactly (up to float rounding).
    """
    n = len(g)
    p = n // 2
    c = x.shape[-1]
    dn = ("NHWC", "HWIO", "NHWC")
    gv = jnp.tile(jnp.asarray(g, jnp.float32).reshape(n, 1, 1, 1), (1, 1, 1, c))
    gh = gv.reshape(1, n, 1, c)
    hi = jax.lax.Precision.HIGHEST
    y = jax.lax.conv_general_dilated(x, gv, (1, 1), [(p, p), (0, 0)], dimension_numbers=dn,
                                     feature_group_count=c, precision=hi)
    return jax.lax.conv_general_dilated(y, gh, (1, 1), [(0, 0), (p, p)], dimension_numbers=dn,
                                        feature_group_count=c, precision=hi)


def ssim(a: jax.Array, b: jax.Array, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA
         ) -> jax.Array:
    """DKP/pytorch-ssim SSIM (zero-padded 'same' map, mean over everything). Values in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    g = _gauss1d(window_size, sigma)
    # the five local means in one depthwise filtering pass (channels stacked)
    m = _filter_same_zero(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), g)
    mu1, mu2, e11, e22, e12 = jnp.split(m, 5, axis=-1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = e11 - mu1_sq
    s2 = e22 - mu2_sq
    s12 = e12 - mu12
    num = (2 * mu12 + SSIM_C1) * (2 * s12 + SSIM_C2)
    den = (mu1_sq + mu2_sq + SSIM_C1) * (s1 + s2 + SSIM_C2)
    return jnp.mean(num / den)


def ssim_loss(a: jax.Array, b: jax.Array) -> jax.Array:
    """1 - SSIM(a, b) as DKP's DIP/kernel data term for outer iterations <= 80."""
    return 1.0 - ssim(a, b)


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared error (torch MSELoss, mean reduction)."""
    return jnp.mean(jnp.square(a - b))


# the 4 official gradient filters (kernel_generate.make_gradient_filter): centre minus a neighbour.
# Offsets (drow, dcol) of the neighbour: up, up-left, left, down-left.
_GRAD_NEIGHBOURS = ((-1, 0), (-1, -1), (0, -1), (1, -1))


def gradient_prior(x: jax.Array, weight: float, exponent: float = 0.67, eps: float = 1e-8, *,
                   normalizer: float) -> jax.Array:
    """weight * sum_{4 dirs, pixels, channels} (|d| + eps)^exponent / normalizer.

    x: HR estimate (H,W,C) or (B,H,W,C). DKP: weight = grad_loss_lr 1e-3 * noise2_mean 1 * 0.20
    = 2e-4, exponent 0.67, eps 1e-8, normalizer = LR element count (lr.numel() = B*3*h*w).
    """
    if x.ndim == 3:
        x = x[None]
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    centre = xp[:, 1:1 + h, 1:1 + w]
    total = 0.0
    for dr, dc in _GRAD_NEIGHBOURS:
        nb = xp[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
        d = centre - nb
        ad = d * jax.lax.stop_gradient(jnp.sign(d))  # |d| with torch's gradient sign(d) (0 at d=0)
        total = total + jnp.sum(jnp.power(ad + eps, exponent))
    return weight * total / normalizer
