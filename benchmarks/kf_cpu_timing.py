"""KernelFusion `cpu` preset end to end on the issue's timing case: a 64x64 LR image at x4.

    python benchmarks/kf_cpu_timing.py [--image butterfly] [--family l_shape] [--out results/kf_timing]
        [--set phase2.n_iter=40 ...]   (config overrides of the cpu preset, as kfsr.bench --set)

The LR image: the centre 256x256 crop of a Set5 HR image, blurred with the family's 31x31 kernel
(kfsr.degrade.kernels.shape_kernel, 'aligned' convention) under KernelFusion's default forward
model (DIV2KRK's: reflect padding, stride 4), quantised to 8 bits. One run of
`kfsr.super_resolve(lr, scale=4, method="kernelfusion")` with the cpu preset, Phase 1 included,
in this process (compile time included: a user's first run). Prints and writes JSON: wall time,
process CPU time, peak RSS, PSNR-Y (shave 4) against bicubic, the aligned kernel error and the
LR-consistency PSNR. Timings are only meaningful on an otherwise idle machine.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # noqa: E402
import numpy as np  # noqa: E402

import kfsr  # noqa: E402
from kfsr import io, metrics  # noqa: E402
from kfsr.data import SHARED_DATA, center_crop  # noqa: E402
from kfsr.degrade import Degradation, degrade  # noqa: E402
from kfsr.degrade import kernels as kern  # noqa: E402
from kfsr.degrade.imresize import imresize  # noqa: E402
from kfsr.presets import apply_override  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default="butterfly")
    p.add_argument("--family", default="l_shape", choices=("l_shape", "empty_square", "filled_square"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/kf_timing")
    p.add_argument("--set", action="append", default=[], help="config override field=value")
    a = p.parse_args()
    from kfsr.api import default_config

    config = default_config("kernelfusion", "cpu")
    for item in a.set:
        apply_override(config, *item.split("=", 1))
    s = 4
    hr = center_crop(io.load_image(os.path.join(SHARED_DATA, "Set5", "HR", a.image + ".png")), 256)
    k_true = np.asarray(kern.shape_kernel(a.family, 31, s, convention="aligned"))
    spec = Degradation.div2krk(s)
    lr = np.round(np.clip(np.asarray(degrade(hr, k_true, spec)), 0, 1) * 255) / 255
    assert lr.shape == (64, 64, 3), lr.shape

    t0, c0 = time.time(), time.process_time()
    res = kfsr.super_resolve(lr, scale=s, method="kernelfusion", key=jax.random.key(a.seed),
                             config=config)
    sr = np.clip(np.asarray(res.hr), 0, 1)
    wall, cpu = time.time() - t0, time.process_time() - c0
    k = np.asarray(res.kernel)
    out = {
        "image": a.image, "family": a.family, "lr_shape": list(lr.shape), "preset": "cpu",
        "overrides": a.set,
        "wall_s": wall, "process_cpu_s": cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "psnr_y": metrics.psnr_y(sr, hr, scale=s),
        "bicubic_psnr_y": metrics.psnr_y(np.clip(imresize(lr, scale=s), 0, 1), hr, scale=s),
        "kernel_error": metrics.aligned_kernel_error(k, k_true),
        "lr_psnr": metrics.lr_consistency_psnr(sr, k, lr, spec),
        "cpu_count": os.cpu_count(), "jax": jax.__version__,
        "load_avg_1min_at_end": os.getloadavg()[0],
    }
    os.makedirs(a.out, exist_ok=True)
    tag = "".join("_" + x.replace("=", "") for x in a.set)
    base = os.path.join(a.out, f"{a.image}_{a.family}{tag}")
    io.save_image(base + "_sr.png", sr)
    np.save(base + "_kernel.npy", k)
    io.write_json(base + ".json", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
