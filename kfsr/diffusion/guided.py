"""Energy-guided reverse steps: DPS (Chung et al. 2023) and BlindDiff-style kernel-aware guidance.

One guided step from x_t:

    x0_hat      = to_x0(denoise_fn(x_t, t))           (clipped to [-1, 1] when clip, as DPS)
    E, grad     = value_and_grad_{x_t} energy_fn(x0_hat(x_t))     THROUGH the denoiser
    x_prev'     = ddpm_step / ddim_step from x0_hat   (the unguided step, same key)
    x_prev      = x_prev' - weight * g

g is grad_{x_t} E, or with normalize=True grad_{x_t} sqrt(E) = grad E / (2 sqrt(E)). With
E = ||y - A(x0_hat)||^2 (energy_fn returns the SQUARED residual norm) the normalized direction is the
gradient of the residual norm ||y - A(x0_hat)||, which is what the official DPS code differentiates
(`torch.linalg.norm(y - A(x0))` then autograd), so `weight` is DPS's `scale`. The paper writes it
as zeta' / ||y - A x0|| times grad ||y - A x0||^2, which is twice the same step. Normalizing makes
the step size independent of the residual's magnitude (E must be >= 0 then); near t = 0 a too
large weight overshoots the data fit (tests: weight 2 ends worse than weight 1 on a masked problem).

energy_fn maps x0_hat (same shape as x_t, in [-1, 1]) to a scalar, or to (scalar, aux) with
has_aux=True: BlindDiff carries its kernel estimate out that way. For a batch of independent
problems, vmap `guided_step` over the batch (energy_fn sees one image; t per element).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from kfsr.diffusion.param import check_parameterization, to_x0
from kfsr.diffusion.samplers import SAMPLERS, ddim_step, ddpm_step, split_model_output
from kfsr.diffusion.schedule import Schedule
from kfsr.errors import KfsrInputError

_TINY = 1e-20  # floor on E before sqrt: E = 0 gives a zero step, not NaN


def guided_step(sched: Schedule, key: jax.Array, x_t: jax.Array, t,
                denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
                energy_fn: Callable[[jax.Array], Any], weight, *,
                parameterization: str = "eps", sampler: str = "ddpm", t_prev=None,
                eta: float = 0.0, clip: bool = True, normalize: bool = True,
                has_aux: bool = False, timestep_map: jax.Array | None = None,
                learned_var: bool = False) -> tuple[jax.Array, dict]:
    """One energy-guided step x_t -> x_prev; see the module docstring for the maths.

    sched, t, t_prev: as `ddpm_step` / `ddim_step` (t_prev defaults to t - 1; DDIM only).
    denoise_fn(x_t, t_model) gets t_model = timestep_map[t] when a respaced schedule's map is given,
    else t itself (same shape as t). weight: scalar or broadcastable to x_t (0 = unguided).
    Returns (x_prev, aux) with aux = dict(x0_hat, energy, grad_norm[, energy_aux]); x0_hat is the
    (clipped) prediction the energy was evaluated on and the step was taken from.
    """
    if sampler not in SAMPLERS:
        raise KfsrInputError(f"diffusion sampler: unknown {sampler!r}; expected one of {SAMPLERS}")
    check_parameterization(parameterization)
    t = jnp.asarray(t, jnp.int32)
    t_model = t if timestep_map is None else jnp.asarray(timestep_map)[t]

    def composite(x):
        pred, frac = split_model_output(denoise_fn(x, t_model), learned_var)
        x0 = to_x0(sched, x, t, pred, parameterization)
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
        res = energy_fn(x0)
        energy, e_aux = res if has_aux else (res, None)
        return energy, (x0, frac, e_aux)

    (energy, (x0_hat, frac, e_aux)), grad = jax.value_and_grad(composite, has_aux=True)(x_t)
    if normalize:
        grad = grad / (2.0 * jnp.sqrt(jnp.maximum(energy, _TINY)))
    if sampler == "ddpm":
        x_prev = ddpm_step(sched, key, x_t, t, x0_hat, clip=False, learned_var_frac=frac)
    else:
        t_prev = t - 1 if t_prev is None else t_prev
        x_prev = ddim_step(sched, key, x_t, t, t_prev, x0_hat, eta=eta, clip=False)
    x_prev = x_prev - weight * grad
    aux = dict(x0_hat=x0_hat, energy=energy, grad_norm=jnp.sqrt(jnp.sum(jnp.square(grad))))
    if has_aux:
        aux["energy_aux"] = e_aux
    return x_prev, aux
