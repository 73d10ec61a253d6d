"""degrade(hr, k, Degradation.div2krk(2)) reproduces the DIV2KRK synthesis recipe from files.

DIV2KRK (KernelGAN, Bell-Kligler et al. 2019): per channel scipy.ndimage correlate with the kernel
(mode 'reflect', origin 0), keep [::2, ::2], save uint8 PNGs; kernels in gt_k_x2/kernel_<i>.mat
under key 'Kernel'. We synthesise that layout in a tmp dir, read it back, and compare.
Measured: 58.9 dB against the saved LR (= the uint8 rounding floor, 10*log10(12*255^2) = 58.9 dB);
the wrong conventions on the same data: offset=1 31.0 dB, circular padding 34.1 dB, zero 24.4 dB.
"""
import os

import imageio.v3 as iio
import numpy as np
import scipy.io
import scipy.ndimage as ndi

from kfsr.degrade import Degradation, degrade


def _psnr(a, b):
    err = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 10 * np.log10(1.0 / np.mean(err ** 2))


def _aniso_gaussian(size, scale, sigmas, theta):
    """Own numpy anisotropic Gaussian, centre of mass at K//2 + 0.5*(s - K%2) (kfsr 'aligned')."""
    c = size // 2 + 0.5 * (scale - size % 2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag(np.square(sigmas)) @ rot.T)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    d = np.stack([yy - c, xx - c], -1)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return k / k.sum()


def _smooth_image(seed, shape=(64, 64, 3)):
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.random(shape), sigma=(2.0, 2.0, 0))
    return (x - x.min()) / (x.max() - x.min())


def test_div2krk_layout_roundtrip(tmp_path):
    root = str(tmp_path)
    for d in ("gt", "lr_x2", "gt_k_x2"):
        os.makedirs(os.path.join(root, d))
    hr8 = np.round(_smooth_image(0) * 255).astype(np.uint8)
    k = _aniso_gaussian(11, 2, sigmas=(2.6, 1.1), theta=0.6)
    iio.imwrite(os.path.join(root, "gt", "im_1.png"), hr8)
    scipy.io.savemat(os.path.join(root, "gt_k_x2", "kernel_1.mat"), {"Kernel": k})
    # The DIV2KRK recipe, in float64 scipy.
    hr_f = hr8.astype(np.float64) / 255
    blurred = np.stack([ndi.correlate(hr_f[..., c], k, mode="reflect") for c in range(3)], -1)
    lr8 = np.clip(np.round(blurred[::2, ::2] * 255), 0, 255).astype(np.uint8)
    iio.imwrite(os.path.join(root, "lr_x2", "im_1.png"), lr8)

    hr = iio.imread(os.path.join(root, "gt", "im_1.png")).astype(np.float32) / 255
    lr = iio.imread(os.path.join(root, "lr_x2", "im_1.png")).astype(np.float32) / 255
    kk = scipy.io.loadmat(os.path.join(root, "gt_k_x2", "kernel_1.mat"))["Kernel"]
    kk = kk.astype(np.float32)

    y = np.asarray(degrade(hr, kk, Degradation.div2krk(2)))
    assert y.shape == lr.shape == (32, 32, 3)
    p = _psnr(y, lr)
    assert p >= 45.0, p
    # Negative controls: the wrong stride phase or padding is clearly worse.
    for wrong in (Degradation(2, "reflect", offset=1), Degradation.dkp(2)):
        p_wrong = _psnr(degrade(hr, kk, wrong), lr)
        assert p_wrong < p - 10, (wrong, p, p_wrong)
