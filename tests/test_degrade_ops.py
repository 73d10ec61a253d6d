"""kfsr.degrade: spec validation, blur (direct vs FFT vs scipy), blur_many, sampling, degrade.

Tiny images. The ops are called through jitted wrappers: one XLA program per case compiles about
2x faster than eager mode's many per-op programs (padding alone is dozens of ops).
"""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from kfsr.degrade import Degradation, downsample, imresize, kernels, ops, quantize
from kfsr.degrade import blur as _blur
from kfsr.degrade import degrade as _degrade
from kfsr.errors import KfsrInputError

PADS = ("circular", "reflect", "zero", "valid")
blur = jax.jit(_blur, static_argnames=("padding", "method"))
blur_direct = jax.jit(ops.blur_direct, static_argnames="padding")
blur_fft = jax.jit(ops.blur_fft, static_argnames="padding")
blur_many = jax.jit(ops.blur_many, static_argnames="padding")
degrade = jax.jit(_degrade, static_argnames="spec")
SCIPY_MODE = {"circular": "wrap", "reflect": "reflect", "zero": "constant"}


def _img(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _kernel(size, seed=1, batch=None):
    rng = np.random.default_rng(seed)
    k = rng.random((size, size) if batch is None else (batch, size, size)).astype(np.float32)
    return k / k.sum(axis=(-2, -1), keepdims=True)


def _scipy_blur(x, k, padding):
    """Per-channel scipy.ndimage.correlate (origin 0 = anchored at K//2); 'valid' = crop."""
    mode = SCIPY_MODE.get(padding, "constant")
    y = np.stack([ndi.correlate(x[..., c].astype(np.float64), k.astype(np.float64), mode=mode)
                  for c in range(x.shape[-1])], -1)
    if padding == "valid":
        size = k.shape[0]
        h, w = x.shape[0] - size + 1, x.shape[1] - size + 1
        y = y[size // 2: size // 2 + h, size // 2: size // 2 + w]
    return y


# ----------------------------------------------------------------------------- spec

def test_spec_presets_and_hashable():
    assert Degradation.div2krk(2) == Degradation(2, "reflect", "stride", 0)
    assert Degradation.dkp(4) == Degradation(4, "circular", "stride", 0)
    assert Degradation.blinddiff(4).sampling == "bicubic"
    assert Degradation.blinddiff(4).padding == "reflect"
    assert hash(Degradation(np.int64(2))) == hash(Degradation(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Degradation(2).scale = 3


@pytest.mark.parametrize("kwargs, field", [
    (dict(scale=0), "scale"), (dict(scale=2.0), "scale"), (dict(scale=True), "scale"),
    (dict(scale=2, padding="mirror"), "padding"), (dict(scale=2, sampling="area"), "sampling"),
    (dict(scale=2, offset=2), "offset"), (dict(scale=2, offset=-1), "offset"),
    (dict(scale=2, sampling="bicubic", offset=1), "offset"),
    (dict(scale=2, noise_sigma=-0.1), "noise_sigma"),
    (dict(scale=2, noise_sigma=float("nan")), "noise_sigma"),
])
def test_spec_validation(kwargs, field):
    with pytest.raises(KfsrInputError, match=f"Degradation.{field}") as e:
        Degradation(**kwargs)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- blur

@pytest.mark.parametrize("padding", PADS)
@pytest.mark.parametrize("size", [3, 4, 7])
def test_direct_equals_fft_and_scipy(padding, size):
    # 12 is a fast FFT length (native circular wrap), 14 is not (explicitly padded): both plans.
    x = _img((12, 14, 3))
    k = _kernel(size)
    yd, yf = blur_direct(x, k, padding), blur_fft(x, k, padding)
    ref = _scipy_blur(x, k, padding)
    chex.assert_trees_all_close(yd, yf, atol=1e-5)
    chex.assert_trees_all_close(yd, ref, atol=1e-5)
    chex.assert_trees_all_close(yf, ref, atol=1e-5)
    chex.assert_trees_all_close(blur(x, k, padding), ref, atol=1e-5)


@pytest.mark.parametrize("padding", PADS)
def test_batched_blur(padding):
    x = _img((2, 10, 9, 3))
    k1, kb = _kernel(5), _kernel(4, batch=2)
    for k in (k1, kb):
        yd, yf = blur_direct(x, k, padding), blur_fft(x, k, padding)
        chex.assert_trees_all_close(yd, yf, atol=1e-5)
        for b in range(2):
            kk = k if k.ndim == 2 else k[b]
            chex.assert_trees_all_close(yf[b], _scipy_blur(x[b], kk, padding), atol=1e-5)


def test_direct_many_channels_layout():
    # C > 4 uses the channels-folded layout in blur_direct.
    x = _img((2, 8, 8, 6))
    for k in (_kernel(3), _kernel(3, batch=2)):
        chex.assert_trees_all_close(blur_direct(x, k, "reflect"), blur_fft(x, k, "reflect"),
                                    atol=1e-5)


def test_kernel_larger_than_image_circular():
    x, k = _img((5, 6, 1)), _kernel(7)
    ref = _scipy_blur(x, k, "circular")
    chex.assert_trees_all_close(blur_fft(x, k, "circular"), ref, atol=1e-5)
    chex.assert_trees_all_close(blur_direct(x, k, "circular"), ref, atol=1e-5)


@pytest.mark.parametrize("size", [1, 4, 5])
def test_identity_kernel(size):
    x = _img((9, 10, 3))
    k = np.zeros((size, size), np.float32)
    k[size // 2, size // 2] = 1.0
    for padding in ("circular", "reflect", "zero"):
        for method in ("direct", "fft"):
            chex.assert_trees_all_close(blur(x, k, padding, method), x, atol=1e-6)


def test_blur_many_equals_loop():
    x, ks = _img((11, 12, 3)), _kernel(5, batch=4)
    for padding in PADS:
        y = blur_many(x, ks, padding)
        ref = jnp.stack([blur(x, k, padding) for k in ks])
        chex.assert_shape(y, ref.shape)
        chex.assert_trees_all_close(y, ref, atol=1e-5)


def test_blur_bad_inputs():
    x = _img((8, 8, 3))
    with pytest.raises(KfsrInputError, match="padding"):
        blur(x, _kernel(3), "mirror")
    with pytest.raises(KfsrInputError, match="method"):
        blur(x, _kernel(3), method="winograd")
    with pytest.raises(KfsrInputError, match="kernel batch"):
        blur(x, _kernel(3, batch=2))
    with pytest.raises(KfsrInputError, match="kernel"):
        blur(x, np.ones((3, 4), np.float32))
    with pytest.raises(KfsrInputError, match="valid"):
        blur(x, _kernel(9), "valid")


def test_fast_len():
    assert ops.fast_len(274) == 288 and ops.fast_len(256) == 256 and ops.fast_len(7) == 8
    assert ops.fast_len(1) == 1


# ----------------------------------------------------------------------------- sampling / noise

def test_downsample_quantize():
    x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
    chex.assert_trees_all_equal(downsample(x, 2, 1), x[:, 1::2, 1::2])
    chex.assert_trees_all_equal(downsample(x[0], 3), x[0, ::3, ::3])
    with pytest.raises(KfsrInputError, match="offset"):
        downsample(x, 2, 2)
    q = quantize(jnp.array([-0.1, 0.5, 1.2, 100.4 / 255]))
    chex.assert_trees_all_close(q, jnp.array([0.0, 128 / 255, 1.0, 100 / 255]))


# ----------------------------------------------------------------------------- degrade

def test_degrade_stride_bicubic_noise():
    x, k = _img((2, 12, 12, 3)), _kernel(5)
    y = degrade(x, k, Degradation(3, "reflect", offset=1))
    ref = np.stack([_scipy_blur(x[b], k, "reflect")[1::3, 1::3] for b in range(2)])
    chex.assert_trees_all_close(y, ref, atol=1e-5)
    # K=1 takes the strided direct-conv path.
    k1 = np.full((1, 1), 0.5, np.float32)
    chex.assert_trees_all_close(degrade(x, k1, Degradation(3, offset=2)), 0.5 * x[:, 2::3, 2::3],
                                atol=1e-6)
    yb = degrade(x[0], k, Degradation.blinddiff(2))
    chex.assert_trees_all_close(yb, imresize(_scipy_blur(x[0], k, "reflect"), 0.5), atol=1e-5)
    yv = degrade(x[0], k, Degradation(2, "valid"))
    chex.assert_shape(yv, (4, 4, 3))
    spec = Degradation.dkp(2, noise_sigma=0.1)
    with pytest.raises(KfsrInputError, match="key"):
        degrade(x, k, spec)
    noise = degrade(x, k, spec, key=jax.random.key(0)) - degrade(x, k, Degradation.dkp(2))
    assert 0.08 < float(jnp.std(noise)) < 0.12


def test_degrade_jit_and_grad():
    # One jitted program (forward + grads) on a tiny case; directional finite differences.
    spec = Degradation.div2krk(2)
    x, k = _img((8, 8, 2)), _kernel(3)
    w = _img((4, 4, 2), seed=3)

    def loss(x, k):
        return jnp.sum(w * _degrade(x, k, spec) ** 2)

    val, (gx, gk) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, k)
    chex.assert_tree_all_finite((gx, gk))
    loss = jax.jit(loss)
    chex.assert_trees_all_close(val, loss(x, k), rtol=1e-5)
    chex.assert_trees_all_close(degrade(x, k, spec), _degrade(x, k, spec), atol=1e-6)
    rng = np.random.default_rng(4)
    dx, dk = rng.standard_normal(x.shape).astype(np.float32), rng.standard_normal(k.shape).astype(
        np.float32)
    eps = 1e-2  # loss is quadratic in each argument: central differences are exact up to rounding
    fd_x = (loss(x + eps * dx, k) - loss(x - eps * dx, k)) / (2 * eps)
    fd_k = (loss(x, k + eps * dk) - loss(x, k - eps * dk)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(gx, dx)), float(fd_x), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(float(jnp.vdot(gk, dk)), float(fd_k), rtol=2e-3, atol=1e-4)


def test_reexports():
    assert kernels.__name__ == "kfsr.degrade.kernels"
    with pytest.raises(KfsrInputError, match="spec"):
        degrade(_img((4, 4, 1)), _kernel(3), "div2krk")
