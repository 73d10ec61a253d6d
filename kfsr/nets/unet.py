"""KernelFusion's refinement U-Net (Phase 2, applied twice per step).

Source: shared/reference/methods/kernelfusion.md §2.2, §2.4, §8.1. The paper's method figure [V]
shows a trainable, randomly initialised "U-Net" applied to the HR estimate before re-noising and
again after the frozen Patch Denoiser; the architecture is not in any recovered source. The
reimplementation's ("Appendix A1.2", unverified [R]) is a DIP-style U-Net with 4 down/up levels,
32 -> 512 channels, skip connections, BatchNorm, ReLU and a tanh output.

This module (NHWC, any H, W):

    level l = 0 .. L:   c_l = min(base * 2^l, max_channels)      (base 32, L 4 -> 32 ... 512)
    encoder: e_0 = ConvBlock(x, c_0);  e_l = ConvBlock(avgpool2(e_{l-1}), c_l)
    decoder: d_L = e_L;  d_l = ConvBlock(concat[upsample2(d_{l+1}), e_l], c_l)
    ConvBlock = (conv3x3 -> [norm] -> act) x 2
    head    = conv1x1(d_0 -> C)

Output form (`output`), all with a zero-initialised head for the first two:
  * "bounded" (default, [I]): y = tanh(artanh(clip(x, -1 + 1e-3, 1 - 1e-3)) + head): a residual
    in tanh pre-activation space. At initialisation y = x up to the 1e-3 clip (identity on
    [-0.999, 0.999]), and y always stays in (-1, 1), the image range. Phase 2 starts from the
    MATLAB bicubic upscale; an identity-at-init U-Net keeps passes #1 and #2 from destroying
    that start (a randomly initialised absolute-output U-Net would replace it by a random image
    for the first hundreds of steps), and the bound stops the U-Net from buying LR consistency
    with out-of-range pixels (measured with "residual": the unclipped HR explained the LR image
    2-6 dB better than the clipped [0, 1] output).
  * "residual": y = x + res_scale * tanh(head): EXACTLY the identity at initialisation,
    correction bounded by res_scale (2 = the width of [-1, 1]) but the output is not.
  * "tanh" ([R]): y = tanh(head), an absolute image in (-1, 1), as the reimplementation.
Norm: "none" (default; BatchNorm at batch 1 behaves like instance norm, kernelfusion.md §8.1
item 6) or "group" (GroupNorm, up to 8 groups).

Inputs whose H or W is not a multiple of 2^levels are reflect-padded up to one and cropped back.
Shapes: x (B, H, W, C) -> (B, H, W, out_channels or C).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfsr.nets.patch_denoiser import Conv3

OUTPUTS = ("bounded", "residual", "tanh")
_EPS = 1e-3  # "bounded": inputs clipped to [-1 + eps, 1 - eps] before artanh
NORMS = ("none", "group")


def level_channels(base: int, levels: int, max_channels: int) -> Sequence[int]:
    """Channels per resolution level 0..levels: min(base * 2^l, max_channels)."""
    return tuple(min(base * 2 ** l, max_channels) for l in range(levels + 1))


class ConvBlock(nn.Module):
    features: int
    norm: str = "none"

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = Conv3(self.features, name=f"conv{i}")(x)
            if self.norm == "group":
                x = nn.GroupNorm(num_groups=min(8, self.features), name=f"norm{i}")(x)
            x = nn.leaky_relu(x, 0.2)
        return x


def _up2(x):
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")


class UNet(nn.Module):
    """Refinement U-Net. Attributes: levels (number of 2x down-samplings), base (channels at full
    resolution), max_channels, output ('bounded' | 'residual' | 'tanh'), res_scale, norm ('none' | 'group'),
    out_channels (None -> input channels)."""

    levels: int = 4
    base: int = 32
    max_channels: int = 512
    output: str = "bounded"
    res_scale: float = 2.0
    norm: str = "none"
    out_channels: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"UNet: x must be (B, H, W, C), got shape {x.shape}")
        if self.output not in OUTPUTS or self.norm not in NORMS:
            raise ValueError(f"UNet: output must be one of {OUTPUTS}, norm one of {NORMS}")
        b, h, w, c = x.shape
        m = 2 ** self.levels
        ph, pw = (-h) % m, (-w) % m
        xin = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="symmetric") if ph or pw else x
        chans = level_channels(self.base, self.levels, self.max_channels)
        skips = []
        e = xin
        for l, ch in enumerate(chans):
            if l > 0:
                e = nn.avg_pool(e, (2, 2), strides=(2, 2))
            e = ConvBlock(ch, self.norm, name=f"enc{l}")(e)
            skips.append(e)
        d = skips[-1]
        for l in range(self.levels - 1, -1, -1):
            d = jnp.concatenate([_up2(d), skips[l]], axis=-1)
            d = ConvBlock(chans[l], self.norm, name=f"dec{l}")(d)
        out_c = self.out_channels or c
        if self.output in ("bounded", "residual"):
            head = nn.Conv(out_c, (1, 1), kernel_init=nn.initializers.zeros, name="head")(d)
            base = xin[..., :out_c]
            if self.output == "bounded":
                y = jnp.tanh(jnp.arctanh(jnp.clip(base, -1.0 + _EPS, 1.0 - _EPS)) + head)
            else:
                y = base + self.res_scale * jnp.tanh(head)
        else:
            y = jnp.tanh(nn.Conv(out_c, (1, 1), name="head")(d))
        return y[:, :h, :w]
