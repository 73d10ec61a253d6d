"""SSR on synthetic depth-dependent spatially variant blur: with depth, without depth, oracle field.

    python benchmarks/ssr_sv.py --preset cpu --images BSD100/HR --n 10 --crop 128 \
        --depth-ckpt dkenet=runs/ssr_dkenet,rrdb=runs/ssr_rrdb,denoiser=runs/ssr_denoiser \
        --nodepth-ckpt dkenet=runs/ssr_nd_dkenet,rrdb=runs/ssr_rrdb,denoiser=runs/ssr_nd_denoiser \
        --out results/ssr_sv.json
    python benchmarks/ssr_sv.py --preset test --n 1 --crop 32 --random-init    # smoke run

Per image (a centre crop of `crop` HR pixels): a synthetic depth map on the LR grid
(`kfsr.depth.synthetic_depth`, seeded by the image index), the depth-dependent field of the
config's training family, LR = degrade_spatial(HR, field) (stride sampling, no noise). Variants:
  depth     SSR with depth from config.depth (the MiDaS stand-in provider, default 'sharpness')
  gt_depth  SSR with the TRUE depth map as the user's depth (upper bound for the depth input)
  nodepth   SSR with config.use_depth=False (needs models trained that way)
  oracle    SSR given the true field (SVKR only re-estimates depth; R and the diffusion use it)
Metrics: PSNR / SSIM (Y, shave = scale) of the diffusion output and of SVKR's RRDB image, the
field's per-pixel kernel L1 against the truth, and MANet's LR-PSNR of the field (the GT HR
re-degraded with the estimated field vs the clean LR). `--random-init` uses untrained weights
(plumbing only: the numbers are meaningless).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

import kfsr  # noqa: F401  (XLA flags)
import jax
import jax.numpy as jnp
import numpy as np

from kfsr import io, metrics
from kfsr import depth as dp
from kfsr.data import SHARED_DATA
from kfsr.degrade import spatial as sp
from kfsr.methods import ssr


def _ckpts(arg):
    out = {}
    for item in (arg or "").split(","):
        if item:
            k, v = item.split("=", 1)
            out[k] = v
    return out


def _config(preset, use_depth, ckpts):
    from configs import ssr as ssr_configs

    c = ssr_configs.get_config(preset)
    c.use_depth = use_depth
    for k, v in ckpts.items():
        c.checkpoints[k] = v
    return c


def _lr_psnr(hr, field, lr_clean, spec):
    y = np.asarray(sp.degrade_spatial(jnp.asarray(hr), jnp.asarray(field), spec), np.float64)
    mse = float(np.mean((y - np.asarray(lr_clean, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--images", default="BSD100/HR")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--depth-ckpt", default="")
    ap.add_argument("--nodepth-ckpt", default="")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--variants", default="depth,gt_depth,nodepth,oracle")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    paths = io.list_images(os.path.join(SHARED_DATA, a.images))[: a.n]
    cfg_d = _config(a.preset, True, _ckpts(a.depth_ckpt))
    cfg_n = _config(a.preset, False, _ckpts(a.nodepth_ckpt))
    setup_d, setup_n = ssr.make_setup(cfg_d), ssr.make_setup(cfg_n)
    s, K = setup_d.scale, setup_d.kernel_size
    if a.random_init:
        params_d = ssr.init_params(setup_d, seed=0)
        params_n = ssr.init_params(setup_n, seed=0)
    else:
        params_d = ssr.load_params(cfg_d, setup_d) if "depth" in a.variants else None
        params_n = ssr.load_params(cfg_n, setup_n) if "nodepth" in a.variants else None
    rows = []
    for i, p in enumerate(paths):
        img = io.load_image(p)
        top, left = (img.shape[0] - a.crop) // 2, (img.shape[1] - a.crop) // 2
        hr = jnp.asarray(img[top:top + a.crop, left:left + a.crop])
        h = a.crop // s
        depth = dp.synthetic_depth(jax.random.PRNGKey(1000 + i), (h, h),
                                   setup_d.family.depth_kind)
        field = setup_d.family.fields(depth[None], {"k_aniso": jnp.array([0.3]),
                                                    "k_theta": jnp.array([0.5])}, s)[0]
        lr = np.asarray(jnp.clip(sp.degrade_spatial(hr, field, setup_d.spec), 0, 1))
        runs = {"depth": (cfg_d, params_d, {}),
                "gt_depth": (cfg_d, params_d, {"depth": np.asarray(depth)}),
                "nodepth": (cfg_n, params_n, {}),
                "oracle": (cfg_d, params_d, {"kernel": np.asarray(field)})}
        for name in a.variants.split(","):
            cfg, params, kw = runs[name]
            t0 = time.time()
            out = ssr.run_full(cfg, lr, jax.random.key(i), params=params, progress=False, **kw)
            row = {"image": os.path.basename(p), "variant": name,
                   "seconds": round(time.time() - t0, 2),
                   "psnr_y": metrics.psnr_y(np.asarray(out.hr), np.asarray(hr), s),
                   "ssim_y": metrics.ssim_y(np.asarray(out.hr), np.asarray(hr), s),
                   "psnr_y_svkr": metrics.psnr_y(np.asarray(out.sr_svkr), np.asarray(hr), s),
                   "field_l1": float(jnp.mean(jnp.sum(jnp.abs(out.field - field), (-2, -1)))),
                   "lr_psnr": _lr_psnr(hr, out.field, lr, setup_d.spec)}
            rows.append(row)
            print(json.dumps(row))
    summary = {}
    for name in a.variants.split(","):
        sel = [r for r in rows if r["variant"] == name]
        summary[name] = {k: float(np.mean([r[k] for r in sel])) for k in
                         ("psnr_y", "ssim_y", "psnr_y_svkr", "field_l1", "lr_psnr", "seconds")}
    print(json.dumps({"preset": a.preset, "n": len(paths), "crop": a.crop, "kernel_size": K,
                      "random_init": a.random_init, "summary": summary}, indent=1))
    if a.out:
        io.write_json(a.out, {"rows": rows, "summary": summary, "args": vars(a)})


if __name__ == "__main__":
    main()
