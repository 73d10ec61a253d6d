"""`Degradation`: a frozen, hashable description of the forward model y = S_s(k * P(x)) + n.

The same object is used to synthesise data and as a model's forward operator, and it is hashable
so it can be a static argument of `jax.jit` (`jax.jit(degrade, static_argnames="spec")`).

Fields
  scale        int >= 1, the SR factor s.
  padding      how the HR image is extended before blurring: "circular" (wrap), "reflect"
               (scipy.ndimage 'reflect' = numpy 'symmetric', half-sample symmetric), "zero",
               "valid" (no padding, the blurred image shrinks by K-1).
  sampling     "stride": keep x[offset::s, offset::s] (DIV2KRK, DKP, KernelGAN);
               "bicubic": MATLAB-compatible bicubic imresize by 1/s (BlindDiff).
  offset       stride phase in [0, s); must be 0 for bicubic sampling.
  noise_sigma  std of additive white Gaussian noise in [0, 1] image units (5 grey levels = 5/255).
"""
from __future__ import annotations

import dataclasses
import math
import numbers

from kfsr.errors import KfsrInputError

PADDINGS = ("circular", "reflect", "zero", "valid")
SAMPLINGS = ("stride", "bicubic")


@dataclasses.dataclass(frozen=True)
class Degradation:
    """Frozen, hashable forward-model description; see the module docstring for the fields."""

    scale: int
    padding: str = "circular"
    sampling: str = "stride"
    offset: int = 0
    noise_sigma: float = 0.0

    def __post_init__(self):
        # Integers only: a float scale would silently change output shapes and the hash.
        if (isinstance(self.scale, bool) or not isinstance(self.scale, numbers.Integral)
                or self.scale < 1):
            raise KfsrInputError(f"Degradation.scale: must be an integer >= 1, got {self.scale!r}")
        if self.padding not in PADDINGS:
            raise KfsrInputError(
                f"Degradation.padding: unknown {self.padding!r}, expected one of {PADDINGS}")
        if self.sampling not in SAMPLINGS:
            raise KfsrInputError(
                f"Degradation.sampling: unknown {self.sampling!r}, expected one of {SAMPLINGS}")
        if (isinstance(self.offset, bool) or not isinstance(self.offset, numbers.Integral)
                or not 0 <= self.offset < self.scale):
            raise KfsrInputError(
                f"Degradation.offset: must be an integer in [0, {self.scale}), got {self.offset!r}")
        if self.sampling == "bicubic" and self.offset != 0:
            raise KfsrInputError("Degradation.offset: must be 0 with sampling='bicubic'")
        if (isinstance(self.noise_sigma, bool) or not isinstance(self.noise_sigma, numbers.Real)
                or not math.isfinite(self.noise_sigma) or self.noise_sigma < 0):
            raise KfsrInputError(
                f"Degradation.noise_sigma: must be a finite number >= 0, got {self.noise_sigma!r}")
        # Normalise numpy scalars to Python types so equal specs hash equal.
        object.__setattr__(self, "scale", int(self.scale))
        object.__setattr__(self, "offset", int(self.offset))
        object.__setattr__(self, "noise_sigma", float(self.noise_sigma))

    @classmethod
    def div2krk(cls, scale: int, noise_sigma: float = 0.0) -> "Degradation":
        """DIV2KRK synthesis: scipy.ndimage reflect padding, stride sampling at offset 0."""
        return cls(scale=scale, padding="reflect", sampling="stride", offset=0,
                   noise_sigma=noise_sigma)

    @classmethod
    def dkp(cls, scale: int, noise_sigma: float = 0.0) -> "Degradation":
        """DKP's official forward model: circular padding, stride sampling at offset 0."""
        return cls(scale=scale, padding="circular", sampling="stride", offset=0,
                   noise_sigma=noise_sigma)

    @classmethod
    def blinddiff(cls, scale: int, noise_sigma: float = 0.0) -> "Degradation":
        """BlindDiff: reflect-padded blur, then MATLAB bicubic downsampling by 1/scale."""
        return cls(scale=scale, padding="reflect", sampling="bicubic", offset=0,
                   noise_sigma=noise_sigma)
