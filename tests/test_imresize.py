"""kfsr.degrade.imresize vs an independent loop port of MATLAB imresize, Pillow and jax.image.

Measured on this machine (float32 uniform-random images in [0, 1]; 'interior' = output pixels
whose cubic support, half-width 2 / min(scale, 1) input pixels, stays inside the image):
  * vs the independent loop port below (float64): max abs diff 0.6-1.4e-7 everywhere, for x1/2,
    x1/4, x2, x1/3 on non-multiple sizes, x0.7 and per-axis (9, 24) from (20, 16) (asserted 1e-5).
  * vs Pillow 'F' bicubic (48x48x3): interior 1.2e-7 (x1/2), 1.2e-7 (x1/4), 2.4e-7 (x2)
    (asserted 1e-5); borders 6.4e-2 (x1/2), 3.4e-2 (x1/4), 1.9e-2 (x2): Pillow drops
    out-of-range taps and renormalises where MATLAB mirrors (asserted > 1e-4: they really differ).
  * vs jax.image.resize(cubic, antialias=True): interior 0.0 (bit-identical), borders identical
    to Pillow's numbers above (same renormalising boundary); DESIGN §7 saw 15 grey levels on
    photos.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kfsr.degrade import imresize
from kfsr.degrade.imresize import output_size
from kfsr.errors import KfsrInputError


# ----------------------------------------------------------------------------- reference

def _matlab_cubic(t):
    a = abs(t)
    if a <= 1:
        return 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    if a <= 2:
        return -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return 0.0


def _resize_axis_loop(x, out_len, scale, antialias=True):
    """Straight loop port of MATLAB's contributions()+resizeAlongDim() along axis 0 (float64)."""
    n = x.shape[0]
    width = 4.0
    widen = scale < 1 and antialias
    if widen:
        width = width / scale
    aux = list(range(1, n + 1)) + list(range(n, 0, -1))  # MATLAB: [1:n, n:-1:1]
    out = np.zeros((out_len,) + x.shape[1:])
    for i in range(1, out_len + 1):                       # 1-based like MATLAB
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = math.ceil(width) + 2
        ws, idx = [], []
        for p in range(taps):
            j = left + p
            w = scale * _matlab_cubic(scale * (u - j)) if widen else _matlab_cubic(u - j)
            ws.append(w)
            idx.append(aux[(j - 1) % len(aux)])           # mirror, 1-based
        total = sum(ws)
        for w, j in zip(ws, idx):
            out[i - 1] += (w / total) * x[j - 1]
    return out


def _imresize_loop(x, scale_hw, out_hw):
    """MATLAB order: dimension with the smaller scale first (stable sort: H on ties)."""
    y = x.astype(np.float64)
    for d in sorted(range(2), key=lambda d: scale_hw[d]):
        y = np.moveaxis(_resize_axis_loop(np.moveaxis(y, d, 0), out_hw[d], scale_hw[d]), 0, d)
    return y


def _pillow(x, out_hw):
    """Pillow 'F' (float32) bicubic per channel: a = -0.5, support widened when downscaling."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]).astype(np.float32))
                        .resize((out_hw[1], out_hw[0]), Image.BICUBIC)) for c in range(x.shape[-1])]
    return np.stack(chans, -1)


def _interior(a, scale):
    """Drop output pixels whose (half-width 2 / min(scale, 1) input px) support crosses a border."""
    m = int(math.ceil(2 * max(scale, 1))) + 1
    return a[m:-m, m:-m]


def _img(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("shape, scale, out_shape", [
    ((24, 20, 3), 0.5, None),
    ((24, 20, 3), 0.25, None),
    ((10, 9, 3), 2, None),
    ((21, 17, 1), 1 / 3, None),          # non-multiple sizes: ceil(21/3), ceil(17/3)
    ((20, 20, 2), 0.7, None),            # non-integer factor
    ((20, 16, 2), None, (9, 24)),        # different per-axis scales (order rule), up and down
])
def test_matches_matlab_loop(shape, scale, out_shape):
    x = _img(shape)
    y = np.asarray(imresize(x, scale=scale, output_shape=out_shape))
    out, sc = output_size(shape[:2], scale, out_shape)
    ref = _imresize_loop(x, sc, out)
    assert y.shape == (*out, shape[2])
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 0.25, 2])
def test_vs_pillow_and_jax_image(scale):
    x = _img((48, 48, 3))
    y = np.asarray(imresize(x, scale))
    out = y.shape[:2]
    pil = _pillow(x, out)
    jim = np.asarray(jax.image.resize(x, (*out, 3), "cubic", antialias=True))
    for other in (pil, jim):
        interior = np.abs(_interior(y, scale) - _interior(other, scale)).max()
        border = np.abs(y - other).max()
        assert interior < 1e-5, interior
        assert border > 1e-4, border  # border handling (mirror vs renormalise) really differs


def test_known_values():
    # Constant stays constant (weights sum to 1, also at mirrored borders).
    c = np.full((7, 9, 2), 0.3, np.float32)
    chex.assert_trees_all_close(imresize(c, 2), np.full((14, 18, 2), 0.3), atol=1e-6)
    chex.assert_trees_all_close(imresize(c, 1 / 3), np.full((3, 3, 2), 0.3), atol=1e-6)
    # Linear ramp x[i] = i, downscale by 2: output i samples u = 2i + 0.5 (0-based) with taps at
    # symmetric half-integer offsets, so the interior is exactly 2i + 0.5; by 4: 4i + 1.5.
    ramp = np.tile(np.arange(32, dtype=np.float32)[:, None, None], (1, 4, 1))
    y2 = np.asarray(imresize(ramp, 0.5))[:, 0, 0]
    np.testing.assert_allclose(y2[2:-2], 2 * np.arange(16)[2:-2] + 0.5, atol=1e-4)
    y4 = np.asarray(imresize(ramp, 0.25))[:, 0, 0]
    np.testing.assert_allclose(y4[2:-2], 4 * np.arange(8)[2:-2] + 1.5, atol=1e-4)
    # Scale 1 is the identity; 30 * 0.1 gives 3 rows, not 4 (float round-off guard).
    x = _img((6, 5, 1))
    chex.assert_trees_all_close(imresize(x, 1), x)
    assert output_size((30, 30), 0.1)[0] == (3, 3)


def test_batched_jit_grad():
    x = _img((2, 12, 10, 3))
    f = jax.jit(lambda x: imresize(x, 0.5))
    y = f(x)
    chex.assert_shape(y, (2, 6, 5, 3))
    chex.assert_trees_all_close(y[1], imresize(x[1], 0.5), atol=1e-6)
    g = jax.grad(lambda x: jnp.sum(imresize(x, 0.5) ** 2))(x)
    chex.assert_shape(g, x.shape)
    chex.assert_tree_all_finite(g)


def test_bad_inputs():
    x = _img((6, 6, 1))
    with pytest.raises(KfsrInputError, match="scale or output_shape"):
        imresize(x)
    with pytest.raises(KfsrInputError, match="scale"):
        imresize(x, -1)
    with pytest.raises(KfsrInputError, match="output_shape"):
        imresize(x, output_shape=(0, 3))
    with pytest.raises(KfsrInputError, match="image"):
        imresize(x[..., 0], 2)
