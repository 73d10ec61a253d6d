"""Pure, jittable, differentiable degradation ops: blur (direct / FFT), stride sampling, noise.

Conventions (docs/CONTRACT.md):
  * images float `(H, W, C)` or batched `(B, H, W, C)`; kernels `(K, K)` or `(B, K, K)` (one per
    batch element); K odd or even.
  * blur is cross-correlation anchored at K//2:
        y[i, j] = sum_{m,n} k[m, n] * x_pad[i + m - K//2, j + n - K//2]
    i.e. scipy.ndimage.correlate(origin=0), lax.conv with padding (K//2, K-1-K//2).
  * padding: "circular" (wrap), "reflect" (scipy.ndimage 'reflect' = numpy 'symmetric'),
    "zero", "valid" (no padding: output (H-K+1, W-K+1)).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kfsr.errors import KfsrInputError

PADDINGS = ("circular", "reflect", "zero", "valid")
_NP_MODE = {"circular": "wrap", "reflect": "symmetric", "zero": "constant"}

# method="auto" uses the FFT for K >= FFT_MIN_KERNEL. Measured with benchmarks/blur_fft_vs_direct.py
# (256x256x3, reflect padding, jax 0.10.2, 2-core EPYC shared with other jobs (load ~8), median of
# 10 runs, ms; "direct" is the layout used below, grouped/folded are the rejected layouts):
#    K   direct fwd/grad   FFT fwd/grad   grouped fwd/grad   folded 1->1 fwd/grad
#    1      0.6 /    5.4     7.2 / 15.1      0.2 /    1.3       0.2 /    1.1
#    2      7.8 /   31.8     4.0 /  7.7     23.1 /   53.6      12.1 /   28.9
#    3     10.4 /   21.2     3.5 / 11.5     43.4 /   93.0      37.2 /   84.1
#    5     31.2 /   57.9     5.9 / 11.4     68.1 /  139.7      40.2 /   94.1
#   11     65.5 /  192.3     4.7 / 10.8    133.3 /  308.1     108.8 /  228.6
#   19    224.4 /  772.3     8.0 / 11.0    232.5 / 1150.1     260.2 /  694.9
#   33    503.6 / 2448.4     4.7 / 12.0    554.7 / 3546.0     311.8 / 2505.6
# XLA:CPU convolutions with so few channels are slow, so the FFT wins from K=2 on (also at 64x64:
# K=2 0.69/2.42 vs 0.34/0.59 ms, and 512x512 circular). Re-measure on GPU/TPU, where direct
# convs of small kernels are likely competitive.
FFT_MIN_KERNEL = 2
_DENSE_MAX_C = 4  # direct blur: dense diagonal conv up to this many channels (see _conv_valid)


# ----------------------------------------------------------------------------- checks / padding

def _check(x, k, name="blur"):
    """Validate shapes; return True when x is batched (B, H, W, C)."""
    if x.ndim not in (3, 4):
        raise KfsrInputError(f"{name}: image must be (H,W,C) or (B,H,W,C), got shape {x.shape}")
    if k.ndim not in (2, 3) or k.shape[-1] != k.shape[-2]:
        raise KfsrInputError(f"{name}: kernel must be (K,K) or (B,K,K), got shape {k.shape}")
    if k.ndim == 3 and (x.ndim != 4 or k.shape[0] != x.shape[0]):
        raise KfsrInputError(
            f"{name}: kernel batch {k.shape} needs a (B,H,W,C) image with the same B, "
            f"got image shape {x.shape}")
    return x.ndim == 4


def _check_padding(padding, name="blur"):
    if padding not in PADDINGS:
        raise KfsrInputError(f"{name}: unknown padding {padding!r}, expected one of {PADDINGS}")


def pad(x, size, padding):
    """Extend the two spatial axes (-3, -2) of x by (size//2, size-1-size//2) per the padding mode.

    After this a VALID correlation with a (size, size) kernel gives the anchored-at-K//2 output.
    """
    _check_padding(padding, "pad")
    if padding == "valid":
        return x
    p = (size // 2, size - 1 - size // 2)
    widths = [(0, 0)] * (x.ndim - 3) + [p, p, (0, 0)]
    return jnp.pad(x, widths, mode=_NP_MODE[padding])


def _out_hw(h, w, size, padding, name="blur"):
    """(h, w) of the stride-1 blur by a KxK kernel: unchanged, or (h-K+1, w-K+1) for "valid"."""
    if padding == "valid":
        if size > h or size > w:
            raise KfsrInputError(
                f"{name}: valid padding needs K <= H, W; got K={size}, image {h}x{w}")
        return h - size + 1, w - size + 1
    return h, w


# ----------------------------------------------------------------------------- direct

def _conv_valid(xp, k, stride=1):
    """VALID correlation of padded (B, Hp, Wp, C) with (K, K) or (B, K, K), given spatial stride."""
    b, hp, wp, c = xp.shape
    dn = ("NHWC", "HWIO", "NHWC")
    # HIGHEST keeps f32 accuracy on TPU/GPU (no effect on CPU).
    conv = functools.partial(lax.conv_general_dilated, window_strides=(stride, stride),
                             padding="VALID", dimension_numbers=dn,
                             precision=lax.Precision.HIGHEST)
    dt = xp.dtype
    if c <= _DENSE_MAX_C:
        # Few channels (RGB): a dense C->C conv with a diagonal kernel (k * I_C). XLA:CPU runs this
        # 2-3x faster than a 1->1 conv or a grouped depthwise conv, despite C x more MACs.
        eye = jnp.eye(c, dtype=dt)
        if k.ndim == 2:
            return conv(xp, k.astype(dt)[:, :, None, None] * eye)
        # Per-sample kernels: samples stacked on the feature axis, one group (C->C) per sample.
        lhs = jnp.transpose(xp, (1, 2, 0, 3)).reshape(1, hp, wp, b * c)
        rhs = (jnp.transpose(k.astype(dt), (1, 2, 0))[:, :, None, :, None]
               * eye[None, None, :, None, :]).reshape(k.shape[-1], k.shape[-1], c, b * c)
        y = conv(lhs, rhs, feature_group_count=b)[0]            # (Ho, Wo, B*C)
        ho, wo = y.shape[0], y.shape[1]
        return jnp.transpose(y.reshape(ho, wo, b, c), (2, 0, 1, 3))
    if k.ndim == 2:
        # Many channels: fold them into the batch and run one 1->1 conv (no C^2 blow-up).
        lhs = jnp.transpose(xp, (0, 3, 1, 2)).reshape(b * c, hp, wp, 1)
        y = conv(lhs, k.astype(dt)[:, :, None, None])
        _, ho, wo, _ = y.shape
        return jnp.transpose(y.reshape(b, c, ho, wo), (0, 2, 3, 1))
    # Many channels, per-sample kernels: channels in the batch, samples as feature groups.
    lhs = jnp.transpose(xp, (3, 1, 2, 0))                       # (C, Hp, Wp, B)
    rhs = jnp.transpose(k.astype(dt), (1, 2, 0))[:, :, None, :]  # (K, K, 1, B)
    y = conv(lhs, rhs, feature_group_count=b)                   # (C, Ho, Wo, B)
    return jnp.transpose(y, (3, 1, 2, 0))


def _blur_direct_strided(x, k, padding, stride=1, offset=0):
    """Direct blur evaluated only at the stride-`stride` grid starting at `offset`.

    Equals downsample(blur_direct(x, k, padding), stride, offset) at 1/stride^2 of the cost.
    """
    batched = _check(x, k)
    _check_padding(padding)
    xb = x if batched else x[None]
    size = k.shape[-1]
    _out_hw(xb.shape[1], xb.shape[2], size, padding)
    xp = pad(xb, size, padding)[:, offset:, offset:, :]
    y = _conv_valid(xp, k, stride)
    return y if batched else y[0]


def blur_direct(x, k, padding="circular"):
    """Blur by direct depthwise convolution (lax.conv_general_dilated).

    x (H,W,C) or (B,H,W,C); k (K,K) or (B,K,K) -> same rank as x, spatial (H,W), or (H-K+1, W-K+1)
    for padding="valid".
    """
    return _blur_direct_strided(x, k, padding)


# ----------------------------------------------------------------------------- FFT

@functools.lru_cache(maxsize=None)
def fast_len(n: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: FFT lengths with large prime factors are slow
    (DESIGN §6: 274 = 2*137 was 3-4x slower than 288)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _fft_plan(length, size, padding):
    """Per spatial axis: (pad?, fft length N, kernel roll, output length)."""
    if padding == "circular" and size <= length and fast_len(length) == length:
        # Wrap-around of an FFT of length H *is* circular padding: no explicit pad needed.
        return False, length, size // 2, length
    if padding == "valid":
        return False, fast_len(length), 0, length - size + 1
    # Explicitly padded image of length H+K-1; any N >= H+K-1 avoids wrap-around in the
    # VALID part, so round N up to a fast length.
    return True, fast_len(length + size - 1), 0, length


def _fft_correlate(xc, kernels, plan_h, plan_w):
    """Correlate channels-first padded images xc (..., C, Hp, Wp) with kernels (..., K, K).

    kernels broadcast against xc's leading dims (a kernel axis gets a size-1 channel axis here).
    Returns (..., C, Ho, Wo).
    """
    size = kernels.shape[-1]
    n = (plan_h[1], plan_w[1])
    xf = jnp.fft.rfft2(xc, s=n)  # zero-pads to the fast lengths
    kp = jnp.pad(kernels.astype(xc.dtype),
                 [(0, 0)] * (kernels.ndim - 2) + [(0, n[0] - size), (0, n[1] - size)])
    # Rolling by -K//2 anchors the correlation at K//2 on axes that use native wrap-around.
    kp = jnp.roll(kp, (-plan_h[2], -plan_w[2]), axis=(-2, -1))
    # Correlation theorem: corr(x, k) = irfft(X * conj(K)).
    kf = jnp.conj(jnp.fft.rfft2(kp))[..., None, :, :]
    y = jnp.fft.irfft2(xf * kf, s=n)
    return y[..., : plan_h[3], : plan_w[3]]


def _fft_pad(x, size, padding, plan_h, plan_w):
    """Apply explicit padding on the axes whose plan asks for it (x is (..., H, W, C))."""
    p = (size // 2, size - 1 - size // 2)
    widths = [(0, 0)] * (x.ndim - 3) + [p if plan_h[0] else (0, 0), p if plan_w[0] else (0, 0),
                                        (0, 0)]
    if plan_h[0] or plan_w[0]:
        x = jnp.pad(x, widths, mode=_NP_MODE[padding])
    return x


def blur_fft(x, k, padding="circular"):
    """Blur via rfft2 (image FFT zero-padded to 5-smooth lengths, then cropped).

    Non-circular modes (and circular on non-fast sizes) pad the image explicitly and do a circular
    FFT correlation on the padded image, which is exact in the cropped region.
    x (H,W,C) or (B,H,W,C); k (K,K) or (B,K,K) -> same shape rules as `blur_direct`.
    """
    _check(x, k)
    _check_padding(padding)
    size = k.shape[-1]
    h, w = x.shape[-3], x.shape[-2]
    _out_hw(h, w, size, padding)
    plan_h, plan_w = _fft_plan(h, size, padding), _fft_plan(w, size, padding)
    xp = _fft_pad(x, size, padding, plan_h, plan_w)
    xc = jnp.moveaxis(xp, -1, -3)            # channels first so the FFT axes are contiguous
    y = _fft_correlate(xc, k, plan_h, plan_w)  # k (B,K,K) -> (B,1,N,N') broadcasts over C
    return jnp.moveaxis(y, -3, -1)


# ----------------------------------------------------------------------------- public blur API

def _resolve_method(method, size):
    if method == "auto":
        return "fft" if size >= FFT_MIN_KERNEL else "direct"
    if method not in ("fft", "direct"):
        raise KfsrInputError(f"blur: unknown method {method!r}, expected 'auto', 'fft' or 'direct'")
    return method


def blur(x, k, padding="circular", method="auto"):
    """Blur x with k (cross-correlation anchored at K//2) after padding per `padding`.

    Args:
      x: (H, W, C) or (B, H, W, C) float image.
      k: (K, K) kernel shared by all images and channels, or (B, K, K), one per batch element.
      padding: "circular" | "reflect" | "zero" | "valid".
      method: "direct" (lax conv), "fft", or "auto" (FFT for K >= FFT_MIN_KERNEL, measured).
    Returns:
      Same rank as x; spatial size (H, W), or (H-K+1, W-K+1) for "valid".
    """
    if _resolve_method(method, k.shape[-1]) == "fft":
        return blur_fft(x, k, padding)
    return blur_direct(x, k, padding)


def blur_many(x, ks, padding="circular"):
    """Blur one image with L kernels in one batched FFT (the image FFT is computed once).

    x (H, W, C), ks (L, K, K) -> (L, H', W', C); (H', W') as in `blur`. For scoring many candidate
    kernels against one image.
    """
    if x.ndim != 3:
        raise KfsrInputError(f"blur_many: image must be (H,W,C), got shape {x.shape}")
    if ks.ndim != 3 or ks.shape[-1] != ks.shape[-2]:
        raise KfsrInputError(f"blur_many: kernels must be (L,K,K), got shape {ks.shape}")
    _check_padding(padding, "blur_many")
    size = ks.shape[-1]
    h, w = x.shape[0], x.shape[1]
    _out_hw(h, w, size, padding)
    plan_h, plan_w = _fft_plan(h, size, padding), _fft_plan(w, size, padding)
    xc = jnp.moveaxis(_fft_pad(x, size, padding, plan_h, plan_w), -1, 0)  # (C, Hp, Wp)
    y = _fft_correlate(xc, ks, plan_h, plan_w)                             # (L, C, Ho, Wo)
    return jnp.moveaxis(y, 1, -1)


# ----------------------------------------------------------------------------- sampling, noise

def downsample(x, scale: int, offset: int = 0):
    """Stride sampling x[..., offset::scale, offset::scale, :] of (H,W,C) or (B,H,W,C)."""
    if int(scale) != scale or scale < 1:
        raise KfsrInputError(f"downsample: scale must be an integer >= 1, got {scale!r}")
    if int(offset) != offset or not 0 <= offset < scale:
        raise KfsrInputError(
            f"downsample: offset must be an integer in [0, {scale}), got {offset!r}")
    if x.ndim not in (3, 4):
        raise KfsrInputError(f"downsample: image must be (H,W,C) or (B,H,W,C), got {x.shape}")
    s, o = int(scale), int(offset)
    return x[..., o::s, o::s, :]


def add_noise(x, sigma, key):
    """x + sigma * N(0, 1) with an explicit key; sigma in image units (5 grey levels = 5/255)."""
    return x + jnp.asarray(sigma, x.dtype) * jax.random.normal(key, x.shape, x.dtype)


def quantize(x, levels: int = 255):
    """Clip to [0, 1] and round to `levels` steps (uint8 saving when levels=255). Not differentiable
    in a useful way (zero gradient almost everywhere); use it for data synthesis only."""
    return jnp.round(jnp.clip(x, 0.0, 1.0) * levels) / levels


__all__ = ["PADDINGS", "FFT_MIN_KERNEL", "pad", "fast_len", "blur", "blur_direct", "blur_fft",
           "blur_many", "downsample", "add_noise", "quantize"]
