"""SVKR: SSR's Spatially Variant Kernel Refinement loop (paper Algorithm 1, reconstructed).

SSR (Lin et al., ECCV 2024) alternates three estimators (paper §3.2; the equations are stripped
from the available text, shared/reference/methods/blinddiff_ssr.md §2.2 "report"):

    M: depth from the latest SR image       (MiDaS in the paper; here any kfsr.depth provider)
    E: kernel field from the LR image + depth (DKENet)
    R: SR image from the LR image + kernel field (RRDB-SFT on the field's PCA codes)

    I_0 = init_sr(y)                                        (bicubic upscaling by default)
    for i = 1 .. N (N = 3):
        D_i  = M(I_{i-1})                                   (on the LR grid, normalised)
        K^_i = E(y, D_i)
        K_i  = K^_1 if i == 1 else update(K_{i-1}, K^_i)    (paper Eq. 2, beta = 0.9)
        I_i  = R(y, K_i)
    return I_N, K_N, D_N

The update rule (Eq. 2: "retention of the influence of historical information ... persistent in
the direction of updates ... mitigating oscillations") is `update`:
  * "ema" (default, the report's reading; MoCo's "momentum update"):
        K_i = beta K_{i-1} + (1 - beta) K^_i
    a convex combination, so every pixel's kernel stays non-negative with sum 1;
  * "momentum" (heavy-ball reading):
        V_i = beta V_{i-1} + (1 - beta) (K^_i - K_{i-1}),  V_1 = 0;   K_i = K_{i-1} + V_i
    then clipped at 0 and renormalised per pixel (the step can leave the simplex).
Only the kernel field is updated (the report's default `svkr.target = kernel`); depth is
re-estimated from scratch each iteration, as the prose says M runs on the latest SR image.

Everything here is a pure function of arrays and the three callables (which may be jitted
networks, analytic maps or providers); no hidden state. Shapes: y (h, w, C) LR in [0, 1]; depth
(h, w) in [0, 1] (kfsr.depth convention: larger = farther); fields (h, w, K, K) on the LR grid
(one sum-1 cross-correlation kernel per LR pixel, kfsr.degrade.spatial); SR images (s h, s w, C).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from kfsr.errors import KfsrInputError

UPDATES = ("ema", "momentum")
_EPS = 1e-12


def renormalise(field):
    """Clip a field (..., K, K) at 0 and rescale every kernel to sum 1 (a zero kernel becomes
    uniform)."""
    field = jnp.maximum(jnp.asarray(field), 0.0)
    total = jnp.sum(field, axis=(-2, -1), keepdims=True)
    k2 = field.shape[-1] * field.shape[-2]
    return jnp.where(total > _EPS, field / jnp.maximum(total, _EPS), 1.0 / k2)


def update_field(prev, velocity, new, beta: float, rule: str = "ema"):
    """One Eq.-2 update: (K_{i-1}, V_{i-1}, K^_i) -> (K_i, V_i) (module docstring).

    prev, new: (..., K, K) fields; velocity: same shape (zeros at i = 1; ignored by "ema",
    returned unchanged); beta in [0, 1]."""
    if rule == "ema":
        return beta * prev + (1.0 - beta) * new, velocity
    if rule == "momentum":
        v = beta * velocity + (1.0 - beta) * (new - prev)
        return renormalise(prev + v), v
    raise KfsrInputError(f"svkr update: one of {UPDATES}, got {rule!r}")


def check_params(n_iter, beta, update) -> None:
    """KfsrInputError for bad loop parameters (config.svkr.*)."""
    if isinstance(n_iter, bool) or int(n_iter) != n_iter or n_iter < 1:
        raise KfsrInputError(f"config.svkr.n_iter: an integer >= 1, got {n_iter!r}")
    if not 0.0 <= float(beta) <= 1.0:
        raise KfsrInputError(f"config.svkr.beta: in [0, 1], got {beta!r}")
    if update not in UPDATES:
        raise KfsrInputError(f"config.svkr.rule: one of {UPDATES}, got {update!r}")


@dataclasses.dataclass(frozen=True)
class SVKROutput:
    """sr (s h, s w, C) = I_N; field (h, w, K, K) = K_N; depth (h, w) = D_N (None when the
    kernel estimator takes no depth); trace: one dict per iteration with the iteration's
    depth, field_hat (K^_i), field (K_i) and sr (I_i) (device arrays)."""

    sr: Any
    field: Any
    depth: Any
    trace: list


def refine(lr, *, kernel_fn: Callable, sr_fn: Callable, init_sr: Callable,
           depth_fn: Callable | None = None, n_iter: int = 3, beta: float = 0.9,
           update: str = "ema", keep_trace: bool = True) -> SVKROutput:
    """Run SVKR (module docstring).

    Args:
      lr: (h, w, C) LR image in [0, 1].
      kernel_fn: (lr, depth or None) -> (h, w, K, K) field (E; DKENet).
      sr_fn: (lr, field) -> (s h, s w, C) SR image (R; RRDB-SFT on PCA codes).
      init_sr: lr -> I_0 (s h, s w, C).
      depth_fn: sr image -> (h, w) depth on the LR grid (M), or None for depth-free estimation
        (kernel_fn then receives None).
      n_iter, beta, update: N, beta and the Eq.-2 rule ("ema" | "momentum").
      keep_trace: False keeps no per-iteration arrays (trace = []; 2 N fields less in memory).
    """
    check_params(n_iter, beta, update)
    sr = init_sr(lr)
    field = velocity = depth = None
    trace = []
    for i in range(int(n_iter)):
        depth = None if depth_fn is None else depth_fn(sr)
        field_hat = kernel_fn(lr, depth)
        if i == 0:
            field, velocity = field_hat, jnp.zeros_like(field_hat)
        else:
            field, velocity = update_field(field, velocity, field_hat, float(beta), update)
        sr = sr_fn(lr, field)
        if keep_trace:
            trace.append({"depth": depth, "field_hat": field_hat, "field": field, "sr": sr})
    return SVKROutput(sr=sr, field=field, depth=depth, trace=trace)


def depth_on_lr_grid(provider: Callable, image, lr_hw, *, normalise: str = "minmax",
                     key=None):
    """M for SVKR: `provider(image, key)` (a kfsr.depth provider) on an SR image (H, W, C),
    resized to the LR grid lr_hw = (h, w) and normalised ("minmax" | "none").
    Returns (h, w) in [0, 1]."""
    if normalise not in ("minmax", "none"):
        raise KfsrInputError(f"depth normalise: 'minmax' or 'none', got {normalise!r}")
    d = jnp.asarray(provider(_clip01(jnp.asarray(image)), key), jnp.float32)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise KfsrInputError(f"depth provider returned shape {d.shape}, expected (H, W)")
    return _depth_to_grid(d, (int(lr_hw[0]), int(lr_hw[1])), normalise)


@jax.jit
def _clip01(x):
    return jnp.clip(x, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _depth_to_grid(d, hw, normalise):
    # one program (eager callers do not compile the resize / normalise ops one by one)
    from kfsr.depth import normalise_depth, resize_depth

    return jnp.clip(normalise_depth(resize_depth(d, hw), normalise), 0.0, 1.0)


__all__ = ["refine", "update_field", "renormalise", "depth_on_lr_grid", "check_params",
           "SVKROutput", "UPDATES"]
