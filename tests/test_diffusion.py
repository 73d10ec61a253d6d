"""kfsr.diffusion: schedules, respacing, parameterisations, DDPM/DDIM steps, sampling, guidance.

Reference values are computed independently here in float64 numpy (closed forms, Bayes on
Gaussians), never by calling the code under test. The sampling tests use Gaussian data
x0 ~ N(mu, s^2) i.i.d., whose exact denoiser is known: with a = sqrt(acp_t), b^2 = 1 - acp_t,
    E[x0 | x_t] = mu + c (x_t - a mu),  c = a s^2 / (a^2 s^2 + b^2),
    Var[x0 | x_t] = s^2 b^2 / (a^2 s^2 + b^2).
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfsr import diffusion as D

T = 1000


@pytest.fixture(scope="module")
def lin():
    return D.get_schedule("linear", T)


def _np(x):
    return np.asarray(x, np.float64)


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1000, 250])
def test_linear_betas_closed_form(n):
    b = D.linear_betas(n)
    scale = 1000 / n
    assert b.shape == (n,)
    assert b[0] == pytest.approx(1e-4 * scale, rel=1e-12)
    assert b[-1] == pytest.approx(0.02 * scale, rel=1e-12)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) * scale / (n - 1), rtol=1e-9)
    s = D.make_schedule(b)
    acp = _np(s.alphas_cumprod)
    assert s.num_steps == n and s.betas.dtype == jnp.float32
    assert np.all((acp > 0) & (acp < 1)) and np.all(np.diff(acp) < 0)
    np.testing.assert_allclose(acp, np.cumprod(1 - b), rtol=1e-6)
    assert acp[-1] < 1e-4  # x_T is (nearly) pure noise


def test_cosine_betas_closed_form():
    n, s = 100, 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    b = D.cosine_betas(n)
    assert b[0] == pytest.approx(1 - f(1 / n) / f(0), rel=1e-12)
    assert b[-1] == 0.999  # 1 - f(1)/f(1 - 1/n) = 1 exactly: clipped to max_beta
    assert np.all(np.diff(b) > 0)
    sch = D.get_schedule("cosine", n)
    acp = _np(sch.alphas_cumprod)
    # acp(t) = f(t) / f(0) wherever the clip did not act
    np.testing.assert_allclose(acp[:-1], [f((i + 1) / n) / f(0) for i in range(n - 1)], rtol=1e-5)
    assert np.all((acp > 0) & (acp < 1)) and np.all(np.diff(acp) < 0)


def test_schedule_derived_arrays(lin):
    b = D.linear_betas(T)
    acp = np.cumprod(1 - b)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    np.testing.assert_allclose(_np(lin.alphas_cumprod_prev), acp_prev, rtol=1e-6)
    np.testing.assert_allclose(_np(lin.sqrt_recip_alphas_cumprod), 1 / np.sqrt(acp), rtol=1e-6)
    np.testing.assert_allclose(_np(lin.sqrt_recipm1_alphas_cumprod), np.sqrt(1 / acp - 1), rtol=1e-6)
    np.testing.assert_allclose(
        _np(lin.sqrt_alphas_cumprod) ** 2 + _np(lin.sqrt_one_minus_alphas_cumprod) ** 2, 1.0, rtol=1e-6)
    plv = _np(lin.posterior_log_variance_clipped)
    assert plv[0] == plv[1] and np.all(np.isfinite(plv))
    assert float(lin.posterior_variance[0]) == 0.0


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="unknown name 'quadratic'"):
        D.get_schedule("quadratic", 10)


def test_schedule_is_a_pytree(lin):
    leaves = jax.tree_util.tree_leaves(lin)
    assert len(leaves) == 12 and all(l.shape == (T,) for l in leaves)
    doubled = jax.jit(lambda s: jax.tree_util.tree_map(lambda a: 2 * a, s))(lin)
    assert isinstance(doubled, D.Schedule)
    np.testing.assert_allclose(doubled.betas, 2 * lin.betas)


def test_extract_shapes(lin):
    chex.assert_shape(D.extract(lin.betas, jnp.array([0, 5]), 4), (2, 1, 1, 1))
    chex.assert_shape(D.extract(lin.betas, 5, 3), (1, 1, 1))
    assert float(D.extract(lin.betas, 999, 4).ravel()[0]) == pytest.approx(0.02)


# --------------------------------------------------------------------------------------------
# posterior (Bayes on scalar Gaussians, independently in float64)
# --------------------------------------------------------------------------------------------
def test_q_posterior_matches_bayes(lin):
    b = D.linear_betas(T)
    acp = np.cumprod(1 - b)
    ts = np.array([1, 2, 50, 500, 999])
    x0 = np.array([0.3, -0.7, 0.1, 0.9, -0.2])
    xt = np.array([0.5, 0.2, -1.3, 0.4, 2.0])
    # q(x_{t-1} | x0) = N(sqrt(acp_{t-1}) x0, 1 - acp_{t-1})
    # q(x_t | x_{t-1}) = N(sqrt(a_t) x_{t-1}, b_t)
    m1, v1 = np.sqrt(acp[ts - 1]) * x0, 1 - acp[ts - 1]
    a_t, b_t = 1 - b[ts], b[ts]
    var = 1 / (1 / v1 + a_t / b_t)
    mean = var * (m1 / v1 + np.sqrt(a_t) * xt / b_t)
    m, v, lv = jax.jit(D.q_posterior)(lin, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32),
                                      jnp.asarray(ts))
    np.testing.assert_allclose(_np(m), mean, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(_np(v), var, rtol=2e-5)
    np.testing.assert_allclose(_np(lv), np.log(var), rtol=1e-5)
    # t = 0: x_{-1} is x0 itself, so the posterior is a point mass at x0
    m0, v0, _ = jax.jit(D.q_posterior)(lin, jnp.full((5,), 0.4), jnp.full((5,), -1.0), jnp.zeros(5, int))
    np.testing.assert_allclose(m0, 0.4, rtol=1e-6)
    assert float(jnp.max(v0)) == 0.0


# --------------------------------------------------------------------------------------------
# respacing
# --------------------------------------------------------------------------------------------
def test_space_timesteps_like_guided_diffusion():
    assert D.space_timesteps(10, 3) == (0, 4, 9)          # stride 4.5, round(4.5) == 4
    assert D.space_timesteps(10, [2, 3]) == (0, 4, 5, 7, 9)
    assert D.space_timesteps(10, "2,3") == (0, 4, 5, 7, 9)
    assert D.space_timesteps(1000, "ddim50") == tuple(range(0, 1000, 20))
    assert D.space_timesteps(1000, 1000) == tuple(range(1000))
    with pytest.raises(ValueError):
        D.space_timesteps(10, "ddim7")  # no integer stride gives 7 steps of 10
    with pytest.raises(ValueError):
        D.space_timesteps(10, [6, 6])


def test_respace_all_steps_is_identity(lin):
    sch, tmap = D.respace(lin, range(T))
    np.testing.assert_allclose(_np(sch.betas), D.linear_betas(T), rtol=1e-6)
    np.testing.assert_allclose(_np(sch.posterior_variance), _np(lin.posterior_variance), rtol=1e-5)
    np.testing.assert_array_equal(tmap, np.arange(T))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_keeps_alphas_cumprod(name):
    base = D.get_schedule(name, T)
    kept = D.space_timesteps(T, "10,15,20")
    sch, tmap = D.respace(base, list(reversed(kept)))  # order does not matter
    assert sch.num_steps == len(kept) and tmap.dtype == jnp.int32
    np.testing.assert_array_equal(tmap, kept)
    np.testing.assert_allclose(_np(sch.alphas_cumprod), _np(base.alphas_cumprod)[list(kept)], rtol=2e-6)
    # the same respacing of a traced schedule (inside jit, float32)
    traced, _ = jax.jit(lambda s: D.respace(s, kept))(base)
    np.testing.assert_allclose(_np(traced.alphas_cumprod), _np(sch.alphas_cumprod), rtol=1e-5)
    with pytest.raises(ValueError):
        D.respace(base, [0, T])


# --------------------------------------------------------------------------------------------
# parameterisations
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_parameterisation_round_trips(name):
    sch = D.get_schedule(name, T)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (5, 4, 4, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    t = jnp.array([0, 10, 300, 700, 900])

    @jax.jit
    def convert(sch, x0, eps):
        xt = D.q_sample(sch, x0, t, eps)
        v = D.v_from_x0_eps(sch, x0, t, eps)
        outs = {"eps": eps, "v": v, "x0": x0}
        return xt, v, ({p: D.to_x0(sch, xt, t, o, p) for p, o in outs.items()},
                       {p: D.to_eps(sch, xt, t, o, p) for p, o in outs.items()})

    xt, v, (x0s, epss) = convert(sch, x0, eps)
    betas = D.linear_betas(T) if name == "linear" else D.cosine_betas(T)
    acp = np.cumprod(1 - betas)[np.asarray(t)][:, None, None, None]  # float64: 1 - acp32 cancels
    np.testing.assert_allclose(xt, np.sqrt(acp) * _np(x0) + np.sqrt(1 - acp) * _np(eps), atol=1e-6)
    np.testing.assert_allclose(v, np.sqrt(acp) * _np(eps) - np.sqrt(1 - acp) * _np(x0), atol=1e-6)
    # x0 <-> v is well conditioned; x0 from eps multiplies float32 errors by 1/sqrt(acp) (~80 at
    # t = 900 linear, ~160 at 999, ~2e4 at 999 cosine) and eps from x0 by 1/sqrt(1 - acp) (100 at 0)
    np.testing.assert_allclose(x0s["v"], x0, atol=1e-5)
    np.testing.assert_allclose(epss["v"], eps, atol=1e-5)
    np.testing.assert_array_equal(x0s["x0"], x0)
    np.testing.assert_array_equal(epss["eps"], eps)
    err = np.abs(_np(x0s["eps"]) - _np(x0))
    assert np.all(err <= 1e-6 + 3e-7 / np.sqrt(acp)), err.max()
    err = np.abs(_np(epss["x0"]) - _np(eps))
    assert np.all(err <= 1e-6 + 3e-7 / np.sqrt(1 - acp)), err.max()
    with pytest.raises(ValueError):
        D.to_x0(sch, xt, t, eps, "score")


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------
def test_normal_is_jax_random_normal():
    key = jax.random.key(9)
    np.testing.assert_array_equal(D.normal(key, (2, 2, 2, 1)), jax.random.normal(key, (2, 2, 2, 1)))


def test_ddpm_step_noise_mask_and_learned_variance(lin):
    key = jax.random.key(3)
    x_t = jnp.full((2, 2, 2, 1), 0.5)
    x0 = jnp.full_like(x_t, 0.2)
    t = jnp.array([0, 500])

    @jax.jit
    def run(lin):
        step = lambda x0, **kw: D.ddpm_step(lin, key, x_t, t, x0, **kw)  # noqa: E731
        return (D.q_posterior(lin, x0, x_t, t), D.normal(key, x_t.shape), step(x0),
                step(x0, learned_var_frac=-jnp.ones_like(x_t)),
                step(x0, learned_var_frac=jnp.ones_like(x_t)),
                step(jnp.full_like(x_t, 5.0)), step(jnp.ones_like(x_t)))

    (mean, _, log_var), noise, out, lo, hi, far, one = run(lin)
    np.testing.assert_allclose(out[0], mean[0], atol=1e-7)  # t == 0: no noise
    np.testing.assert_allclose(out[1], mean[1] + jnp.exp(0.5 * log_var[1]) * noise[1], atol=1e-6)
    assert float(jnp.min(jnp.abs(out[1] - mean[1]))) > 1e-4
    np.testing.assert_allclose(lo, out, atol=1e-7)
    np.testing.assert_allclose(hi[1], mean[1] + math.sqrt(D.linear_betas(T)[500]) * noise[1], rtol=1e-5)
    # clip: an x0 prediction outside [-1, 1] is clipped before the posterior mean
    np.testing.assert_allclose(far, one, atol=1e-7)


def test_ddim_eta1_is_ddpm(lin):
    key = jax.random.key(4)
    x_t = jnp.asarray(np.random.default_rng(5).standard_normal((3, 4, 4, 2)), jnp.float32)
    x0 = jnp.tanh(x_t)
    t = jnp.array([1, 300, 999])
    ddim, ddpm = jax.jit(lambda s: (D.ddim_step(s, key, x_t, t, t - 1, x0, eta=1.0),
                                    D.ddpm_step(s, key, x_t, t, x0)))(lin)
    np.testing.assert_allclose(ddim, ddpm, atol=2e-6)


def test_ddim_oracle_recovers_x0(lin):
    """eta = 0 and the exact x0: every step lands on q_sample(x0, t_prev, eps) with the same eps."""
    rng = np.random.default_rng(6)
    x0 = jnp.asarray(rng.uniform(-1, 1, (2, 6, 6, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    sch, tmap = D.respace(lin, D.space_timesteps(T, 5))
    n = sch.num_steps

    @jax.jit
    def chain(sch):
        x, xs, expect = D.q_sample(sch, x0, n - 1, eps), [], []
        for i in range(n - 1, -1, -1):
            x = D.ddim_step(sch, jax.random.key(0), x, i, i - 1, x0, eta=0.0)
            xs.append(x)
            expect.append(x0 if i == 0 else D.q_sample(sch, x0, i - 1, eps))
        return jnp.stack(xs), jnp.stack(expect)

    xs, expect = chain(sch)
    np.testing.assert_allclose(xs, expect, atol=1e-5)
    # the scan sampler with an eps oracle (fed ORIGINAL timesteps) from the same x_T
    oracle = lambda x_t, t: D.eps_from_x0(lin, x_t, t, x0)  # noqa: E731
    out = D.sample(oracle, lin, jax.random.key(8), x0.shape, sampler="ddim", timesteps=5,
                   x_T=D.q_sample(lin, x0, T - 1, eps))
    np.testing.assert_allclose(out, x0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# sampling Gaussian data with its exact denoiser
# --------------------------------------------------------------------------------------------
MU, SD, N, STEPS = 0.2, 0.5, 4096, 50


def _gauss_posterior(sch, t):
    """(c, Var[x0|x_t]) of the exact Gaussian denoiser at original timesteps t (float32)."""
    acp = D.extract(sch.alphas_cumprod, t, 4)
    a, b2 = jnp.sqrt(acp), 1.0 - acp
    return a * SD ** 2 / (acp * SD ** 2 + b2), SD ** 2 * b2 / (acp * SD ** 2 + b2)


def _gauss_denoiser(sch, parameterization, frac_table=None):
    def fn(x_t, t):
        acp = D.extract(sch.alphas_cumprod, t, x_t.ndim)
        c, _ = _gauss_posterior(sch, t)
        x0 = MU + c * (x_t - jnp.sqrt(acp) * MU)
        out = {"x0": x0,
               "eps": (x_t - jnp.sqrt(acp) * x0) / jnp.sqrt(1 - acp),
               "v": (jnp.sqrt(acp) * (x_t - jnp.sqrt(acp) * x0) / jnp.sqrt(1 - acp)
                     - jnp.sqrt(1 - acp) * x0),
               }[parameterization]
        if frac_table is None:
            return out
        return jnp.concatenate([out, jnp.broadcast_to(D.extract(frac_table, t, 4), x_t.shape)], -1)
    return fn


def _sample_jit(fn, sch, key, **kw):
    # sched is a traced argument here (pytree through jit, respaced inside the trace)
    run = lambda s, k: D.sample(fn, s, k, (N, 1, 1, 1), timesteps=STEPS, clip=False, **kw)  # noqa: E731
    return jax.jit(run)(sch, key)


def _check_moments(x, mean, sd):
    x = _np(x).ravel()
    se_m, se_s = sd / math.sqrt(N), sd / math.sqrt(2 * N)  # standard errors of mean and std
    assert abs(x.mean() - mean) < 4 * se_m, (x.mean(), mean)
    assert abs(x.std() - sd) < 4 * se_s, (x.std(), sd)


def test_ddpm_fixed_small_matches_linear_gaussian_recursion(lin):
    """Fixed-small variance with 50 steps under-disperses Gaussian data (std ~0.44, not 0.5): the
    exact law of the chain is Gaussian with a recursion computed here in float64 numpy."""
    x = _sample_jit(_gauss_denoiser(lin, "eps"), lin, jax.random.key(10))
    kept = list(D.space_timesteps(T, STEPS))
    acp = np.cumprod(1 - D.linear_betas(T))[kept]
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    beta = 1 - acp / acp_prev
    m, v = 0.0, 1.0  # x_T ~ N(0, 1)
    for i in range(len(kept) - 1, -1, -1):
        # Bayes: q(x_{i-1} | x_i, x0) = N(k1 x0 + k2 x_i, pv)
        pv = 1 / (1 / (1 - acp_prev[i]) + (1 - beta[i]) / beta[i]) if i > 0 else 0.0
        k1 = pv * math.sqrt(acp_prev[i]) / (1 - acp_prev[i]) if i > 0 else 1.0
        k2 = pv * math.sqrt(1 - beta[i]) / beta[i] if i > 0 else 0.0
        a, b2 = math.sqrt(acp[i]), 1 - acp[i]
        c = a * SD ** 2 / (a * a * SD ** 2 + b2)
        gain = k1 * c + k2                       # x0_hat = MU + c (x - a MU)
        m, v = k1 * MU * (1 - c * a) + gain * m, gain ** 2 * v + pv
    assert abs(math.sqrt(v) - SD) > 0.05     # the bias is real, and resolved by the test below
    _check_moments(x, MU, math.sqrt(v))


@pytest.mark.parametrize("parameterization", ["eps", "v"])  # "x0" is the identity in to_x0
def test_ddpm_exact_learned_variance_samples_gaussian(lin, parameterization):
    """With the exact mean AND the exact reverse variance (pv + coef1^2 Var[x0|x_t], given through
    the learned-range output) the 50-step chain samples N(MU, SD^2) up to Monte-Carlo error."""
    sch, tmap = D.respace(lin, D.space_timesteps(T, STEPS))
    t = tmap[1:]  # no noise at i = 0: leave its frac at 0
    _, var_x0 = _gauss_posterior(lin, t)
    var = sch.posterior_variance[1:] + sch.posterior_mean_coef1[1:] ** 2 * var_x0.ravel()
    lo, hi = sch.posterior_log_variance_clipped[1:], jnp.log(sch.betas[1:])
    frac = 2 * (jnp.log(var) - lo) / (hi - lo) - 1
    table = jnp.zeros((T,)).at[t].set(frac)
    x = _sample_jit(_gauss_denoiser(lin, parameterization, table), lin, jax.random.key(11),
                    parameterization=parameterization, learned_var=True)
    _check_moments(x, MU, SD)


# --------------------------------------------------------------------------------------------
# guidance
# --------------------------------------------------------------------------------------------
MASK = (jnp.arange(64).reshape(1, 8, 8, 1) % 3 != 0).astype(jnp.float32)  # observe 2/3 of pixels
X_TRUE = 0.4 * jnp.sin(jnp.arange(64.0)).reshape(1, 8, 8, 1)
Y = MASK * X_TRUE


def _energy(x0):
    return jnp.sum(jnp.square(MASK * x0 - Y))


@pytest.mark.parametrize("normalize", [False, True])
def test_guided_step_gradient_goes_through_the_denoiser(lin, normalize):
    """weight 0 == the unguided step; otherwise the shift is -weight * dE/dx_t, which for the exact
    Gaussian denoiser is c * dE/dx0 (c = d x0_hat / d x_t), not dE/dx0."""
    den = _gauss_denoiser(lin, "eps")
    x_t = jnp.asarray(np.random.default_rng(12).standard_normal(X_TRUE.shape), jnp.float32)
    t, key = 600, jax.random.key(13)
    w = 0.3

    @jax.jit
    def run(lin):
        x0_hat = D.to_x0(lin, x_t, t, den(x_t, t), "eps")
        plain = D.ddpm_step(lin, key, x_t, t, x0_hat)
        def step(w):
            return D.guided_step(lin, key, x_t, t, den, _energy, w, normalize=normalize)
        return x0_hat, plain, step(0.0), step(w)[0]

    x0_hat, plain, (zero, aux), guided = run(lin)
    np.testing.assert_allclose(zero, plain, atol=1e-6)
    np.testing.assert_allclose(aux["x0_hat"], x0_hat, atol=1e-6)
    assert float(aux["energy"]) == pytest.approx(float(_energy(x0_hat)), rel=1e-5)
    c, _ = _gauss_posterior(lin, t)
    r = MASK * x0_hat - Y
    g = 2 * c * MASK * r
    if normalize:
        g = g / (2 * jnp.sqrt(jnp.sum(r ** 2)))
    np.testing.assert_allclose(guided - plain, -w * g, rtol=1e-4, atol=1e-7)


def test_guided_sampling_fits_the_measurements(lin):
    """DPS on a masked-pixel inverse problem: same keys, weight 1 vs 0; the guided samples explain
    y far better. Also checks has_aux and the ddim branch run through lax.scan."""
    sch, tmap = D.respace(lin, D.space_timesteps(T, 20))
    den = _gauss_denoiser(lin, "eps")

    def energy_aux(x0):
        return _energy(x0), jnp.mean(x0)

    @jax.jit
    def run(weight):
        def body(x, inp):
            i, k = inp
            x, aux = D.guided_step(sch, k, x, i, den, energy_aux, weight, sampler="ddim", eta=1.0,
                                   has_aux=True, timestep_map=tmap)
            return x, aux["energy_aux"]
        x_T = D.normal(jax.random.key(14), X_TRUE.shape)
        steps = jnp.arange(sch.num_steps - 1, -1, -1)
        x, means = jax.lax.scan(body, x_T, (steps, jax.random.split(jax.random.key(15), sch.num_steps)))
        return _energy(x), means

    e0, means = run(0.0)
    e1, _ = run(1.0)
    chex.assert_shape(means, (20,))
    assert float(e0) > 1.0            # unguided prior samples ignore y
    assert float(e1) < 0.25 * float(e0), (float(e1), float(e0))  # measured 0.37 vs 10.3
