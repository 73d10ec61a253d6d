"""Direct vs FFT blur timings; sets kfsr.degrade.ops.FFT_MIN_KERNEL (method="auto").

    python benchmarks/blur_fft_vs_direct.py [--padding reflect] [--runs 10] [--layouts]

Prints forward and gradient (w.r.t. image and kernel) milliseconds, the median of --runs runs after
one warm-up/compile call, for a 256x256x3 image and K in {5, 11, 19, 33}. --layouts also times the
grouped-depthwise NHWC conv and the channels-folded 1->1 conv that blur_direct does not use
(for RGB), to justify its layout choice.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import kfsr  # noqa: E402,F401  (sets the XLA CPU flags before jax initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from kfsr.degrade import ops  # noqa: E402


def grouped_nhwc(x, k, padding):
    """Reference layout: depthwise conv with feature_group_count=C (not what blur_direct uses)."""
    size, c = k.shape[0], x.shape[-1]
    xp = ops.pad(x, size, padding)[None]
    rhs = jnp.broadcast_to(k[:, :, None, None], (size, size, 1, c))
    return lax.conv_general_dilated(xp, rhs, (1, 1), "VALID", feature_group_count=c,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


def folded_1to1(x, k, padding):
    """Reference layout: channels folded into the batch, one 1->1 conv."""
    size = k.shape[0]
    xp = jnp.moveaxis(ops.pad(x, size, padding), -1, 0)[..., None]
    y = lax.conv_general_dilated(xp, k[:, :, None, None], (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.moveaxis(y[..., 0], 0, -1)


def timeit(fn, args, runs):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--padding", default="reflect", choices=ops.PADDINGS)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sizes", default="5,11,19,33")
    ap.add_argument("--layouts", action="store_true")
    a = ap.parse_args()

    x = jax.random.uniform(jax.random.key(0), (a.size, a.size, 3))
    impls = {"direct": ops.blur_direct, "fft": ops.blur_fft}
    if a.layouts:
        impls["grouped"] = grouped_nhwc
        impls["folded"] = folded_1to1
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, image {a.size}x{a.size}x3, "
          f"padding={a.padding}, median of {a.runs} runs, ms")
    print(f"{'K':>3} " + " ".join(f"{n + ' fwd':>12} {n + ' grad':>12}" for n in impls))
    for size in [int(s) for s in a.sizes.split(",")]:
        k = jax.random.uniform(jax.random.key(1), (size, size))
        k = k / k.sum()
        row = []
        for fn in impls.values():
            fwd = jax.jit(lambda x, k, fn=fn: fn(x, k, a.padding))
            grad = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k, a.padding) ** 2),
                                    argnums=(0, 1)))
            row += [timeit(fwd, (x, k), a.runs), timeit(grad, (x, k), a.runs)]
        print(f"{size:>3} " + " ".join(f"{v:12.2f}" for v in row), flush=True)
    print(f"current ops.FFT_MIN_KERNEL = {ops.FFT_MIN_KERNEL}")


if __name__ == "__main__":
    main()
