"""kfsr.degrade.spatial (SV blur, basis form, SV forward model, synthetic fields) and kfsr.depth.

Shapes are kept small and few, so the number of compiled programs stays low (2-core CPU)."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kfsr import depth as dp
from kfsr.degrade import Degradation, blur, degrade
from kfsr.degrade import spatial as sp
from kfsr.errors import KfsrInputError

H, W, C, K = 13, 11, 3, 5
_NP_MODE = {"circular": "wrap", "reflect": "symmetric", "zero": "constant"}


@pytest.fixture(scope="module")
def data():
    # numpy data: no threefry programs to compile.
    rng = np.random.default_rng(0)
    x = rng.random((H, W, C), np.float32)
    field = rng.random((H, W, K, K), np.float32)
    field /= field.sum((-2, -1), keepdims=True)
    k = rng.random((K, K), np.float32) ** 4       # an asymmetric, off-centre kernel
    k /= k.sum()
    return jnp.asarray(x), jnp.asarray(field), jnp.asarray(k)


def _reference(x, field, padding, stride=1, offset=0):
    """Direct per-pixel loop (numpy, float64)."""
    x, field = np.asarray(x, np.float64), np.asarray(field, np.float64)
    size = field.shape[-1]
    if padding == "valid":
        xp = x
    else:
        p = (size // 2, size - 1 - size // 2)
        xp = np.pad(x, (p, p, (0, 0)), mode=_NP_MODE[padding])
    ho = -(-(xp.shape[0] - size + 1 - offset) // stride)
    wo = -(-(xp.shape[1] - size + 1 - offset) // stride)
    out = np.zeros((ho, wo, x.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            r, c = offset + stride * i, offset + stride * j
            out[i, j] = np.einsum("mn,mnc->c", field[i, j], xp[r:r + size, c:c + size])
    return out


@pytest.mark.parametrize("padding", ["circular", "reflect", "zero", "valid"])
def test_constant_field_equals_invariant_blur_and_degrade(data, padding):
    x, _, k = data
    hb, wb = sp.blurred_shape(H, W, K, padding)
    specs = (Degradation(scale=2, padding=padding, offset=1),
             Degradation(scale=2, padding=padding, sampling="bicubic"))

    @jax.jit  # one program per padding mode (eager calls would compile op by op)
    def both(x, k):
        field = jnp.broadcast_to(k, (hb, wb, K, K))
        sv = [sp.sv_blur(x, field, padding)] + [sp.degrade_spatial(x, field, s) for s in specs]
        inv = [blur(x, k, padding)] + [degrade(x, k, s) for s in specs]
        return sv, inv

    # Plain blur, then the full forward model with stride (offset 1) and bicubic sampling and
    # an HR-resolution field: equal up to float32 rounding (measured max 2.4e-7).
    for a, b in zip(*both(x, k)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_matches_per_pixel_reference_loop(data):
    x, field, _ = data
    spec = Degradation(scale=3, padding="circular", offset=2)

    @jax.jit
    def run(x, field):
        xb, fb = jnp.stack([x, x[::-1]]), jnp.stack([field, field[:, ::-1]])
        return (sp.sv_blur(x, field, "reflect"),
                sp.sv_blur(x, field, "circular", stride=3, offset=2),
                sp.degrade_spatial(x, field[2::3, 2::3], spec),
                sp.sv_blur(xb, fb, "reflect"))       # batched images, per-sample fields

    y1, y3, d3, yb = run(x, field)
    # stride 1, reflect; and the LR-grid form (stride 3, offset 2, circular) with a field
    # given at HR resolution (sampled) or directly on the output grid.
    np.testing.assert_allclose(y1, _reference(x, field, "reflect"), atol=2e-6)
    ref = _reference(x, field[2::3, 2::3], "circular", stride=3, offset=2)
    np.testing.assert_allclose(y3, ref, atol=2e-6)
    np.testing.assert_allclose(d3, ref, atol=2e-6)
    np.testing.assert_allclose(yb[1], _reference(x[::-1], field[:, ::-1], "reflect"), atol=2e-6)


def test_basis_form_full_rank_equals_dense(data):
    x, field, _ = data
    spec = Degradation(scale=2, padding="reflect")

    @jax.jit
    def run(x, field):
        # Sum-1 kernels: the mean + K*K - 1 centred components span the field exactly.
        basis, coeffs = sp.fit_pca_basis(field, K * K)
        b2, c2 = sp.fit_pca_basis(field, K * K, center=False)   # uncentred (MANet) form
        pairs = [(sp.field_from_basis(basis, coeffs), field),
                 (sp.field_from_basis(b2, c2), field),
                 (sp.project_onto_basis(field, basis), coeffs)]
        for padding in ("reflect", "circular"):
            pairs.append((sp.sv_blur_basis(x, basis, coeffs, padding),
                          sp.sv_blur(x, field, padding)))
        pairs.append((sp.degrade_spatial_basis(x, basis, coeffs, spec),
                       sp.degrade_spatial(x, field, spec)))
        return basis, coeffs, pairs

    basis, coeffs, pairs = run(x, field)
    assert basis.shape == (K * K, K, K) and coeffs.shape == (H, W, K * K)
    np.testing.assert_allclose(coeffs[..., 0], 1.0)
    for a, b in pairs:  # measured max error 3.8e-6 (blurs), 7e-8 (fields)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradients_finite_and_correct(data):
    x, field, _ = data

    def loss(x, f):
        return jnp.sum(sp.sv_blur(x, f, "reflect", stride=2) ** 2)

    gx, gf = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, field)
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.all(jnp.isfinite(gf)))
    # Linear in the field: <grad_f, f> = 2 * loss (Euler), and in x likewise.
    l0 = float(loss(x, field))
    np.testing.assert_allclose(float(jnp.vdot(gf, field)), 2 * l0, rtol=1e-4)
    np.testing.assert_allclose(float(jnp.vdot(gx, x)), 2 * l0, rtol=1e-4)


def test_fields_and_errors():
    d = np.linspace(0.0, 1.0, 6)[:, None] * np.ones((1, 4))
    f = np.asarray(sp.depth_gaussian_field(d, 11, 2, recenter="none"))
    assert f.shape == (6, 4, 11, 11)
    np.testing.assert_allclose(f.sum((-2, -1)), 1.0, atol=1e-5)
    # Width along the major axis (theta = 0: the column axis) grows with depth, and the far
    # kernels are anisotropic (measured |k - k^T| max 0.035 at depth 1, 0 at depth 0).
    g = np.arange(11.0)
    var_c = np.einsum("hwmn,n->hw", f, g ** 2) - np.einsum("hwmn,n->hw", f, g) ** 2
    assert np.all(np.diff(var_c[:, 0]) > 0)
    assert np.abs(f[-1, 0] - f[-1, 0].T).max() > 1e-2
    assert np.abs(f[0, 0] - f[0, 0].T).max() < 1e-5
    # A low-rank fit of this smooth one-parameter family is close (rank 4: measured 2.3e-3).
    b3, c3 = sp.fit_pca_basis(f, 4)
    err = float(np.abs(np.asarray(sp.field_from_basis(b3, c3)) - f).sum((-2, -1)).max())
    assert err < 0.02, err
    bf = np.asarray(sp.block_field(jax.random.PRNGKey(3), (10, 7), 4, 5, 2, recenter="none"))
    assert bf.shape == (10, 7, 5, 5)
    np.testing.assert_allclose(bf[0, 0], bf[3, 3])
    assert np.abs(bf[0, 0] - bf[4, 4]).max() > 1e-4
    m6 = np.asarray(sp.manet_sv_field(6, (8, 8), 5, 2, block=4, recenter="none"))
    np.testing.assert_allclose(m6[0, 0], m6[4, 4], atol=1e-7)  # checkerboard
    assert np.abs(m6[0, 0] - m6[0, 4]).max() > 1e-4
    x = jnp.zeros((H, W, C))
    with pytest.raises(KfsrInputError, match="field spatial shape"):
        sp.sv_blur(x, jnp.ones((4, 4, 3, 3)) / 9, "reflect")
    with pytest.raises(KfsrInputError, match="padding"):
        sp.sv_blur(x, jnp.ones((H, W, 3, 3)) / 9, "mirror")
    with pytest.raises(KfsrInputError, match="bicubic"):
        sp.degrade_spatial(x, jnp.ones((7, 6, 3, 3)) / 9, Degradation(scale=2, sampling="bicubic"))
    with pytest.raises(KfsrInputError, match="rank"):
        sp.fit_pca_basis(jnp.ones((4, 3, 3)) / 9, 11, center=False)


# ------------------------------------------------------------------------------------ depth
def test_depth_providers_validate_and_run(tmp_path):
    img = jnp.full((16, 12, 3), 0.5)
    # user depth: arrays and files, normalised and resized to the image grid
    d = dp.UserDepth(np.arange(8 * 6, dtype=np.float64).reshape(8, 6) * 7.0)(img)
    assert d.shape == (16, 12) and abs(float(d.min())) < 1e-6 and float(d.max()) <= 1.0
    np.save(tmp_path / "d.npy", np.linspace(0, 3, 16 * 12).reshape(16, 12, 1))
    d = dp.get_provider("user", source=str(tmp_path / "d.npy"), invert=True)(img)
    np.testing.assert_allclose([float(d[0, 0]), float(d[-1, -1])], [1.0, 0.0], atol=1e-6)
    bad = {"nan": np.array([[0.0, np.nan]]), "3d": np.zeros((4, 4, 2)), "empty": np.zeros((0, 4)),
           "str": np.array([["a", "b"]])}
    for name, arr in bad.items():
        np.save(tmp_path / f"{name}.npy", arr)
        with pytest.raises(KfsrInputError, match=f"{name}.npy"):
            dp.load_depth(tmp_path / f"{name}.npy")
    with pytest.raises(KfsrInputError, match="not found"):
        dp.load_depth(tmp_path / "missing.npy")
    (tmp_path / "d.txt").write_text("1 2")
    with pytest.raises(KfsrInputError, match="unsupported depth file type"):
        dp.load_depth(tmp_path / "d.txt")
    with pytest.raises(KfsrInputError, match="aspect ratio"):
        dp.UserDepth(np.zeros((16, 16)))(img)
    with pytest.raises(KfsrInputError, match=r"\[0, 1\]"):
        dp.load_depth(np.array([[0.5, 2.0]]), normalise="none")
    with pytest.raises(KfsrInputError, match="unknown"):
        dp.get_provider("midas")
    with pytest.raises(KfsrInputError):
        dp.ConstantDepth(1.5)
    assert float(dp.ConstantDepth(0.25)(img)[3, 3]) == 0.25
    # synthetic depth: seeded, in [0, 1], every kind spans a range (one "mixed" program covers
    # all four kinds through lax.switch; seeds 0-15 hit each kind)
    maps = np.stack([np.asarray(dp.SyntheticDepth(seed=i)(img)) for i in range(16)])
    assert maps.shape == (16, 16, 12) and maps.min() >= 0 and maps.max() <= 1
    assert (maps.max((1, 2)) - maps.min((1, 2))).min() > 0.3
    np.testing.assert_array_equal(maps[1], np.asarray(dp.SyntheticDepth(seed=1)(img)))
    assert np.abs(maps[1] - maps[2]).max() > 0.1
    with pytest.raises(KfsrInputError, match="kind"):
        dp.SyntheticDepth(kind="cube")
    # proxies: "position" puts the top farther than the bottom; "sharpness" finds the blurry
    # half of an image whose left half is sharp noise and right half the same noise blurred.
    pos = np.asarray(dp.get_provider("position")(img))
    assert pos[0].mean() > pos[-1].mean()
    rng = np.random.default_rng(1)
    noise = rng.random((16, 24, 3), np.float32)
    padded = np.pad(noise, ((2, 2), (2, 2), (0, 0)), mode="symmetric")
    blurred = sum(padded[i:i + 16, j:j + 24] for i in range(5) for j in range(5)) / 25.0
    half = np.concatenate([noise[:, :12], blurred[:, 12:]], axis=1)
    sh = np.asarray(dp.ProxyDepth("sharpness")(half))
    assert sh.shape == (16, 24) and np.all(np.isfinite(sh))
    assert sh[:, 14:].mean() > sh[:, :10].mean() + 0.3, (sh[:, :10].mean(), sh[:, 14:].mean())
