"""Tests for kfsr.nets.dip (DIP-DKP skip U-Net) and kfsr.nets.norm.BatchStatNorm."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kfsr.errors import KfsrInputError
from kfsr.nets.dip import (NonLocalBlock, SkipNet, concat_center_crop, conv_bias, dense_nd,
                           dip_input, init_params, num_params, strided_conv_phase, upsample2)
from kfsr.nets.norm import BatchStatNorm

# small enough to compile in seconds; still has skip, strided conv, non-local block, bilinear up
TINY = dict(num_scales=2, channels_down=8, channels_up=8, channels_skip=4, nonlocal_from=1)


def compile0(f, *args):
    """jit + compile at XLA optimisation level 0: these tests check numbers, not speed."""
    return jax.jit(f).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def tiny():
    net = SkipNet(**TINY)
    return net, init_params(net, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_official_parameter_count():
    # the official DIP-DKP config (3-channel input, 5 scales, 128/128/16): 2,359,939 parameters
    shapes = jax.eval_shape(lambda: SkipNet().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert num_params(shapes) == 2_359_939
    p = shapes["params"]
    assert p["s0_skip_conv"]["kernel"].shape == (1, 1, 3, 16)
    assert p["s0_down_conv"]["kernel"].shape == (3, 3, 3, 128)
    assert p["s0_up_conv"]["kernel"].shape == (3, 3, 144, 128)
    assert p["s0_cat_bn"]["scale"].shape == (144,)
    assert "s1_nonlocal" not in p and "s2_nonlocal" in p and "s4_nonlocal" in p
    assert p["s2_nonlocal"]["theta"]["kernel"].shape == (1, 1, 128, 64)
    assert p["head"]["kernel"].shape == (1, 1, 128, 3)


def test_torch_default_init(tiny):
    params = tiny[1]["params"]
    w, b = params["s0_up_conv"]["kernel"], params["s0_up_conv"]["bias"]
    bound = 1 / math.sqrt(3 * 3 * w.shape[2])
    assert float(jnp.max(jnp.abs(w))) <= bound and float(jnp.max(jnp.abs(w))) > 0.8 * bound
    assert float(jnp.max(jnp.abs(b))) <= bound
    assert np.all(np.asarray(params["s0_cat_bn"]["scale"]) == 1)
    # non-local W's BN starts at gamma = beta = 0: the block is the identity at init
    nl = params["s1_nonlocal"]
    assert np.all(np.asarray(nl["W_bn"]["scale"]) == 0) and np.all(np.asarray(nl["W_bn"]["bias"]) == 0)


def test_output_shape_range_and_odd_sizes(tiny):
    net, params = tiny
    z = dip_input(jax.random.key(1), (2, 32, 32, 3))
    assert z.shape == (2, 32, 32, 3) and float(z.min()) >= 0 and float(z.max()) < 0.1
    # unbatched input and odd sizes (centre-cropped concatenation) keep the input's spatial size
    z1 = dip_input(jax.random.key(2), (33, 35))
    assert z1.shape == (33, 35, 3)
    both = lambda p, z, z1: (net.apply(p, z), net.apply(p, z1))
    y, y1 = compile0(both, params, z, z1)(params, z, z1)
    assert y.shape == (2, 32, 32, 3) and y.dtype == jnp.float32
    assert float(y.min()) > 0 and float(y.max()) < 1
    assert y1.shape == (33, 35, 3) and bool(jnp.all(jnp.isfinite(y1)))


def test_bad_config_raises():
    z = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(KfsrInputError):
        jax.eval_shape(SkipNet(**TINY, padding="circular").init, jax.random.key(0), z)
    with pytest.raises(KfsrInputError):
        jax.eval_shape(SkipNet(**TINY, upsample="bicubic").init, jax.random.key(0), z)
    with pytest.raises(KfsrInputError):
        jax.eval_shape(SkipNet(num_scales=2, channels_down=(4, 4, 4)).init, jax.random.key(0), z)


@pytest.mark.parametrize("stats", ["fused", "reduce"])
def test_batch_stat_norm(stats):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3)) * jnp.array([1.0, 3.0, 0.5]) + 2.0
    bn = BatchStatNorm(stats=stats)
    shapes = jax.eval_shape(bn.init, jax.random.key(1), x)["params"]
    assert shapes["scale"].shape == shapes["bias"].shape == (3,)
    p0 = {"params": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}
    p1 = {"params": {"scale": jnp.array([2.0, 1.0, 0.0]), "bias": jnp.array([0.0, 1.0, 5.0])}}

    def run(p0, p1, x):  # plain apply: no mutable collections needed
        return (bn.apply(p0, x), bn.apply(p1, x), jax.vmap(lambda xi: bn.apply(p1, xi))(x))

    y, y1, yv = (np.asarray(a) for a in compile0(run, p0, p1, x)(p0, p1, x))
    xn = np.asarray(x, np.float64)
    mean, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))  # biased variance over the batch, like torch
    np.testing.assert_allclose(y, (xn - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    # learnable affine
    np.testing.assert_allclose(y1.std((0, 1, 2)), [2.0, 1.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(y1.mean((0, 1, 2)), [0.0, 1.0, 5.0], atol=1e-5)
    # under vmap each image is normalised by its own statistics
    np.testing.assert_allclose(yv.mean((1, 2)), [[0.0, 1.0, 5.0]] * 2, atol=1e-5)
    np.testing.assert_allclose(yv.std((1, 2)), [[2.0, 1.0, 0.0]] * 2, atol=1e-3)


def _torch_bilinear_x2_matrix(n):
    """nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False) along one axis, as a matrix."""
    m = np.zeros((2 * n, n))
    for j in range(2 * n):
        src = max((j + 0.5) / 2 - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        m[j, i0] += 1 - lam
        m[j, i1] += lam
    return m


def test_custom_vjps_match_autodiff():
    ks = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(ks[0], (2, 9, 8, 5))
    b = jax.random.normal(ks[2], (4,))
    ws = [jax.random.normal(ks[1], (k, k, 5, 4)) for k in (3, 3, 1)]
    xb = x * 3 + 1
    gb = jax.random.normal(ks[4], x.shape)
    pb = {"params": {"scale": jnp.arange(1.0, 6.0), "bias": jnp.arange(5.0)}}
    dn = ("NHWC", "HWIO", "NHWC")

    def grads(x, ws, b, xb, gb, pb):  # every (ours, reference) pair in one compiled program
        out = []
        for w, stride in zip(ws, (1, 2, 1)):
            k = w.shape[0]
            ref = lambda x, w, b: jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                                               dimension_numbers=dn) + b
            ours = ((lambda x, w, b: dense_nd(x, w[0, 0], b)) if k == 1
                    else (lambda x, w, b: conv_bias(x, w, b, stride)))
            g = jnp.cos(ref(x, w, b))  # an arbitrary cotangent
            out.append([jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(x, w, b)
                        for f in (ours, ref)])
        # BatchNorm: hand-written backward ("fused") vs autodiff of the plain formula ("reduce")
        out.append([jax.grad(lambda p, x: jnp.sum(BatchStatNorm(stats=st).apply(p, x) * gb),
                             argnums=(0, 1))(pb, xb) for st in ("fused", "reduce")])
        return out

    for ours, ref in compile0(grads, x, ws, b, xb, gb, pb)(x, ws, b, xb, gb, pb):
        for a, r in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-4)


def test_bilinear_upsample_matches_torch_formula():
    x = np.asarray(jax.random.uniform(jax.random.key(0), (2, 5, 7, 3)), np.float64)
    ref = np.einsum("ph,qw,bhwc->bpqc", _torch_bilinear_x2_matrix(5), _torch_bilinear_x2_matrix(7), x)
    xj = jnp.asarray(x, jnp.float32)
    run = lambda x: (upsample2(x, "bilinear"),
                     jax.image.resize(x, (2, 10, 14, 3), "bilinear", antialias=False),
                     upsample2(x, "nearest"))
    y, r, yn = (np.asarray(a) for a in compile0(run, xj)(xj))
    np.testing.assert_allclose(y, ref, atol=1e-6)
    # and jax.image.resize 'bilinear' without antialias (upsampling) is the same operator
    np.testing.assert_allclose(r, ref, atol=1e-6)
    np.testing.assert_array_equal(yn[:, ::2, 1::2], x[:, :, :].astype(np.float32))


def test_concat_center_crop():
    a = jnp.arange(5 * 5, dtype=jnp.float32).reshape(1, 5, 5, 1)
    b = jnp.zeros((1, 4, 3, 2))
    c = concat_center_crop([a, b])
    assert c.shape == (1, 4, 3, 3)
    # torch/DIP Concat: start = (size - target) // 2 -> rows 0..3, cols 1..3
    np.testing.assert_array_equal(np.asarray(c[0, :, :, 0]), np.asarray(a[0, 0:4, 1:4, 0]))


def test_strided_conv_phase_matches_lax():
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    xs = [jax.random.normal(jax.random.key(0), (2, h, w, 3)) for h, w in [(10, 10), (11, 8)]]

    def both(xs, k):
        ref = [jax.lax.conv_general_dilated(x, k, (2, 2), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) for x in xs]
        return [strided_conv_phase(x, k, 2) for x in xs], ref

    ours, ref = compile0(both, xs, k)(xs, k)
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5)


def test_nonlocal_reassociation_is_the_same_product():
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 8))
    blk = NonLocalBlock(inter_channels=4)
    params = init_params(blk, jax.random.key(1), x)
    params = jax.tree_util.tree_map(lambda a: a + 0.3, params)  # make W's BN non-zero
    both = lambda p, x: (blk.apply(p, x), NonLocalBlock(inter_channels=4, reassociate=False).apply(p, x))
    y1, y2 = compile0(both, params, x)(params, x)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), atol=1e-5)
    assert float(jnp.max(jnp.abs(y1 - x))) > 1e-2


def test_one_adam_step_reduces_mse(tiny):
    net, params = tiny
    z = dip_input(jax.random.key(1), (1, 32, 32, 3))
    target = jax.random.uniform(jax.random.key(2), (1, 32, 32, 3))
    tx = optax.adam(5e-3)

    def step(p, o):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.square(net.apply(p, z) - target)))(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    p, o = params, tx.init(params)
    step = compile0(step, p, o)
    p, o, l0 = step(p, o)
    p, o, l1 = step(p, o)
    assert float(l1) < float(l0)


def test_backend_flags_user_wins(monkeypatch):
    from kfsr import backend

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type= --xla_foo=1")
    backend.configure()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type= --xla_foo=1"
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    backend.configure()
    if backend._jaxlib_version().startswith(backend.JAXLIB_TESTED):
        assert os.environ["XLA_FLAGS"] == "--xla_foo=1 " + " ".join(backend.CPU_FLAGS)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("KFSR_XLA_DEFAULTS", "0")
    backend.configure()
    assert os.environ["XLA_FLAGS"] == ""
