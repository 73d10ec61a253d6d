"""Non-blind SR: recover HR given the kernel. The oracle rows of every benchmark.

Solvers (config.solver):
  tikhonov  exact closed-form FFT solution with a gradient prior (kfsr.methods.nonblind_fft)
  tv        half-quadratic splitting with the exact FFT data step and a TV denoiser
  dip       DIP with the kernel fixed: DIP-DKP's network, schedule and losses with the kernel
            network replaced by the given kernel (kfsr.methods.dkp, `fixed_kernel`)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kfsr.degrade.imresize import imresize
from kfsr.errors import KfsrInputError
from kfsr.methods import nonblind_fft
from kfsr.methods.base import Result, register


def _check(config, lr, kernel):
    if kernel is None:
        raise KfsrInputError("nonblind: a kernel is required (--kernel=path.npy|.mat|.png)")
    if lr.ndim != 3:
        raise KfsrInputError(f"nonblind: expected an (h, w, C) LR image, got shape {lr.shape}")
    if config.solver in ("tikhonov", "tv") and config.padding != "circular":
        raise KfsrInputError(
            f"config.padding={config.padding!r}: the FFT solvers need circular padding"
        )


def initial_guess(lr, scale: int):
    """Bicubic (MATLAB-compatible) upscale of the LR image: (h, w, C) -> (h*s, w*s, C)."""
    return imresize(lr, scale=scale)


@register("nonblind")
def run(config, lr, key=None, *, kernel=None, checkpoint_dir=None, progress=True,
        monitor=None) -> Result:
    """Super-resolve `lr` (h, w, C) in [0, 1] with the known `kernel` (K, K).
    `monitor(step, hr, kernel)`: called after every loop chunk (iterative solvers only)."""
    _check(config, lr, kernel)
    lr = jnp.asarray(lr, jnp.float32)
    kernel = jnp.asarray(kernel, jnp.float32)
    s = int(config.scale)
    if config.solver == "tikhonov":
        hr = nonblind_fft.tikhonov_sr(lr, kernel, initial_guess(lr, s), scale=s,
                                      offset=int(config.offset), **config.tikhonov.to_dict())
        return Result(hr=hr, kernel=kernel, history=[])
    if config.solver == "tv":
        hr = nonblind_fft.tv_sr(lr, kernel, initial_guess(lr, s), scale=s,
                                offset=int(config.offset), **config.tv.to_dict())
        return Result(hr=hr, kernel=kernel, history=[])
    if config.solver == "dip":
        from kfsr.methods import dkp

        return dkp.run_fixed_kernel(config, lr, kernel,
                                    key if key is not None else jax.random.key(config.seed),
                                    checkpoint_dir=checkpoint_dir, progress=progress,
                                    monitor=monitor)
    raise KfsrInputError(f"config.solver={config.solver!r}: expected tikhonov, tv or dip")
