"""Noise schedules for discrete-time Gaussian diffusion (DDPM; Ho et al. 2020, Nichol & Dhariwal 2021).

Conventions (shared by everything in `kfsr.diffusion`)
  * Timesteps are integer indices t in [0, T): t = 0 is the least noisy step, x_t for t = T-1 is
    almost pure N(0, I) noise. alphas_cumprod[t] = prod_{s<=t} (1 - betas[s]), so
    q(x_t | x_0) = N(sqrt(acp[t]) x_0, (1 - acp[t]) I).
  * A timestep argument `t` is an int32 scalar or a (B,) array (one per batch element); `extract`
    gathers a schedule entry and reshapes it to broadcast over x of shape (B, H, W, C) or (H, W, C).
  * Diffusion models work in [-1, 1] (image = 2 * x - 1); kfsr images are [0, 1]: methods convert.

`make_schedule` computes every derived array in float64 with numpy and stores float32, with the
formulas of openai/guided-diffusion (`gaussian_diffusion.py`, `GaussianDiffusion.__init__`).
`respace` is guided-diffusion's `SpacedDiffusion`: a shorter chain on a subset of the timesteps with
the same alphas_cumprod at the kept steps; its `timestep_map` gives the original index of each new
step, which is what a network trained on the full chain must be fed.

`Schedule` is a NamedTuple of arrays, hence a pytree: it can be an argument of `jax.jit` or be
carried through `lax.scan`. `make_schedule` and `respace` also work on traced inputs (inside jit),
then in float32 with jnp.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.errors import KfsrInputError

SCHEDULES = ("linear", "cosine")


class Schedule(NamedTuple):
    """Float32 arrays of shape (T,), indexed by the timestep t (names as in guided-diffusion)."""

    betas: jax.Array
    alphas: jax.Array                          # 1 - betas
    alphas_cumprod: jax.Array                  # acp[t] = prod_{s<=t} alphas[s]
    alphas_cumprod_prev: jax.Array             # acp[t-1], with acp[-1] := 1
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array       # 1 / sqrt(acp)
    sqrt_recipm1_alphas_cumprod: jax.Array     # sqrt(1 / acp - 1)
    posterior_variance: jax.Array              # var of q(x_{t-1} | x_t, x_0); 0 at t = 0
    posterior_log_variance_clipped: jax.Array  # log of it, entry 0 replaced by entry 1
    posterior_mean_coef1: jax.Array            # mean = coef1 * x_0 + coef2 * x_t
    posterior_mean_coef2: jax.Array

    @property
    def num_steps(self) -> int:
        """T, the number of timesteps (static: the array shape)."""
        return self.betas.shape[0]


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def make_schedule(betas, alphas=None) -> Schedule:
    """All derived quantities of guided-diffusion's GaussianDiffusion from betas (T,) in (0, 1].

    Concrete input: computed in float64 with numpy, stored as float32 jnp arrays.
    Traced input (make_schedule called inside jit): the same formulas in float32 with jnp, less
    precise where acp is close to 1 (1 - acp cancels); prefer building schedules outside jit.
    alphas: optionally 1 - betas computed by the caller without cancellation (betas near 1).
    """
    if _is_traced(betas) or _is_traced(alphas):
        xp, b = jnp, jnp.asarray(betas, jnp.float32)
    else:
        xp, b = np, np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or b.shape[0] < 1:
            raise KfsrInputError(
                f"make_schedule: betas must be a non-empty 1-D array, got shape {b.shape}")
        if not (np.all(b > 0) and np.all(b <= 1)):
            raise KfsrInputError("make_schedule: betas must lie in (0, 1]")
    alphas = 1.0 - b if alphas is None else xp.asarray(alphas, b.dtype)
    acp = xp.cumprod(alphas)
    acp_prev = xp.concatenate([xp.ones((1,), b.dtype), acp[:-1]])
    post_var = b * (1.0 - acp_prev) / (1.0 - acp)
    # post_var[0] = 0 (x_0 is known given x_0); guided-diffusion logs entry 1 in its place. With a
    # single step there is no entry 1: use beta_0 (never used as noise: t = 0 adds none).
    first = post_var[1:2] if b.shape[0] > 1 else b[:1]
    post_log_var = xp.log(xp.concatenate([first, post_var[1:]]))
    arrays = dict(
        betas=b,
        alphas=alphas,
        alphas_cumprod=acp,
        alphas_cumprod_prev=acp_prev,
        sqrt_alphas_cumprod=xp.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=xp.sqrt(1.0 - acp),
        sqrt_recip_alphas_cumprod=xp.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=xp.sqrt(1.0 / acp - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=b * xp.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * xp.sqrt(alphas) / (1.0 - acp),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


# --------------------------------------------------------------------------------------------
# beta schedules (float64 numpy, (T,))
# --------------------------------------------------------------------------------------------
def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al.'s linear schedule, rescaled by 1000 / T as in guided-diffusion.

    The rescaling keeps acp[T-1] ~ the same for any T (so T = 4000 is not "more noisy").
    """
    scale = 1000.0 / T
    return np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: acp(t) = f(t) / f(0), f(t) = cos((t/T + s)/(1 + s) pi/2)^2.

    betas[i] = min(1 - f((i+1)/T) / f(i/T), max_beta); the clip avoids the singularity at t = T.
    """
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)],
                    dtype=np.float64)


def get_schedule(name: str, T: int = 1000, **kw) -> Schedule:
    """`make_schedule` of the named beta schedule ("linear" or "cosine"); kw go to the generator."""
    if name == "linear":
        return make_schedule(linear_betas(T, **kw))
    if name == "cosine":
        return make_schedule(cosine_betas(T, **kw))
    raise KfsrInputError(f"diffusion schedule: unknown name {name!r}; expected one of {SCHEDULES}")


# --------------------------------------------------------------------------------------------
# respacing (guided-diffusion respace.py)
# --------------------------------------------------------------------------------------------
def space_timesteps(T: int, section_counts) -> tuple[int, ...]:
    """Which of T timesteps to keep, as guided-diffusion's `space_timesteps` (sorted tuple).

    section_counts: an int N (N evenly strided steps), a list of counts [n_1, n_2, ...] (the T steps
    are cut into equal sections and section i is strided to n_i steps), a string of such counts
    "10,15,20", or "ddimN": the stride i for which range(0, T, i) has exactly N elements (DDIM's
    uniform skipping; the last kept step may be below T - 1).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for i in range(1, T):
                if len(range(0, T, i)) == desired:
                    return tuple(range(0, T, i))
            raise KfsrInputError(f"space_timesteps: cannot create exactly {desired} steps with an "
                                 f"integer stride from {T}")
        section_counts = [int(x) for x in section_counts.split(",")]
    if isinstance(section_counts, (int, np.integer)):
        section_counts = [int(section_counts)]
    size_per, extra = divmod(T, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise KfsrInputError(
                f"space_timesteps: cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))  # Python's round (half to even), as the original
            cur += stride
        start += size
    return tuple(sorted(set(steps)))


def respace(schedule: Schedule, use_timesteps: Sequence[int]) -> tuple[Schedule, jax.Array]:
    """A chain on the kept timesteps with the same alphas_cumprod there (SpacedDiffusion).

    New betas: beta'_i = 1 - acp[t_i] / acp[t_{i-1}] (acp[t_{-1}] := 1) over the sorted kept
    timesteps t_0 < t_1 < ... Returns (schedule with T' = len(use_timesteps) steps, timestep_map
    (T',) int32 with timestep_map[i] = t_i, the index to feed a network trained on the full chain).
    use_timesteps must be concrete (Python ints / numpy); the schedule may be traced.
    """
    kept = sorted({int(t) for t in np.asarray(use_timesteps).reshape(-1)})
    T = schedule.num_steps
    if not kept or kept[0] < 0 or kept[-1] >= T:
        raise KfsrInputError(
            f"respace: use_timesteps must be a non-empty subset of [0, {T}), got {kept}")
    idx = np.asarray(kept, dtype=np.int32)
    if _is_traced(schedule.betas):
        acp = schedule.alphas_cumprod[idx]
        new_alphas = acp / jnp.concatenate([jnp.ones((1,), acp.dtype), acp[:-1]])
    else:
        # Recompute acp in float64 from the stored float32 factors, per step from whichever of
        # beta and alpha is the smaller number (it carries the relative precision): the float32 acp
        # ratio would lose ~1e-3 relative on a 1e-4 beta, 1 - beta32 ~1e-4 on cosine's 0.999.
        b = np.asarray(schedule.betas, np.float64)
        a = np.asarray(schedule.alphas, np.float64)
        acp = np.cumprod(np.where(b < 0.5, 1.0 - b, a))[idx]
        new_alphas = acp / np.concatenate([[1.0], acp[:-1]])
    # alphas passed as well: 1 - (1 - r) would lose a small ratio r in float32 (betas near 1)
    return make_schedule(1.0 - new_alphas, alphas=new_alphas), jnp.asarray(idx)


# --------------------------------------------------------------------------------------------
# indexing
# --------------------------------------------------------------------------------------------
def extract(a: jax.Array, t, ndim: int) -> jax.Array:
    """a[t] reshaped to broadcast over an x with `ndim` dimensions.

    t scalar -> shape (1,) * ndim; t (B,) -> (B, 1, ..., 1) for x (B, H, W, C).
    """
    t = jnp.asarray(t, jnp.int32)
    out = jnp.asarray(a)[t]
    return out.reshape(t.shape + (1,) * (ndim - t.ndim))
