"""SIREN implicit kernel representation (KernelFusion's INR kernel).

Source: shared/reference/methods/kernelfusion.md §2.3. KernelFusion represents the SR kernel by an
implicit neural representation over kernel coordinates ("XY coords -> Implicit Kernel
Representation -> Estimated Kernel", [V]); SIREN-style per the paper notes [S]. The concrete
architecture is the third-party reimplementation's [R] (attributed there to "Appendix A1.3",
unverified): `n_layers` = 5 fully connected sine layers of width 256 with sin(omega * .)
activations, omega = 5 (SIREN's default is 30), SIREN initialisation (Sitzmann et al. 2020:
first layer W ~ U(-1/fan_in, 1/fan_in), later layers W ~ U(+-sqrt(6/fan_in)/omega); biases
PyTorch's U(+-1/sqrt(fan_in))), then a linear layer to one scalar per coordinate.

Positive output: the reimplementation's "leaky sigmoid" (1 + 1e-4) * sigmoid(x) - 1e-4 can be
slightly negative. kfsr uses `leak + (1 - leak) * sigmoid(x)`, in (leak, 1), strictly positive
and with a non-vanishing gradient, then divides by the sum, so the kernel is (K, K), > 0,
sums to 1 [I].

Input: the K x K grid of coordinates in [-1, 1]^2 (`coordinate_grid`), (row, col) order, row-major,
so `SirenKernel(K).apply(params)` takes no input at all and returns the (K, K) kernel.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def coordinate_grid(size: int) -> jax.Array:
    """(size * size, 2) coordinates (row, col) of a size x size grid spanning [-1, 1]^2."""
    c = jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32) if size > 1 else jnp.zeros((1,), jnp.float32)
    r, q = jnp.meshgrid(c, c, indexing="ij")
    return jnp.stack([r.reshape(-1), q.reshape(-1)], axis=-1)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class SineLayer(nn.Module):
    """sin(omega * (x W + b)) with SIREN initialisation. x (N, fan_in) -> (N, features)."""

    features: int
    omega: float
    is_first: bool = False

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        bound = 1.0 / fan_in if self.is_first else math.sqrt(6.0 / fan_in) / self.omega
        w = self.param("kernel", _uniform(bound), (fan_in, self.features))
        b = self.param("bias", _uniform(1.0 / math.sqrt(fan_in)), (self.features,))
        return jnp.sin(self.omega * (x @ w + b))


class SirenKernel(nn.Module):
    """Implicit kernel: `apply(params)` -> (K, K) float32, every entry > 0, sum 1.

    Attributes:
      kernel_size: K.
      hidden: width of the sine layers (256 [R]).
      n_layers: number of sine layers (5 [R]).
      omega: sine frequency factor (5 [R]; SIREN's 30 gives far too rough kernels on a K-grid).
      leak: floor of the positive output map (1e-4 [R]).
    """

    kernel_size: int
    hidden: int = 256
    n_layers: int = 5
    omega: float = 5.0
    leak: float = 1e-4

    @nn.compact
    def __call__(self, coords=None, normalize: bool = True):
        """(K, K) kernel (> 0, sum 1); with `coords` (N, 2) and normalize=False: the raw
        positive map (N,) at those coordinates."""
        x = coordinate_grid(self.kernel_size) if coords is None else coords
        for i in range(self.n_layers):
            x = SineLayer(self.hidden, self.omega, is_first=(i == 0), name=f"sine{i}")(x)
        fan_in = x.shape[-1]
        bound = math.sqrt(6.0 / fan_in) / self.omega
        w = self.param("out_kernel", _uniform(bound), (fan_in, 1))
        b = self.param("out_bias", _uniform(1.0 / math.sqrt(fan_in)), (1,))
        k = self.leak + (1.0 - self.leak) * jax.nn.sigmoid((x @ w + b)[:, 0])
        if not normalize:
            return k
        k = k / jnp.sum(k)
        return k.reshape(self.kernel_size, self.kernel_size)
