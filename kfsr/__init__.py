"""kfsr: blind image super-resolution in JAX/Flax.

    import kfsr
    k = kfsr.estimate_kernel(lr, scale=4, method="dkp", key=key)
    res = kfsr.super_resolve(lr, scale=4, method="dkp", key=key)     # Result(hr, kernel, history)
    lr = kfsr.degrade(hr, kernel, kfsr.Degradation(scale=4, padding="reflect"), key=key)
"""
from kfsr import backend as _backend

_backend.configure()  # XLA CPU flags must be set before jax initialises

from kfsr.api import default_config, estimate_kernel, super_resolve  # noqa: E402
from kfsr.degrade import Degradation, degrade  # noqa: E402
from kfsr.methods.base import Result  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Degradation", "Result", "default_config", "degrade", "estimate_kernel",
           "super_resolve"]
