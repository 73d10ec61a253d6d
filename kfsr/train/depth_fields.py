"""A kernel family for `kfsr.train.supervised`: depth-dependent spatially variant kernel fields.

SSR's training data (blinddiff_ssr.md §4.2 item 2 [I]): per HR crop a synthetic depth map on the LR
grid (`kfsr.depth.synthetic_depth`), a per-pixel anisotropic Gaussian field whose width and
anisotropy grow with depth (`kfsr.degrade.spatial.depth_gaussian_field`), and the spatially variant
blur + stride sampling of the crop with that field (`kfsr.degrade.spatial.degrade_spatial`,
MANet's gather model: one kernel per LR pixel).

Host draw (numpy, from the pipeline's per-step generator; `draw`): per example the raw data of a
threefry key for the depth map (`d_key`, (n, 2) uint32), the field's orientation theta ~ U[0, pi)
(or the fixed `theta`) and its anisotropy ~ U[anisotropy]. Device build (`synthesize`, inside the
jitted training step): depth (b, h, w), field (b, h, w, K, K), LR (b, h, w, 3).

Unlike the spatially invariant families, this one synthesises the LR image itself (the pipeline
calls `family.synthesize(host_batch, degradation)` when a family has it), because the forward
model is the spatially variant one. Stride sampling only (the field lives on the LR grid).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from kfsr.errors import KfsrInputError


@dataclasses.dataclass(frozen=True)
class DepthFieldFamily:
    """Depth-dependent SV Gaussian fields (module docstring).

    size: K. depth_kind: `kfsr.depth.synthetic_depth` kind. lambda_min / lambda_max: variance
    range (px^2; None -> `kernels.dkp_test_range(scale)`). focus: focal depth of
    `depth_blur_amount` (0: blur grows with depth). anisotropy: (lo, hi) range of the
    anisotropy strength. theta: None -> random orientation per example, else fixed (radians).
    recenter: `kernels.gaussian_from_params` re-centring ("none" compiles fastest).
    """

    size: int = 21
    depth_kind: str = "mixed"
    lambda_min: float | None = None
    lambda_max: float | None = None
    focus: float = 0.0
    anisotropy: tuple = (0.0, 0.6)
    theta: float | None = None
    recenter: str = "none"

    def draw(self, rng: np.random.Generator, n: int) -> dict:
        key = rng.integers(0, 2 ** 32, size=(n, 2), dtype=np.uint32)
        theta = rng.uniform(0.0, math.pi, size=n)
        if self.theta is not None:
            theta = np.full(n, float(self.theta))
        aniso = rng.uniform(self.anisotropy[0], self.anisotropy[1], size=n)
        return {"d_key": key, "k_theta": theta.astype(np.float32),
                "k_aniso": aniso.astype(np.float32)}

    def spec(self, n: int) -> dict:
        return {"d_key": jax.ShapeDtypeStruct((n, 2), np.uint32),
                "k_theta": jax.ShapeDtypeStruct((n,), np.float32),
                "k_aniso": jax.ShapeDtypeStruct((n,), np.float32)}

    def fields(self, depth, hb: dict, scale: int):
        """Fields (b, h, w, K, K) of depth maps (b, h, w) with the drawn parameters."""
        from kfsr.degrade.spatial import depth_gaussian_field

        def one(d, aniso, theta):
            return depth_gaussian_field(d, self.size, scale, lambda_min=self.lambda_min,
                                        lambda_max=self.lambda_max, focus=self.focus,
                                        anisotropy=aniso, theta=theta, recenter=self.recenter)

        return jax.vmap(one)(depth, hb["k_aniso"], hb["k_theta"])

    def synthesize(self, hb: dict, degradation) -> dict:
        """hb: host batch (hr (b, H, W, 3) + `draw`'s fields) -> dict(lr (b, h, w, 3),
        kernel (b, h, w, K, K), depth (b, h, w)); noise-free (the pipeline adds noise)."""
        from kfsr.degrade.spatial import degrade_spatial, output_shape
        from kfsr.depth import synthetic_depth

        if degradation.sampling != "stride":
            raise KfsrInputError("config.data.kernel.family='depth_field' needs stride sampling "
                                 f"(config.sampling='stride'), got {degradation.sampling!r}")
        hr = hb["hr"]
        s = degradation.scale
        hw = output_shape(hr.shape[1], hr.shape[2], self.size, degradation.padding, s,
                          degradation.offset)
        keys = jax.random.wrap_key_data(hb["d_key"], impl="threefry2x32")
        depth = jax.vmap(lambda k: synthetic_depth(k, hw, self.depth_kind))(keys)
        field = self.fields(depth, hb, s)
        clean = dataclasses.replace(degradation, noise_sigma=0.0)
        lr = jax.vmap(lambda x, f: degrade_spatial(x, f, clean))(hr, field)
        return {"lr": lr, "kernel": field, "depth": depth}


def from_config(kc, size: int) -> DepthFieldFamily:
    """The family of `config.data.kernel` (family 'depth_field'); KfsrInputError on bad values."""
    from kfsr.depth import SYNTHETIC_KINDS

    kind = str(kc.get("depth_kind", "mixed"))
    if kind not in SYNTHETIC_KINDS:
        raise KfsrInputError(
            f"config.data.kernel.depth_kind: one of {SYNTHETIC_KINDS}, got {kind!r}")
    an = tuple(float(v) for v in kc.get("anisotropy", (0.0, 0.6)))
    if len(an) != 2 or not 0.0 <= an[0] <= an[1] < 1.0:
        raise KfsrInputError(f"config.data.kernel.anisotropy: (lo, hi) with 0 <= lo <= hi < 1, "
                             f"got {an}")
    lo, hi = kc.get("lambda_min", None), kc.get("lambda_max", None)
    if lo is not None and hi is not None and not 0 < float(lo) <= float(hi):
        raise KfsrInputError(f"config.data.kernel.lambda_min/max: 0 < min <= max, got {lo}, {hi}")
    focus = float(kc.get("focus", 0.0))
    if not 0.0 <= focus < 1.0:
        raise KfsrInputError(f"config.data.kernel.focus: in [0, 1), got {focus}")
    theta = kc.get("theta", None)
    return DepthFieldFamily(size=int(size), depth_kind=kind,
                            lambda_min=None if lo is None else float(lo),
                            lambda_max=None if hi is None else float(hi), focus=focus,
                            anisotropy=an, theta=None if theta is None else float(theta),
                            recenter=str(kc.get("recenter", "none")))


__all__ = ["DepthFieldFamily", "from_config"]
