"""SSR (kfsr.methods.ssr, kfsr.svkr, kfsr.nets.amf / ssr_unet, kfsr.train.depth_fields): full-size
structure by jax.eval_shape, the AMF fusion, the SVKR update rules and its LR consistency, a tiny
training run through kfsr.train.supervised on depth-dependent SV blur, and runs of the method
without depth and with an oracle field. Few compiled programs, tiny shapes, shared 32-px crops:
measured 36-38 s of CPU (user + sys) for the whole file, 58 s wall at load 7-9 on the shared 2
cores and 83-95 s at load 9-11 (compilation is most of it)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import ssr as ssr_configs
from kfsr import depth as dp
from kfsr import io, svkr
from kfsr.degrade import Degradation
from kfsr.degrade import spatial as sp
from kfsr.degrade.imresize import imresize
from kfsr.errors import KfsrInputError
from kfsr.methods import ssr
from kfsr.methods.base import get_method
from kfsr.nets import amf, rrdb
from kfsr.nets import dkenet as dk
from kfsr.nets.dkenet import param_count
from kfsr.train import supervised as sup

_IMG = "BSD100/HR/img_003_SRF_2_HR.png"


def _config(preset="test", **fields):
    c = ssr_configs.get_config(preset)
    if fields:  # type_safe=False: the error tests set values of the wrong type
        c = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
    for k, v in fields.items():
        c[k] = v
    return c


def _hr_crop(size, top=40, left=60):
    import os

    from kfsr.data import SHARED_DATA

    img = io.load_image(os.path.join(SHARED_DATA, _IMG))
    return jnp.asarray(img[top:top + size, left:left + size])


# ---------------------------------------------------------------------------------- structure
def test_paper_preset_structure_by_eval_shape():
    """Full-size parts of the paper preset, counted without allocating anything."""
    setup = ssr.make_setup(_config("paper"))
    # DKENet and RRDB-SFT are the full configs whose counts tests/test_dkenet.py and
    # tests/test_rrdb.py check by eval_shape (3,059,705; 8,086,256 with 15-d codes); without
    # depth the estimator is MANet's (1,810,361)
    assert setup.dkenet == dk.DKENet(**dk.full_config())
    assert setup.rrdb == rrdb.RRDBSFTNet(**rrdb.full_config()) and setup.pca_rank == 15
    nd = ssr.make_setup(_config("paper", use_depth=False))
    assert nd.dkenet == dk.DKENet(**dk.full_config(use_depth=False))
    assert not nd.denoiser.use_depth
    shapes = ssr.param_template(setup, "denoiser")
    den = shapes["params"]
    total = param_count(den)
    parts = {k: param_count(v) for k, v in den.items()}
    enc_lr, enc_k, enc_d = parts["lr_encoder"], parts["kernel_encoder"], parts["depth_encoder"]
    amf_total = sum(v for k, v in parts.items() if k.startswith("amf"))
    print(f"SSR paper denoiser {total:,} params: LR encoder {enc_lr:,}, kernel encoder "
          f"{enc_k:,}, depth encoder {enc_d:,}, AMF {amf_total:,}")
    # 812,296,835 = UNet 620,750,723 + LR half-UNet 189,911,680 + kernel / depth encoders
    # 119,488 / 111,424 + 5 AMFs 1,403,520 (SD-2 widths 320 x (1, 2, 4, 4), 2 res blocks,
    # no attention; SSR's own model is SD-2's ~865M UNet + adapters: not comparable)
    assert total == 812_296_835
    assert (enc_lr, enc_k, enc_d, amf_total) == (189_911_680, 119_488, 111_424, 1_403_520)
    # "encoders of different sizes": the LR half-UNet is by far the largest
    assert enc_lr > 1000 * max(enc_k, enc_d)
    # AMF at every level + the middle block, per-pixel MLPs of hidden width 128 on
    # concat(kernel, depth) features (64 + 64), output = the level's width
    assert sorted(k for k in parts if k.startswith("amf")) == [f"amf{i}" for i in range(5)]
    assert den["amf0"]["gamma_fc1"]["kernel"].shape == (128, 128)
    assert den["amf3"]["beta_fc2"]["kernel"].shape == (128, 4 * 320)
    # shapes of the (cpu preset's, two-level) conditioned denoiser on a non-square LR grid, x4
    small = ssr.make_setup(_config("cpu"))
    args = [jax.ShapeDtypeStruct(sh, jnp.float32) for sh in
            [(2, 48, 64, 3), (2,), (2, 12, 16, 3), (2, 12, 16, 10), (2, 12, 16, 1)]]
    args[1] = jax.ShapeDtypeStruct((2,), jnp.int32)
    out = jax.eval_shape(small.denoiser.apply, ssr.param_template(small, "denoiser"), *args)
    assert out.shape == (2, 48, 64, 3)


def test_amf_fusion():
    """Zero-initialised gamma / beta: the fusion is the plain normalisation; once trained, it
    modulates each pixel from that pixel's kernel / depth features only (per-pixel MLPs); the
    'batch' normalisation has zero mean and unit variance per channel over (B, H, W).
    (One compiled program: init, applies and normalisations together.)"""
    net = amf.AMF(hidden=16, norm="group", groups=4)

    @jax.jit
    def run(key):
        k = jax.random.split(key, 4)
        f = jax.random.normal(k[0], (2, 8, 8, 8)) * 3.0 + 1.0
        aux = [jax.random.uniform(k[1], (2, 8, 8, 4)), jax.random.uniform(k[2], (2, 8, 8, 2))]
        params = net.init(k[3], f, aux)
        at_init = net.apply(params, f, aux)
        # "trained" output layers: the modulation at a pixel depends on that pixel's aux only
        params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                              params)
        a = net.apply(params, f, aux)
        b = net.apply(params, f, [aux[0].at[1, 3, 5].add(0.5), aux[1]])
        return at_init, amf.normalise(f, "group", 4), a, b, amf.normalise(f, "batch")

    key = jax.random.wrap_key_data(jnp.zeros((4,), jnp.uint32), impl="rbg")
    at_init, gn, a, b, nb = (np.asarray(x) for x in run(key))
    np.testing.assert_allclose(at_init, gn, atol=1e-5)
    changed = np.abs(a - b).max(axis=-1) > 1e-6
    assert changed[1, 3, 5] and changed.sum() == 1
    assert np.abs(a - gn).max() > 1e-2                  # and it does modulate
    np.testing.assert_allclose(nb.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(nb.var((0, 1, 2)), 1.0, atol=1e-3)


# ---------------------------------------------------------------------------------- SVKR
def _simplex(rng, shape):
    e = np.exp(rng.normal(size=shape))
    return (e / e.sum((-2, -1), keepdims=True)).astype(np.float32)


def _renorm(k):
    k = np.maximum(k, 0)
    return k / k.sum((-2, -1), keepdims=True)


def test_svkr_update_rules_on_toy_fields():
    """Eq. 2: N = 3 and beta = 0.9 by default; the trace follows the EMA / heavy-ball formulas
    exactly with scripted estimates, and every kernel stays on the simplex. (Under one jit.)"""
    c = _config("paper")
    assert (c.svkr.n_iter, c.svkr.beta, c.svkr.rule) == (3, 0.9, "ema")
    ks = [_simplex(np.random.default_rng(i), (2, 3, 5, 5)) for i in range(3)]

    @functools.partial(jax.jit, static_argnums=0)
    def run(rule, lr):
        depths = []

        def kernel_fn(y, d):
            depths.append(d)
            return jnp.asarray(ks[len(depths) - 1])

        out = svkr.refine(lr, kernel_fn=kernel_fn, sr_fn=lambda y, f: jnp.full((4, 6, 3),
                                                                             jnp.sum(f)),
                          init_sr=lambda y: jnp.zeros((4, 6, 3)),
                          depth_fn=lambda x: x[::2, ::2, 0], update=rule)
        return [t["field"] for t in out.trace], depths

    fields, depths = run("ema", jnp.zeros((2, 3, 3)))
    e2 = 0.9 * ks[0] + 0.1 * ks[1]
    for got, want in zip(fields, [ks[0], e2, 0.9 * e2 + 0.1 * ks[2]]):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # depth is re-estimated from the previous SR image: I_0 = 0, then I_i = sum(K_i) = 6
    np.testing.assert_array_equal(depths[0], 0.0)
    np.testing.assert_allclose(depths[1], 6.0, rtol=1e-5)
    fields, _ = run("momentum", jnp.zeros((2, 3, 3)))
    v2 = 0.1 * (ks[1] - ks[0])
    m2 = _renorm(ks[0] + v2)
    v3 = 0.9 * v2 + 0.1 * (ks[2] - m2)
    np.testing.assert_allclose(fields[1], m2, atol=1e-6)
    np.testing.assert_allclose(fields[2], _renorm(m2 + v3), atol=1e-6)
    for f in fields:
        assert float(f.min()) >= 0
        np.testing.assert_allclose(np.sum(f, (-2, -1)), 1.0, atol=1e-5)
    for bad in (dict(n_iter=0), dict(beta=1.5), dict(update="adam")):
        with pytest.raises(KfsrInputError, match="svkr"):
            svkr.refine(None, kernel_fn=None, sr_fn=None, init_sr=None, **bad)


_S, _K, _HR = 2, 11, 32   # the test preset's scale, kernel size and crop (shared programs)
_SPEC = Degradation(scale=_S, padding="reflect")


def _law(depth):
    """The training family's depth -> field law (`depth_gaussian_field`): a perfect DKENet."""
    return sp.depth_gaussian_field(depth, _K, _S, recenter="none")


@functools.partial(jax.jit, static_argnums=2)
def _nonblind_ibp(y, field, steps):
    """A weight-free non-blind SR for a known field: iterative back-projection (Irani & Peleg)
    x <- x + bicubic_up(y - degrade_spatial(x, field)), `steps` times from the bicubic image."""
    def body(i, x):
        return x + imresize(y - sp.degrade_spatial(x, field, _SPEC), scale=_S)

    x = jnp.clip(imresize(y, scale=_S), 0.0, 1.0)
    return jnp.clip(jax.lax.fori_loop(0, steps, body, x), 0.0, 1.0)


@jax.jit
def _bicubic(y):
    return jnp.clip(imresize(y, scale=_S), 0.0, 1.0)


@jax.jit
def _lr_error(x, field, y):
    """RMS LR-consistency error ||degrade_spatial(x, field) - y|| / sqrt(n)."""
    return jnp.sqrt(jnp.mean(jnp.square(sp.degrade_spatial(x, field, _SPEC) - y)))


def test_svkr_iterations_do_not_increase_the_lr_consistency_error():
    """SVKR (kfsr.svkr.refine, default EMA update, N = 3, beta = 0.9) with the method's default
    depth provider (the 'sharpness' proxy, re-run on each SR image) and weight-free stand-ins
    for the trained parts: E = the data's exact depth -> field law (a perfect DKENet given
    depth), R = 10 steps of iterative back-projection with the field. On 4 BSD100 crops x 2
    synthetic depth kinds the LR-consistency error of each iteration's own (SR, field) pair
    never increases; MANet's kernel metric (the GROUND-TRUTH HR re-degraded with K_i vs the LR)
    falls on average: sharper SR images give better proxy depth, hence better fields.
    Measured (x1e-4, img_003 'blobs'): own pair 1.186 -> 1.101 -> 1.046, GT HR 4.398 -> 4.108
    -> 3.901. Over 6 crops x 3 kinds (incl. 'mixed') the own-pair error fell in all 18 cases
    and the GT one in 13 (rising by <= 5 % in 5); with 20 gradient-descent steps as R instead
    of back-projection (48 px crops) the own-pair error fell in 11 of 12: the property depends
    on R, it is not a theorem."""
    from kfsr.data import SHARED_DATA

    provider = dp.ProxyDepth("sharpness")
    lr_hw = (_HR // _S, _HR // _S)
    own_ratio, gt_ratio = [], []
    for name, top, left in [("003", 40, 60), ("010", 100, 100), ("025", 60, 150),
                            ("050", 30, 30)]:
        img = io.load_image(f"{SHARED_DATA}/BSD100/HR/img_{name}_SRF_2_HR.png")
        hr = jnp.asarray(img[top:top + _HR, left:left + _HR])
        for kind, seed in [("blobs", 3), ("plane", 4)]:
            depth = dp.synthetic_depth(jax.random.PRNGKey(seed), lr_hw, kind)
            y = sp.degrade_spatial(hr, _law(depth), _SPEC)
            out = svkr.refine(
                y, kernel_fn=lambda lr, d: _law(d), sr_fn=lambda lr, f: _nonblind_ibp(lr, f, 10),
                init_sr=_bicubic, depth_fn=lambda x: svkr.depth_on_lr_grid(provider, x, lr_hw))
            own = np.array([float(_lr_error(t["sr"], t["field"], y)) for t in out.trace])
            gt = np.array([float(_lr_error(hr, t["field"], y)) for t in out.trace])
            print(name, kind, np.round(own * 1e4, 3), np.round(gt * 1e4, 3))
            assert len(own) == 3 and np.all(np.diff(own) <= 0), (name, kind, own)
            own_ratio.append(own[-1] / own[0])
            gt_ratio.append(gt[-1] / gt[0])
    assert max(own_ratio) < 0.97, own_ratio            # measured 0.62 - 0.89
    assert np.exp(np.mean(np.log(gt_ratio))) < 0.95, gt_ratio   # measured 0.89


# ---------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def rrdb_training(tmp_path_factory):
    """RRDB-SFT (the `rrdb` part) trained 20 steps on one fixed batch of BSD100 crops degraded
    with synthetic depth-dependent SV fields, through kfsr.train.supervised; its EMA weights
    exported as `train` does with a workdir (without the training-state checkpoints)."""
    c = _config(part="rrdb")
    c.data.fixed = True
    setup = sup.make_setup(c)
    res = sup.train(c, None, progress=False, setup=setup)
    workdir = str(tmp_path_factory.mktemp("ssr_rrdb"))
    sup.export_model(f"{workdir}/{sup.MODEL_DIR}", jax.device_get(res.ema), setup.task.meta, 20)
    return c, setup, res, workdir


def test_depth_field_pipeline(rrdb_training):
    """The batch: true depth (b, h, w) and field (b, h, w, K, K) on the LR grid (simplex), LR =
    quantise(degrade_spatial(hr, field)) and blur growing with depth (the family's law)."""
    from kfsr.degrade import quantize

    c, setup, _, _ = rrdb_training
    p = setup.pipeline
    batch = p.batch(0)
    hr, lr, field, depth = (np.asarray(batch[k]) for k in ("hr", "lr", "kernel", "depth"))
    n, s, K = 4, 2, 11
    assert hr.shape == (n, 32, 32, 3) and lr.shape == (n, 16, 16, 3)
    assert field.shape == (n, 16, 16, K, K) and depth.shape == (n, 16, 16)
    assert field.min() >= 0 and np.allclose(field.sum((-2, -1)), 1.0, atol=1e-5)
    for i in range(n):  # (eagerly: the SVKR test's compiled blur)
        ref = quantize(sp.degrade_spatial(jnp.asarray(hr[i]), jnp.asarray(field[i]), _SPEC))
        np.testing.assert_allclose(lr[i], np.asarray(ref), atol=1e-6)
    # spread (second moment) of each pixel's kernel grows with its depth
    f = field.reshape(-1, K, K)
    r = np.arange(K)[None, :, None]
    cr, cc = (f * r).sum((1, 2)), (f * r.transpose(0, 2, 1)).sum((1, 2))
    spread = (f * ((r - cr[:, None, None]) ** 2
                   + (r.transpose(0, 2, 1) - cc[:, None, None]) ** 2)).sum((1, 2))
    assert np.corrcoef(spread, depth.ravel())[0, 1] > 0.9


def test_rrdb_part_trains_through_supervised(rrdb_training):
    """The L1 of the last 5 of 20 steps on the fixed batch is at least 4x below the first
    step's (measured: 0.574 -> 0.090, 6.4x; 0.070 after 30 steps) and still falling."""
    _, _, res, _ = rrdb_training
    l1 = np.array([h["sr_l1"] for h in res.history])
    print(f"RRDB-SFT L1 {l1[0]:.4f} -> {l1[-5:].mean():.4f}")
    assert len(l1) == 20 and np.isfinite(l1).all()
    assert l1[-5:].mean() < l1[0] / 4, l1
    assert l1[-5:].mean() < l1[5:10].mean(), l1


def test_exported_part_loads_into_the_method(rrdb_training):
    """The exported EMA weights are what `load_params` gives the method; weights trained for
    another configuration are refused with the field named."""
    _, _, res, workdir = rrdb_training
    c = _config()
    c.checkpoints.rrdb = workdir
    loaded = ssr.load_params(c, parts=("rrdb",))["rrdb"]
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(res.ema)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c.pca.rank = 6
    with pytest.raises(KfsrInputError, match="config.checkpoints.rrdb.*pca_rank"):
        ssr.load_params(c, parts=("rrdb",))


# ---------------------------------------------------------------------------------- method
def test_run_without_depth_and_with_an_oracle_field():
    """The registered method end to end with untrained weights (shapes and contracts): the
    depth-free variant, and the same with a known field, which SVKR and the diffusion then use."""
    c = _config(use_depth=False)
    setup = ssr.make_setup(c)
    params = ssr.init_params(setup, seed=0)
    lr = np.asarray(imresize(_hr_crop(32), scale=0.5))
    res = get_method("ssr")(c, lr, jax.random.key(1), params=params, progress=False)
    assert res.hr.shape == (32, 32, 3) and np.isfinite(np.asarray(res.hr)).all()
    assert float(res.hr.min()) >= 0 and float(res.hr.max()) <= 1
    assert "depth_encoder" not in params["denoiser"]["params"]      # depth-free structure
    assert res.kernel.shape == (11, 11) and abs(float(res.kernel.sum()) - 1) < 1e-5
    assert len(res.history) == 4                       # respace_sample = 4 DDIM steps
    field = _law(dp.synthetic_depth(jax.random.PRNGKey(2), (16, 16), "blobs"))
    out = ssr.run_full(c, lr, jax.random.key(1), params=params, progress=False, kernel=field)
    np.testing.assert_allclose(out.field, field, atol=1e-6)
    assert out.depth is None and out.sr_svkr.shape == (32, 32, 3)
    # the field conditions R (the untrained denoiser's output saturates, so compare R's image)
    assert np.abs(np.asarray(out.sr_svkr) - np.asarray(ssr.run_full(
        c, lr, jax.random.key(1), params=params, progress=False).sr_svkr)).max() > 1e-3
    # diffusion.t_start: from SVKR's image noised to the 2nd-last respaced step: 2 reverse steps
    tmap = np.asarray(setup.schedules("sample")[1])
    c.diffusion.t_start = int(tmap[1])
    st = ssr.make_setup(c)
    assert ssr.first_step(st) == 2 and ssr.num_steps(st) == 2
    state = ssr.init_sampling(st, params["denoiser"], jnp.asarray(lr), jnp.zeros((16, 16, 10)),
                              None, jax.random.key(0), sr=out.sr_svkr)
    from kfsr.diffusion.samplers import normal

    acp = float(st.schedules("sample")[0].alphas_cumprod[1])  # q_sample at the first step
    noise = np.asarray(normal(jax.random.split(jax.random.key(0))[0], (1, 32, 32, 3)))[0]
    expect = np.sqrt(acp) * (2 * np.asarray(out.sr_svkr) - 1) + np.sqrt(1 - acp) * noise
    np.testing.assert_allclose(np.asarray(state["x"][0]), expect, atol=1e-5)
    assert int(state["i"]) == 2
    res = get_method("ssr")(c, lr, jax.random.key(1), params=params, progress=False)
    assert len(res.history) == 2 and np.isfinite(np.asarray(res.hr)).all()


def test_config_errors_name_the_field():
    for field, value, match in [("part", "vae", "config.part"),
                                ("sampling", "bicubic", "config.sampling"),
                                ("use_depth", "yes", "config.use_depth")]:
        with pytest.raises(KfsrInputError, match=match):
            ssr.validate(_config(**{field: value}))
    for section, field, value, match in [
            ("svkr", "rule", "nesterov", "config.svkr.rule"),
            ("svkr", "beta", 2.0, "config.svkr.beta"),
            ("depth", "source", "midas", "config.depth.source"),
            ("denoiser", "amf_norm", "layer", "config.denoiser.amf_norm"),
            ("diffusion", "prediction", "x0", "config.diffusion.prediction"),
            ("diffusion", "t_start", 5000, "config.diffusion.t_start"),
            ("diffusion", "train_t_max", -1, "config.diffusion.train_t_max"),
            ("pca", "rank", 500, "config.pca.rank")]:
        c = _config()
        c[section][field] = value
        with pytest.raises(KfsrInputError, match=match):
            ssr.validate(c)
    c = _config()
    c.data.crop = 31
    with pytest.raises(KfsrInputError, match="config.data.crop"):
        ssr.validate(c)
    c = _config()
    c.depth.source = "user"
    with pytest.raises(KfsrInputError, match="config.depth.path"):
        ssr.validate(c)
    with pytest.raises(KfsrInputError, match="config.checkpoints.dkenet"):
        ssr.run(_config(), np.zeros((8, 8, 3), np.float32), progress=False)


def test_train_t_max_restricts_the_training_timesteps():
    """diffusion.train_t_max keeps the first steps of the respaced training chain: their base
    timesteps are <= t_max and the next one is above it (the test preset respaces to 20)."""
    from kfsr.methods import ssr_train

    setup = ssr.make_setup(_config())
    _, tmap = setup.schedules("train")
    assert ssr_train.num_train_steps(setup) == len(tmap)
    c = _config()
    c.diffusion.train_t_max = 120
    n = ssr_train.num_train_steps(ssr.make_setup(c))
    assert 1 <= n < len(tmap) and tmap[n - 1] <= 120 < tmap[n]
    c.diffusion.train_t_max = 0
    assert ssr_train.num_train_steps(ssr.make_setup(c)) == 1
