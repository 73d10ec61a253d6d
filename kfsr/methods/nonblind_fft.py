"""Closed-form non-blind SR for stride sampling with circular padding (the "GT kernel" oracle).

Forward model (kfsr convention): y = S_o(k ⋆ x), ⋆ circular cross-correlation anchored at K//2,
S_o keeps pixels o, o+s, o+2s, ... of each axis.

Cross-correlation with k is circular convolution with g[n] = k[c - n] (c = K//2), so in Fourier
B = diag(G). Down-sampling by s folds the spectrum: S^T S is diagonal in the "distinct block"
sense (USRNet, Zhang et al. CVPR 2020, Eq. 7). With any regulariser that is diagonal in Fourier,
Lambda = alpha + lam |D|^2 (D the horizontal and vertical first differences), the normal equations

    (B^H S^T S B + Lambda) x = B^H S^T y + alpha z

are solved exactly by the Woodbury identity, because S B Lambda^-1 B^H S^T is diagonal on the LR
Fourier grid (the mean of |G|^2 / Lambda over the s x s aliased blocks):

    X = R/Lambda - conj(G)/Lambda * rep( fold(G R / Lambda) / (1 + fold(|G|^2 / Lambda)) ).

`tikhonov_sr` is that one step. `tv_sr` runs half-quadratic splitting: the same exact data step
with Lambda = alpha, alternated with a TV denoiser (Chambolle's projection) on z.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def kernel_otf(kernel: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Transfer function G (H, W) complex such that ifft2(G * fft2(x)) = k ⋆ x (circular)."""
    kh, kw = kernel.shape
    h, w = shape
    flipped = kernel[::-1, ::-1]
    g = jnp.zeros((h, w), kernel.dtype).at[:kh, :kw].set(flipped)
    # flipped[j] = k[K-1-j] must land at index (j - (K-1-c)) mod N, i.e. g[n] = k[c - n].
    g = jnp.roll(g, (-(kh - 1 - kh // 2), -(kw - 1 - kw // 2)), axis=(0, 1))
    return jnp.fft.fft2(g)


def _fold(a: jax.Array, s: int) -> jax.Array:
    """Mean over the s x s aliased blocks of a (H, W, ...) spectrum -> (H/s, W/s, ...)."""
    h, w = a.shape[:2]
    return a.reshape(s, h // s, s, w // s, *a.shape[2:]).mean(axis=(0, 2))


def _rep(a: jax.Array, s: int) -> jax.Array:
    return jnp.tile(a, (s, s) + (1,) * (a.ndim - 2))


def _upsample_zeros(y: jax.Array, s: int) -> jax.Array:
    """S^T: put y (h, w, C) at positions 0, s, 2s ... of a zero (h*s, w*s, C) image."""
    h, w, c = y.shape
    return jnp.zeros((h * s, w * s, c), y.dtype).at[::s, ::s].set(y)


def _grad_eig(shape: tuple[int, int]) -> jax.Array:
    """|D_h|^2 + |D_v|^2 of circular first differences on an (H, W) grid."""
    h, w = shape
    wy = 2.0 - 2.0 * jnp.cos(2 * jnp.pi * jnp.fft.fftfreq(h))
    wx = 2.0 - 2.0 * jnp.cos(2 * jnp.pi * jnp.fft.fftfreq(w))
    return wy[:, None] + wx[None, :]


def data_solve(lr, kernel, z, *, scale: int, offset: int = 0, alpha: float, lam: float = 0.0):
    """Exact argmin_x ||y - S_o(k ⋆ x)||^2 + alpha ||x - z||^2 + lam ||D x||^2.

    lr: (h, w, C); kernel: (K, K); z: (h*s, w*s, C). Returns x with z's shape.
    """
    s = scale
    # S_o x = S_0 roll(x, -o): solve for the rolled image, roll back (blur commutes with roll).
    z = jnp.roll(z, (-offset, -offset), axis=(0, 1))
    hr_shape = z.shape[:2]
    g = kernel_otf(kernel.astype(jnp.float32), hr_shape)[..., None]  # (H, W, 1)
    lam_f = (alpha + lam * _grad_eig(hr_shape))[..., None]
    r = jnp.conj(g) * jnp.fft.fft2(_upsample_zeros(lr, s), axes=(0, 1)) + alpha * jnp.fft.fft2(
        z, axes=(0, 1)
    )
    r_l = r / lam_f
    num = _fold(g * r_l, s)
    den = 1.0 + _fold(jnp.abs(g) ** 2 / lam_f, s)
    x_f = r_l - jnp.conj(g) / lam_f * _rep(num / den, s)
    x = jnp.real(jnp.fft.ifft2(x_f, axes=(0, 1)))
    return jnp.roll(x, (offset, offset), axis=(0, 1))


def tv_denoise(x: jax.Array, weight: float, n_iter: int = 30) -> jax.Array:
    """Isotropic TV denoising, argmin_u 0.5||u - x||^2 + weight TV(u), per channel.

    Chambolle's dual projection (J. Math. Imaging Vis. 2004) with step 1/4 and circular
    differences, so it matches the circular forward model. x: (H, W, C).
    """
    tau = 0.25

    def grad(u):
        return jnp.roll(u, -1, 0) - u, jnp.roll(u, -1, 1) - u

    def div(py, px):
        return (py - jnp.roll(py, 1, 0)) + (px - jnp.roll(px, 1, 1))

    def body(_, p):
        py, px = p
        gy, gx = grad(div(py, px) - x / weight)
        norm = 1.0 + tau * jnp.sqrt(gy**2 + gx**2)
        return (py + tau * gy) / norm, (px + tau * gx) / norm

    zeros = jnp.zeros_like(x)
    py, px = jax.lax.fori_loop(0, n_iter, body, (zeros, zeros))
    return x - weight * div(py, px)


@functools.partial(jax.jit, static_argnames=("scale", "offset"))
def tikhonov_sr(lr, kernel, init, *, scale: int, offset: int = 0, alpha: float = 1e-4,
                lam: float = 2e-4):
    """One exact solve with the gradient (Tikhonov) prior; alpha pulls weakly toward `init`."""
    return jnp.clip(data_solve(lr, kernel, init, scale=scale, offset=offset, alpha=alpha, lam=lam),
                    0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("scale", "offset", "iters", "tv_iters"))
def tv_sr(lr, kernel, init, *, scale: int, offset: int = 0, alpha: float = 0.01,
          lam: float = 2e-4, iters: int = 20, tv_iters: int = 30):
    """Half-quadratic splitting: exact data step (weight alpha to z), then TV(z) with weight lam/alpha."""

    def body(_, z):
        x = data_solve(lr, kernel, z, scale=scale, offset=offset, alpha=alpha)
        return tv_denoise(x, lam / alpha, tv_iters)

    z = jax.lax.fori_loop(0, iters, body, init)
    return jnp.clip(z, 0.0, 1.0)
