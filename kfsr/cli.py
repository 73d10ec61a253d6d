"""What run.py does after flag parsing: validate the config, read inputs, run, write outputs."""
from __future__ import annotations

import importlib
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from kfsr import io, metrics
from kfsr.degrade.spec import Degradation
from kfsr.errors import KfsrInputError
from kfsr.methods.base import get_batch_method, get_method


def resolve_config(config, *, scale=None, seed=None) -> ml_collections.FrozenConfigDict:
    """Apply --scale/--seed, validate generic and method fields, freeze."""
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    if scale is not None:
        config.scale = scale
    if seed is not None:
        config.seed = seed
    for field in ("method", "scale", "seed"):
        if field not in config:
            raise KfsrInputError(f"config has no field {field!r}: is this a kfsr config file?")
    if not isinstance(config.scale, int) or config.scale < 1:
        raise KfsrInputError(f"config.scale={config.scale!r}: expected a positive integer")
    if not isinstance(config.seed, int):
        raise KfsrInputError(f"config.seed={config.seed!r}: expected an integer")
    try:
        module = importlib.import_module(f"kfsr.methods.{config.method}")
    except ModuleNotFoundError:
        raise KfsrInputError(f"config.method={config.method!r}: no such kfsr method") from None
    validate = getattr(module, "validate", None)
    if validate is not None:
        validate(config)  # raises KfsrInputError naming the field
    return ml_collections.FrozenConfigDict(config)


def degradation_of(config) -> Degradation:
    """The forward model a config assumes (DKP's circular/stride/0 unless the config says)."""
    return Degradation(
        scale=int(config.scale),
        padding=config.get("padding", "circular"),
        sampling=config.get("sampling", "stride"),
        offset=int(config.get("offset", 0)),
    )


def kernel_size_of(config) -> int:
    k = int(config.get("kernel_size", 0) or 0)
    return k if k > 0 else min(4 * int(config.scale) + 3, 21)


def _fallback_kernel(config):
    from kfsr.degrade import kernels

    size = kernel_size_of(config)
    sigma = float(config.get("fallback_sigma", 1.6))
    print(f"warning: no --kernel given; using an isotropic Gaussian, sigma={sigma}, {size}x{size}")
    centre = kernels.target_center(size, int(config.scale), "dkp")
    return np.asarray(kernels.gaussian_kernel(size, np.eye(2) * sigma**2, np.array([centre] * 2)))


def _match(path: str | None, stem: str, exts) -> str | None:
    """A file for `stem`: `path` itself if it is a file, else <path>/<stem>.<ext>."""
    if path is None:
        return None
    if os.path.isfile(path):
        return path
    for ext in exts:
        cand = os.path.join(path, stem + ext)
        if os.path.isfile(cand):
            return cand
    raise KfsrInputError(f"{path}: no file for image {stem!r} (tried {', '.join(exts)})")


def evaluate(config, lr, hr, kernel, *, gt_hr=None, gt_kernel=None) -> dict:
    """Metrics of one result: LR consistency always; PSNR/SSIM and kernel errors when known."""
    s = int(config.scale)
    out = {"lr_psnr": metrics.lr_consistency_psnr(hr, kernel, lr, degradation_of(config))}
    if gt_hr is not None:
        if gt_hr.shape != hr.shape:
            gt_hr = io.mod_crop(gt_hr, s)[: hr.shape[0], : hr.shape[1]]
        out["psnr_y"] = metrics.psnr_y(hr, gt_hr, scale=s)
        out["ssim_y"] = metrics.ssim_y(hr, gt_hr, scale=s)
    if gt_kernel is not None:
        out["kernel_psnr"] = metrics.kernel_psnr(kernel, gt_kernel)
        out["kernel_error"] = metrics.aligned_kernel_error(kernel, gt_kernel)
    return {k: float(v) for k, v in out.items()}


def batch_size_of(batch) -> int:
    """`--batch`: an int, or "auto" = 1 on CPU and 8 on GPU/TPU. On this 2-core CPU a vmapped
    pair of 224x224 DIP-DKP images took 4.27 s per image per outer iteration vs 3.21 s one by
    one (cpu preset), so batching only pays where the device is not already saturated."""
    if batch in (None, "auto"):
        return 1 if jax.default_backend() == "cpu" else 8
    try:
        b = int(batch)
    except ValueError:
        raise KfsrInputError(f"--batch: expected a positive integer or 'auto', got {batch!r}") from None
    if b < 1:
        raise KfsrInputError(f"--batch: expected a positive integer or 'auto', got {batch!r}")
    return b


def _run_batches(config, pending: list[tuple[str, str]], output: str, batch: int,
                 resume: bool) -> dict:
    """Blind runs of same-size images in vmapped batches (sharded over the devices).
    pending: [(stem, path)]. Returns {stem: (hr, kernel, seconds per image)}."""
    run_b = get_batch_method(config.method)
    if batch < 2 or run_b is None or len(pending) < 2:
        return {}
    groups: dict[tuple, list] = {}
    for stem, path in pending:
        lr = io.load_image(path)
        groups.setdefault(lr.shape, []).append((stem, lr))
    done = {}
    for shape, items in groups.items():
        for i in range(0, len(items), batch):
            part = items[i:i + batch]
            if len(part) < 2:
                continue
            stems = [st for st, _ in part]
            print(f"batch of {len(part)} {shape[1]}x{shape[0]} images: {', '.join(stems)}")
            ckpt = os.path.join(output, ".batches", "+".join(stems)[:120], "checkpoints")
            t0 = time.time()
            res = run_b(config, np.stack([lr for _, lr in part]), jax.random.key(int(config.seed)),
                        checkpoint_dir=ckpt if resume else None, progress=True)
            hr, k = np.asarray(res.hr), np.asarray(res.kernel)
            sec = (time.time() - t0) / len(part)
            for b, st in enumerate(stems):
                done[st] = (hr[b], k[b], sec)
    return done


def _drop_checkpoints(ckpt_dir: str, outdir: str) -> None:
    """Delete a finished run's checkpoints (they only serve a resume). A trained KernelFusion
    patch denoiser (`<ckpt_dir>/pd`, reusable with --config.pd_checkpoint) moves to `<outdir>/pd`."""
    if not os.path.isdir(ckpt_dir):
        return
    pd = os.path.join(ckpt_dir, "pd")
    if os.path.isdir(pd):
        target = os.path.join(outdir, "pd")
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(pd, target)
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def run(config, *, input_path, output, kernel_path=None, gt=None, gt_kernel=None, resume=True,
        batch=1, keep_checkpoints=False):
    """Run config.method on an image or a folder of images; write one output folder per image.

    Checkpoints (`<image output>/checkpoints`, `<output>/.batches`) are deleted once the image's
    outputs are written, unless keep_checkpoints.

    batch: blind runs of a folder optimise up to this many same-size images together (one
    vmapped program, sharded over the visible devices; image b of a batch uses key
    `split(key(seed), B)[b]`, so its numbers differ from a one-by-one run).
    """
    from kfsr.degrade import kernels as kernel_io

    batch = batch_size_of(batch)
    paths = io.list_images(input_path) if os.path.isdir(input_path) else [input_path]
    method = get_method(config.method)
    ksize = kernel_size_of(config)
    summary = []
    batched = {}
    if kernel_path is None and len(paths) > 1:
        stems = [(os.path.splitext(os.path.basename(p))[0], p) for p in paths]
        pending = [(st, p) for st, p in stems if not (
            resume and os.path.isfile(os.path.join(output, st, "metrics.json")))]
        for st, p in pending:
            io.check_lr(io.load_image(p), int(config.scale),
                        kernel_size=max(3, ksize // int(config.scale)), name=p)
        batched = _run_batches(config, pending, output, batch, resume)
    for i, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        outdir = os.path.join(output, stem) if len(paths) > 1 else output
        if resume and os.path.isfile(os.path.join(outdir, "metrics.json")):
            print(f"[{i + 1}/{len(paths)}] {stem}: done already ({outdir}), skipped")
            summary.append(dict(image=stem, **io.read_json(os.path.join(outdir, "metrics.json"))))
            continue
        lr = io.load_image(path)
        io.check_lr(lr, int(config.scale), kernel_size=max(3, ksize // int(config.scale)), name=path)
        kpath = _match(kernel_path, stem, (".npy", ".mat", ".png"))
        kernel = kernel_io.load_kernel(kpath) if kpath else None
        if config.method == "nonblind" and kernel is None:
            kernel = _fallback_kernel(config)
        gpath = _match(gt, stem, (".png", ".jpg", ".bmp", ".tif"))
        gkpath = _match(gt_kernel, stem, (".npy", ".mat", ".png"))
        key = jax.random.key(int(config.seed))
        t0 = time.time()
        kwargs = {"kernel": kernel} if kernel is not None else {}
        if stem in batched:
            hr, k_est, seconds = batched[stem]
            result = None
        else:
            result = method(config, lr, key, checkpoint_dir=os.path.join(outdir, "checkpoints"),
                            progress=True, **kwargs)
            hr = np.asarray(result.hr)
            k_est = np.asarray(result.kernel)
            seconds = time.time() - t0
        m = evaluate(config, lr, hr, k_est,
                     gt_hr=io.load_image(gpath) if gpath else None,
                     gt_kernel=kernel_io.load_kernel(gkpath) if gkpath else None)
        m["seconds"] = seconds
        protect = [p for p in (path, kpath, gpath, gkpath) if p]
        io.save_result(outdir, hr, k_est, m, config, inputs=protect)
        if result is not None and result.history:
            io.write_json(os.path.join(outdir, "history.json"), result.history)
        if not keep_checkpoints:
            _drop_checkpoints(os.path.join(outdir, "checkpoints"), outdir)
        summary.append(dict(image=stem, **m))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in m.items())
        print(f"[{i + 1}/{len(paths)}] {stem}: wrote {outdir}  ({shown})")
    if batched and not keep_checkpoints:  # every image of every batch is written by now
        shutil.rmtree(os.path.join(output, ".batches"), ignore_errors=True)
    if len(paths) > 1:
        _write_summary(output, summary)
    return summary


def _write_summary(output: str, rows: list[dict]) -> None:
    keys = [k for k in rows[0] if k != "image"]
    lines = ["| image | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['image']} | " + " | ".join(f"{r.get(k, float('nan')):.4g}" for k in keys)
                     + " |")
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    lines.append("| **mean** | " + " | ".join(f"{mean[k]:.4g}" for k in keys) + " |")
    io.write_json(os.path.join(output, "summary.json"), {"images": rows, "mean": mean})
    io.write_text(os.path.join(output, "summary.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"summary: {os.path.join(output, 'summary.md')}")
