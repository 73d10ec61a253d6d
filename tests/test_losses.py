"""kfsr.losses: DKP's SSIM loss, MSE and hyper-Laplacian gradient prior."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfsr import losses


def _ssim_reference(a, b):
    """Direct transcription of DKP model/SSIM.py (grouped 11x11 conv, zero padding 5)."""
    g = np.array([np.exp(-((x - 5) ** 2) / (2 * 1.5 ** 2)) for x in range(11)])
    w = np.outer(g / g.sum(), g / g.sum())
    c = a.shape[-1]
    k = jnp.tile(jnp.asarray(w, jnp.float32)[:, :, None, None], (1, 1, 1, c))

    def conv(x):
        return jax.lax.conv_general_dilated(x[None], k, (1, 1), [(5, 5), (5, 5)],
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=c, precision="highest")[0]

    m1, m2 = conv(a), conv(b)
    s1, s2, s12 = conv(a * a) - m1 ** 2, conv(b * b) - m2 ** 2, conv(a * b) - m1 * m2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float(jnp.mean(((2 * m1 * m2 + c1) * (2 * s12 + c2)) / ((m1 ** 2 + m2 ** 2 + c1) * (s1 + s2 + c2))))


def test_ssim_loss_identical_is_zero_and_matches_reference():
    a = jax.random.uniform(jax.random.key(0), (20, 23, 3))
    b = jnp.clip(a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), 0, 1)
    assert float(losses.ssim_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.ssim(a, b)) == pytest.approx(_ssim_reference(a, b), abs=1e-5)
    # batched input: mean over everything, same as the single image
    assert float(losses.ssim_loss(a[None], b[None])) == pytest.approx(float(losses.ssim_loss(a, b)), abs=1e-6)
    # zero padding: a constant image against itself shifted in level is penalised at the borders too
    assert 0.0 < float(losses.ssim_loss(a, b)) < 1.0


def test_mse():
    a = jnp.array([[[0.0], [1.0]]])
    assert float(losses.mse(a, jnp.zeros_like(a))) == pytest.approx(0.5)


def test_gradient_prior_hand_example():
    # x[i, j] = 4i + j on a 3x4 grid. Reflect padding (edge not repeated). |differences| summed:
    # up 12*4 = 48; up-left 14 + 18 + 18 = 50; left 12*1 = 12; down-left 14 + 14 + 18 = 46 -> 156.
    x = jnp.arange(12.0).reshape(3, 4, 1)
    assert float(losses.gradient_prior(x, 1.0, exponent=1.0, eps=0.0, normalizer=1.0)) == pytest.approx(156.0)
    # DKP's values: weight 2e-4, exponent 0.67, eps 1e-8, divided by the LR element count
    d = np.array([4.0] * 12 + [5, 3, 3, 3, 3, 5, 5, 5, 3, 5, 5, 5] + [1.0] * 12
                 + [5, 3, 3, 3, 5, 3, 3, 3, 3, 5, 5, 5])
    expect = 2e-4 * np.sum((d + 1e-8) ** 0.67) / 6.0
    got = float(losses.gradient_prior(x, 2e-4, 0.67, 1e-8, normalizer=6.0))
    assert got == pytest.approx(expect, rel=1e-5)


def test_gradient_prior_zero_difference_has_zero_gradient():
    # torch's |d| has gradient sign(d) = 0 at d = 0; a flat image must not get a huge push
    g = jax.grad(lambda x: losses.gradient_prior(x, 1.0, normalizer=1.0))(jnp.ones((4, 4, 1)))
    assert float(jnp.max(jnp.abs(g))) == 0.0
