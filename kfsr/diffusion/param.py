"""Forward noising and conversions between the eps / v / x0 parameterisations of a denoiser.

With a = sqrt(acp[t]) and b = sqrt(1 - acp[t]) (a^2 + b^2 = 1):

    x_t = a x0 + b eps                      (q_sample)
    v   = a eps - b x0                      (Salimans & Ho 2022, "v-prediction")
    x0  = x_t / a - sqrt(1/acp - 1) eps     = a x_t - b v
    eps = (x_t / a - x0) / sqrt(1/acp - 1)  = b x_t + a v

All functions take the schedule first and a timestep t (scalar or (B,)); arrays are (B, H, W, C) or
(H, W, C) (any shape works: t is broadcast over the trailing axes). Recovering x0 from eps
multiplies by 1/a, which is ~160 at t = T-1 of the linear schedule (~2e4 for cosine): float32 errors
grow accordingly there, the v route does not have that problem.
"""
from __future__ import annotations

import jax

from kfsr.diffusion.schedule import Schedule, extract
from kfsr.errors import KfsrInputError

PARAMETERIZATIONS = ("eps", "v", "x0")


def _e(a, t, x):
    return extract(a, t, x.ndim)


def q_sample(sched: Schedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(acp[t]) x0 + sqrt(1 - acp[t]) noise (a sample of q(x_t | x0) given noise ~ N(0, I))."""
    return (_e(sched.sqrt_alphas_cumprod, t, x0) * x0
            + _e(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def x0_from_eps(sched: Schedule, x_t: jax.Array, t, eps: jax.Array) -> jax.Array:
    return (_e(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _e(sched.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def eps_from_x0(sched: Schedule, x_t: jax.Array, t, x0: jax.Array) -> jax.Array:
    return ((_e(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / _e(sched.sqrt_recipm1_alphas_cumprod, t, x_t))


def v_from_x0_eps(sched: Schedule, x0: jax.Array, t, eps: jax.Array) -> jax.Array:
    """The v-prediction target: v = sqrt(acp) eps - sqrt(1 - acp) x0."""
    return (_e(sched.sqrt_alphas_cumprod, t, x0) * eps
            - _e(sched.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def x0_from_v(sched: Schedule, x_t: jax.Array, t, v: jax.Array) -> jax.Array:
    return (_e(sched.sqrt_alphas_cumprod, t, x_t) * x_t
            - _e(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def eps_from_v(sched: Schedule, x_t: jax.Array, t, v: jax.Array) -> jax.Array:
    return (_e(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + _e(sched.sqrt_alphas_cumprod, t, x_t) * v)


def check_parameterization(parameterization: str):
    if parameterization not in PARAMETERIZATIONS:
        raise KfsrInputError(f"diffusion parameterization: unknown {parameterization!r}; "
                             f"expected one of {PARAMETERIZATIONS}")


def to_x0(sched: Schedule, x_t: jax.Array, t, out: jax.Array,
          parameterization: str = "eps") -> jax.Array:
    """The x0 prediction implied by a model output `out` in the given parameterisation."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return x0_from_eps(sched, x_t, t, out)
    if parameterization == "v":
        return x0_from_v(sched, x_t, t, out)
    return out


def to_eps(sched: Schedule, x_t: jax.Array, t, out: jax.Array,
           parameterization: str = "eps") -> jax.Array:
    """The eps prediction implied by a model output `out` in the given parameterisation."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return out
    if parameterization == "v":
        return eps_from_v(sched, x_t, t, out)
    return eps_from_x0(sched, x_t, t, out)
