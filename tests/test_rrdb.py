"""RRDB-SFT (kfsr/nets/rrdb.py): parameter counts by eval_shape and a tiny overfit run on one
spatially variant blurred image conditioned on its PCA kernel codes."""
import numpy as np

import jax
import jax.numpy as jnp
import optax

from kfsr import io
from kfsr.degrade import Degradation, imresize
from kfsr.degrade import spatial as sp
from kfsr.nets import dkenet as dk
from kfsr.nets import rrdb


def _count(cfg, codes):
    net = rrdb.RRDBSFTNet(**cfg)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                            jnp.zeros((1, 8, 8, codes)))
    return dk.param_count(shapes)


def test_param_counts():
    assert _count(rrdb.full_config(), 15) == 8_086_256   # MANet stage 2 (blinddiff_ssr.md §2.4)
    assert _count(rrdb.tiny_config(), 10) == 469_520     # report: "about 0.48M"


def test_tiny_rrdb_overfits_one_sv_blurred_image():
    s, k, hr_size, rank = 2, 11, 32, 10
    hr = jnp.asarray(io.load_image("kfsr/assets/chelsea_hr256.png")[96:96 + hr_size,
                                                                      112:112 + hr_size])
    # MANet-style block field on the LR grid (4x4 LR blocks), SV blur + stride sampling.
    field = sp.block_field(jax.random.PRNGKey(1), (hr_size // s,) * 2, 4, k, s, recenter="none")
    lr = sp.degrade_spatial(hr, field, Degradation(scale=s, padding="reflect"))
    basis, _ = sp.fit_pca_basis(field, rank, center=False)
    codes = sp.project_onto_basis(field, basis, center=False)          # (h, w, rank)

    net = rrdb.RRDBSFTNet(**rrdb.tiny_config(nf=16, nb=1, gc=8, scale=s, sft_hidden=16))
    params = dk.init_params(net, jax.random.PRNGKey(2), lr[None], codes[None])
    tx = optax.adam(2e-3)

    def loss_fn(p):
        return jnp.mean(jnp.abs(net.apply(p, lr[None], codes[None])[0] - hr))

    @jax.jit
    def step(p, st):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st, loss

    p, st = params, tx.init(params)
    losses = []
    for _ in range(200):
        p, st, loss = step(p, st)
        losses.append(float(loss))
    sr = np.asarray(net.apply(p, lr[None], codes[None])[0])
    bic = np.asarray(imresize(lr, scale=s))
    hr_np = np.asarray(hr)

    def psnr(a):
        return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - hr_np) ** 2))

    print(f"L1 {losses[0]:.4f} -> {losses[-1]:.4f}; PSNR bicubic {psnr(bic):.2f} "
          f"RRDB-SFT {psnr(sr):.2f} dB")
    # Measured (jax 0.10.2 CPU): L1 0.275 -> 0.0175 in 200 steps; PSNR 31.72 dB vs bicubic
    # upsampling of the LR 30.30 dB (+1.42 dB).
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.1 * losses[0]
    assert psnr(sr) > psnr(bic) + 0.7
