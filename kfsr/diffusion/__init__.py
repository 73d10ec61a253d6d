"""Shared diffusion core: schedules, parameterisations, DDPM/DDIM steps, sampling, guided steps.

Models work in [-1, 1]; timesteps are int indices into a `Schedule` (t = 0 least noisy). See
`schedule` for the conventions, `guided` for DPS-style energy guidance.
"""
from kfsr.diffusion.guided import guided_step
from kfsr.diffusion.param import (PARAMETERIZATIONS, eps_from_v, eps_from_x0, q_sample, to_eps,
                                  to_x0, v_from_x0_eps, x0_from_eps, x0_from_v)
from kfsr.diffusion.samplers import (SAMPLERS, ddim_step, ddpm_step, normal, q_posterior,
                                     resolve_timesteps, sample, split_model_output)
from kfsr.diffusion.schedule import (SCHEDULES, Schedule, cosine_betas, extract, get_schedule,
                                     linear_betas, make_schedule, respace, space_timesteps)

__all__ = [
    "PARAMETERIZATIONS", "SAMPLERS", "SCHEDULES", "Schedule", "cosine_betas", "ddim_step",
    "ddpm_step", "eps_from_v", "eps_from_x0", "extract", "get_schedule", "guided_step",
    "linear_betas", "make_schedule", "normal", "q_posterior", "q_sample", "resolve_timesteps",
    "respace", "sample", "space_timesteps", "split_model_output", "to_eps", "to_x0",
    "v_from_x0_eps", "x0_from_eps", "x0_from_v",
]
