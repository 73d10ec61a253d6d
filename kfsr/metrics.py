"""Image and kernel quality metrics, computed the way SR papers report them.

Image metrics (``psnr_y``, ``ssim_y``, ``psnr_rgb``, ``ssim_rgb``) follow the MATLAB / BasicSR / DKP
evaluation protocol:

1. Both images are quantised to 8-bit levels first: ``clip(round(x * 255), 0, 255)`` for float input
   in [0, 1] (``uint8`` input is taken as levels already). This is what happens when an SR result is
   written to and read back from a PNG (DKP ``tensor2im01``; BasicSR ``tensor2img``).
2. ``*_y`` metrics convert to luma with :func:`rgb_to_y` (ITU-R BT.601, MATLAB ``rgb2ycbcr``, Y in
   [16, 235], kept as float, not re-rounded, as BasicSR ``bgr2ycbcr(y_only=True)`` and DKP's
   ``rgb2ycbcr(only_y=True)`` do). A single-channel (greyscale) input is used as-is on the 0-255
   scale, as the MATLAB scripts and BasicSR do for 1-channel images.
3. ``scale`` pixels are shaved from every border (DKP ``evaluation_dataset``, BasicSR ``crop_border``).
4. PSNR uses peak 255. SSIM is Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, valid region,
   C1 = (0.01*255)^2, C2 = (0.03*255)^2, computed with ``dm_pix.ssim(max_val=255)``; RGB SSIM is the
   mean over channels (BasicSR). tests/test_metrics.py checks it against an independent numpy/scipy
   implementation.

Kernel metrics:

* :func:`kernel_psnr` -- DKP's definition (reference/methods/dkp.md §6.1, "Evaluation protocol in
  code"; DKP ``util.calculate_psnr(k_gt, k_est, is_kernel=True)``):
  ``20 * log10(1 / sqrt(mean((k_gt - k)^2)))`` over the raw KxK entries; peak 1, no shift
  alignment, no normalisation (DKP kernels already sum to 1).
* :func:`aligned_kernel_error` -- relative L2 error after removing the best (sub-pixel) translation,
  since a kernel is only defined up to a shift of the image grid.

All metric functions accept numpy or jax arrays and return Python floats, except :func:`psnr`,
which is a jittable jnp function for use as a training metric.
"""
from __future__ import annotations

import dataclasses
import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "rgb_to_y",
    "psnr",
    "psnr_y",
    "ssim_y",
    "psnr_rgb",
    "ssim_rgb",
    "kernel_psnr",
    "aligned_kernel_error",
    "lr_consistency_psnr",
]

# ITU-R BT.601 luma row of MATLAB rgb2ycbcr for R, G, B in [0, 1]; Y = 16 + <coef, rgb> in [16, 235].
_Y_COEF = (65.481, 128.553, 24.966)
_SSIM_WINDOW = 11


def rgb_to_y(img):
    """Luma Y of an RGB image, ITU-R BT.601 as MATLAB ``rgb2ycbcr`` (studio swing).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for ``R, G, B`` in [0, 1], so Y is on the 8-bit
    scale [16, 235] (white -> 235, black -> 16). Input ``(..., 3)`` float in [0, 1], numpy or jax
    (jittable); output ``(...)`` of the same array type. Y is not rounded.
    """
    if img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects (..., 3) RGB input, got shape {tuple(img.shape)}")
    return 16.0 + (_Y_COEF[0] * img[..., 0] + _Y_COEF[1] * img[..., 1] + _Y_COEF[2] * img[..., 2])


def psnr(a, b, max_val: float = 1.0):
    """Plain PSNR in dB between float arrays (no rounding, no shave); jittable, returns a jnp scalar.

    ``10 log10(max_val^2 / mean((a - b)^2))``; ``inf`` when the arrays are equal.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    mse = jnp.mean(jnp.square(a - b))
    return 10.0 * jnp.log10(max_val**2 / mse)


# ----------------------------------------------------------------------------- image metrics


def _levels(x, name: str) -> np.ndarray:
    """(H,W[,C]) float [0,1] or uint8 -> float64 (H,W,C) 8-bit levels in [0, 255], C in {1, 3}."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: expected an image of shape (H,W,3), (H,W,1) or (H,W), got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float64)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected float in [0,1] or uint8, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: image contains NaN or Inf")
    return np.clip(np.round(x * 255.0), 0.0, 255.0)


def _pair(sr, hr, scale, channel: str):
    a = _levels(sr, "sr")
    b = _levels(hr, "hr")
    if a.shape != b.shape:
        raise ValueError(
            f"sr shape {a.shape} != hr shape {b.shape}: crop both to a common size first "
            "(e.g. kfsr.io.mod_crop on the HR)")
    if channel == "y" and a.shape[-1] == 3:
        a = rgb_to_y(a / 255.0)[..., None]
        b = rgb_to_y(b / 255.0)[..., None]
    s = int(scale)
    if s < 0:
        raise ValueError(f"border shave (scale) must be >= 0, got {scale}")
    h, w = a.shape[:2]
    if h - 2 * s < 1 or w - 2 * s < 1:
        raise ValueError(f"image {h}x{w} is too small for a border shave of {s} pixels")
    if s:
        a = a[s:h - s, s:w - s]
        b = b[s:h - s, s:w - s]
    return a, b


def _psnr255(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(255.0**2 / mse)


@jax.jit
def _ssim255(a, b):
    return dm_pix.ssim(a, b, max_val=255.0, filter_size=_SSIM_WINDOW, filter_sigma=1.5,
                       k1=0.01, k2=0.03)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    if min(a.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after the border shave, "
            f"got {a.shape[0]}x{a.shape[1]}")
    return float(_ssim255(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def psnr_y(sr, hr, scale: int) -> float:
    """PSNR (dB) on the BT.601 Y channel, 8-bit levels, ``scale`` px border shave, peak 255."""
    return _psnr255(*_pair(sr, hr, scale, "y"))


def ssim_y(sr, hr, scale: int) -> float:
    """SSIM (Wang et al. 2004) on the BT.601 Y channel, 8-bit levels, ``scale`` px border shave."""
    return _ssim(*_pair(sr, hr, scale, "y"))


def psnr_rgb(sr, hr, scale: int = 0) -> float:
    """PSNR (dB) over all channels, 8-bit levels, ``scale`` px border shave, peak 255."""
    return _psnr255(*_pair(sr, hr, scale, "rgb"))


def ssim_rgb(sr, hr, scale: int = 0) -> float:
    """SSIM computed per channel on 8-bit levels and averaged (BasicSR), ``scale`` px shave."""
    return _ssim(*_pair(sr, hr, scale, "rgb"))


# ----------------------------------------------------------------------------- kernel metrics


def _kernel64(k, name: str) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"{name}: expected a 2-D kernel, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError(f"{name}: kernel contains NaN or Inf")
    return k


def kernel_psnr(k, k_gt) -> float:
    """Kernel PSNR exactly as DKP reports it (reference/methods/dkp.md §6.1).

    ``20 * log10(1 / sqrt(MSE(k_gt, k)))`` over the KxK entries of the raw kernels: peak value 1, no
    normalisation beyond what the kernels already have (sum 1), no shift alignment. ``inf`` for
    identical kernels. Both kernels must have the same shape (DKP compares equal-size kernels).
    """
    a = _kernel64(k, "k")
    g = _kernel64(k_gt, "k_gt")
    if a.shape != g.shape:
        raise ValueError(f"kernel_psnr needs equal shapes, got k {a.shape} and k_gt {g.shape}")
    mse = float(np.mean((g - a) ** 2))
    if mse == 0.0:
        return float("inf")
    return 20.0 * math.log10(1.0 / math.sqrt(mse))


def _align(a: np.ndarray, g: np.ndarray, subpixel: bool = True, max_shift: float | None = None):
    """`aligned_kernel_error`'s steps 2-5 for n pairs at once: a (n, Ka0, Ka1) and g (n, Kg0, Kg1),
    float64, already normalised. Returns (errors (n,), shifts t (n, 2) on the canvas, canvas
    offsets of a and of g (2,) each)."""
    n = len(a)
    size = tuple(int(na + ng + 1) | 1 for na, ng in zip(a.shape[1:], g.shape[1:]))  # odd

    def embed(x):
        off = [(m - k) // 2 for m, k in zip(size, x.shape[1:])]
        c = np.zeros((n,) + size)
        c[:, off[0]:off[0] + x.shape[1], off[1]:off[1] + x.shape[2]] = x
        return c, np.asarray(off, np.float64)

    (A, off_a), (G, off_g) = embed(a), embed(g)
    FA, FG = np.fft.fft2(A), np.fft.fft2(G)
    # corr[t] = sum_x A[x] G[x + t] = <A shifted by t, G>
    corr = np.real(np.fft.ifft2(np.conj(FA) * FG))
    lag = [np.fft.ifftshift(np.arange(m) - m // 2) for m in size]  # signed lag of each index
    if max_shift is not None:
        mask = (np.abs(lag[0])[:, None] <= max_shift) & (np.abs(lag[1])[None, :] <= max_shift)
        corr = np.where(mask, corr, -np.inf)
    iy, ix = np.unravel_index(np.argmax(corr.reshape(n, -1), axis=1), size)
    t = np.stack([lag[0][iy], lag[1][ix]], 1).astype(np.float64)  # (n, 2)
    fy, fx = np.fft.fftfreq(size[0]), np.fft.fftfreq(size[1])
    if subpixel:
        X = FA * np.conj(FG) / (size[0] * size[1])
        half, grid, rows = 1.0, np.linspace(-1.0, 1.0, 41), np.arange(n)
        for _ in range(4):
            dy = t[:, :1] + half * grid  # (n, 41)
            dx = t[:, 1:] + half * grid
            ey = np.exp(-2j * np.pi * dy[:, :, None] * fy[None, None, :])  # (n, 41, S0)
            ex = np.exp(-2j * np.pi * dx[:, :, None] * fx[None, None, :])  # (n, 41, S1)
            # c[:, i, j] = <A shifted by (dy_i, dx_j), G>. einsum, not matmul: BLAS thread
            # start-up dominates these tiny products on a busy machine (30 ms vs 0.2 ms)
            c = np.real(np.einsum("nil,njl->nij", np.einsum("nik,nkl->nil", ey, X), ex))
            i, j = np.unravel_index(np.argmax(c.reshape(n, -1), axis=1), (41, 41))
            t = np.stack([dy[rows, i], dx[rows, j]], 1)
            half /= 20.0
    phase = np.exp(-2j * np.pi * (fy[None, :, None] * t[:, 0, None, None]
                                  + fx[None, None, :] * t[:, 1, None, None]))
    aligned = np.real(np.fft.ifft2(FA * phase))
    err = np.linalg.norm((aligned - G).reshape(n, -1), axis=1)
    return err / np.linalg.norm(g.reshape(n, -1), axis=1), t, off_a, off_g


def aligned_kernel_error(k, k_gt, subpixel: bool = True, return_shift: bool = False,
                         max_shift: float | None = None, normalize: bool = True):
    """Relative L2 kernel error after the best translation: ``||k_aligned - k_gt|| / ||k_gt||``.

    A blur kernel is only defined up to a shift (a shifted kernel gives the same image up to a
    shift), so the raw kernel PSNR punishes an estimate that is right but off-centre. Procedure:

    1. If ``normalize`` (default), both kernels are divided by their sums (compare shapes, not gain).
    2. Both are centred on a common zero canvas of odd size >= ``K_k + K_gt + 1`` per axis, so every
       relative shift with overlap is a distinct circular lag and nothing wraps onto the kernel.
    3. Integer shift: argmax of the FFT cross-correlation ``<shift(k, t), k_gt>`` over all lags
       (within ``|t| <= max_shift`` per axis if given). Because shifting preserves ``||k||``,
       maximising the correlation minimises the L2 error.
    4. Sub-pixel (``subpixel=True``): the shift is a Fourier (band-limited, sinc) phase shift on the
       odd-sized canvas, which is exact for integer shifts and keeps the kernel real and its norm
       unchanged. The correlation, a trigonometric polynomial in ``t``, is maximised within +-1 px of
       the integer optimum by four nested 41x41 grids (steps 0.05, 2.5e-3, 1.25e-4, 6.25e-6 px).
    5. The error is computed explicitly from the shifted canvas: mass that ``k`` puts outside the
       support of ``k_gt`` counts as error.

    Returns the error (float; 0 = identical up to translation), or ``(error, (dy, dx))`` with
    ``return_shift=True``: the shift in pixels to apply to ``k`` (``k_aligned[y] = k[y - d]``) to
    best match ``k_gt``, both measured from their arrays' geometric centres ``(K - 1) / 2``.
    Kernels may have different (also rectangular) sizes.
    """
    a = _kernel64(k, "k")
    g = _kernel64(k_gt, "k_gt")
    if normalize:
        sa, sg = a.sum(), g.sum()
        if sa <= 0 or sg <= 0:
            raise ValueError(f"cannot normalise kernels with sums {sa:.3g} (k) and {sg:.3g} (k_gt)")
        a = a / sa
        g = g / sg
    if float(np.linalg.norm(g)) == 0.0:
        raise ValueError("k_gt is all zeros")
    err, t, off_a, off_g = _align(a[None], g[None], subpixel=subpixel, max_shift=max_shift)
    if not return_shift:
        return float(err[0])
    d = t[0] + off_a - off_g + (np.asarray(a.shape) - 1) / 2.0 - (np.asarray(g.shape) - 1) / 2.0
    return float(err[0]), (float(d[0]), float(d[1]))


# ----------------------------------------------------------------------------- LR consistency


def lr_consistency_psnr(hr_est, kernel, lr, spec) -> float:
    """PSNR (dB, RGB, float, no rounding, no shave, peak 1) of ``degrade(hr_est, kernel, spec)`` vs ``lr``.

    Measures how well an (HR estimate, kernel) pair explains the observed LR image under the forward
    model ``spec`` (a :class:`kfsr.degrade.Degradation`). The re-degradation is noise-free: a
    ``noise_sigma`` in ``spec`` is set to 0 for this check.
    """
    from kfsr.degrade import degrade  # lazy: the degradation package imports more of kfsr

    if getattr(spec, "noise_sigma", 0) and dataclasses.is_dataclass(spec):
        spec = dataclasses.replace(spec, noise_sigma=0.0)
    lr_hat = np.asarray(degrade(jnp.asarray(hr_est, jnp.float32), jnp.asarray(kernel, jnp.float32),
                                spec), np.float64)
    lr = np.asarray(lr, np.float64)
    if lr_hat.shape != lr.shape:
        raise ValueError(
            f"re-degraded HR has shape {lr_hat.shape} but lr has shape {lr.shape} "
            f"(hr_est shape {np.shape(hr_est)}, spec {spec})")
    mse = float(np.mean((lr_hat - lr) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(1.0 / mse)


def aligned_field_errors(field, field_gt, chunk: int = 256) -> np.ndarray:
    """Per-pixel `kfsr.metrics.aligned_kernel_error` (normalize=True, subpixel=True) of two kernel
    fields, vectorised over pixels (same algorithm, same canvases; equal to the per-pixel calls
    up to float rounding).

    field: (h, w, Ka, Ka) or one (Ka, Ka) kernel (broadcast to every pixel); field_gt: (h, w, Kg,
    Kg). The sizes may differ (each kernel is centred on a common zero canvas, as a central
    zero-padding would do; the error is shift invariant). Returns (h, w) float64."""
    g = np.asarray(field_gt, np.float64)
    k = np.asarray(field, np.float64)
    if g.ndim != 4 or g.shape[2] != g.shape[3]:
        raise ValueError(f"field_gt: expected (h, w, K, K), got {g.shape}")
    if k.ndim == 2:
        k = np.broadcast_to(k, g.shape[:2] + k.shape)
    if k.ndim != 4 or k.shape[:2] != g.shape[:2]:
        raise ValueError(f"field: expected (K, K) or {g.shape[:2]} + (K, K), got {k.shape}")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(g))):
        raise ValueError("aligned_field_errors: NaN or Inf in a field")
    hw = g.shape[:2]
    k, g = k.reshape((-1,) + k.shape[2:]), g.reshape((-1,) + g.shape[2:])
    out = np.concatenate([_aligned_errors_flat(k[i:i + chunk], g[i:i + chunk])
                          for i in range(0, len(g), chunk)])
    return out.reshape(hw)


def _aligned_errors_flat(a, g) -> np.ndarray:
    """a (n, Ka, Ka), g (n, Kg, Kg) -> (n,): aligned_kernel_error (normalize, subpixel) per row."""
    sa, sg = a.sum((1, 2), keepdims=True), g.sum((1, 2), keepdims=True)
    if np.any(sa <= 0) or np.any(sg <= 0):
        raise ValueError("aligned_field_errors: a kernel with sum <= 0")
    return _align(a / sa, g / sg)[0]


def field_lr_psnr(hr_gt, field, lr, spec) -> float:
    """MANet's LR-consistency PSNR of a kernel field: the ground-truth HR (H, W, 3) re-degraded
    with `field` ((h, w, K, K) on the LR grid, or one (K, K) kernel broadcast to every pixel)
    under the set's spatially variant forward model `spec` (noise-free) vs the LR (h, w, 3); dB,
    RGB, peak 1, no shave."""
    from kfsr.degrade.spatial import degrade_spatial

    lr = np.asarray(lr, np.float64)
    f = np.asarray(field, np.float32)
    if f.ndim == 2:
        f = np.broadcast_to(f, lr.shape[:2] + f.shape)
    y = degrade_spatial(jnp.asarray(hr_gt, jnp.float32), jnp.asarray(f),
                        dataclasses.replace(spec, noise_sigma=0.0))
    y = np.asarray(y, np.float64)
    if y.shape != lr.shape:
        raise ValueError(f"re-degraded HR {y.shape} vs LR {lr.shape} (field {f.shape})")
    mse = float(np.mean((y - lr) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
