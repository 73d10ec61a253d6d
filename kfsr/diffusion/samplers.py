"""Reverse-process steps (DDPM ancestral, DDIM) and a forward-only sampling loop.

Every step takes the x0 prediction of the model (convert eps / v outputs with `param.to_x0`), so one
step serves all parameterisations and guidance can edit x0 before stepping. Formulas follow
openai/guided-diffusion (`p_mean_variance`, `p_sample`, `ddim_sample`); shapes are (B, H, W, C) or
(H, W, C), t a scalar or (B,) int (see `schedule`). x0 is clipped to the data range [-1, 1] when
`clip` (guided-diffusion's clip_denoised), and eps is then re-derived from the clipped x0.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.diffusion.param import check_parameterization, eps_from_x0, to_x0
from kfsr.diffusion.schedule import Schedule, extract, respace, space_timesteps
from kfsr.errors import KfsrInputError

SAMPLERS = ("ddpm", "ddim")


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """jax.random.normal(key, shape), drawn flat and reshaped: the same values, but XLA:CPU
    compiles it 3-8x faster for (B, H, W, C) shapes (measured 3.4 s vs 0.65 s for (2, 6, 6, 3),
    jax 0.10.2, threefry_partitionable); a test checks the values stay identical."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def _mask(cond, ndim: int) -> jax.Array:
    """A per-batch-element boolean (scalar or (B,)) as float32 broadcasting over ndim dims."""
    cond = jnp.asarray(cond)
    return cond.astype(jnp.float32).reshape(cond.shape + (1,) * (ndim - cond.ndim))


def q_posterior(sched: Schedule, x0: jax.Array, x_t: jax.Array, t):
    """q(x_{t-1} | x_t, x0) = N(mean, variance): returns (mean, variance, log_variance), all x_t.shape.

    mean = coef1[t] x0 + coef2[t] x_t; log_variance is the clipped one (finite at t = 0).
    """
    n = x_t.ndim
    mean = (extract(sched.posterior_mean_coef1, t, n) * x0
            + extract(sched.posterior_mean_coef2, t, n) * x_t)
    var = jnp.broadcast_to(extract(sched.posterior_variance, t, n), x_t.shape)
    log_var = jnp.broadcast_to(extract(sched.posterior_log_variance_clipped, t, n), x_t.shape)
    return mean, var, log_var


def ddpm_step(sched: Schedule, key: jax.Array, x_t: jax.Array, t, x0_pred: jax.Array, *,
              clip: bool = True, learned_var_frac: jax.Array | None = None) -> jax.Array:
    """One ancestral step x_t -> x_{t-1} ~ N(posterior mean from x0_pred, sigma_t^2 I).

    sigma_t^2 is the posterior variance ("fixed small"), or with `learned_var_frac` v in [-1, 1]
    (same shape as x_t; guided-diffusion's learn_sigma output) the learned-range interpolation
    log sigma^2 = f log beta_t + (1 - f) log posterior_variance_t, f = (v + 1) / 2.
    No noise is added where t == 0 (per batch element), so the last step returns the mean.
    """
    if clip:
        x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
    mean, _, log_var = q_posterior(sched, x0_pred, x_t, t)
    if learned_var_frac is not None:
        frac = (learned_var_frac + 1.0) / 2.0
        max_log = extract(jnp.log(sched.betas), t, x_t.ndim)
        log_var = frac * max_log + (1.0 - frac) * log_var
    noise = normal(key, x_t.shape, x_t.dtype)
    nonzero = _mask(jnp.asarray(t) != 0, x_t.ndim)
    return mean + nonzero * jnp.exp(0.5 * log_var) * noise


def ddim_step(sched: Schedule, key: jax.Array, x_t: jax.Array, t, t_prev, x0_pred: jax.Array, *,
              eta: float = 0.0, clip: bool = True) -> jax.Array:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12), t_prev < t of the same schedule.

    t_prev = -1 is the final step to x0 (acp_prev = 1). eta = 0: deterministic; eta = 1: the DDPM
    posterior variance when t_prev = t - 1. With the sigma of Eq. 16:
        x_prev = sqrt(acp_prev) x0 + sqrt(1 - acp_prev - sigma^2) eps + sigma z.
    """
    if clip:
        x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
    n = x_t.ndim
    eps = eps_from_x0(sched, x_t, t, x0_pred)
    t_prev = jnp.asarray(t_prev, jnp.int32)
    has_prev = _mask(t_prev >= 0, n)
    tp = jnp.maximum(t_prev, 0)
    # float32 care: 1 - acp is taken from the float64-derived sqrt(1 - acp) (1 - acp32 cancels near
    # t = 0), and acp_prev - acp from whichever pair is small (both cancel otherwise).
    ab = extract(sched.alphas_cumprod, t, n)
    ab_prev = jnp.where(has_prev > 0, extract(sched.alphas_cumprod, tp, n), 1.0)
    om = extract(sched.sqrt_one_minus_alphas_cumprod, t, n) ** 2
    om_prev = has_prev * extract(sched.sqrt_one_minus_alphas_cumprod, tp, n) ** 2
    diff = jnp.where(ab_prev < 0.5, ab_prev - ab, om - om_prev)  # = acp_prev - acp
    # sigma^2 = eta^2 (1 - acp_prev)/(1 - acp) (1 - acp/acp_prev)   (Song et al. Eq. 16)
    var = om_prev / om * diff / ab_prev
    sqrt_ab_prev = jnp.where(has_prev > 0, extract(sched.sqrt_alphas_cumprod, tp, n), 1.0)
    sigma = eta * jnp.sqrt(jnp.maximum(var, 0.0))
    # max(., 0): rounding can make 1 - acp_prev - sigma^2 slightly negative when eta = 1.
    mean = sqrt_ab_prev * x0_pred + jnp.sqrt(jnp.maximum(om_prev - sigma ** 2, 0.0)) * eps
    noise = normal(key, x_t.shape, x_t.dtype)
    return mean + has_prev * sigma * noise


def resolve_timesteps(sched: Schedule, timesteps) -> tuple[Schedule, jax.Array]:
    """(schedule to step on, timestep_map into the original chain) for `sample`'s `timesteps`.

    None: every step; an int or a string ("250", "10,15,20", "ddim50"): `space_timesteps`; any other
    sequence: the explicit (concrete) timesteps to keep.
    """
    T = sched.num_steps
    if timesteps is None:
        return sched, jnp.arange(T, dtype=jnp.int32)
    if isinstance(timesteps, (str, int, np.integer)):
        timesteps = space_timesteps(T, timesteps)
    return respace(sched, timesteps)


def split_model_output(out: jax.Array, learned_var: bool):
    """(prediction, var_frac or None): a learned-variance model outputs 2C channels (pred, frac)."""
    if not learned_var:
        return out, None
    c = out.shape[-1] // 2
    return out[..., :c], out[..., c:]


def sample(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], sched: Schedule,
           key: jax.Array, shape: tuple[int, ...], *, sampler: str = "ddpm",
           parameterization: str = "eps", timesteps=None, eta: float = 0.0, clip: bool = True,
           x_T: jax.Array | None = None, learned_var: bool = False) -> jax.Array:
    """Draw x_0 by running the reverse chain from x_T ~ N(0, I) as one `lax.scan` (no gradients).

    denoise_fn(x_t, t) -> model output in `parameterization` ("eps" | "v" | "x0"), with t the
    ORIGINAL timestep index (timestep_map applied when respaced): an int32 (B,) vector when shape is
    (B, H, W, C), a scalar otherwise. With learned_var the output has 2C channels (pred, var frac);
    DDPM uses the learned variance, DDIM ignores it (as guided-diffusion).
    timesteps: see `resolve_timesteps` (e.g. 50 or "ddim50"); the sampler steps through the kept
    ones from the noisiest down. Jittable with denoise_fn, shape, sampler, parameterization,
    timesteps, clip, learned_var static; sched may be traced.
    """
    if sampler not in SAMPLERS:
        raise KfsrInputError(f"diffusion sampler: unknown {sampler!r}; expected one of {SAMPLERS}")
    check_parameterization(parameterization)
    sched_r, tmap = resolve_timesteps(sched, timesteps)
    n = sched_r.num_steps
    k_init, k_steps = jax.random.split(key)
    if x_T is None:
        x_T = normal(k_init, shape)
    batched_t = len(shape) == 4

    def body(x, inp):
        i, k = inp
        t_model = tmap[i]
        if batched_t:
            t_model = jnp.full((shape[0],), t_model, jnp.int32)
        pred, frac = split_model_output(denoise_fn(x, t_model), learned_var)
        x0 = to_x0(sched_r, x, i, pred, parameterization)
        if sampler == "ddpm":
            x = ddpm_step(sched_r, k, x, i, x0, clip=clip, learned_var_frac=frac)
        else:
            x = ddim_step(sched_r, k, x, i, i - 1, x0, eta=eta, clip=clip)
        return x, None

    steps = jnp.arange(n - 1, -1, -1, dtype=jnp.int32)
    x0, _ = jax.lax.scan(body, x_T, (steps, jax.random.split(k_steps, n)))
    return x0
