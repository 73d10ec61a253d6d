"""Blur kernels: generators, centring, shifting, loading.

Conventions (docs/CONTRACT.md, DESIGN.md §3)
--------------------------------------------
* A kernel is a ``(K, K)`` float32 array, non-negative, summing to 1, applied by
  **cross-correlation anchored at ``K//2``**:
  ``y[i, j] = sum_{m,n} k[m, n] * x_pad[i + m - K//2, j + n - K//2]``
  (== ``scipy.ndimage.correlate``, ``torch.nn.functional.conv2d``, ``lax.conv``).
  ``flip(k)`` gives the convolution kernel (the PSF).
* Array axes are ``(row, col)``. ``center_of_mass`` returns ``(row, col)``;
  ``gaussian_kernel`` takes its mean and covariance in ``(row, col)`` order.
  Angles ``theta`` of the recipes are measured as in KernelGAN / FKP / DKP code: the
  eigen-frame is ``R(theta) diag(l1, l2) R(theta)^T`` in ``(x, y) = (col, row)`` coordinates
  (a meshgrid ``Z = stack([X, Y])``), i.e. from the column axis towards the row axis.
* Eigenvalues ``lambda`` of the anisotropic recipes are **variances** (px^2) of the
  covariance, never standard deviations, as in the KernelGAN dataset notebook, FKP and DKP.
  ``isotropic_gaussian`` takes ``sigma`` = standard deviation (px).
* Centre conventions (``target_center``):
  - ``"aligned"`` (kfsr's default; KernelGAN / DIV2KRK): centre of mass at
    ``K//2 + 0.5 * (s - K % 2)`` per axis. For odd ``K``, correlation anchored at ``K//2`` and
    stride sampling at offset 0 then put LR pixel ``i`` at HR ``s*i + (s-1)/2``, as bicubic
    does, so the image is not shifted. (For even ``K`` the formula, kept as KernelGAN wrote it,
    is half a pixel beyond the shift-free ``K//2 + (s-1)/2`` under K//2-anchored correlation.)
  - ``"dkp"`` (DKP's official data and model, dkp.md §2): centre of mass at ``(K - s) / 2``;
    LR pixel ``i`` then sits at HR ``s*i - (s-1)/2``.
* Randomness: explicit ``jax.random`` keys (raw uint32 or typed keys). Sizes, scales, names and
  method strings are static Python values; everything else may be traced. All generators are
  jittable (close over the static arguments) and vmappable over keys.

Re-centring
-----------
The official recipes (KernelGAN notebook, FKP, DKP) build a Gaussian, multiply by noise and move
the centre of mass with ``scipy.ndimage.shift`` (cubic spline, ``mode='constant'``), then
normalise. ``shift(..., method='spline')`` is an exact jax port of that call (mirror-boundary
B-spline prefilter, zero outside the grid: the same operator as scipy 1.17 -- 1e-16 apart in
float64, ~1e-7 relative in kfsr's float32) and
reproduces DKP's stored kernels; one spline pass leaves the centre of mass off the target
(truncation: up to ~0.09 px for DKP test kernels, ~0.2 px for DKP prior kernels over 200 draws),
exactly as the official code does. kfsr's own Gaussian generators default to
``recenter='mean'``: the analytic mean is moved by Newton steps (Jacobian ``Cov_k Sigma^-1``)
until the centre of mass of the sampled (noisy, truncated) kernel equals the target to ~1e-5 px,
with no interpolation. Motion and shape kernels are built from points / areas placed so that the
centre of mass is the target by construction.

Sources: KernelGAN (Bell-Kligler et al. 2019) and its DIV2KRK generator notebook and author
answers (kernelfusion.md §5.1); FKP / DKP official code (dkp.md §2, §3.1, §5); Boracchi & Foi,
"Modeling the performance of image restoration from motion blur", IEEE TIP 21(8), 2012
(trajectory model); KernelFusion (kernelfusion.md §3.1: L-shape, empty / filled square kernels).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.errors import KfsrInputError

__all__ = [
    "normalize", "center_of_mass", "shift", "center", "pad_to", "flip", "target_center",
    "image_offset", "bicubic_kernel", "check_kernel",
    "gaussian_kernel", "gaussian_from_params", "sample_gaussian_params", "anisotropic_gaussian",
    "isotropic_gaussian", "compose_kernels", "div2krk_kernel", "dkp_kernel_size",
    "dkp_test_range", "dkp_prior_range", "dkp_test_kernel", "dkp_prior_kernel", "line_motion",
    "trajectory_motion", "shape_kernel", "load_kernel", "FAMILIES", "register_family", "sample",
]

_F32 = jnp.float32
_TINY = 1e-30


# ----------------------------------------------------------------------------------------------
# basic helpers
# ----------------------------------------------------------------------------------------------
def normalize(k, clip: bool = True):
    """Clip at 0 (if ``clip``) and divide by the sum. An all-zero kernel stays all zero."""
    k = jnp.asarray(k, _F32)
    if clip:
        k = jnp.maximum(k, 0.0)
    return k / jnp.maximum(jnp.sum(k), _TINY)


def center_of_mass(k):
    """Centre of mass ``(row, col)`` of a ``(K, K)`` array (like scipy.ndimage.center_of_mass)."""
    k = jnp.asarray(k, _F32)
    h, w = k.shape[-2:]
    tot = jnp.maximum(jnp.sum(k, axis=(-2, -1)), _TINY)
    r = jnp.sum(k * jnp.arange(h, dtype=_F32)[:, None], axis=(-2, -1)) / tot
    c = jnp.sum(k * jnp.arange(w, dtype=_F32)[None, :], axis=(-2, -1)) / tot
    return jnp.stack([r, c], axis=-1)


def target_center(size: int, scale: int, convention: str = "aligned") -> float:
    """Target centre of mass (same on both axes) of a ``size``-square kernel for scale ``scale``.

    ``"aligned"``: ``size//2 + (scale - 1)/2``: with correlation anchored at ``size//2`` and stride
    sampling at offset 0, LR pixel i then sits at HR ``s*i + (s-1)/2`` (as bicubic), for odd and
    even sizes. Equals KernelGAN / DIV2KRK's ``size//2 + 0.5*(scale - size % 2)`` for odd sizes
    (KernelGAN's even-size formula assumes another anchor). ``"dkp"``: ``(size - scale)/2``.
    """
    if convention == "aligned":
        return size // 2 + 0.5 * (scale - 1)
    if convention == "dkp":
        return (size - scale) / 2.0
    raise KfsrInputError(f"kernel centre convention {convention!r}: use 'aligned' or 'dkp'")


def image_offset(size: int, scale: int, convention: str) -> float:
    """HR pixels (both axes) by which a set whose ``size``-square kernels follow ``convention``
    places the HR image relative to bicubic's geometry ('aligned'): 0 for 'aligned', -(s - 1) for
    'dkp' with odd ``size`` (a half-integer for even ``size``)."""
    return target_center(size, scale, convention) - target_center(size, scale, "aligned")


def bicubic_kernel(size: int, scale: int, convention: str = "aligned"):
    """The blur of MATLAB's bicubic x1/scale downscaling as a ``(size, size)`` kernel of kfsr's
    forward model (the reference "kernel" a blind method should beat: KernelGAN's baseline).

    Antialiased downscaling weights each HR pixel by Keys' cubic (a = -0.5) stretched by the scale,
    ``cubic(d / s) / s`` at distance ``d`` from the LR pixel's HR position; with stride sampling
    that position is ``target_center(size, scale, convention)`` (the aligned one is bicubic's own).
    Separable, normalised to sum 1, with the cubic's small negative lobes; support 4s (clipped to
    ``size``).
    """
    from kfsr.degrade.imresize import cubic

    d = (np.arange(size, dtype=np.float64) - target_center(size, scale, convention)) / scale
    w = cubic(d)
    k = np.outer(w, w)
    return jnp.asarray(k / k.sum(), _F32)


def flip(k):
    """Rotate by 180 degrees: correlation kernel <-> convolution kernel (PSF)."""
    return jnp.asarray(k)[..., ::-1, ::-1]


def pad_to(k, size: int):
    """Zero-pad or crop a ``(K, K)`` kernel to ``(size, size)`` keeping the blur it performs.

    The correlation anchor ``K//2`` maps to ``size//2``: ``size//2 - K//2`` zeros go before,
    the rest after (symmetric for odd -> odd). Cropping drops the same way and renormalises
    to the input sum (padding never changes the sum).
    """
    k = jnp.asarray(k)
    kk = k.shape[-1]
    if kk == size:
        return k
    before = size // 2 - kk // 2
    if size > kk:
        after = size - kk - before
        return jnp.pad(k, ((0, 0),) * (k.ndim - 2) + ((before, after), (before, after)))
    start = -before
    out = k[..., start:start + size, start:start + size]
    s_in = jnp.sum(k, axis=(-2, -1), keepdims=True)
    s_out = jnp.sum(out, axis=(-2, -1), keepdims=True)
    return out * (s_in / jnp.where(s_out == 0, 1.0, s_out))


# ----------------------------------------------------------------------------------------------
# sub-pixel shifts (all are separable linear operators: out = M(d0) @ k @ M(d1)^T)
# ----------------------------------------------------------------------------------------------
def _bspline3(t):
    t = jnp.abs(t)
    return jnp.where(t < 1.0, 2.0 / 3.0 - t * t + 0.5 * t ** 3,
                     jnp.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))


@functools.lru_cache(maxsize=None)
def _spline_prefilter(n: int) -> np.ndarray:
    """Inverse of the cubic B-spline collocation matrix with mirror boundary (scipy's prefilter
    for mode='constant'/'mirror'), float64 numpy, cached per size."""
    a = np.zeros((n, n))
    for i in range(n):
        for o, w in ((-1, 1.0 / 6.0), (0, 4.0 / 6.0), (1, 1.0 / 6.0)):
            a[i, _mirror_np(i + o, n)] += w
    return np.linalg.inv(a)


def _mirror_np(j: int, n: int) -> int:
    if n == 1:
        return 0
    p = 2 * (n - 1)
    j = j % p
    return p - j if j > n - 1 else j


def _spline_matrix(n: int, d):
    """1-D operator of ``scipy.ndimage.shift(x, d, order=3, mode='constant', cval=0)``:
    ``E(d) @ P^-1`` with P^-1 the mirror-boundary prefilter and ``E[i, j]`` the cubic B-spline
    weight of coefficient j at ``x_i = i - d``, summed over the mirror images of j reachable from
    ``[0, n-1]`` (q = j, -j, 2(n-1) - j); rows with ``x_i`` outside ``[0, n-1]`` are 0 (cval)."""
    if n == 1:
        return jnp.where(jnp.abs(d) <= 0, 1.0, 0.0).reshape(1, 1).astype(_F32)
    x = (jnp.arange(n, dtype=_F32) - d)[:, None]
    j = jnp.arange(n, dtype=_F32)[None, :]
    e = (_bspline3(x - j) + jnp.where(j >= 1, _bspline3(x + j), 0.0)
         + jnp.where(j <= n - 2, _bspline3(x - 2 * (n - 1) + j), 0.0))
    e = jnp.where((x >= 0) & (x <= n - 1), e, 0.0)
    return e @ jnp.asarray(_spline_prefilter(n), _F32)


def _tent_matrix(n: int, d):
    """1-D bilinear shift (= splatting each sample to its two neighbours): M[i,j] = tent(i-j-d)."""
    i = jnp.arange(n, dtype=_F32)
    return jnp.maximum(0.0, 1.0 - jnp.abs(i[:, None] - i[None, :] - d))


def _fourier_shift(k, d):
    n0, n1 = k.shape
    p0, p1 = n0, n1  # pad by the size on each side: no wrap-around for |d| < size
    kp = jnp.pad(k, ((p0, p0), (p1, p1)))
    f0 = jnp.fft.fftfreq(kp.shape[0])[:, None]
    f1 = jnp.fft.fftfreq(kp.shape[1])[None, :]
    ph = jnp.exp(-2j * jnp.pi * (f0 * d[0] + f1 * d[1]))
    out = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(kp) * ph)).astype(_F32)
    return out[p0:p0 + n0, p1:p1 + n1]


def shift(k, d, method: str = "bilinear", preserve_sum: bool = True):
    """Shift a ``(K, K)`` kernel by ``d = (d_row, d_col)`` pixels (content moves to +d).

    methods:
      * ``"bilinear"`` (default): linear interpolation == bilinear splatting of every sample.
        Non-negative; the centre of mass moves by exactly ``d`` as long as no mass leaves the
        grid; adds a variance ``f(1-f)`` <= 0.25 px^2 per axis for a fractional part ``f``.
      * ``"fourier"``: phase shift on a grid zero-padded by ``K`` on each side, cropped back.
        Band-limited (no extra blur) but rings: small negative values are possible.
      * ``"spline"``: exactly ``scipy.ndimage.shift(k, d, order=3, mode='constant')`` (the call
        KernelGAN / FKP / DKP use). Small negatives are possible.
    With ``preserve_sum`` the result is rescaled to the input's sum (mass pushed off the grid,
    spline / Fourier gain); the official recipes normalise after shifting anyway.
    """
    k = jnp.asarray(k, _F32)
    d = jnp.broadcast_to(jnp.asarray(d, _F32), (2,))
    n0, n1 = k.shape
    if method == "bilinear":
        out = _tent_matrix(n0, d[0]) @ k @ _tent_matrix(n1, d[1]).T
    elif method == "spline":
        out = _spline_matrix(n0, d[0]) @ k @ _spline_matrix(n1, d[1]).T
    elif method == "fourier":
        out = _fourier_shift(k, d)
    else:
        raise KfsrInputError(f"shift method {method!r}: use 'bilinear', 'fourier' or 'spline'")
    if preserve_sum:
        s_out = jnp.sum(out)
        out = out * (jnp.sum(k) / jnp.where(s_out == 0, 1.0, s_out))
    return out


def center(k, target, method: str = "bilinear"):
    """Shift ``k`` so its centre of mass is at ``target`` (scalar or ``(row, col)``); sum kept.

    One ``shift`` by ``target - center_of_mass(k)``. With the default bilinear method the centre
    is exact unless mass is pushed off the grid (then renormalised, and off by that mass).
    """
    k = jnp.asarray(k, _F32)
    t = jnp.broadcast_to(jnp.asarray(target, _F32), (2,))
    return shift(k, t - center_of_mass(k), method=method)


# ----------------------------------------------------------------------------------------------
# Gaussians
# ----------------------------------------------------------------------------------------------
def _grid(size: int):
    r, c = jnp.meshgrid(jnp.arange(size, dtype=_F32), jnp.arange(size, dtype=_F32),
                        indexing="ij")
    return jnp.stack([r, c], axis=-1)  # (K, K, 2) in (row, col)


def _inv2(a):
    """Closed-form inverse of a 2x2 matrix (cheaper to compile than jnp.linalg.inv)."""
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    return jnp.array([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]]) / det


def _gauss_raw(size: int, cov, mean):
    z = _grid(size) - jnp.broadcast_to(jnp.asarray(mean, _F32), (2,))
    icov = _inv2(jnp.asarray(cov, _F32))
    q = jnp.einsum("ija,ab,ijb->ij", z, icov, z)
    return jnp.exp(-0.5 * q)


def gaussian_kernel(size: int, cov, mean):
    """Gaussian ``exp(-0.5 (z-mean)^T cov^-1 (z-mean))`` sampled on the integer ``(row, col)``
    grid of a ``size``-square kernel, normalised to sum 1. ``cov`` (2, 2) and ``mean`` (2,) (or
    a scalar, both axes) are in ``(row, col)`` order. No re-centring: truncation moves the
    centre of mass slightly off ``mean`` for wide kernels."""
    return normalize(_gauss_raw(size, cov, mean))


def _cov_from_params(lambda1, lambda2, theta):
    """Covariance in (row, col) order from the recipes' (x=col, y=row) eigen-frame."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    q = jnp.array([[c, -s], [s, c]], _F32)
    sig_xy = q @ jnp.diag(jnp.array([lambda1, lambda2], _F32)) @ q.T
    return sig_xy[::-1, ::-1]  # swap (x, y) -> (row, col)


def _recenter_mean(size: int, cov, mean0, weight, target, iters: int = 8):
    """Newton on the analytic mean m so that COM(G(m) * weight) == target.

    dCOM/dm = Cov_k @ Sigma^-1 exactly (k = G(m) * weight, weight fixed), so the step is
    Sigma @ Cov_k^-1 @ (target - COM); steps are clamped to 2 px for robustness."""
    cov = jnp.asarray(cov, _F32)
    z = _grid(size)

    def body(_, m):
        k = _gauss_raw(size, cov, m) * weight
        k = k / jnp.maximum(jnp.sum(k), _TINY)
        com = jnp.einsum("ij,ija->a", k, z)
        dz = z - com
        cov_k = jnp.einsum("ij,ija,ijb->ab", k, dz, dz) + 1e-6 * jnp.eye(2, dtype=_F32)
        step = cov @ (_inv2(cov_k) @ (target - com))
        nrm = jnp.linalg.norm(step)
        step = step * jnp.minimum(1.0, 2.0 / jnp.maximum(nrm, _TINY))
        return m + step

    return jax.lax.fori_loop(0, iters, body, jnp.asarray(mean0, _F32))


def _finish_gaussian(size, cov, center_, mean, noise, recenter):
    target = jnp.broadcast_to(jnp.asarray(center_, _F32), (2,))
    mean = target if mean is None else jnp.broadcast_to(jnp.asarray(mean, _F32), (2,))
    weight = jnp.ones((size, size), _F32) if noise is None else 1.0 + jnp.asarray(noise, _F32)
    weight = jnp.maximum(weight, 0.0)
    if recenter == "mean":
        mean = _recenter_mean(size, cov, mean, weight, target)
        return normalize(_gauss_raw(size, cov, mean) * weight)
    raw = _gauss_raw(size, cov, mean) * weight
    if recenter == "spline":
        return normalize(shift(raw, target - center_of_mass(raw), "spline", preserve_sum=False))
    if recenter == "bilinear":
        return normalize(center(raw, target, "bilinear"))
    if recenter == "none":
        return normalize(raw)
    raise KfsrInputError(f"recenter {recenter!r}: use 'mean', 'spline', 'bilinear' or 'none'")


def gaussian_from_params(size: int, lambda1, lambda2, theta, center, *, mean=None, noise=None,
                         recenter: str = "mean"):
    """The anisotropic-Gaussian recipe of KernelGAN / FKP / DKP from explicit parameters.

    ``Sigma = R(theta) diag(lambda1, lambda2) R(theta)^T`` in (x=col, y=row) coordinates
    (eigenvalues are variances, px^2); raw kernel ``exp(-0.5 z^T Sigma^-1 z) * (1 + noise)``
    with ``z = grid - mean`` (``mean`` defaults to ``center``; ``noise`` a (K, K) field or None),
    then re-centred so that the centre of mass is ``center`` (scalar or (row, col)), clipped at 0
    and normalised. ``recenter``: ``'mean'`` (exact, kfsr), ``'spline'`` (the official one-pass
    scipy cubic-spline ``kernel_shift``), ``'bilinear'``, or ``'none'``.

    Example, DKP's test kernel for x4: ``gaussian_from_params(19, l1, l2, th, 7.5, mean=10.5,
    recenter='spline')``.
    """
    cov = _cov_from_params(lambda1, lambda2, theta)
    return _finish_gaussian(size, cov, center, mean, noise, recenter)


def _has_noise(noise_level) -> bool:
    return not (isinstance(noise_level, (int, float)) and noise_level == 0)


def _draw_gaussian(key, size: int, lambda_min, lambda_max, noise_level):
    """One ``uniform`` call (one threefry loop: cheap to compile, also under vmap) giving
    ``(lambda1, lambda2, theta)`` -- both eigenvalues ~ U[lambda_min, lambda_max] (variances,
    px^2), theta ~ U[0, pi), the KernelGAN notebook / FKP / DKP draw (dkp.md §5) -- and the
    multiplicative noise field ``n ~ U[-noise_level, noise_level]`` per pixel (the kernel is
    multiplied by ``1 + n``; notebook: ``-noise + rand(K,K) * noise * 2``; kernelfusion.md
    §5.1), or None when ``noise_level`` is the constant 0."""
    noisy = _has_noise(noise_level)
    u = jax.random.uniform(key, (3 + (size * size if noisy else 0),), _F32)
    l1 = lambda_min + u[0] * (lambda_max - lambda_min)
    l2 = lambda_min + u[1] * (lambda_max - lambda_min)
    noise = (2.0 * u[3:].reshape(size, size) - 1.0) * noise_level if noisy else None
    return (l1, l2, u[2] * jnp.pi), noise


def sample_gaussian_params(key, lambda_min, lambda_max):
    """``(lambda1, lambda2, theta)`` as drawn by ``anisotropic_gaussian`` (noise-free) with the
    same key: eigenvalues ~ U[lambda_min, lambda_max] (variances), theta ~ U[0, pi)."""
    return _draw_gaussian(key, 0, lambda_min, lambda_max, 0.0)[0]


def anisotropic_gaussian(key, size: int, scale: int, lambda_min, lambda_max, noise_level=0.0,
                         convention: str = "aligned", *, recenter: str = "mean", mean=None):
    """Random anisotropic Gaussian (KernelGAN / DIV2KRK / FKP / DKP recipe).

    eigenvalues ~ U[lambda_min, lambda_max] (covariance variances, px^2), angle ~ U[0, pi),
    optional per-pixel multiplicative noise ``(1 + U[-noise_level, noise_level])``, clipped at 0,
    centre of mass at ``target_center(size, scale, convention)`` (see ``gaussian_from_params``
    for ``recenter`` and ``mean``), sum 1.
    """
    (l1, l2, th), noise = _draw_gaussian(key, size, lambda_min, lambda_max, noise_level)
    return gaussian_from_params(size, l1, l2, th, target_center(size, scale, convention),
                                mean=mean, noise=noise, recenter=recenter)


def isotropic_gaussian(key, size: int, sigma_min, sigma_max, scale: int = 1, noise_level=0.0,
                       convention: str = "aligned", *, recenter: str = "mean"):
    """Random isotropic Gaussian: standard deviation sigma ~ U[sigma_min, sigma_max] (px),
    covariance sigma^2 I, otherwise as ``anisotropic_gaussian``."""
    (sig, _, _), noise = _draw_gaussian(key, size, sigma_min, sigma_max, noise_level)
    cov = jnp.eye(2, dtype=_F32) * sig ** 2
    return _finish_gaussian(size, cov, target_center(size, scale, convention), None, noise,
                            recenter)


# ----------------------------------------------------------------------------------------------
# DIV2KRK
# ----------------------------------------------------------------------------------------------
def compose_kernels(k_first, k_second, scale_first: int = 2):
    """Kernel of ``S_s(k_second * S_s(k_first * x))`` (blur, downsample, blur, downsample).

    ``k[s*n + m] += k_second[n] * k_first[m]`` per axis, i.e. ``k_first`` fully convolved with
    ``k_second`` dilated by ``s`` (KernelGAN's ``analytic_kernel`` without its crop). Size
    ``s*(K2-1) + K1``; for odd ``K2`` it is anchored at its own ``size//2`` exactly, so
    correlating with it and sampling ``[::s*s]`` from offset 0 equals the two-pass operator
    (exactly with circular padding). An even ``k_second`` is first padded to odd size.
    """
    k1 = jnp.asarray(k_first, _F32)
    k2 = jnp.asarray(k_second, _F32)
    if k2.shape[0] % 2 == 0:
        k2 = pad_to(k2, k2.shape[0] + 1)
    n2 = k2.shape[0]
    dil = jnp.zeros((scale_first * (n2 - 1) + 1,) * 2, _F32)
    dil = dil.at[::scale_first, ::scale_first].set(k2)
    return jax.scipy.signal.convolve2d(dil, k1, mode="full")


def _div2krk_x2(key, noise_level=0.25, recenter="mean"):
    return anisotropic_gaussian(key, 11, 2, 0.6, 5.0, noise_level, "aligned", recenter=recenter)


def div2krk_kernel(key, scale: int, noise_level=0.25, *, recenter: str = "mean"):
    """A DIV2KRK-style kernel (KernelGAN benchmark; kernelfusion.md §5.1).

    x2: 11x11 anisotropic Gaussian, covariance eigenvalues lambda1, lambda2 ~ U[0.6, 5] px^2
    (the author's "[0.6, 5]" read as variances, as the generator notebook uses them), angle
    ~ U[0, pi), per-pixel multiplicative noise (1 + U[-0.25, 0.25]) ("up to 0.25 multiplicative
    noise"), centre of mass at the aligned centre 5.5.
    x4: "the x2 kernel applied twice": ``compose_kernels(k2, k2, 2)`` of the x2 kernel drawn
    from the same key, uncropped: **31x31** (= 3*11 - 2, the size of the released DIV2KRK x4
    kernels), centre of mass 3 * 5.5 = 16.5 = ``target_center(31, 4)`` exactly.
    ``recenter='spline'`` uses the notebook's cubic-spline shift instead of kfsr's exact mean
    adjustment (same distribution up to sub-pixel smoothing of the noise).
    """
    k2 = _div2krk_x2(key, noise_level, recenter)
    if scale == 2:
        return k2
    if scale == 4:
        return normalize(compose_kernels(k2, k2, 2))
    raise KfsrInputError(f"DIV2KRK kernels exist for scale 2 and 4, not {scale}")


# ----------------------------------------------------------------------------------------------
# DKP
# ----------------------------------------------------------------------------------------------
def dkp_kernel_size(scale: int) -> int:
    """DKP's kernel size ``min(4s + 3, 21)``: 11, 15, 19, 21 for x2, x3, x4, x8."""
    return min(4 * scale + 3, 21)


def dkp_test_range(scale: int):
    """DKP / FKP test-set eigenvalue range (variances): ``[0.175 s, min(2.5 s, 10)]``."""
    return 0.175 * scale, min(2.5 * scale, 10.0)


def dkp_prior_range(scale: int):
    """DIP-DKP random-kernel-prior range: ``[0.175s + (s-1), min(2.5s, 10) + (s+6)]``
    (Settings ``var_min_add = 3+s-4``, ``var_max_add = 10+s-4``): x4 [3.7, 20]."""
    lo, hi = dkp_test_range(scale)
    return lo + (3 + scale - 4), hi + (10 + scale - 4)


def dkp_test_kernel(key, scale: int, noise_level=0.0, *, recenter: str = "spline"):
    """DKP's test-kernel generator (``prepare_dataset.py``; dkp.md §5).

    ``K = dkp_kernel_size(s)``; eigenvalues ~ U[0.175 s, min(2.5 s, 10)] px^2 (x4: [0.7, 10]),
    angle ~ U[0, pi), optional noise (1 + U[-n, n]); Gaussian mean at the aligned centre
    ``K//2 + (s - K%2)/2`` (10.5 at x4), then one cubic-spline shift of the centre of mass to
    DKP's ``(K - s)/2`` (7.5 at x4), clip at 0, normalise. With ``recenter='spline'`` (default)
    this is the official construction: the centre of mass ends slightly off, as in DKP's data
    (max |error| over 200 draws: 0.04 px at x2-x4, 0.09 px at x8); ``'mean'`` puts it exactly
    at ``(K - s)/2``.
    """
    size = dkp_kernel_size(scale)
    lo, hi = dkp_test_range(scale)
    (l1, l2, th), noise = _draw_gaussian(key, size, lo, hi, noise_level)
    mean = target_center(size, scale, "aligned") if recenter == "spline" else None
    return gaussian_from_params(size, l1, l2, th, target_center(size, scale, "dkp"), mean=mean,
                                noise=noise, recenter=recenter)


def dkp_prior_kernel(key, scale: int, *, fix_x8_center: bool = False,
                     recenter: str | None = None):
    """DIP-DKP's random kernel prior ("RKS" samples; dkp.md §3.1, §3.3).

    ``K = dkp_kernel_size(s)``; eigenvalues ~ ``dkp_prior_range(s)`` (x2 [1.35, 13], x3
    [2.525, 16.5], x4 [3.7, 20], x8 [8.4, 24]) px^2, angle ~ U[0, pi), mean at the aligned
    centre, one cubic-spline shift of the centre of mass to ``(s + 1) * 3/2`` (Settings
    ``kernel_x``), clip, normalise. That equals ``(K - s)/2`` for s = 2, 3, 4, but is 13.5
    instead of 6.5 at x8 (official quirk, kept by default); ``fix_x8_center=True`` uses
    ``(K - s)/2`` for every scale. ``recenter`` defaults to the official ``'spline'``, or to
    ``'mean'`` with ``fix_x8_center`` (one 7-px spline shift of a truncated x8 kernel misses
    6.5 by up to ~0.4 px; ``'mean'`` hits it to ~1e-5 px).

    Centre-of-mass residual of the official construction at x4: mean 7.577, max |error| ~0.19
    px over 200 draws (dkp.md §5 measured 7.575 +- 0.06 with the official code).
    """
    if recenter is None:
        recenter = "mean" if fix_x8_center else "spline"
    size = dkp_kernel_size(scale)
    lo, hi = dkp_prior_range(scale)
    ctr = target_center(size, scale, "dkp") if fix_x8_center else (scale + 1) * 3 / 2
    l1, l2, th = sample_gaussian_params(key, lo, hi)
    mean = target_center(size, scale, "aligned") if recenter == "spline" else None
    return gaussian_from_params(size, l1, l2, th, ctr, mean=mean, recenter=recenter)


# ----------------------------------------------------------------------------------------------
# motion blur
# ----------------------------------------------------------------------------------------------
def _splat(points, weights, size: int):
    """Bilinear splatting of (N, 2) (row, col) points with weights into a (size, size) grid,
    written as ``A^T diag(w) B`` with tent weights ``A[n, i] = max(0, 1 - |p_n,row - i|)`` (no
    scatter: fast to compile and vmap). The centre of mass of the result equals the weighted
    mean of the points when all of them lie in [0, size-1]^2."""
    p = jnp.asarray(points, _F32)
    i = jnp.arange(size, dtype=_F32)
    a = jnp.maximum(0.0, 1.0 - jnp.abs(p[:, 0:1] - i[None, :]))
    b = jnp.maximum(0.0, 1.0 - jnp.abs(p[:, 1:2] - i[None, :]))
    return (a * weights[:, None]).T @ b


def _place(points, size: int, target):
    """Translate points so their mean is ``target`` and, if needed, shrink them about it so they
    fit in [0, size-1]^2 (so splatting loses nothing and the centre of mass is the target)."""
    t = jnp.broadcast_to(jnp.asarray(target, _F32), (2,))
    d = points - jnp.mean(points, axis=0)
    hi = jnp.max(d, axis=0)
    lo = -jnp.min(d, axis=0)
    room_hi = (size - 1) - t - 1e-4
    room_lo = t - 1e-4
    a = jnp.minimum(jnp.min(room_hi / jnp.maximum(hi, 1e-6)),
                    jnp.min(room_lo / jnp.maximum(lo, 1e-6)))
    return t + jnp.minimum(a, 1.0) * d


def line_motion(key, size: int, length_range=None, angle_range=(0.0, math.pi), scale: int = 1,
                convention: str = "aligned", n_points: int | None = None):
    """Linear motion blur: an anti-aliased line segment.

    length ~ U[length_range] px (default ``(0.25*size, 0.75*size)``; DKP's unused line prior is
    ``2*(K//4) + 1`` = 9 px at x4), angle ~ U[angle_range] rad, measured from the column axis
    towards the row axis. Rasterised by bilinear splatting of ``n_points`` (default 8 per px of
    ``size``) equally weighted points spaced evenly along the segment, whose midpoint (= centre
    of mass) is ``target_center(size, scale, convention)``. A segment that would not fit is
    shortened to fit.
    """
    if length_range is None:
        length_range = (0.25 * size, 0.75 * size)
    n = n_points or 8 * size
    u = jax.random.uniform(key, (2,), _F32)
    length = length_range[0] + u[0] * (length_range[1] - length_range[0])
    ang = angle_range[0] + u[1] * (angle_range[1] - angle_range[0])
    direction = jnp.stack([jnp.sin(ang), jnp.cos(ang)])  # (row, col)
    t = (jnp.arange(n, dtype=_F32) + 0.5) / n - 0.5
    pts = t[:, None] * length * direction[None, :]
    pts = _place(pts, size, target_center(size, scale, convention))
    return normalize(_splat(pts, jnp.full((n,), 1.0 / n, _F32), size))


def trajectory_motion(key, size: int, scale: int = 1, convention: str = "aligned",
                      length_range=None, anxiety=None, anxiety_max: float = 0.01,
                      n_steps: int = 2000, exposure: float = 1.0):
    """Random camera-shake blur after Boracchi & Foi, "Modeling the performance of image
    restoration from motion blur", IEEE Trans. Image Process. 21(8), 2012 (their
    ``createTrajectory`` / ``createPSFs``; also DeblurGAN's generator, used by DKP's paper).

    A particle moves ``n_steps - 1`` steps of constant length ``L/(n_steps-1)``. Per trajectory:
    ``anxiety ~ anxiety_max * U`` (unless ``anxiety`` is given), centripetal ``0.7 U``,
    Gaussian term ``10 U``, big-shake frequency ``0.2 U``, initial direction ``U[0, 2pi)``.
    Boracchi & Foi's default is ``anxiety_max = 0.1`` (with 2000 steps the direction then
    decorrelates within a few dozen steps and a length-L path covers only ~L/9 px: near-round
    blobs); kfsr defaults to ``0.01`` (mean 0.005, DeblurGAN's recommended value), which gives
    curved camera-shake paths spanning ~L/2. Each step:
    ``dv = shake + anxiety * (gauss * N(0, I) - centripetal * x) * L/(n_steps-1)`` with an
    impulsive ``shake = 2 v rotated by pi + U[-0.5, 0.5]`` when ``U < freq * anxiety``; then
    ``v = (v + dv)`` rescaled to the step length, ``x += v`` (a ``lax.scan``).
    The first ``exposure`` fraction of the samples (static) is placed with its mean at
    ``target_center(size, scale, convention)``, shrunk about it if it would not fit, and
    rasterised sub-pixel by bilinear splatting with equal weights (as Boracchi-Foi's PSFs), so
    the centre of mass is the target. ``L ~ U[length_range]`` (default ``(0.5*size, 1.5*size)``).
    """
    if length_range is None:
        length_range = (0.5 * size, 1.5 * size)
    m = n_steps - 1
    u = jax.random.uniform(key, (6 + 4 * m,), _F32)  # one threefry loop: fast to compile
    # N(0, I) by Box-Muller from the same draw (avoids a second threefry + erfinv)
    r = jnp.sqrt(-2.0 * jnp.log1p(-u[6 + 2 * m:6 + 3 * m]))
    phi = 2.0 * jnp.pi * u[6 + 3 * m:]
    g = jnp.stack([r * jnp.cos(phi), r * jnp.sin(phi)], axis=-1)
    length = length_range[0] + u[0] * (length_range[1] - length_range[0])
    anxiety = anxiety_max * u[1] if anxiety is None else jnp.asarray(anxiety, _F32)
    centripetal = 0.7 * u[2]
    gauss = 10.0 * u[3]
    freq_big = 0.2 * u[4]
    a0 = 2 * jnp.pi * u[5]
    u_shake = u[6:6 + m]
    u_ang = u[6 + m:6 + 2 * m]
    step = length / m
    v0 = jnp.stack([jnp.sin(a0), jnp.cos(a0)])
    v0 = jnp.where(anxiety > 0, v0 * anxiety, v0 * step)

    def rot(v, phi):
        c, s = jnp.cos(phi), jnp.sin(phi)
        return jnp.stack([c * v[0] + s * v[1], -s * v[0] + c * v[1]])

    def body(carry, inp):
        x, v = carry
        us, ua, gn = inp
        shake = jnp.where(us < freq_big * anxiety, 2.0 * rot(v, jnp.pi + (ua - 0.5)), 0.0)
        dv = shake + anxiety * (gauss * gn - centripetal * x) * step
        v = v + dv
        v = v / jnp.maximum(jnp.linalg.norm(v), _TINY) * step
        x = x + v
        return (x, v), x

    x0 = jnp.zeros((2,), _F32)
    _, xs = jax.lax.scan(body, (x0, v0), (u_shake, u_ang, g))
    pts = jnp.concatenate([x0[None], xs], axis=0)
    n_use = max(2, int(round(exposure * n_steps)))
    pts = _place(pts[:n_use], size, target_center(size, scale, convention))
    return normalize(_splat(pts, jnp.full((n_use,), 1.0 / n_use, _F32), size))


# ----------------------------------------------------------------------------------------------
# synthetic shapes (KernelFusion's non-natural kernels)
# ----------------------------------------------------------------------------------------------
def _cov1d(size: int, a, b):
    """Length of [a, b] inside each pixel [i-0.5, i+0.5]."""
    i = jnp.arange(size, dtype=_F32)
    return jnp.maximum(0.0, jnp.minimum(b, i + 0.5) - jnp.maximum(a, i - 0.5))


def _rect(size, r0, r1, c0, c1):
    return _cov1d(size, r0, r1)[:, None] * _cov1d(size, c0, c1)[None, :]


def shape_kernel(name: str, size: int, scale: int = 1, thickness=None, extent=None,
                 convention: str = "aligned"):
    """KernelFusion's synthetic non-natural kernels (Blind144: "L-shape, empty square, filled
    square"; kernelfusion.md §3.1 -- the paper gives no dimensions, these are kfsr's choices).

    ``extent`` = outer side length in px (default ``size / 2``), ``thickness`` = stroke width in
    px (default ``max(1, extent / 4)``). Rasterised by exact area coverage of axis-aligned
    rectangles; centre of mass at ``target_center(size, scale, convention)``.
      * ``'filled_square'``: a uniform ``extent`` x ``extent`` box.
      * ``'empty_square'``: the box minus its interior (a frame ``thickness`` wide).
      * ``'l_shape'``: a vertical bar (``thickness`` x ``extent``) on the left joined to a
        horizontal bar along the bottom; placed by fixed-point iterations so its discrete
        centre of mass hits the target (to ~1e-5 px).
    """
    ext = jnp.asarray(0.5 * size if extent is None else extent, _F32)
    th = jnp.maximum(1.0, ext / 4.0) if thickness is None else jnp.asarray(thickness, _F32)
    t = jnp.full((2,), target_center(size, scale, convention), _F32)
    h = ext / 2
    if name == "filled_square":
        k = _rect(size, t[0] - h, t[0] + h, t[1] - h, t[1] + h)
    elif name == "empty_square":
        hi = jnp.maximum(h - th, 0.0)
        k = (_rect(size, t[0] - h, t[0] + h, t[1] - h, t[1] + h)
             - _rect(size, t[0] - hi, t[0] + hi, t[1] - hi, t[1] + hi))
    elif name == "l_shape":
        def draw(o):  # o = (row, col) of the top-left corner
            v = _rect(size, o[0], o[0] + ext, o[1], o[1] + th)
            hz = _rect(size, o[0] + ext - th, o[0] + ext, o[1], o[1] + ext)
            ov = _rect(size, o[0] + ext - th, o[0] + ext, o[1], o[1] + th)
            return v + hz - ov

        # continuous centre of mass of the L relative to its corner (same on both axes by
        # symmetry of the construction about the anti-diagonal): vertical bar + bottom bar
        a_v, a_h, a_o = th * ext, ext * th, th * th
        c_col = (a_v * th / 2 + a_h * ext / 2 - a_o * th / 2) / (a_v + a_h - a_o)
        o = jnp.stack([t[0] - (ext - c_col), t[1] - c_col])

        def body(_, o):
            return o + (t - center_of_mass(draw(o)))

        o = jax.lax.fori_loop(0, 6, body, o)
        k = draw(o)
    else:
        raise KfsrInputError(f"shape kernel {name!r}: use 'l_shape', 'empty_square' or "
                             "'filled_square'")
    return normalize(k)


# ----------------------------------------------------------------------------------------------
# loading (numpy, not jitted)
# ----------------------------------------------------------------------------------------------
def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _from_mat(path: str, key: str | None, index: int):
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
        raise KfsrInputError(f"{path}: MATLAB v7.3 .mat is not supported; re-save with "
                             f"save(..., '-v7') ({_one_line(e)})") from None
    names = [n for n in mat if not n.startswith("__")]
    if key is not None:
        if key not in mat:
            raise KfsrInputError(f"{path}: no variable {key!r} (has {', '.join(names) or 'none'})")
        order = [key]
    else:
        order = ([n for n in ("Kernel", "kernel") if n in mat]
                 + [n for n in names if n not in ("Kernel", "kernel")])
    for n in order:
        v = mat[n]
        if isinstance(v, np.ndarray) and v.dtype == object:  # a cell array of kernels
            cells = [c for c in v.ravel() if isinstance(c, np.ndarray) and c.dtype != object
                     and np.squeeze(c).ndim == 2]
            if len(cells) > index:
                return np.squeeze(cells[index])
            continue
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number):
            if np.squeeze(v).ndim == 2 or key is not None:
                return np.squeeze(v)
    raise KfsrInputError(f"{path}: no 2-D numeric variable "
                         f"(variables: {', '.join(names) or 'none'})")


def _from_image(path: str):
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA")
        elif im.mode == "1":
            im = im.convert("L")
        a = np.asarray(im).astype(np.float64)
    if a.ndim == 3:
        c = a.shape[-1]
        a = a[..., 0] if c <= 2 else a[..., :3].mean(axis=-1)  # drop alpha; RGB -> mean grey
    return a


def load_kernel(path, size: int | None = None, *, key: str | None = None, index: int = 0):
    """Read a kernel file -> ``(K, K)`` float32 numpy array, clipped at 0, sum 1.

    ``.mat`` (MATLAB <= v7): variable ``key`` if given, else ``Kernel``, ``kernel``, then the
    first 2-D numeric variable; a cell array (e.g. KAIR's ``kernels``) gives its ``index``-th 2-D
    entry. ``.npy`` / ``.npz`` (first array). ``.png`` / ``.jpg`` / ``.bmp`` / ``.tif``: grey, or
    the mean of R, G, B (alpha dropped). Singleton axes are squeezed. ``size`` zero-pads or crops
    with ``pad_to`` (keeping the anchor) and renormalises. The kernel is used as stored (as a
    correlation kernel; ``flip`` it if the file holds a convolution PSF of an asymmetric blur).
    Raises ``KfsrInputError`` (one line, naming the file) for a missing / unreadable file, an
    unknown extension, non-2-D data, NaN / Inf, or a kernel whose sum is <= 0 or that is all zero
    after clipping.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KfsrInputError(f"{path}: kernel file not found")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".mat":
            a = _from_mat(path, key, index)
        elif ext == ".npy":
            a = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise KfsrInputError(f"{path}: empty .npz")
                a = z[key] if key is not None else z[z.files[0]]
        elif ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
            a = _from_image(path)
        else:
            raise KfsrInputError(f"{path}: unknown kernel file type {ext!r} "
                                 "(.mat, .npy, .npz, .png, .jpg, .bmp, .tif)")
    except KfsrInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise KfsrInputError(f"{path}: cannot read kernel ({_one_line(e)})") from None
    return check_kernel(a, size, name=path)


def check_kernel(a, size: int | None = None, *, name: str = "kernel"):
    """An in-memory kernel array -> ``(K, K)`` float32 numpy array, clipped at 0, sum 1: the
    checks ``load_kernel`` applies after reading a file. Singleton axes are squeezed, a
    rectangular kernel is zero-padded to square about its centre, ``size`` zero-pads or crops
    with ``pad_to``. Raises ``KfsrInputError`` (one line, starting with ``name``) for non-numeric
    or non-2-D data, NaN / Inf, or a kernel whose sum is <= 0 or that is all zero after clipping.
    """
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise KfsrInputError(f"{name}: kernel is not numeric (dtype {a.dtype})")
    a = np.squeeze(a).astype(np.float64)
    if a.ndim != 2 or min(a.shape) < 1:
        raise KfsrInputError(f"{name}: kernel must be 2-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise KfsrInputError(f"{name}: kernel contains NaN or Inf")
    if a.sum() <= 0 and np.any(a != 0):
        raise KfsrInputError(f"{name}: kernel sum is {a.sum():.3g} (must be positive)")
    a = np.maximum(a, 0.0)
    if a.sum() <= 0:
        raise KfsrInputError(f"{name}: kernel is all zero")
    if a.shape[0] != a.shape[1]:
        s = max(a.shape)
        a = np.pad(a, ((s // 2 - a.shape[0] // 2, s - a.shape[0] - (s // 2 - a.shape[0] // 2)),
                       (s // 2 - a.shape[1] // 2, s - a.shape[1] - (s // 2 - a.shape[1] // 2))))
    if size is not None:
        a = np.asarray(pad_to(jnp.asarray(a, _F32), int(size)), np.float64)
        if a.sum() <= 0:
            raise KfsrInputError(f"{name}: kernel is all zero after cropping to {size}x{size}")
    return (a / a.sum()).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
FAMILIES: dict[str, Callable] = {}


def register_family(name: str):
    """Decorator: register ``fn(key, size, scale) -> (size, size)`` under ``name``."""
    def deco(fn):
        FAMILIES[name] = fn
        return fn
    return deco


@register_family("gaussian")
def _fam_gaussian(key, size, scale):
    """Anisotropic Gaussian, eigenvalues in DKP/FKP's test range [0.175 s, min(2.5 s, 10)],
    no noise, aligned centre."""
    lo, hi = dkp_test_range(scale)
    return anisotropic_gaussian(key, size, scale, lo, hi)


@register_family("gaussian_noisy")
def _fam_gaussian_noisy(key, size, scale):
    """As 'gaussian' with DIV2KRK's multiplicative noise (1 + U[-0.25, 0.25])."""
    lo, hi = dkp_test_range(scale)
    return anisotropic_gaussian(key, size, scale, lo, hi, 0.25)


@register_family("motion_line")
def _fam_line(key, size, scale):
    return line_motion(key, size, scale=scale)


@register_family("motion_traj")
def _fam_traj(key, size, scale):
    return trajectory_motion(key, size, scale=scale, n_steps=500)


_MIXED = ("gaussian", "motion_line", "motion_traj")


@register_family("mixed")
def _fam_mixed(key, size, scale):
    """Uniform choice among 'gaussian', 'motion_line', 'motion_traj' (``lax.switch``)."""
    kc, kk = jax.random.split(key)
    i = jax.random.randint(kc, (), 0, len(_MIXED))
    return jax.lax.switch(i, [functools.partial(FAMILIES[n], size=size, scale=scale)
                              for n in _MIXED], kk)


def sample(family: str, key, size: int, scale: int):
    """A kernel of the registered ``family`` (``FAMILIES``): jittable, vmappable over keys."""
    if family not in FAMILIES:
        raise KfsrInputError(f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](key, size, scale)
