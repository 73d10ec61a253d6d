"""Benchmark data: synthetic protocols from HR folders, the fixed DKP Set5 set, DIV2KRK layout.

Protocol `c224`: HR centre crop 224x224 (fits every image of Set5, Set14 and BSD100), blurred with
a seeded kernel of a named family, degraded with a named `Degradation`, rounded to uint8. Every
generated set is cached in a folder with `hr/`, `lr/`, `kernels/` (.npy) and a `manifest.json`
recording the degradation spec, kernel family, seed and per-image kernel, so a benchmark never
depends on an LR image whose making is not written down.

Spatially variant family `depth_field` (SV_FAMILIES, issue 6): per image a synthetic depth map on
the LR grid and the depth-dependent kernel field of SSR's training family (configs/ssr.py,
kfsr/train/depth_fields.py), LR = `degrade_spatial(HR, field, spec)`; the field (h, w, K, K) is
saved in `fields/` and the depth (h, w) in `depth/` instead of a kernel in `kernels/`.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import jax
import numpy as np

from kfsr import io
from kfsr.errors import KfsrInputError

SHARED_DATA = os.environ.get(
    "KFSR_DATA",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                 "data"))
HR_SETS = {"set5": "Set5/HR", "set14": "Set14/HR", "bsd100": "BSD100/HR"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark image: LR input, and whatever ground truth is known (else None)."""

    name: str
    lr: np.ndarray  # (h, w, 3) float32 in [0, 1]
    hr: np.ndarray | None = None  # (h*s, w*s, 3)
    kernel: np.ndarray | None = None  # (K, K), or (h, w, K, K) per LR pixel (SV_FAMILIES)
    lr_path: str | None = None
    depth: np.ndarray | None = None  # (h, w) in [0, 1], larger = farther (SV_FAMILIES)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise KfsrInputError(f"image {h}x{w} is smaller than the crop {size}")
    t, l = (h - size) // 2, (w - size) // 2
    return img[t: t + size, l: l + size]


# Families with their own forward model (else the DKP one: circular padding, stride sampling):
# aniso_gaussian = BlindDiff's setting-2 test kernels (report blinddiff_ssr.md §1.1): 21x21,
# std sigma_x, sigma_y ~ U[0.6, 5] px, theta ~ U[-pi, pi], k <- k (1 + U(0, 0.25)) per entry,
# centred at (K-1)/2, applied with reflect padding then MATLAB bicubic downsampling.
BICUBIC_FAMILIES = {"aniso_gaussian": 21}


# Spatially variant families -> the configs/ssr.py preset whose training family (and forward
# model: reflect padding, stride sampling at offset 0, K per LR pixel) makes the set, per scale:
# x4 the cpu preset (K 21, MANet's), x2 the test preset (K 11; tests only).
SV_FAMILIES = {"depth_field": {4: "cpu", 2: "test"}}


def depth_field_setup(scale: int):
    """The SSR Setup (kfsr.methods.ssr_setup) whose `family` (a DepthFieldFamily) and `spec` (a
    Degradation) make a `depth_field` set at `scale`; KfsrInputError for a scale without one."""
    from kfsr.api import default_config
    from kfsr.methods.ssr_setup import make_setup

    preset = SV_FAMILIES["depth_field"].get(scale)
    if preset is None:
        raise KfsrInputError(f"kernel family 'depth_field' exists at x"
                             f"{' and x'.join(map(str, sorted(SV_FAMILIES['depth_field'])))} "
                             f"(configs/ssr.py presets), not x{scale}")
    return make_setup(default_config("ssr", preset))


def degradation_of(family: str, scale: int):
    """The forward model a generated set of `family` is made with (for SV_FAMILIES the spatially
    variant one of `kfsr.degrade.spatial.degrade_spatial`)."""
    from kfsr.degrade import Degradation

    if family in SV_FAMILIES:
        return depth_field_setup(scale).spec
    return Degradation.blinddiff(scale) if family in BICUBIC_FAMILIES else Degradation.dkp(scale)


def make_depth_field_case(hr: np.ndarray, key, family, spec) -> dict:
    """One `depth_field` example, drawn as SSR's training data is (DepthFieldFamily.draw and
    .synthesize) from a numpy generator seeded by the raw data of the jax `key`.

    hr: (H, W, 3) in [0, 1]. Returns dict(lr (h, w, 3) float32, noise-free, neither clipped nor
    quantised; field (h, w, K, K) float32, one sum-1 kernel per LR pixel; depth (h, w) float32
    in [0, 1]; params: the drawn theta, anisotropy and depth key, JSON-ready)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    hb = family.draw(rng, 1)
    hb["hr"] = np.asarray(hr, np.float32)[None]
    out = family.synthesize(hb, spec)
    params = {"theta": float(hb["k_theta"][0]), "anisotropy": float(hb["k_aniso"][0]),
              "depth_key": [int(v) for v in hb["d_key"][0]]}
    return {"lr": np.asarray(out["lr"][0], np.float32),
            "field": np.asarray(out["kernel"][0], np.float32),
            "depth": np.asarray(out["depth"][0], np.float32), "params": params}


def aniso_gaussian_kernel(key, size: int = 21) -> np.ndarray:
    """One BlindDiff setting-2 kernel (see BICUBIC_FAMILIES), drawn with a jax key."""
    from kfsr.degrade import kernels

    u = np.asarray(jax.random.uniform(key, (3 + size * size,)), np.float64)
    sx, sy = 0.6 + 4.4 * u[0], 0.6 + 4.4 * u[1]
    theta = -np.pi + 2 * np.pi * u[2]
    noise = 0.25 * u[3:].reshape(size, size)
    c = (size - 1) / 2.0
    return np.asarray(kernels.gaussian_from_params(size, sx ** 2, sy ** 2, theta, c,
                                                   noise=noise.astype(np.float32), recenter="none"))


def make_kernel(family: str, key, scale: int, size: int) -> np.ndarray:
    """A benchmark kernel of `family` in DKP's centring convention (the DKP forward model), or
    in its own (BICUBIC_FAMILIES)."""
    from kfsr.degrade import kernels

    if family == "aniso_gaussian":
        return aniso_gaussian_kernel(key, size)
    if family == "gaussian":
        return np.asarray(kernels.dkp_test_kernel(key, scale))
    if family == "motion":
        return np.asarray(kernels.trajectory_motion(key, size, scale, convention="dkp"))
    if family in ("l_shape", "empty_square", "filled_square"):
        return np.asarray(kernels.shape_kernel(family, size, scale, convention="dkp"))
    if family == "usrnet_motion":
        # one of USRNet's six real motion-blur kernels (25x25, their own support), drawn by the
        # key, its centre of mass moved to DKP's (K - s) / 2
        name = USRNET_MOTION[int(jax.random.randint(key, (), 0, len(USRNET_MOTION)))]
        k = kernels.load_kernel(os.path.join(SHARED_DATA, "kernels", name))
        k = kernels.center(k, kernels.target_center(k.shape[0], scale, "dkp"))
        return np.asarray(kernels.normalize(k))
    raise KfsrInputError(f"unknown kernel family {family!r} (gaussian, motion, usrnet_motion, "
                         "l_shape, empty_square, filled_square, aniso_gaussian)")


# the real motion-blur kernels among ../shared/data/kernels/usrnet_kNN.npy (k01-k04 are Gaussians)
USRNET_MOTION = ("usrnet_k05.npy", "usrnet_k06.npy", "usrnet_k07.npy", "usrnet_k08.npy",
                 "usrnet_k11.npy", "usrnet_k12.npy")


def build_set(dataset: str, *, crop: int = 224, scale: int = 4, family: str = "gaussian",
              seed: int = 0, out_root: str = "results/data", limit: int | None = None) -> str:
    """Generate (or reuse) the cached protocol folder; returns its path."""
    from kfsr.degrade import degrade, kernels

    if dataset not in HR_SETS:
        raise KfsrInputError(f"unknown dataset {dataset!r}; known: {', '.join(HR_SETS)}")
    name = f"{dataset}_c{crop}_x{scale}_{family}_s{seed}"
    root = os.path.join(out_root, name)
    manifest_path = os.path.join(root, "manifest.json")
    paths = io.list_images(os.path.join(SHARED_DATA, HR_SETS[dataset]))
    if limit:
        paths = paths[:limit]
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if family in SV_FAMILIES:
            _check_sv_manifest(manifest, manifest_path, scale)
        if len(manifest["images"]) >= len(paths):
            return root
    if family in SV_FAMILIES:
        return _build_sv_set(root, paths, crop=crop, scale=scale, family=family, seed=seed,
                             dataset=dataset)
    spec = degradation_of(family, scale)
    size = BICUBIC_FAMILIES.get(family) or kernels.dkp_kernel_size(scale)
    records = []
    for idx, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        hr = center_crop(io.load_image(path), crop)
        k = make_kernel(family, jax.random.fold_in(jax.random.key(seed), idx), scale, size)
        lr = np.asarray(degrade(hr, k, spec))
        lr = _quantise(lr)
        io.save_image(os.path.join(root, "hr", stem + ".png"), hr)
        io.save_image(os.path.join(root, "lr", stem + ".png"), lr)
        os.makedirs(os.path.join(root, "kernels"), exist_ok=True)
        np.save(os.path.join(root, "kernels", stem + ".npy"), k.astype(np.float32))
        records.append({"name": stem, "source": os.path.relpath(path, SHARED_DATA)})
    io.write_json(manifest_path, {
        "protocol": f"c{crop}", "dataset": dataset, "scale": scale, "kernel_family": family,
        "seed": seed, "kernel_size": int(k.shape[0]) if records else size,
        "degradation": dataclasses.asdict(spec),
        "kernel_centre": ("(K - 1) / 2 (BlindDiff)" if family in BICUBIC_FAMILIES
                          else "dkp: centre of mass at (K - s) / 2"), "quantised": "uint8",
        "images": records})
    return root


def _quantise(lr: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to 8-bit levels (what the saved PNG holds)."""
    return np.round(np.clip(lr, 0, 1) * 255) / 255


def _check_sv_manifest(manifest: dict, path: str, scale: int) -> None:
    """A cached `depth_field` set must have been made with today's SSR training family (the
    configs/ssr.py preset of SV_FAMILIES); KfsrInputError naming the manifest otherwise."""
    fam = json.loads(json.dumps(dataclasses.asdict(depth_field_setup(scale).family)))
    if manifest.get("family") != fam:
        raise KfsrInputError(f"{path}: made with kernel family {manifest.get('family')}, "
                             f"configs/ssr.py now gives {fam}; delete the folder to rebuild it")


def _build_sv_set(root: str, paths: list, *, crop: int, scale: int, family: str, seed: int,
                  dataset: str) -> str:
    """A `depth_field` set (SV_FAMILIES): image idx drawn with jax.random.fold_in(key(seed), idx)
    (`make_depth_field_case`); hr/, lr/ (uint8 PNG), fields/<name>.npy (h, w, K, K) float32,
    depth/<name>.npy (h, w) float32 and the manifest."""
    from kfsr.methods.ssr_setup import lambda_range

    setup = depth_field_setup(scale)
    fam, spec = setup.family, setup.spec
    records = []
    for idx, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        hr = center_crop(io.load_image(path), crop)
        ex = make_depth_field_case(hr, jax.random.fold_in(jax.random.key(seed), idx), fam, spec)
        io.save_image(os.path.join(root, "hr", stem + ".png"), hr)
        io.save_image(os.path.join(root, "lr", stem + ".png"), _quantise(ex["lr"]))
        for sub, arr in (("fields", ex["field"]), ("depth", ex["depth"])):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
            np.save(os.path.join(root, sub, stem + ".npy"), arr)
        records.append({"name": stem, "source": os.path.relpath(path, SHARED_DATA),
                        "depth_range": [float(ex["depth"].min()), float(ex["depth"].max())],
                        **ex["params"]})
    io.write_json(os.path.join(root, "manifest.json"), {
        "protocol": f"c{crop}", "dataset": dataset, "scale": scale, "kernel_family": family,
        "seed": seed, "kernel_size": fam.size, "spatially_variant": True,
        "field_source": f"configs/ssr.py:{SV_FAMILIES[family][scale]} data.kernel "
                        "(kfsr.train.depth_fields.DepthFieldFamily)",
        "family": dataclasses.asdict(fam), "lambda_range": list(lambda_range(setup)),
        "forward_model": "kfsr.degrade.spatial.degrade_spatial (one kernel per LR pixel, MANet's "
                         "gather model), noise-free",
        "degradation": dataclasses.asdict(spec),
        "kernel_centre": "aligned: centre of mass at K // 2 + (s - 1) / 2",
        "per_image_seed": "jax.random.fold_in(jax.random.key(seed), index) -> numpy generator "
                          "-> DepthFieldFamily.draw", "quantised": "uint8",
        "layout": "fields/<name>.npy (h, w, K, K) float32, depth/<name>.npy (h, w) float32",
        "images": records})
    return root


def load_set(root: str, limit: int | None = None) -> list[Case]:
    """A protocol folder (hr/, lr/, kernels/ or fields/ + depth/) -> Cases; hr and kernels
    optional; a field (fields/<name>.npy, (h, w, K, K)) becomes Case.kernel and depth/<name>.npy
    Case.depth."""
    from kfsr.degrade import kernels

    lr_dir = os.path.join(root, "lr")
    if not os.path.isdir(lr_dir):
        raise KfsrInputError(f"{root}: no lr/ folder")
    cases = []
    for p in io.list_images(lr_dir)[:limit]:
        stem = os.path.splitext(os.path.basename(p))[0]
        hr_p = os.path.join(root, "hr", stem + ".png")
        k_p = os.path.join(root, "kernels", stem + ".npy")
        f_p, d_p = (os.path.join(root, sub, stem + ".npy") for sub in ("fields", "depth"))
        kernel = kernels.load_kernel(k_p) if os.path.isfile(k_p) else None
        if os.path.isfile(f_p):
            kernel = _load_field(f_p)
        cases.append(Case(name=stem, lr=io.load_image(p), lr_path=p,
                          hr=io.load_image(hr_p) if os.path.isfile(hr_p) else None,
                          kernel=kernel,
                          depth=np.load(d_p).astype(np.float32) if os.path.isfile(d_p) else None))
    return cases


def _load_field(path: str) -> np.ndarray:
    """A stored kernel field -> (h, w, K, K) float32; KfsrInputError naming the file otherwise."""
    f = np.load(path).astype(np.float32)
    if f.ndim != 4 or f.shape[2] != f.shape[3] or not np.all(np.isfinite(f)):
        raise KfsrInputError(f"{path}: expected a finite (h, w, K, K) kernel field, got {f.shape}")
    return f


def load_div2krk(root: str, scale: int, limit: int | None = None) -> list[Case]:
    """DIV2KRK layout: lr_x{s}/im_N.png, gt_k_x{s}/kernel_N.mat (key Kernel), gt/img_N_gt.png."""
    from kfsr.degrade import kernels

    lr_dir = os.path.join(root, f"lr_x{scale}")
    if not os.path.isdir(lr_dir):
        raise KfsrInputError(f"{root}: no lr_x{scale}/ folder (DIV2KRK layout)")
    cases = []
    for p in io.list_images(lr_dir)[:limit]:
        stem = os.path.splitext(os.path.basename(p))[0]
        n = stem.split("_")[-1]
        k_p = os.path.join(root, f"gt_k_x{scale}", f"kernel_{n}.mat")
        gts = [g for pat in (f"img_{n}_gt.*", f"im_{n}.*", f"{stem}.*")
               for g in sorted(glob.glob(os.path.join(root, "gt", pat)))]
        cases.append(Case(name=stem, lr=io.load_image(p), lr_path=p,
                          hr=io.load_image(gts[0]) if gts else None,
                          kernel=kernels.load_kernel(k_p) if os.path.isfile(k_p) else None))
    return cases
