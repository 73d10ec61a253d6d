"""Learned-variance training terms: the variational bound of Nichol & Dhariwal (2021), "L_vb".

Formulas of openai/guided-diffusion (`losses.py`: normal_kl, approx_standard_normal_cdf,
discretized_gaussian_log_likelihood; `gaussian_diffusion.py`: `_vb_terms_bpd` with LEARNED_RANGE
variance), for models that output (eps, v) with v in [-1, 1] (`samplers.split_model_output`):

    log sigma_t^2 = f log beta_t + (1 - f) log posterior_variance_t,  f = (v + 1) / 2
    L_vb(t > 0) = KL( q(x_{t-1} | x_t, x0) || N(mu_theta(x_t, t), sigma_t^2) ) / log 2   (bits/dim)
    L_vb(t = 0) = -log p(x0 | x_1) under the discretised Gaussian decoder (bins of width 2/255
                  in [-1, 1], open edge bins beyond +-0.999) / log 2

mu_theta comes from the (unclipped) x0 predicted by eps; pass eps stop-gradiented so that L_vb
trains the variance channels only (guided-diffusion's `frozen_out`). Shapes: (B, H, W, C) arrays,
t a (B,) int index into `sched` (respaced index, t = 0 the least noisy kept step); returns (B,).
The decoder term assumes data in [-1, 1]; on [0, 1] data (BlindDiff's released code) it is mildly
mis-specified, as in the original.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kfsr.diffusion.param import x0_from_eps
from kfsr.diffusion.samplers import q_posterior
from kfsr.diffusion.schedule import Schedule, extract


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (nats)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """The tanh approximation of the standard normal CDF used by guided-diffusion."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log-likelihood (nats, elementwise) of x in [-1, 1] quantised to 256 levels under
    N(means, exp(log_scales)^2) integrated over each bin (edge bins open)."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_probs = jnp.where(
        x < -0.999, log_cdf_plus,
        jnp.where(x > 0.999, log_one_minus_cdf_min, jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))))
    return log_probs


def learned_range_log_variance(sched: Schedule, t, v, ndim: int):
    """log sigma_t^2 from the model's variance output v in [-1, 1] (LEARNED_RANGE)."""
    frac = (v + 1.0) / 2.0
    min_log = extract(sched.posterior_log_variance_clipped, t, ndim)
    max_log = extract(jnp.log(sched.betas), t, ndim)
    return frac * max_log + (1.0 - frac) * min_log


def vb_terms(sched: Schedule, x0, x_t, t, eps_pred, v):
    """Per-example L_vb in bits/dim, (B,): KL for t > 0, decoder NLL at t = 0 (see module doc)."""
    n = x_t.ndim
    true_mean, _, true_log_var = q_posterior(sched, x0, x_t, t)
    x0_pred = x0_from_eps(sched, x_t, t, eps_pred)
    model_mean, _, _ = q_posterior(sched, x0_pred, x_t, t)
    model_log_var = learned_range_log_variance(sched, t, v, n)
    axes = tuple(range(1, n))
    kl = jnp.mean(normal_kl(true_mean, true_log_var, model_mean, model_log_var), axis=axes)
    nll = -jnp.mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var),
                    axis=axes)
    return jnp.where(jnp.asarray(t) == 0, nll, kl) / math.log(2.0)


__all__ = ["normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood",
           "learned_range_log_variance", "vb_terms"]
