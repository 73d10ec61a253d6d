"""Benchmark data: synthetic protocols from HR folders, the fixed DKP Set5 set, DIV2KRK layout.

Protocol `c224`: HR centre crop 224x224 (fits every image of Set5, Set14 and BSD100), blurred with
a seeded kernel of a named family, degraded with a named `Degradation`, rounded to uint8. Every
generated set is cached in a folder with `hr/`, `lr/`, `kernels/` (.npy) and a `manifest.json`
recording the degradation spec, kernel family, seed and per-image kernel, so a benchmark never
depends on an LR image whose making is not written down.
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
    kernel: np.ndarray | None = None  # (K, K)
    lr_path: str | None = None


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


def degradation_of(family: str, scale: int):
    """The forward model a generated set of `family` is made with."""
    from kfsr.degrade import Degradation

    return Degradation.blinddiff(scale) if family in BICUBIC_FAMILIES else Degradation.dkp(scale)


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
            if len(json.load(f)["images"]) >= len(paths):
                return root
    spec = degradation_of(family, scale)
    size = BICUBIC_FAMILIES.get(family) or kernels.dkp_kernel_size(scale)
    records = []
    for idx, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        hr = center_crop(io.load_image(path), crop)
        k = make_kernel(family, jax.random.fold_in(jax.random.key(seed), idx), scale, size)
        lr = np.asarray(degrade(hr, k, spec))
        lr = np.round(np.clip(lr, 0, 1) * 255) / 255
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


def load_set(root: str, limit: int | None = None) -> list[Case]:
    """A protocol folder (hr/, lr/, kernels/) -> Cases; hr and kernels optional."""
    from kfsr.degrade import kernels

    lr_dir = os.path.join(root, "lr")
    if not os.path.isdir(lr_dir):
        raise KfsrInputError(f"{root}: no lr/ folder")
    cases = []
    for p in io.list_images(lr_dir)[:limit]:
        stem = os.path.splitext(os.path.basename(p))[0]
        hr_p = os.path.join(root, "hr", stem + ".png")
        k_p = os.path.join(root, "kernels", stem + ".npy")
        cases.append(Case(name=stem, lr=io.load_image(p), lr_path=p,
                          hr=io.load_image(hr_p) if os.path.isfile(hr_p) else None,
                          kernel=kernels.load_kernel(k_p) if os.path.isfile(k_p) else None))
    return cases


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
