"""Peak memory (and seconds per outer iteration) of DIP-DKP on a large image.

    python benchmarks/dkp_memory.py --preset paper --size 504 --iters 3

Builds a size x size HR crop of Set5 `baby` (512x512), degrades it at x4 with a DKP test kernel
(circular blur, stride 4), runs `iters` outer iterations of the preset and prints the process's
peak resident memory (ru_maxrss: everything, including jax/XLA and compilation) and the median
time of the iterations after the first (which includes compilation).
"""
import argparse
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kfsr  # noqa: E402,F401
from kfsr import io  # noqa: E402
from kfsr.api import default_config  # noqa: E402
from kfsr.degrade import kernels, ops  # noqa: E402
from kfsr.methods import dkp  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--size", type=int, default=504)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    img = io.load_image(os.path.join(ROOT, "..", "shared", "data", "Set5", "HR", "baby.png"))
    o = (img.shape[0] - a.size) // 2
    hr = jnp.asarray(img[o:o + a.size, o:o + a.size])
    k = np.load(os.path.join(ROOT, "..", "shared", "data", "set5_c224_x4_dkp", "kernels", "baby.npy"))
    lr = ops.downsample(ops.blur(hr, jnp.asarray(k), padding="circular"), 4)
    c = default_config("dkp", a.preset)
    c.schedule.outer_iters = a.iters
    c.loop.chunk = 1
    times = []
    last = [time.time()]

    def monitor(n, hr_now, k_now):
        now = time.time()
        times.append(now - last[0])
        last[0] = now

    res = dkp.run(c, np.asarray(lr), jax.random.key(0), progress=False, monitor=monitor)
    jax.block_until_ready(res.hr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"preset={a.preset} HR {a.size}x{a.size} LR {lr.shape[0]}x{lr.shape[1]}: "
          f"peak RSS {peak:.2f} GiB; first iteration (incl. compile) {times[0]:.1f} s; "
          f"later iterations median {np.median(times[1:]) if len(times) > 1 else float('nan'):.1f} s "
          f"(jax {jax.__version__}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
