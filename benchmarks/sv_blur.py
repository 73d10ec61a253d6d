"""Spatially variant blur timings: dense per-pixel field vs the low-rank (basis) form.

    python benchmarks/sv_blur.py [--size 256] [--k 21] [--rank 16] [--reps 5]

Prints forward and gradient (w.r.t. image and field / coefficients) milliseconds, median of
`reps` runs after compilation, for stride 1 and stride 4 (the LR grid of x4 stride sampling).
"""
import argparse
import time

import kfsr  # noqa: F401  (XLA flags)
import jax
import jax.numpy as jnp
import numpy as np

from kfsr.degrade import spatial as sp


def _time(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--k", type=int, default=21)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((a.size, a.size, 3), np.float32))
    field = rng.random((a.size, a.size, a.k, a.k), np.float32)
    field = jnp.asarray(field / field.sum((-2, -1), keepdims=True))
    basis = jnp.asarray(rng.random((a.rank, a.k, a.k), np.float32))
    coeffs = jnp.asarray(rng.random((a.size, a.size, a.rank), np.float32))
    for s in (1, 4):
        dense = jax.jit(lambda x, f, s=s: sp.sv_blur(x, f, "reflect", stride=s))
        dgrad = jax.jit(jax.grad(lambda x, f, s=s: jnp.sum(sp.sv_blur(x, f, "reflect",
                                                                       stride=s) ** 2), (0, 1)))
        low = jax.jit(lambda x, c, s=s: sp.sv_blur_basis(x, basis, c, "reflect", stride=s))
        lgrad = jax.jit(jax.grad(lambda x, c, s=s: jnp.sum(sp.sv_blur_basis(
            x, basis, c, "reflect", stride=s) ** 2), (0, 1)))
        t = [_time(dense, x, field, reps=a.reps), _time(dgrad, x, field, reps=a.reps),
             _time(low, x, coeffs, reps=a.reps), _time(lgrad, x, coeffs, reps=a.reps)]
        print(f"{a.size}x{a.size}x3 K={a.k} stride {s}: dense fwd {t[0]:.1f} grad {t[1]:.1f} ms; "
              f"rank-{a.rank} basis fwd {t[2]:.1f} grad {t[3]:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
