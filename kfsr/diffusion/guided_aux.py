"""`guided_step` for models with a second output that the energy needs (BlindDiff's kernel).

BlindDiff's MCFormer returns (eps/variance channels, k_hat) from one forward pass, and the
kernel-aware energy E(x0_hat, k_hat) = ||y - D(x0_hat * k_hat)|| + ... depends on x_t through BOTH
outputs, so the gradient w.r.t. x_t must flow through x0_hat(x_t) and k_hat(x_t). `guided_step`'s
`energy_fn` only receives x0_hat; this wrapper hands the model's auxiliary output to the energy
without a second forward pass:

    x_prev, aux = guided_step_aux(sched, key, x_t, t, model_fn, energy_fn, weight, **guided_kw)
    model_fn(x, t_model) -> (out, model_aux)         out as guided_step's denoise_fn returns
    energy_fn(x0_hat, model_aux) -> E                (or (E, energy_aux) with has_aux=True)

It calls `kfsr.diffusion.guided.guided_step` unchanged: `model_aux` is passed from the denoiser
call to the energy call inside the one function that guided_step differentiates (both run in the
same trace, so the value carries the dependence on x_t; tests/test_blinddiff.py checks the
gradient against jax.grad of the composite written out by hand).
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from kfsr.diffusion.guided import guided_step
from kfsr.diffusion.schedule import Schedule


def guided_step_aux(sched: Schedule, key: jax.Array, x_t: jax.Array, t,
                    model_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]],
                    energy_fn: Callable[[jax.Array, Any], Any], weight, **guided_kw):
    """One guided step where the energy also sees the model's auxiliary output; see module doc.

    guided_kw: every keyword of `guided_step` (parameterization, sampler, clip, normalize, has_aux,
    timestep_map, learned_var, ...). Returns guided_step's (x_prev, aux).
    """
    box: list = []

    def denoise(x, t_model):
        out, model_aux = model_fn(x, t_model)
        box.append(model_aux)
        return out

    def energy(x0):
        if len(box) != 1:
            raise RuntimeError("guided_step_aux: expected exactly one model call before the energy")
        return energy_fn(x0, box[0])

    return guided_step(sched, key, x_t, t, denoise, energy, weight, **guided_kw)


__all__ = ["guided_step_aux"]
