"""Benchmark harness: methods x images -> results.json, a Markdown table, a CSV, a kernel figure.

    python -m kfsr.bench --methods bicubic,oracle_fft,oracle_dip,dkp --dataset set5_dkp --scale 4 \
        --out results/bench --update-docs

Datasets: `set5_dkp` (the fixed ../shared/data/set5_c224_x4_dkp protocol, with the official
DIP-DKP numbers beside it), `set5`, `set14`, `bsd100` (generated c224 protocol with --kernels
families, cached with a manifest), `div2krk:<root>` (the DIV2KRK layout) or any folder of LR
images (`folder:<path>`, no ground truth: kernel and SR outputs only).

Spatially variant set (issue 6, SSR): `--kernels depth_field` (kfsr.data.SV_FAMILIES: synthetic
depth, SSR's depth-dependent kernel field per LR pixel), e.g.

    python -m kfsr.bench --dataset set14 --kernels depth_field \
        --methods bicubic,dkp,ssr,ssr_nodepth,ssr_oracle --preset cpu \
        --ssr-ckpt dkenet=runs/ssr_dkenet,rrdb=runs/ssr_rrdb,denoiser=runs/ssr_denoiser \
        --ssr-nodepth-ckpt dkenet=runs/ssr_nd_dkenet,rrdb=runs/ssr_rrdb,denoiser=runs/ssr_nd_denoiser \
        --out results/bench_ssr --update-docs

Its table reports, instead of the kernel PSNR, the field error (the mean over LR pixels of the
aligned per-pixel kernel error, a global kernel counted at every pixel), MANet's LR-consistency
PSNR of the field (the ground-truth HR re-degraded with the estimated field under the set's
spatially variant forward model vs the LR) and, for SSR, the PSNR-Y of SVKR's RRDB image. The
oracle rows that need one global kernel (oracle_fft, oracle_dip, blinddiff_oracle) are skipped
there; `ssr_oracle` is SSR given the true field.

Each (method, image) case runs in its own subprocess so its peak memory (ru_maxrss) is its own;
finished cases are skipped, so an interrupted benchmark resumes where it stopped; a case killed
midway resumes from its last loop checkpoint (`<result>.ckpt/`, removed when the case finishes).
Each finished case also saves the resolved config it ran with (`<image>_config.json`); a later run
whose config differs (a changed preset default, another --set) warns with the differing fields and
reuses the result: move it away to run the case again. The DKP rows (DIP-DKP, Diff-DKP) get
the set's kernel centre convention as rks.center (`dataset_kernel_convention`), the KernelFusion
rows as kernel_center (where their bicubic start sits).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import inspect
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

import kfsr  # noqa: F401  (XLA flags)
from kfsr.methods.ssr_setup import PARTS as SSR_PARTS  # the trained parts of SSR
from kfsr.metrics import aligned_field_errors, field_lr_psnr
from kfsr.presets import apply_override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("bicubic", "bicubic_rolled", "oracle_fft", "oracle_dip", "dkp", "dkp_paper", "dkp_motion", "diff_dkp",
           "kernelfusion", "kf_unet_only", "kf_one_unet_pass", "oracle_kf", "blinddiff", "blinddiff_oracle",
           "ssr", "ssr_nodepth", "ssr_gt_depth", "ssr_oracle")
# Bicubic rows: plain MATLAB bicubic, and the same rolled to the set's kernel-centre geometry (the
# start KernelFusion gets from its kernel_center: on the DKP-convention sets the HR image sits s - 1
# HR px up-left of bicubic's, which alone is worth ~2-7 dB; a reference for what the roll gives)
BICUBIC_ROWS = ("bicubic", "bicubic_rolled")
# KernelFusion and its two ablations (issue 4): without the patch denoiser ("U-Net only") and with
# the U-Net applied once (before the PD) instead of twice; and the non-blind diagnostic
# 'oracle_kf': Phase 2 given the true kernel (the image path alone, what a perfect kernel gives)
_KF_ABLATIONS = {"kernelfusion": {}, "kf_unet_only": {"use_pd": False},
                 "kf_one_unet_pass": {"second_unet_pass": False},
                 "oracle_kf": {"learn_kernel": False}}
# BlindDiff (trained MCFormer from --checkpoint) and the same sampler given the true kernel
BLINDDIFF_METHODS = ("blinddiff", "blinddiff_oracle")
# SSR (configs/ssr.py, kfsr.methods.ssr.run_full): with depth from config.depth (the MiDaS
# stand-in), without depth (config.use_depth=False, its own weights: --ssr-nodepth-ckpt), with the
# set's true depth map as the user's depth, and given the true kernel / field (oracle)
SSR_METHODS = ("ssr", "ssr_nodepth", "ssr_gt_depth", "ssr_oracle")


def _given_kernel(method: str) -> bool:
    """Methods that receive the ground-truth kernel (non-blind references)."""
    return method.startswith("oracle") or method in ("blinddiff_oracle", "ssr_oracle")


def _needs_2d_kernel(method: str) -> bool:
    """Given-kernel methods that only take one global (K, K) kernel (not a spatially variant set's
    (h, w, K, K) field)."""
    return _given_kernel(method) and method != "ssr_oracle"


def dataset_forward_model(dataset: str, family: str, scale: int):
    """The Degradation a benchmark set was made with (None for a plain folder of LR images)."""
    from kfsr import data
    from kfsr.degrade import Degradation

    if dataset == "set5_dkp":
        return Degradation.dkp(scale)
    if dataset.startswith("div2krk:"):
        return Degradation.div2krk(scale)
    if dataset.startswith("folder:"):
        return None
    return data.degradation_of(family, scale)


DKP_METHODS = ("dkp", "dkp_paper", "dkp_motion", "diff_dkp")  # RKS priors: rks.center applies


def dataset_kernel_convention(dataset: str, family: str) -> str | None:
    """Centre convention of a set's kernels (`kernels.target_center`): 'aligned' for DIV2KRK and
    the spatially variant sets (their fields are centred at K//2 + (s-1)/2, so bicubic is not
    shifted), 'dkp' for the DKP-protocol sets, None for a folder of LR images. The DKP rows get it
    as rks.center (unless --set gives one): a prior centred elsewhere shifts their HR image
    (measured on the SV baboon: DIP-DKP with DKP's centre 22.68 dB, the same image shifted by
    1.5 px 25.50)."""
    if dataset.startswith("folder:"):
        return None
    if dataset.startswith("div2krk:"):
        return "aligned"
    from kfsr import data

    return "aligned" if family in data.SV_FAMILIES else "dkp"


def _config_for(method: str, scale: int, preset: str | None, overrides: dict, forward=None):
    """The method's config; `forward` (the set's Degradation): KernelFusion, whose forward model is
    a config choice (default DIV2KRK's), models the one the set was made with."""
    from kfsr.api import default_config

    if method == "oracle_fft":
        c = default_config("nonblind", "tikhonov")
    elif method == "oracle_dip":
        c = default_config("nonblind", "dip")
        if preset:
            c.dip_preset = preset
    elif method == "dkp_paper":
        c = default_config("dkp", "paper")
    elif method == "dkp_motion":
        c = default_config("dkp_motion", preset)
    elif method == "diff_dkp":
        c = default_config("diff_dkp", preset)
    elif method in _KF_ABLATIONS:
        c = default_config("kernelfusion", preset)
        for field, value in _KF_ABLATIONS[method].items():
            c.phase2[field] = value
        if forward is not None:
            c.padding, c.sampling, c.offset = forward.padding, forward.sampling, forward.offset
    elif method in BLINDDIFF_METHODS:
        c = default_config("blinddiff", preset)
    elif method in SSR_METHODS:
        c = default_config("ssr", preset)
        c.use_depth = method != "ssr_nodepth"
    else:
        c = default_config("dkp", preset)
    c.scale = scale
    for field, value in overrides.items():  # "a.b=3": parsed with the type of the default
        if _has_field(c, field):  # else another method's field (main checks some method has it)
            apply_override(c, field, value)
    return c


def _config_record(method: str, scale: int, preset: str | None, seed: int, overrides: dict,
                   forward=None) -> dict | None:
    """The resolved config a case runs with, as JSON-able nested dicts (None for bicubic): saved
    next to the case's result as `<image>_config.json` and compared on later runs."""
    if method in BICUBIC_ROWS:
        return None
    c = _config_for(method, scale, preset, overrides, forward)
    c.seed = seed
    return json.loads(c.to_json())


def _config_diff(old: dict, new: dict, skip: tuple = ()) -> list[str]:
    """Fields (dotted paths) whose values differ between two config records, 'a.b: old -> new';
    paths under a `skip` prefix are ignored."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            path = prefix + k
            if isinstance(v, dict):
                out.update(flat(v, path + "."))
            else:
                out[path] = v
        return out

    a, b = flat(old), flat(new)
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)") and not k.startswith(skip)]


def _has_field(config, field: str) -> bool:
    """Whether the dotted path `field` ("a.b.c") names a field of the ConfigDict `config`."""
    node = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def _parse_ckpts(flag: str, value: str | None) -> dict:
    """'dkenet=DIR,rrdb=DIR,denoiser=DIR' -> {'checkpoints.dkenet': abs DIR, ...} (config
    overrides); SystemExit (one line) for a malformed item, an unknown part or a missing folder."""
    out = {}
    for item in (value or "").split(","):
        if not item:
            continue
        part, sep, path = item.partition("=")
        if not sep or part not in SSR_PARTS or not path:
            raise SystemExit(f"error: {flag}: expected part=DIR items with part in "
                             f"{', '.join(SSR_PARTS)}, got {item!r}")
        if not os.path.isdir(path):
            raise SystemExit(f"error: {flag}: {part}={path}: no such folder")
        out[f"checkpoints.{part}"] = os.path.abspath(path)
    return out


def _ssr_overrides(method: str, ckpt: dict, nodepth_ckpt: dict, random_init: bool) -> dict:
    """The checkpoint overrides of an SSR row, or SystemExit naming the missing flag / parts:
    ssr, ssr_gt_depth: the three parts of --ssr-ckpt; ssr_oracle: its rrdb and denoiser (no
    estimator); ssr_nodepth: the three parts of --ssr-nodepth-ckpt, its rrdb by default the one of
    --ssr-ckpt (RRDB-SFT sees the field's codes only, never the depth)."""
    flag, given = (("--ssr-nodepth-ckpt", nodepth_ckpt) if method == "ssr_nodepth"
                   else ("--ssr-ckpt", ckpt))
    if method == "ssr_nodepth" and "checkpoints.rrdb" in ckpt:
        given = {"checkpoints.rrdb": ckpt["checkpoints.rrdb"], **given}
    need = SSR_PARTS[1:] if method == "ssr_oracle" else SSR_PARTS
    missing = [p for p in need if f"checkpoints.{p}" not in given]
    if missing and not random_init:
        raise SystemExit(
            f"error: {method} needs {flag} " + ",".join(f"{p}=DIR" for p in SSR_PARTS)
            + f" (missing: {', '.join(missing)}; DIR = a workdir of python -m "
            "kfsr.train.supervised --config=configs/ssr.py:cpu --config.part=<part>"
            + (" --config.use_depth=False" if method == "ssr_nodepth" else "") + ")")
    return dict(given)


def run_case(method: str, case, scale: int, preset: str | None, seed: int,
             overrides: dict, forward=None, work: str | None = None,
             random_init: bool = False) -> dict:
    """Run one method on one Case; returns metrics + time (+ hr, kernel arrays).

    `work` (optional, a path prefix): the case checkpoints its loop to `<work>.ckpt/` and keeps
    its elapsed time and PSNR curve in `<work>_partial.json`, so a killed case resumes from its
    last chunk (bit-identically: kfsr.train.loop) instead of from step 0; both are removed when
    it finishes. SSR rows run `kfsr.methods.ssr.run_full`: their kernel is the estimated field
    (h, w, K, K), and `svkr_psnr_y` is the PSNR-Y of SVKR's RRDB image. `random_init` (SSR rows;
    tests only): untrained random weights instead of config.checkpoints (plumbing, meaningless
    numbers)."""
    import jax

    from kfsr import io, metrics
    from kfsr.degrade.imresize import imresize
    from kfsr.methods.base import get_method

    t0 = time.time()
    curve: list = []  # [step, PSNR-Y] after each loop chunk (iterative methods)
    extra: dict = {}  # method-specific metrics (SSR: svkr_psnr_y)
    ckpt = partial = None
    before = 0.0  # seconds spent by earlier, killed attempts at this case
    if work is not None and method not in BICUBIC_ROWS:
        ckpt, partial = os.path.abspath(work + ".ckpt"), work + "_partial.json"
        if os.path.isdir(ckpt) and os.path.isfile(partial):
            done = json.load(open(partial))
            before, curve = float(done["seconds"]), [list(c) for c in done["curve"]]
    if method in BICUBIC_ROWS:
        hr = np.clip(np.asarray(imresize(case.lr, scale=scale)), 0, 1)
        if method == "bicubic_rolled":  # kernel_center from main: the set's convention
            from kfsr.degrade.kernels import image_offset

            # any odd kernel size: the roll is -(s - 1) for 'dkp', 0 for 'aligned'
            sh = int(image_offset(2 * scale + 1, scale, overrides.get("kernel_center", "aligned")))
            hr = np.roll(hr, (sh, sh), axis=(0, 1))
        kernel = None
    else:
        cfg = _config_for(method, scale, preset, overrides, forward)
        cfg.seed = seed
        kw = {}
        run = get_method(cfg.method)
        if method in SSR_METHODS:
            run, kw = _ssr_run_and_kwargs(method, cfg, case, random_init)
        if case.hr is not None and "monitor" in inspect.signature(run).parameters:
            def monitor(step, hr_now, kernel_now):
                curve[:] = [c for c in curve if c[0] < step]  # chunks redone after a resume
                curve.append([int(step), float(metrics.psnr_y(np.clip(hr_now, 0, 1), case.hr, scale=scale))])
                if partial:  # after the chunk's checkpoint (kfsr.train.loop's on_chunk order)
                    io.write_json(partial, {"seconds": before + time.time() - t0, "curve": curve})

            kw["monitor"] = monitor
        if _given_kernel(method):
            if case.kernel is None:
                raise ValueError(f"{case.name}: the oracle needs the ground-truth kernel")
            if case.kernel.ndim != 2 and _needs_2d_kernel(method):
                raise ValueError(f"{case.name}: {method} needs one (K, K) kernel, the set has a "
                                 f"spatially variant field {case.kernel.shape} (use ssr_oracle)")
            kw["kernel"] = case.kernel
        if ckpt and "checkpoint_dir" in inspect.signature(run).parameters:
            kw["checkpoint_dir"] = ckpt
        res = run(cfg, case.lr, jax.random.key(seed), progress=False, **kw)
        if method in SSR_METHODS:  # an SSROutput: the whole field and SVKR's image
            hr, kernel = np.asarray(res.hr), np.asarray(res.field)
            if case.hr is not None:
                extra["svkr_psnr_y"] = metrics.psnr_y(np.asarray(res.sr_svkr), case.hr, scale=scale)
            if random_init:
                extra["random_init"] = 1.0
        else:
            hr, kernel = np.asarray(res.hr), np.asarray(res.kernel)
    out = _metrics_of(method, case, hr, kernel, scale, forward)
    out.update({k: float(v) for k, v in extra.items()})
    out["seconds"] = before + time.time() - t0
    if before:
        out["resumed"] = 1.0
    return out, hr, kernel, curve


def _ssr_run_and_kwargs(method: str, cfg, case, random_init: bool):
    """(kfsr.methods.ssr.run_full, its keyword arguments) for an SSR row: ssr_gt_depth gets the
    set's true depth map (Case.depth, (h, w)) as the user's depth; random_init: untrained weights
    (`ssr.init_params`, seed 0; tests only)."""
    from kfsr.methods import ssr

    kw = {}
    if method == "ssr_gt_depth":
        if case.depth is None:
            raise ValueError(f"{case.name}: ssr_gt_depth needs a set with depth maps "
                             "(--kernels depth_field)")
        kw["depth"] = case.depth
    if random_init:
        kw["params"] = ssr.init_params(ssr.make_setup(cfg), seed=0)
    return ssr.run_full, kw


def _drop_work(work: str) -> None:
    """Remove a finished case's checkpoint and partial record (see run_case)."""
    import shutil

    shutil.rmtree(work + ".ckpt", ignore_errors=True)
    if os.path.isfile(work + "_partial.json"):
        os.remove(work + "_partial.json")


def _kernel_psnr_any_size(k, k_gt) -> float:
    """DKP's kernel PSNR; a method whose support differs from the ground truth's (KernelFusion's
    13 / 31 vs DKP's 11 / 19) is compared after zero-padding the smaller kernel on both sides,
    when the sizes differ by an even number (same centre); otherwise NaN (no unambiguous centre)."""
    from kfsr import metrics

    k, g = np.asarray(k, np.float64), np.asarray(k_gt, np.float64)
    if k.shape != g.shape:
        size = np.maximum(k.shape, g.shape)
        if any((n - a) % 2 or (n - b) % 2 for n, a, b in zip(size, k.shape, g.shape)):
            return float("nan")
        k = np.pad(k, [((n - a) // 2,) * 2 for n, a in zip(size, k.shape)])
        g = np.pad(g, [((n - b) // 2,) * 2 for n, b in zip(size, g.shape)])
    return metrics.kernel_psnr(k, g)


def _field_metrics(method: str, case, kernel, forward) -> dict:
    """A spatially variant set (Case.kernel (h, w, K, K)): field_error = mean aligned per-pixel
    kernel error of the estimate (a global kernel counted at every pixel), field_lr_psnr =
    `field_lr_psnr` under the set's forward model. Nothing for the given-kernel rows."""
    if kernel is None or _given_kernel(method):
        return {}
    if forward is None:
        raise ValueError("field metrics need the set's forward model (dataset_forward_model)")
    out = {"field_error": float(np.mean(aligned_field_errors(kernel, case.kernel)))}
    if case.hr is not None:
        out["field_lr_psnr"] = field_lr_psnr(case.hr, kernel, case.lr, forward)
    return out


def _metrics_of(method: str, case, hr, kernel, scale: int, forward=None) -> dict:
    """PSNR / SSIM (Y, shave = scale) against the ground truth, LR consistency and kernel errors.
    On a spatially variant set (Case.kernel (h, w, K, K)) the kernel metrics are `_field_metrics`;
    elsewhere an estimated field (SSR) is compared through its mean kernel."""
    from kfsr import metrics
    from kfsr.degrade import Degradation

    out = {}
    if case.hr is not None:
        out["psnr_y"] = metrics.psnr_y(hr, case.hr, scale=scale)
        out["ssim_y"] = metrics.ssim_y(hr, case.hr, scale=scale)
    if case.kernel is not None and case.kernel.ndim == 4:
        out.update(_field_metrics(method, case, kernel, forward))
        return {k: float(v) for k, v in out.items()}
    if kernel is not None and kernel.ndim == 4:
        from kfsr.methods.ssr import mean_kernel

        kernel = np.asarray(mean_kernel(kernel))  # SSR's Result.kernel
    if kernel is not None:
        # LR consistency under the method's own forward model (BlindDiff: blur + bicubic; SSR:
        # configs/ssr.py's reflect padding, stride sampling at offset 0)
        spec = Degradation.blinddiff(scale) if method in BLINDDIFF_METHODS else Degradation.dkp(scale)
        if method in SSR_METHODS:
            spec = Degradation(scale=scale, padding="reflect")
        if method in _KF_ABLATIONS and forward is not None:
            spec = forward  # KernelFusion runs with the set's own forward model (_config_for)
        out["lr_psnr"] = metrics.lr_consistency_psnr(hr, kernel, case.lr, spec)
        if case.kernel is not None and not _given_kernel(method):
            out["kernel_psnr"] = _kernel_psnr_any_size(kernel, case.kernel)
            out["kernel_error"] = metrics.aligned_kernel_error(kernel, case.kernel)
    return {k: float(v) for k, v in out.items()}


def load_cases(dataset: str, scale: int, family: str, seed: int, out: str, limit, crop: int = 224):
    from kfsr import data

    if dataset == "set5_dkp":
        if scale != 4 or family != "gaussian":
            raise SystemExit("set5_dkp is the fixed x4 Gaussian protocol")
        return "set5_dkp", data.load_set(os.path.join(data.SHARED_DATA, "set5_c224_x4_dkp"), limit)
    if dataset.startswith("div2krk:"):
        return "div2krk", data.load_div2krk(dataset.split(":", 1)[1], scale, limit)
    if dataset.startswith("folder:"):
        from kfsr import io

        paths = io.list_images(dataset.split(":", 1)[1])[:limit]
        return "folder", [data.Case(name=os.path.splitext(os.path.basename(p))[0],
                                    lr=io.load_image(p), lr_path=p) for p in paths]
    root = data.build_set(dataset, crop=crop, scale=scale, family=family, seed=seed,
                          out_root=os.path.join(out, "data"), limit=limit)
    return os.path.basename(root), data.load_set(root, limit)


def _claim(path: str) -> str | None:
    """Take the lock file of a case (its content: our pid); None if a live process holds it.
    Several `kfsr.bench` processes can then share one --out folder (e.g. one per method)."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(open(path).read().strip() or 0)
                os.kill(pid, 0)  # raises if that process is gone
                return None
            except PermissionError:  # alive, owned by another user
                return None
            except (ValueError, ProcessLookupError, FileNotFoundError):
                try:
                    os.remove(path)  # stale lock of a killed benchmark
                except FileNotFoundError:
                    pass
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    return None


def _case_env(out: str) -> dict:
    """Subprocess environment: a persistent XLA compilation cache shared by all cases, so the
    same-shape programs of a dataset compile once (compile time is not method time)."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(os.path.join(out, ".jax_cache")))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    return env


PRESET_METHODS = (("oracle_dip", "dkp", "dkp_motion", "diff_dkp") + tuple(_KF_ABLATIONS)
                  + BLINDDIFF_METHODS + SSR_METHODS)  # the methods --preset applies to


def result_dir(method: str, preset: str | None) -> str:
    """Results folder of a method: named with the preset only where the preset applies."""
    return method + (f"_{preset}" if preset and method in PRESET_METHODS else "")


def _groups(method: str, todo: list, batch: int) -> list[list]:
    """Cases to run together: same-size LR images of a blind method with a batched `run`
    (--batch > 1), else one case per group."""
    if batch < 2 or method in BICUBIC_ROWS or _given_kernel(method):
        return [[t] for t in todo]
    from kfsr.methods.base import get_batch_method

    if get_batch_method(_config_for(method, 4, None, {}).method) is None:
        return [[t] for t in todo]
    by_shape: dict[tuple, list] = {}
    for t in todo:
        by_shape.setdefault(t[0].lr.shape, []).append(t)
    return [g[i:i + batch] for g in by_shape.values() for i in range(0, len(g), batch)]


def run_batch_cases(method: str, cases: list, scale: int, preset: str | None, seed: int,
                    overrides: dict, forward=None):
    """Run one blind method on same-size Cases as one vmapped batch (kfsr.parallel shards it
    over the devices). Yields (metrics, hr, kernel, curve) per case; seconds = batch time / B."""
    import jax

    from kfsr.methods.base import get_batch_method

    cfg = _config_for(method, scale, preset, overrides)
    cfg.seed = seed
    t0 = time.time()
    res = get_batch_method(cfg.method)(cfg, np.stack([c.lr for c in cases]), jax.random.key(seed),
                                       progress=False)
    hr, kernel = np.asarray(res.hr), np.asarray(res.kernel)
    sec = (time.time() - t0) / len(cases)
    for b, c in enumerate(cases):
        m = _metrics_of(method, c, np.clip(hr[b], 0, 1), kernel[b], scale, forward)
        m["seconds"], m["batch"] = sec, float(len(cases))
        yield m, hr[b], kernel[b], []


def _case_main(spec: dict) -> None:
    """Subprocess entry: run one case (or a batch of cases), write each case's JSON (+ hr.png,
    kernel.npy, curve.json)."""
    from kfsr import io

    _, cases = load_cases(spec["dataset"], spec["scale"], spec["family"], spec["seed"],
                          spec["out"], None, spec.get("crop", 224))
    by_name = {c.name: c for c in cases}
    todo = [by_name[n] for n in spec["images"]]
    args = (spec["scale"], spec["preset"], spec["seed"], spec["overrides"])
    forward = dataset_forward_model(spec["dataset"], spec["family"], spec["scale"])
    if len(todo) == 1:
        outs = [run_case(spec["method"], todo[0], *args, forward=forward,
                         work=spec["results"][0][:-5], random_init=spec.get("random_init", False))]
    else:
        outs = list(run_batch_cases(spec["method"], todo, *args, forward=forward))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for (m, hr, kernel, curve), result in zip(outs, spec["results"]):
        m["peak_mib"] = peak
        base = result[:-5]
        io.save_image(base + ".png", hr)
        if kernel is not None:
            np.save(base + "_kernel.npy", kernel)
        if curve:
            io.write_json(base + "_curve.json", curve)
        record = _config_record(spec["method"], spec["scale"], spec["preset"], spec["seed"],
                                spec["overrides"], forward)
        if record is not None:  # before the result: a result never lacks its config
            io.write_json(base + "_config.json", record)
        io.write_json(result, m)
        _drop_work(base)


def _table(rows: list[dict], methods: list[str], spatially_variant: bool = False) -> str:
    """Markdown table, one line per method (means; median time and memory). A spatially variant
    set (`spatially_variant`) shows SVKR's PSNR-Y, the field error and MANet's field LR-PSNR
    (`_field_metrics`) instead of the kernel PSNR / aligned error / the method's LR PSNR."""
    if spatially_variant:
        cols = ["psnr_y", "ssim_y", "svkr_psnr_y", "field_error", "field_lr_psnr", "seconds",
                "peak_mib"]
        head = ("| method | n | PSNR-Y | SSIM-Y | SVKR PSNR-Y | field err (aligned, mean/px) "
                "| field LR PSNR (MANet) | median s / image | median peak MiB | % of oracle gain |")
    else:
        cols = ["psnr_y", "ssim_y", "kernel_psnr", "kernel_error", "lr_psnr", "seconds", "peak_mib"]
        head = ("| method | n | PSNR-Y | SSIM-Y | kernel PSNR | aligned kernel err | LR PSNR "
                "| median s / image | median peak MiB | % of oracle gain |")
    lines = [head, "|---" * 10 + "|"]
    oracle = next((o for o in ("oracle_dip", "oracle_fft", "ssr_oracle")
                   if any(r["method"] == o for r in rows)), None)

    def mean_psnr(method, images):
        v = [r["psnr_y"] for r in rows if r["method"] == method and r["image"] in images and "psnr_y" in r]
        return np.mean(v) if len(v) == len(images) else None

    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        # (method - bicubic) / (oracle - bicubic) over the images this method ran on
        imgs = {r["image"] for r in rs}
        bic, orc, own = mean_psnr("bicubic", imgs), mean_psnr(oracle, imgs) if oracle else None, mean_psnr(m, imgs)
        gain = (f"{100 * (own - bic) / (orc - bic):.0f} % ({oracle})"
                if None not in (bic, orc, own) and orc > bic and m not in ("bicubic", oracle) else "–")
        vals = []
        for c in cols:
            v = [r[c] for r in rs if c in r]
            fmt = ("{:.4f}" if c in ("ssim_y", "kernel_error", "field_error")
                   else "{:.2f}" if c != "peak_mib" else "{:.0f}")
            vals.append(fmt.format(np.median(v) if c in ("seconds", "peak_mib") else np.mean(v))
                        if v else "–")
        lines.append(f"| {m} | {len(rs)} | " + " | ".join(vals) + f" | {gain} |")
    return "\n".join(lines)


def _kernel_image(k) -> np.ndarray:
    """What the kernel figure shows: a (K, K) kernel as is; an (h, w, K, K) field as a 3x3 mosaic
    of the kernels at evenly spaced LR pixels (rows top to bottom), each scaled to its maximum."""
    k = np.asarray(k, np.float32)
    if k.ndim == 2:
        return k
    h, w, K = k.shape[0], k.shape[1], k.shape[2]
    ys, xs = (np.linspace(0, n - 1, 5)[1:4].round().astype(int) for n in (h, w))
    tiles = [[k[y, x] / max(float(k[y, x].max()), 1e-12) for x in xs] for y in ys]
    gap = np.full((K, 1), np.nan, np.float32)
    rows = [np.concatenate(sum(([t, gap] for t in r), [])[:-1], axis=1) for r in tiles]
    sep = np.full((1, rows[0].shape[1]), np.nan, np.float32)
    return np.concatenate(sum(([r, sep] for r in rows), [])[:-1], axis=0)


def _kernel_figure(rows, cases, methods, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [m for m in methods if any(r["method"] == m and r.get("kernel_path") for r in rows)]
    if not ms:
        return
    fig, axes = plt.subplots(len(cases), len(ms) + 1, figsize=(1.6 * (len(ms) + 1), 1.6 * len(cases)),
                             squeeze=False)
    for i, c in enumerate(cases):
        axes[i, 0].imshow(_kernel_image(c.kernel) if c.kernel is not None else np.zeros((3, 3)),
                          cmap="magma")
        axes[i, 0].set_title(f"{c.name}: true", fontsize=6)
        for j, m in enumerate(ms):
            r = next((r for r in rows if r["method"] == m and r["image"] == c.name), None)
            if r and r.get("kernel_path") and os.path.isfile(r["kernel_path"]):
                axes[i, j + 1].imshow(_kernel_image(np.load(r["kernel_path"])), cmap="magma")
            axes[i, j + 1].set_title(m, fontsize=6)
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curve_figure(rows, methods, path) -> bool:
    """PSNR-Y vs step: one thin line per image, the mean in bold, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for r in rows:
        cpath = r.get("curve_path")
        if cpath and os.path.isfile(cpath):
            curves.setdefault(r["method"], []).append(np.asarray(json.load(open(cpath)), float))
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(x for x in methods if x in curves):
        color = f"C{i}"
        for c in curves[m]:
            ax.plot(c[:, 0], c[:, 1], color=color, alpha=0.25, lw=0.8)
        n = min(len(c) for c in curves[m])
        mean = np.mean([c[:n, 1] for c in curves[m]], axis=0)
        ax.plot(curves[m][0][:n, 0], mean, color=color, lw=2, label=f"{m} (mean of {len(curves[m])})")
    for m, style in (("bicubic", ":"), ("oracle_fft", "--")):
        v = [r["psnr_y"] for r in rows if r["method"] == m and "psnr_y" in r]
        if v:
            ax.axhline(np.mean(v), color="k", ls=style, lw=1, label=f"{m} (mean)")
    ax.set_xlabel("step (outer iteration)")
    ax.set_ylabel("PSNR-Y (dB)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _crop_figure(rows, cases, methods, path, size: int = 96) -> bool:
    """Centre crops of the SR outputs side by side (ground truth first), PSNR-Y in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfsr import io

    have = [c for c in cases if c.hr is not None]
    ms = [m for m in methods if any(r["method"] == m and r.get("hr_path") for r in rows)]
    if not have or not ms:
        return False
    fig, axes = plt.subplots(len(have), len(ms) + 1, figsize=(1.9 * (len(ms) + 1), 1.9 * len(have)),
                             squeeze=False)
    for i, c in enumerate(have):
        h, w = c.hr.shape[:2]
        y0, x0 = max(0, h // 2 - size // 2), max(0, w // 2 - size // 2)
        crop = lambda a: np.clip(a[y0:y0 + size, x0:x0 + size], 0, 1)  # noqa: E731
        axes[i, 0].imshow(crop(c.hr))
        axes[i, 0].set_title(f"{c.name}: HR", fontsize=6)
        for j, m in enumerate(ms):
            r = next((r for r in rows if r["method"] == m and r["image"] == c.name), None)
            if r and r.get("hr_path") and os.path.isfile(r["hr_path"]):
                axes[i, j + 1].imshow(crop(io.load_image(r["hr_path"])))
                axes[i, j + 1].set_title(f"{m} {r.get('psnr_y', float('nan')):.2f}", fontsize=6)
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _machine() -> str:
    import jax

    model = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        model = names[0] if names else model
    return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"jax {jax.__version__}")


def update_docs(section: str, text: str, path: str = os.path.join(ROOT, "docs", "BENCHMARKS.md")):
    """Replace the block between <!-- bench:section --> markers (append it if new)."""
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    doc = open(path).read() if os.path.isfile(path) else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    from kfsr import io

    io.write_text(path, doc)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="bicubic,oracle_fft,dkp")
    p.add_argument("--dataset", default="set5_dkp")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--crop", type=int, default=224, help="HR centre crop of the generated sets (c224)")
    p.add_argument("--kernels", default="gaussian",
                   help="comma list: gaussian,motion (random trajectories),usrnet_motion (USRNet's "
                        "real motion kernels),l_shape,empty_square,filled_square; 'shapes' = the "
                        "three synthetic shapes; 'blind' = KernelFusion's grid (all of them); "
                        "aniso_gaussian (BlindDiff's setting-2 kernels, blur + bicubic "
                        "downsampling: kfsr.data.BICUBIC_FAMILIES); depth_field (spatially "
                        "variant: synthetic depth + SSR's depth-dependent kernel field per LR "
                        "pixel, x4 or x2: kfsr.data.SV_FAMILIES)")
    p.add_argument("--preset", default=None, help="preset for dkp, dkp_motion, diff_dkp, oracle_dip, the kernelfusion, the blinddiff and the ssr rows (default: cpu)")
    p.add_argument("--checkpoint", default=None,
                   help="blinddiff, blinddiff_oracle: the trained MCFormer (a `python -m "
                        "kfsr.train.supervised` workdir or its model/ folder), e.g. "
                        "results/blinddiff_cpu")
    p.add_argument("--ssr-ckpt", default=None,
                   help="ssr, ssr_gt_depth, ssr_oracle: dkenet=DIR,rrdb=DIR,denoiser=DIR, the "
                        "workdirs of python -m kfsr.train.supervised --config=configs/ssr.py:cpu "
                        "--config.part=<part> (ssr_oracle: rrdb and denoiser only)")
    p.add_argument("--ssr-nodepth-ckpt", default=None,
                   help="ssr_nodepth: dkenet=DIR,rrdb=DIR,denoiser=DIR trained with "
                        "--config.use_depth=False (rrdb: default the one of --ssr-ckpt)")
    # tests only: the ssr rows with untrained random weights (plumbing; meaningless numbers),
    # in their own result folders (<method>[_preset]_random_init)
    p.add_argument("--_ssr-random-init", dest="ssr_random_init", action="store_true",
                   help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--images", default=None, help="comma list of image names to run")
    p.add_argument("--subset", action="append", default=[],
                   help="method:img1,img2 -- run that method on those images only (e.g. an expensive preset)")
    p.add_argument("--set", action="append", default=[], help="config override field=value")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--batch", type=int, default=1,
                   help="blind methods: run up to N same-size images as one vmapped batch "
                        "(sharded over the devices); time per image = batch time / N")
    p.add_argument("--update-docs", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: tables and figures from the cases finished so far")
    p.add_argument("--tag", default=None, help="section name in docs/BENCHMARKS.md")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._case:
        return _case_main(json.loads(a._case))
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"error: unknown method {m!r}; known: {', '.join(METHODS)}")
    overrides = dict(s.split("=", 1) for s in a.set)
    bd_overrides = dict(overrides)
    if any(m in BLINDDIFF_METHODS for m in methods) and not a.report_only:
        ckpt = a.checkpoint or overrides.get("checkpoint")
        if not ckpt:
            raise SystemExit("error: blinddiff needs --checkpoint=DIR, a trained MCFormer (python -m "
                             "kfsr.train.supervised --config=configs/blinddiff.py:cpu --workdir=DIR)")
        if not os.path.isdir(os.path.join(ckpt, "model")) and not os.path.isdir(ckpt):
            raise SystemExit(f"error: --checkpoint={ckpt}: no such folder (train a model with "
                             "python -m kfsr.train.supervised --config=configs/blinddiff.py:cpu "
                             f"--workdir={ckpt})")
        bd_overrides["checkpoint"] = os.path.abspath(ckpt)
    if a.ssr_random_init and a.update_docs:
        raise SystemExit("error: --_ssr-random-init (untrained weights, tests only) cannot "
                         "--update-docs")
    ssr_ckpt = _parse_ckpts("--ssr-ckpt", a.ssr_ckpt)
    ssr_nd_ckpt = _parse_ckpts("--ssr-nodepth-ckpt", a.ssr_nodepth_ckpt)
    method_overrides = {m: bd_overrides if m in BLINDDIFF_METHODS else overrides for m in methods}
    for m in methods:
        if m in SSR_METHODS:
            ckpts = ({} if a.report_only else
                     _ssr_overrides(m, ssr_ckpt, ssr_nd_ckpt, a.ssr_random_init))
            method_overrides[m] = dict(overrides, **ckpts)
    configured = ([_config_for(m, a.scale, a.preset, {}) for m in methods if m not in BICUBIC_ROWS]
                  if overrides else [])
    for field in overrides:  # each --set applies to the methods whose config has the field
        if not any(_has_field(c, field) for c in configured):
            named = ", ".join(m for m in methods if m not in BICUBIC_ROWS) or "(bicubic only)"
            raise SystemExit(f"error: --set {field}=...: no such config field in the configs of "
                             f"{named}")
    subsets = {}
    for item in a.subset:
        m, _, imgs = item.partition(":")
        if m not in methods or not imgs:
            raise SystemExit(f"error: --subset {item!r}: expected <one of --methods>:img1,img2")
        subsets[m] = set(imgs.split(","))
    cmd = "python -m kfsr.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    families = []
    for f in a.kernels.split(","):
        families += {"shapes": ["l_shape", "empty_square", "filled_square"],
                     "blind": ["gaussian", "usrnet_motion", "motion", "l_shape", "empty_square",
                               "filled_square"]}.get(f, [f])
    for family in families:
        set_name, cases = load_cases(a.dataset, a.scale, family, a.seed, a.out, a.limit, a.crop)
        if a.images:
            keep = set(a.images.split(","))
            cases = [c for c in cases if c.name in keep]
        run_dir = os.path.join(a.out, set_name)
        rows, pending, stale = [], [], []
        forward = dataset_forward_model(a.dataset, family, a.scale)
        convention, set_overrides = dataset_kernel_convention(a.dataset, family), {}
        sv = any(c.kernel is not None and c.kernel.ndim == 4 for c in cases)
        for m in methods:
            if sv and _needs_2d_kernel(m):
                print(f"[{set_name}] {m}: skipped (needs one global kernel; this set's kernels are "
                      "spatially variant fields: use ssr_oracle)", flush=True)
                continue
            todo, mine, now = [], {}, None
            set_overrides[m] = dict(method_overrides[m])
            if m in DKP_METHODS and convention is not None:
                set_overrides[m].setdefault("rks.center", convention)
            if (m in _KF_ABLATIONS or m == "bicubic_rolled") and convention is not None:
                set_overrides[m].setdefault("kernel_center", convention)
            res_dir = result_dir(m, a.preset) + (
                "_random_init" if a.ssr_random_init and m in SSR_METHODS else "")
            for c in cases:
                if m in subsets and c.name not in subsets[m]:
                    continue
                res_path = os.path.join(run_dir, res_dir, c.name + ".json")
                if not os.path.isfile(res_path) and a.report_only:
                    pending.append(f"{m}/{c.name}")
                    continue
                if not os.path.isfile(res_path):
                    os.makedirs(os.path.dirname(res_path), exist_ok=True)
                    lock = _claim(res_path + ".lock")
                    if lock is None:
                        print(f"[{set_name}] {m} {c.name}: running in another process, skipped",
                              flush=True)
                        pending.append(f"{m}/{c.name}")
                        continue
                    todo.append((c, res_path, lock))
                elif os.path.isfile(res_path[:-5] + "_config.json"):
                    if now is None:
                        now = _config_record(m, a.scale, a.preset, a.seed, set_overrides[m],
                                             forward)
                    # report-only runs do not resolve checkpoints: those fields are not compared
                    diff = _config_diff(json.load(open(res_path[:-5] + "_config.json")), now,
                                        skip=("checkpoint",) if a.report_only else ())
                    if diff:
                        stale.append(f"{m}/{c.name}")
                        print(f"[{set_name}] {m} {c.name}: WARNING: finished with another config "
                              f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); its "
                              f"result is reused: move {res_path} away to run it again",
                              flush=True)
                mine[c.name] = res_path
            base_spec = dict(method=m, dataset=a.dataset, scale=a.scale, family=family, crop=a.crop,
                             seed=a.seed, out=a.out, preset=a.preset,
                             overrides=set_overrides[m],
                             random_init=bool(a.ssr_random_init and m in SSR_METHODS))
            for group in _groups(m, todo, a.batch):
                names = [c.name for c, _, _ in group]
                spec = dict(base_spec, images=names, results=[r for _, r, _ in group])
                print(f"[{set_name}] {m} {', '.join(names)} ...", flush=True)
                try:
                    subprocess.run([sys.executable, "-m", "kfsr.bench", "--_case", json.dumps(spec)],
                                   check=True, cwd=ROOT, env=_case_env(a.out))
                finally:
                    for _, _, lock in group:
                        os.remove(lock)
            for c in cases:
                if c.name not in mine:
                    continue
                res_path = mine[c.name]
                r = json.load(open(res_path))
                extra = {}
                for field, suffix in (("kernel_path", "_kernel.npy"), ("curve_path", "_curve.json"),
                                      ("hr_path", ".png")):
                    if os.path.isfile(res_path[:-5] + suffix):
                        extra[field] = res_path[:-5] + suffix
                rows.append(dict(method=m, image=c.name, **extra, **r))
                print(f"  {m:12s} {c.name:12s} " + " ".join(
                    f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                    for k, v in r.items()), flush=True)
        if pending:
            print(f"not in this table (not finished): {', '.join(pending)}", flush=True)
        if stale:
            print(f"in this table but run with another config: {', '.join(stale)}", flush=True)
        table = _table(rows, methods, spatially_variant=sv)
        from kfsr import io

        io.write_json(os.path.join(run_dir, "results.json"), rows)
        with open(os.path.join(run_dir, "per_image.csv"), "w", newline="") as f:
            keys = sorted({k for r in rows for k in r})
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        io.write_text(os.path.join(run_dir, "table.md"), table + "\n")
        _kernel_figure(rows, cases, methods, os.path.join(run_dir, "kernels.png"))
        _curve_figure(rows, methods, os.path.join(run_dir, "curves.png"))
        _crop_figure(rows, cases, methods, os.path.join(run_dir, "sr_crops.png"))
        print(table)
        if a.update_docs:
            when = datetime.date.today().isoformat()
            machine = _machine()
            kcol, kname, kfmt = (("field_error", "field err", "{:.4f}") if sv
                                 else ("kernel_psnr", "kernel PSNR", "{:.2f}"))
            per_image = [f"| method | image | PSNR-Y | SSIM-Y | {kname} | s |", "|---" * 6 + "|"]
            for r in rows:
                per_image.append(f"| {r['method']} | {r['image']} | {r.get('psnr_y', float('nan')):.2f} | "
                                 f"{r.get('ssim_y', float('nan')):.4f} | "
                                 f"{kfmt.format(r.get(kcol, float('nan')))} | {r['seconds']:.0f} |")
            run_cmd = cmd.replace(" --report-only", "")  # what reproduces the numbers
            todo = (f"Not finished yet (the command resumes them): {', '.join(pending)}\n\n"
                    if pending else "")
            text = (f"### {a.tag or set_name}\n\nCommand: `{run_cmd}`  \nMachine: {machine}  \nDate: {when}\n\n{todo}"
                    f"{table}\n\n<details><summary>per image</summary>\n\n" + "\n".join(per_image) +
                    "\n\n</details>")
            update_docs(a.tag or set_name, text)


if __name__ == "__main__":
    main()
