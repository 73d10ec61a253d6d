"""kfsr.methods.rks: DKP's random-kernel-sampling prior (weights, batched scoring, MCMC chains)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfsr import io
from kfsr.degrade import kernels as kern
from kfsr.degrade import ops
from kfsr.methods import rks

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
SCALE = 4
K = kern.dkp_kernel_size(SCALE)  # 19


@pytest.fixture(scope="module")
def hr():
    img = io.load_image(os.path.join(DATA, "Set5", "HR", "butterfly.png"))
    return jnp.asarray(img[60:124, 60:124])  # 64x64 real crop


def _lr(hr, k):
    return ops.downsample(ops.blur(hr, k, padding="circular"), SCALE)


def test_weights_formula_hand_values():
    e = jnp.array([1.0, 2.0, 3.0, 1.0])
    # d = e - min = [0, 1, 2, 0]; p = d / (1e-5 + 3); w = -(1-p)^2 ln(p + 1e-3)
    p = np.array([0.0, 1.0, 2.0, 0.0]) / (1e-5 + 3.0)
    w = -((1 - p) ** 2) * np.log(p + 1e-3)
    np.testing.assert_allclose(np.asarray(rks.rks_weights(e)), w, rtol=1e-5)
    assert float(rks.rks_weights(e)[0]) == pytest.approx(-np.log(1e-3), rel=1e-6)  # best: 6.91
    # prior loss = sum_l w_l * mean((k_l - k)^2)
    ks = jnp.stack([jnp.full((3, 3), v) for v in (0.0, 1.0)])
    assert float(rks.prior_loss(jnp.zeros((3, 3)), ks, jnp.array([2.0, 3.0]))) == pytest.approx(3.0)


def test_batched_scoring_equals_per_kernel(hr):
    sampler = rks.RKS(SCALE, K)
    ks = jax.jit(sampler.sample_many, static_argnums=1)(jax.random.key(0), 6)
    lr = _lr(hr, ks[0])
    batched = jax.jit(rks.reconstruction_errors, static_argnums=3)(hr, ks, lr, SCALE)
    single = [float(jnp.mean((ops.downsample(ops.blur_direct(hr, k, "circular"), SCALE) - lr) ** 2))
              for k in ks]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-4, atol=1e-9)
    assert float(batched[0]) < 1e-10


def test_true_kernel_gets_largest_weight(hr):
    sampler = rks.RKS(SCALE, K)
    k_true = kern.gaussian_from_params(K, 1.5, 6.0, 0.7, kern.target_center(K, SCALE, "dkp"))
    lr = _lr(hr, k_true)
    ks = jax.jit(sampler.sample_many, static_argnums=1)(jax.random.key(1), 7)
    ks = jnp.concatenate([ks[:3], k_true[None], ks[3:]])
    k_theta = jnp.mean(ks, 0)
    out_k, _, chain, m = jax.jit(sampler.step)({}, jax.random.key(2), hr, lr, k_theta)  # fresh draws
    assert chain == {} and out_k.shape == (5, K, K) and set(m) >= {"rks_err_min", "rks_w_sum"}
    w = jax.jit(lambda: rks.rks_weights(rks.reconstruction_errors(hr, ks, lr, SCALE)))()
    assert int(jnp.argmax(w)) == 3
    assert float(w[3]) == pytest.approx(-np.log(1e-3), rel=1e-5)


def test_families_sample_valid_kernels():
    for fam in ("motion_line", "mixed"):
        ks = jax.jit(lambda key, f=fam: rks.RKS(SCALE, K, family=fam).sample_many(key, 3))(jax.random.key(0))
        assert ks.shape == (3, K, K)
        np.testing.assert_allclose(np.asarray(ks.sum((1, 2))), 1.0, atol=1e-4)
        assert float(ks.min()) >= 0.0


def test_center_convention_moves_every_family():
    """rks.center: 'dkp' = the official prior centre ((s+1)*3/2 = 7.5 at x4, = (K - s)/2 for the
    motion families), 'aligned' = K//2 + (s-1)/2 = 10.5; mean centre of mass over 16 draws within
    0.25 px (DKP's one spline pass leaves up to ~0.2 px, kfsr.degrade.kernels)."""
    for fam in ("gaussian", "motion_line", "motion_traj"):
        for center, want in (("dkp", 7.5), ("aligned", 10.5)):
            r = rks.RKS(SCALE, K, family=fam, center=center)
            ks = np.asarray(jax.jit(lambda key, r=r: r.sample_many(key, 16))(jax.random.key(1)))
            com = [kern.center_of_mass(k) for k in ks]
            assert np.abs(np.mean(com, axis=0) - want).max() < 0.25, (fam, center, np.mean(com, 0))
    with pytest.raises(Exception, match="rks.center"):
        rks.RKS(SCALE, K, center="middle")


def test_mcmc_chain_accepts_sanely_and_lowers_energy(hr):
    """L chains on a fixed HR estimate: acceptance in (0.1, 0.9) and mean energy goes down."""
    k_true = kern.gaussian_from_params(K, 5.0, 12.0, 0.4, kern.target_center(K, SCALE, "dkp"))
    lr = _lr(hr, k_true)
    k_ref = kern.gaussian_from_params(K, 10.0, 10.0, 0.0, kern.target_center(K, SCALE, "dkp"))
    sampler = rks.RKS(SCALE, K, num_samples=16, mode="mcmc", temperature=0.05,
                      temperature_mode="relative", step_log_lambda=0.1, step_theta=0.1)
    chain0 = sampler.init(jax.random.key(0))
    assert chain0["params"].shape == (16, 3) and chain0["kernels"].shape == (16, K, K)

    @jax.jit
    def run(chain, key):
        def body(c, kk):
            _, _, c, m = sampler.step(c, kk, hr, lr, k_ref)
            return c, (m["rks_accept"], m["rks_energy"])
        return jax.lax.scan(body, chain, jax.random.split(key, 60))

    chain, (acc, energy) = run(chain0, jax.random.key(1))
    acc, energy = np.asarray(acc), np.asarray(energy)
    print("acceptance", acc.mean(), "energy first/last", energy[:3].mean(), energy[-10:].mean())
    assert 0.1 < acc.mean() < 0.9, f"acceptance rate {acc.mean():.3f} outside (0.1, 0.9)"
    assert energy[-10:].mean() < 0.8 * energy[:3].mean(), (
        f"mean chain energy did not decrease by 20 %: first {energy[:3].mean():.3f}, "
        f"last {energy[-10:].mean():.3f}")
    # the chains move towards the truth: parameters stay inside the prior box
    lo, hi = kern.dkp_prior_range(SCALE)
    lam = np.exp(np.asarray(chain["params"][:, :2]))
    assert lam.min() >= lo - 1e-3 and lam.max() <= hi + 1e-3
