"""DKENet (kfsr/nets/dkenet.py): parameter counts by eval_shape, output contract, and a short
training run on synthetic depth-dependent spatially variant blur."""
import numpy as np

import jax
import jax.numpy as jnp
import optax

from kfsr import depth as dp
from kfsr import io
from kfsr.degrade import Degradation
from kfsr.degrade import spatial as sp
from kfsr.nets import dkenet as dk

_ASSET = "kfsr/assets/chelsea_hr256.png"


def _count(net, h=16, w=16, depth=True):
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)),
                            jnp.zeros((1, h, w, 1)) if depth else None)
    return dk.param_count(shapes)


def test_param_counts_and_output_shapes():
    # MANet's estimator (nf 128, K 21): the official count (blinddiff_ssr.md §3.2, §4.0).
    assert _count(dk.DKENet(**dk.full_config(use_depth=False)), depth=False) == 1_810_361
    # Full DKENet: the report gives no number; derived layer by layer in the module docstring.
    assert _count(dk.DKENet(**dk.full_config())) == 3_059_705
    assert _count(dk.DKENet(**dk.tiny_config())) == 101_985
    # Shapes (no compilation): sizes that are not multiples of 8 are padded and cropped back.
    assert _count(dk.DKENet(**TEST_NET)) == 37_169
    net = dk.DKENet(**dk.tiny_config(output="hr"))
    out = jax.eval_shape(lambda lr, d: net.apply(net.init(jax.random.PRNGKey(0), lr, d), lr, d),
                         jnp.zeros((2, 10, 12, 3)), jnp.zeros((2, 10, 12, 1)))
    assert out.shape == (2, 20, 24, 11, 11)


S, K, HR = 2, 11, 32
LR = HR // S
N_TRAIN, N_EVAL, BATCH, STEPS = 64, 8, 4, 120
# The test net: the tiny config narrowed further (nf 8, depth nf 8, SFT hidden 8; 37,169 params)
# so that a training step costs ~65 ms of CPU; the layer structure is the full one.
TEST_NET = dk.tiny_config(nf=8, nf_depth=8, sft_hidden=8)


def _crops(img, seed, n, rows):
    rng = np.random.default_rng(seed)
    r = rng.integers(rows[0], rows[1] - HR + 1, n)
    c = rng.integers(0, img.shape[1] - HR + 1, n)
    return np.stack([img[a:a + HR, b:b + HR] for a, b in zip(r, c)])


@jax.jit
def _make_data(hr, keys):
    """Synthetic LR-grid depth ("mixed" kinds) per crop, the depth-dependent field on the LR grid
    (theta = 0) and the SV-blurred, stride-sampled LR (reflect padding)."""
    depth = jax.vmap(lambda k: dp.synthetic_depth(k, (LR, LR)))(keys)
    field = jax.vmap(lambda d: sp.depth_gaussian_field(d, K, S, recenter="none"))(depth)
    spec = Degradation(scale=S, padding="reflect")
    lr = jax.vmap(lambda x, f: sp.degrade_spatial(x, f, spec))(hr, field)
    return lr, depth[..., None], field


def test_tiny_dkenet_learns_depth_dependent_field():
    img = io.load_image(_ASSET)
    # Training crops from the top 176 rows, evaluation crops (and depth maps) disjoint.
    hr = np.concatenate([_crops(img, 0, N_TRAIN, (0, 176)), _crops(img, 1, N_EVAL, (176, 256))])
    keys = jax.random.split(jax.random.PRNGKey(0), N_TRAIN + N_EVAL)
    data = [np.asarray(a) for a in _make_data(jnp.asarray(hr), keys)]
    train = [a[:N_TRAIN] for a in data]
    evals = [a[N_TRAIN:] for a in data]

    net = dk.DKENet(**TEST_NET)
    params = dk.init_params(net, jax.random.PRNGKey(2), train[0][:1], train[1][:1])
    tx = optax.adam(optax.cosine_decay_schedule(1e-2, STEPS))
    opt_state = tx.init(params)

    def l1(p, lr, d, f):
        k = net.apply(p, lr, d)
        return jnp.mean(jnp.sum(jnp.abs(k - f), axis=(-2, -1))), k   # per-pixel kernel L1

    def step(p, s, lr, d, f):
        (loss, k), g = jax.value_and_grad(l1, has_aux=True)(p, lr, d, f)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, k

    # One program for training and evaluation (evaluation discards the update); O0 compiles
    # ~2x faster on XLA:CPU and the run is short.
    prog = jax.jit(step).lower(params, opt_state, *[a[:BATCH] for a in train]).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    rng = np.random.default_rng(0)
    p, s = params, opt_state
    for _ in range(STEPS):
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        p, s, loss, _ = prog(p, s, *[a[idx] for a in train])
    eval_l1, k_pred = [], []
    for i in range(0, N_EVAL, BATCH):
        out = prog(p, s, *[a[i:i + BATCH] for a in evals])
        eval_l1.append(float(out[2]))
        k_pred.append(np.asarray(out[3]))
    eval_l1, k_pred = float(np.mean(eval_l1)), np.concatenate(k_pred)
    print(f"DKENet eval kernel L1 {eval_l1:.4f}")
    assert k_pred.shape == (N_EVAL, LR, LR, K, K)
    np.testing.assert_allclose(k_pred.sum((-2, -1)), 1.0, atol=1e-5)
    assert k_pred.min() >= 0

    # The best single global kernel for this metric (oracle: fitted on the evaluation fields):
    # the element-wise median minimises the summed L1; the mean kernel is reported alongside.
    f = evals[2].reshape(-1, K, K)
    best_const = min(float(np.abs(f - np.median(f, 0)).sum((-2, -1)).mean()),
                     float(np.abs(f - f.mean(0)).sum((-2, -1)).mean()))
    print(f"best global kernel L1 {best_const:.4f}")
    # Measured (120 steps, batch 4, Adam 1e-2 cosine-decayed, jax 0.10.2 CPU): DKENet 0.0605 vs
    # the best global kernel 0.191 (ratio 0.32; 0.0605 again with other init / batch seeds).
    # The same net fed a constant depth stays at 0.20-0.24 (no better than the global kernel)
    # after 200 steps (Adam 5e-3): the margin comes from the depth input.
    assert eval_l1 < 0.5 * best_const, (eval_l1, best_const)
