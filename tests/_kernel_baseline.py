"""Shared by the BlindDiff kernel-head tests: the mean kernel's MSE on training batches."""
import jax
import jax.numpy as jnp
import numpy as np


def mean_kernel_mse(setup, steps) -> float:
    """MSE of the family's mean kernel (the best constant guess, Monte-Carlo from 2,048 other
    draws) against the true kernels of the training batches `steps` (the pipeline is seeded per
    step, so these are the batches the estimator was scored on)."""
    family = setup.pipeline.family
    mean_k = family.mean_kernel(n=2048, seed=99).reshape(1, -1)
    build = jax.jit(family.build)
    out = []
    for i in steps:
        params = {k: jnp.asarray(v) for k, v in setup.pipeline.host(i).items() if k != "hr"}
        k_true = np.asarray(build(params)).reshape(setup.pipeline.batch_size, -1)
        out.append(np.mean((k_true - mean_k) ** 2))
    return float(np.mean(out))
