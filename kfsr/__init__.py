"""kfsr: blind image super-resolution in JAX/Flax."""
from kfsr import backend as _backend

_backend.configure()

__version__ = "0.1.0"
