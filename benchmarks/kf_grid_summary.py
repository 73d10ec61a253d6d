"""Summary of KernelFusion's blind grid (issue 4) from finished `kfsr.bench` cases.

    python benchmarks/kf_grid_summary.py [--out results/bench] [--scale 4] [--preset cpu]

Reads <out>/<dataset>_c224_x<scale>_<family>_s0/<method>/<image>.json for the grid's datasets
(Set14, BSD100) and kernel families ('blind' in kfsr.bench), keeps the (dataset, family, image)
cases on which every row below finished, and prints a markdown table of mean PSNR-Y per family
(pooled over the datasets) and for the whole grid, the issue's two target differences
(KernelFusion - bicubic over the grid; KernelFusion - DIP-DKP over the non-Gaussian families) and
the same against `bicubic_rolled`, and the mean aligned kernel errors. Run the grid with e.g.

    python -m kfsr.bench --methods bicubic,bicubic_rolled,oracle_fft,kernelfusion,dkp \\
        --dataset set14 --limit 1 --kernels blind --preset cpu --out results/bench
"""
import argparse
import json
import os

import numpy as np
from records import case_of  # benchmarks/records.py: which files are finished-case results

from kfsr.bench import result_dir

DATASETS = ("set14", "bsd100")
FAMILIES = ("gaussian", "usrnet_motion", "motion", "l_shape", "empty_square", "filled_square")
ROWS = ("bicubic", "bicubic_rolled", "oracle_fft", "dkp", "kernelfusion")
OPTIONAL = ("kf_unet_only", "kf_one_unet_pass", "oracle_kf")


def load(out, scale, preset, crop=224, seed=0):
    """{(dataset, family, image): {method: result dict}} over the finished cases."""
    cases = {}
    for ds in DATASETS:
        for fam in FAMILIES:
            run = os.path.join(out, f"{ds}_c{crop}_x{scale}_{fam}_s{seed}")
            for m in ROWS + OPTIONAL:
                d = os.path.join(run, result_dir(m, preset))
                if not os.path.isdir(d):
                    continue
                for f in sorted(os.listdir(d)):
                    if f.endswith(".json") and case_of(f) == f[:-5]:
                        r = json.load(open(os.path.join(d, f)))
                        if "psnr_y" in r:
                            cases.setdefault((ds, fam, f[:-5]), {})[m] = r
    return {k: v for k, v in cases.items() if all(m in v for m in ROWS)}


def table(cases, scale: int = 4) -> str:
    opt = [m for m in OPTIONAL if all(m in v for v in cases.values())] if cases else []
    cols = list(ROWS) + opt
    head = "| kernels | n | " + " | ".join(cols) + " | KF err | DKP err | KF median s |"
    lines = [head, "|---" * (len(cols) + 5) + "|"]

    def mean(keys, m, field="psnr_y"):
        v = [cases[k][m].get(field) for k in keys]
        v = [x for x in v if x is not None and np.isfinite(x)]
        return np.mean(v) if v else float("nan")

    groups = [(f, [k for k in cases if k[1] == f]) for f in FAMILIES]
    groups += [("**whole grid**", list(cases)),
               ("non-Gaussian", [k for k in cases if k[1] != "gaussian"])]
    for name, keys in groups:
        if not keys:
            continue
        cells = [f"{mean(keys, m):.2f}" for m in cols]
        errs = [f"{mean(keys, m, 'kernel_error'):.3f}" for m in ("kernelfusion", "dkp")]
        secs = np.median([cases[k]["kernelfusion"]["seconds"] for k in keys])
        lines.append(f"| {name} | {len(keys)} | " + " | ".join(cells) + " | " + " | ".join(errs)
                     + f" | {secs:.0f} |")
    allk = list(cases)
    ng = [k for k in cases if k[1] != "gaussian"]
    # SSIM-Y, aligned kernel error and time of every row (the other columns)
    lines += ["", "| row | SSIM-Y grid | SSIM-Y non-Gaussian | kernel error grid | median s |",
              "|---|---|---|---|---|"]
    for m in cols:
        err = mean(allk, m, "kernel_error")
        secs = [cases[k][m].get("seconds") for k in allk]
        secs = [x for x in secs if x is not None]
        lines.append(f"| {m} | {mean(allk, m, 'ssim_y'):.4f} | {mean(ng, m, 'ssim_y'):.4f} | "
                     + ("–" if not np.isfinite(err) else f"{err:.3f}") + " | "
                     + (f"{np.median(secs):.0f}" if secs else "–") + " |")
    kf = "kernelfusion"
    head = "target (x4, cpu)" if scale == 4 else f"x{scale}, cpu (the issue sets its targets at x4)"
    lines += ["", f"| {head} | measured | target |", "|---|---|---|",
              f"| KernelFusion - bicubic, whole grid | {mean(allk, kf) - mean(allk, 'bicubic'):+.2f} dB | >= +1.5 dB |",
              f"| KernelFusion - DIP-DKP, non-Gaussian | {mean(ng, kf) - mean(ng, 'dkp'):+.2f} dB | >= +1.0 dB |",
              f"| (KernelFusion - bicubic_rolled, whole grid) | {mean(allk, kf) - mean(allk, 'bicubic_rolled'):+.2f} dB | – |"]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--preset", default="cpu")
    a = p.parse_args()
    cases = load(a.out, a.scale, a.preset)
    print(f"{len(cases)} finished cases: "
          + ", ".join(f"{d}/{f}/{i}" for d, f, i in sorted(cases)))
    print(table(cases, a.scale))


if __name__ == "__main__":
    main()
