"""DKP's kernel network (the PKE module's estimator), as in XYLGroup/DKP `networks.fcn`.

A fixed random code z in R^200 (U[0,1) * 0.1, never trained; official `get_noise(200, 'noise', (1,1))`)
goes through Linear(200 -> 1000) -> ReLU6 -> Linear(1000 -> K*K) -> softmax over all K*K entries
(`nn.Softmax()` on a 1-D input = dim 0) and is reshaped to (K, K). The output is therefore
non-negative and sums to 1. Initialisation is PyTorch's `nn.Linear` default (weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in))). 562,361 parameters at K=19 (dkp.md §3.2).

The paper calls it a "three-layer FCN" (input, hidden, output layers); the code has 2 Linear layers
(dkp.md §10.6).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

CODE_DIM = 200    # official n_k = 200 (model.py)
HIDDEN = 1000     # official fcn(num_hidden=1000)


def torch_linear_init(fan_in: int):
    """PyTorch's default nn.Linear init for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """`nn.Dense` with PyTorch's default initialisation."""

    features: int

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        init = torch_linear_init(fan_in)
        w = self.param("kernel", init, (fan_in, self.features))
        b = self.param("bias", init, (self.features,))
        return x @ w + b


class KernelMLP(nn.Module):
    """z (..., code_dim) -> kernel (..., K, K), non-negative, sums to 1."""

    kernel_size: int
    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        k = self.kernel_size
        h = TorchDense(self.hidden, name="fc1")(z)
        h = jnp.clip(h, 0.0, 6.0)  # ReLU6
        logits = TorchDense(k * k, name="fc2")(h)
        return jax.nn.softmax(logits, axis=-1).reshape(z.shape[:-1] + (k, k))


def kernel_code(key: jax.Array, dim: int = CODE_DIM) -> jax.Array:
    """The fixed input code: U[0,1) * 0.1 (DIP `get_noise(..., 'noise')` with var 1/10)."""
    return jax.random.uniform(key, (dim,), jnp.float32) * 0.1
