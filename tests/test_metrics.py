"""Tests for kfsr.metrics against independent references and hand computations."""
import math

import jax
import numpy as np
import pytest
from scipy import ndimage

from kfsr import metrics as M

RNG = np.random.default_rng(1)


# ----------------------------------------------------------------------------- independent references


def ref_ssim(a, b):
    """Wang et al. (2004) SSIM as the MATLAB / BasicSR code: float64, 11x11 Gaussian window with
    sigma 1.5, 'valid' region (filter then trim 5 px), C1=(0.01*255)^2, C2=(0.03*255)^2, no clipping."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    win = np.outer(g, g)

    def filt(z):
        return ndimage.correlate(z, win, mode="constant")[5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = filt(a), filt(b)
    s11 = filt(a * a) - mu1**2
    s22 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(m.mean())


def ref_y(levels):
    """MATLAB rgb2ycbcr luma on 8-bit levels: 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    r, g, b = (levels[..., i].astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def natural_pair(h=48, w=52, noise=0.04, seed=0):
    rng = np.random.default_rng(seed)
    hr = ndimage.gaussian_filter(rng.random((h, w, 3)), sigma=(2, 2, 0))
    hr = (hr - hr.min()) / (hr.max() - hr.min())
    sr = np.clip(ndimage.gaussian_filter(hr, (0.8, 0.8, 0)) + noise * rng.standard_normal(hr.shape),
                 0, 1)
    return sr.astype(np.float32), hr.astype(np.float32)


def lv(x):
    return np.clip(np.round(np.asarray(x, np.float64) * 255), 0, 255)


# ----------------------------------------------------------------------------- colour / image metrics


def test_rgb_to_y_known_values():
    px = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(np.asarray(M.rgb_to_y(px)),
                               [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.jit(M.rgb_to_y)(px)), M.rgb_to_y(px), atol=1e-4)


@pytest.mark.parametrize("scale", [2, 4])
def test_ssim_matches_independent_reference(scale):
    sr, hr = natural_pair()
    s = scale
    ys, yh = ref_y(lv(sr))[s:-s, s:-s], ref_y(lv(hr))[s:-s, s:-s]
    assert abs(M.ssim_y(sr, hr, scale) - ref_ssim(ys, yh)) < 1e-4
    rgb_ref = np.mean([ref_ssim(lv(sr)[s:-s, s:-s, c], lv(hr)[s:-s, s:-s, c]) for c in range(3)])
    assert abs(M.ssim_rgb(sr, hr, scale) - rgb_ref) < 1e-4
    assert M.ssim_y(hr, hr, scale) == pytest.approx(1.0, abs=1e-6)


def test_psnr_hand_computed():
    h, w, s = 12, 10, 2
    hr_lv = RNG.integers(20, 230, size=(h, w, 3))
    sr_lv = hr_lv.copy()
    sr_lv[5, 4, 0] += 10  # interior: +10 levels of red
    sr_lv[0, 0, :] += 7  # inside the shaved border: ignored
    hr, sr = hr_lv / 255.0, sr_lv / 255.0
    n = (h - 2 * s) * (w - 2 * s)
    dy = 65.481 * 10 / 255
    assert M.psnr_y(sr, hr, s) == pytest.approx(10 * math.log10(255**2 * n / dy**2), abs=1e-9)
    assert M.psnr_rgb(sr, hr, s) == pytest.approx(10 * math.log10(255**2 * n * 3 / 100), abs=1e-9)
    # values are rounded to 8-bit levels first: sub-half-level differences vanish
    assert M.psnr_y(hr + 0.4 / 255, hr, s) == float("inf")
    # uint8 input is taken as levels
    assert M.psnr_y(sr_lv.astype(np.uint8), hr_lv.astype(np.uint8), s) == M.psnr_y(sr, hr, s)


def test_psnr_y_against_reference_on_natural_pair():
    sr, hr = natural_pair(noise=0.02, seed=3)
    ys, yh = ref_y(lv(sr))[4:-4, 4:-4], ref_y(lv(hr))[4:-4, 4:-4]
    ref = 10 * math.log10(255**2 / np.mean((ys - yh) ** 2))
    assert abs(M.psnr_y(sr, hr, 4) - ref) < 1e-9


def test_greyscale_inputs():
    sr, hr = natural_pair()
    gs, gh = sr[..., 0], hr[..., 0]
    ref = 10 * math.log10(255**2 / np.mean((lv(gs)[3:-3, 3:-3] - lv(gh)[3:-3, 3:-3]) ** 2))
    assert M.psnr_y(gs, gh, 3) == pytest.approx(ref, abs=1e-9)
    assert M.psnr_y(gs[..., None], gh[..., None], 3) == M.psnr_y(gs, gh, 3)
    assert abs(M.ssim_y(gs, gh, 3) - ref_ssim(lv(gs)[3:-3, 3:-3], lv(gh)[3:-3, 3:-3])) < 1e-4


def test_shape_mismatch_and_small_inputs():
    a = np.zeros((20, 20, 3), np.float32)
    b = np.zeros((22, 20, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(22, 20, 3\)"):
        M.psnr_y(a, b, 2)
    with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
        M.ssim_y(a, a, 5)
    with pytest.raises(ValueError, match="NaN"):
        M.psnr_rgb(a * np.nan, a, 0)


def test_jittable_psnr():
    a = RNG.random((8, 8, 3)).astype(np.float32)
    b = np.clip(a + 0.01 * RNG.standard_normal(a.shape), 0, 1).astype(np.float32)
    ref = 10 * math.log10(1 / np.mean((a.astype(np.float64) - b) ** 2))
    assert float(jax.jit(M.psnr)(a, b)) == pytest.approx(ref, abs=1e-3)


# ----------------------------------------------------------------------------- kernel metrics


def gauss(n, centre, sig):
    y, x = np.mgrid[:n, :n]
    k = np.exp(-((y - centre[0]) ** 2 / (2 * sig[0] ** 2) + (x - centre[1]) ** 2 / (2 * sig[1] ** 2)))
    return k / k.sum()


def test_kernel_psnr_hand_example():
    k_gt = np.zeros((3, 3))
    k_gt[1, 1] = 1.0
    k = np.full((3, 3), 1 / 9)
    # MSE = ((8/9)^2 + 8 (1/9)^2) / 9 = 8/81  ->  PSNR = 20 log10(1/sqrt(8/81)) = 10 log10(81/8)
    assert M.kernel_psnr(k, k_gt) == pytest.approx(10 * math.log10(81 / 8), abs=1e-12)
    assert M.kernel_psnr(k_gt, k_gt) == float("inf")
    with pytest.raises(ValueError, match="equal shapes"):
        M.kernel_psnr(np.ones((3, 3)) / 9, np.ones((5, 5)) / 25)


def test_aligned_error_integer_shift_exact():
    blob = RNG.random((7, 6))
    k_gt = np.zeros((19, 19))
    k_gt[6:13, 6:12] = blob
    k_gt /= k_gt.sum()
    k = np.zeros((19, 19))
    k[8:15, 3:9] = k_gt[6:13, 6:12]  # shifted by (+2, -3)
    err, d = M.aligned_kernel_error(k, k_gt, return_shift=True)
    assert err < 1e-6
    np.testing.assert_allclose(d, (-2.0, 3.0), atol=1e-3)
    assert M.aligned_kernel_error(k, k_gt, subpixel=False) < 1e-12
    assert M.kernel_psnr(k, k_gt) < M.kernel_psnr(k_gt, k_gt)  # the raw PSNR does punish the shift


@pytest.mark.parametrize("size", [21, 17])
def test_aligned_error_half_pixel_shift(size):
    k_gt = gauss(21, (10, 10), (1.5, 2.0))
    c = (size - 1) / 2
    k = gauss(size, (c + 0.5, c - 1.5), (1.5, 2.0))  # half-pixel off in y, 1.5 px in x
    err, d = M.aligned_kernel_error(k, k_gt, return_shift=True)
    assert err < 1e-3
    np.testing.assert_allclose(d, (-0.5, 1.5), atol=1e-3)
    assert M.aligned_kernel_error(k, k_gt, subpixel=False) > 0.1  # integer shifts cannot fix it


def test_aligned_error_different_kernel_is_large():
    k_gt = gauss(21, (10, 10), (1.5, 2.0))
    other = gauss(21, (10, 10), (3.0, 1.0))
    assert M.aligned_kernel_error(other, k_gt) > 0.3
    assert M.aligned_kernel_error(k_gt, k_gt) < 1e-9


# ----------------------------------------------------------------------------- LR consistency


def test_lr_consistency_psnr_real_degrade():
    from kfsr.degrade import Degradation, degrade

    spec = Degradation(scale=2, padding="circular")
    hr = RNG.random((16, 16, 3)).astype(np.float32)
    k = gauss(5, (2.5, 2.5), (1.0, 1.0)).astype(np.float32)
    lr = np.asarray(degrade(hr, k, spec))
    assert M.lr_consistency_psnr(hr, k, lr, spec) > 60
    noisy = lr + 0.01 * RNG.standard_normal(lr.shape)
    ref = 10 * math.log10(1 / np.mean((noisy - lr.astype(np.float64)) ** 2))
    assert M.lr_consistency_psnr(hr, k, noisy, spec) == pytest.approx(ref, abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        M.lr_consistency_psnr(hr, k, lr[:-1], spec)
