"""SSR's multi-modal conditioning: encoders of different sizes and Adaptive Multi-modal Fusion.

SSR (Lin et al., ECCV 2024; no public code) conditions a diffusion model on three modalities: the LR
image, a depth map and a spatially variant kernel field. This follows the reconstruction in
shared/reference/methods/blinddiff_ssr.md §2.5 ("report"):

  * LR image, the primary modality, gets the LARGEST encoder: a "half UNet" (`LREncoder`) with the
    paper's Input Block (conv + residual blocks per level, stride-2 downsampling) and Middle Block;
    its Feature Translate Block (FTB) is the zero-initialisable projection that injects the fused
    features into the denoiser (`kfsr.nets.ssr_unet`). Input: the LR image bicubic-upsampled to
    the denoiser's resolution (pixel space here, where SSR encodes with SD's VAE: see below).
  * depth map and kernel field get SMALL encoders (`AuxEncoder`): one conv per level at a small
    width. The kernel field enters as its per-pixel PCA code map (MANet's representation, report
    §2.4; `kfsr.degrade.spatial.project_onto_basis`); both maps are at LR resolution and are
    nearest-upsampled to the denoiser's resolution first (MANet's "upscale layer").
  * AMF (paper Eq. 3, stripped in the text; the prose: "BN, two MLPs gamma and beta (hidden 128,
    ReLU); gamma rescales along the channels, beta applies an offset"), per level l:

        z_l   = concat(F_K,l, F_D,l)                      (F_D absent without depth)
        F~_l  = (1 + gamma_l(z_l)) * Norm(F_LR,l) + beta_l(z_l)
        gamma_l, beta_l: per-pixel MLPs  Dense(hidden) -> ReLU -> Dense(C_l)   (1x1 convs)

    Per-pixel MLPs keep the spatial variation of the kernel field (a pooled MLP would discard it,
    report §2.5 [I]). The last Dense of gamma and beta is zero-initialised, so at initialisation
    F~ = Norm(F_LR) and the auxiliary modalities have no effect (the "1 +" is that
    reparameterisation of the paper's gamma). Norm: "batch" (batch statistics over (B, H, W),
    no running averages and no affine: gamma/beta are the affine; at batch 1 this is instance
    normalisation), "group" (GroupNorm without affine) or "none".

Deviations from SSR, with reasons (also in configs/ssr.py):
  * pixel space, no VAE and no pretrained Stable Diffusion: no weights are available offline and
    a CPU cannot train a latent model; the encoders work on the (upsampled) LR image directly;
  * no attention layers in the denoiser and encoders (SD's cross/self attention): the tiny
    models are trained from scratch and attention is not what AMF is about;
  * Eq. 5's feature constraints sum_i lambda_i C(f_i) are unspecified: not implemented
    (lambda = 0).

Shapes (NHWC, float32): F_LR,l (B, H_l, W_l, C_l); F_K,l / F_D,l (B, H_l, W_l, C_aux) -> F~_l
(B, H_l, W_l, C_l), with H_l = H / 2^l for levels l = 0 .. L-1 and the middle block at level L-1.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfsr.nets.patch_denoiser import Conv3

NORMS = ("batch", "group", "none")
_ZERO = nn.initializers.zeros


def groups_for(channels: int, max_groups: int) -> int:
    """Largest divisor of `channels` that is <= max_groups (GroupNorm's group count)."""
    g = max(1, min(int(max_groups), int(channels)))
    while channels % g:
        g -= 1
    return g


class Down(nn.Module):
    """3x3 stride-2 conv (zero padding 1): (B, H, W, C) -> (B, H/2, W/2, features)."""

    features: int

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return nn.Conv(self.features, (3, 3), (2, 2), padding="VALID", name="conv")(x)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3 [+ Dense(time emb)] -> GroupNorm -> SiLU -> conv3, plus a skip
    (1x1 conv when the width changes). `emb` (B, E) is optional (encoders have none)."""

    features: int
    groups: int = 32

    @nn.compact
    def __call__(self, x, emb=None):
        c_in = x.shape[-1]
        h = nn.GroupNorm(groups_for(c_in, self.groups), name="norm1")(x)
        h = Conv3(self.features, name="conv1")(nn.silu(h))
        if emb is not None:
            h = h + nn.Dense(self.features, name="emb")(nn.silu(emb))[:, None, None, :]
        h = nn.GroupNorm(groups_for(self.features, self.groups), name="norm2")(h)
        h = Conv3(self.features, name="conv2")(nn.silu(h))
        skip = x if c_in == self.features else nn.Dense(self.features, name="skip")(x)
        return skip + h


class LREncoder(nn.Module):
    """The LR image's "half UNet" (Input Block + Middle Block): features at every level.

    x (B, H, W, C) -> [F_0 .. F_{L-1}, F_mid], F_l (B, H/2^l, W/2^l, ch * mult[l]),
    F_mid at level L-1. H, W must be multiples of 2^(L-1).
    """

    ch: int = 32
    mult: Sequence[int] = (1, 2)
    n_res: int = 1
    groups: int = 32

    @nn.compact
    def __call__(self, x):
        h = Conv3(self.ch * self.mult[0], name="conv_in")(x)
        feats = []
        for lvl, m in enumerate(self.mult):
            if lvl > 0:
                h = Down(self.ch * m, name=f"down{lvl}")(h)
            for r in range(self.n_res):
                h = ResBlock(self.ch * m, self.groups, name=f"ib{lvl}_{r}")(h)
            feats.append(h)
        feats.append(ResBlock(self.ch * self.mult[-1], self.groups, name="mb")(h))
        return feats


class AuxEncoder(nn.Module):
    """A small encoder for a per-pixel map (depth, or PCA kernel codes): one 3x3 conv + SiLU per
    level (stride 2 between levels) at a fixed small width.

    m (B, h, w, C_in) at LR resolution -> nearest-upsampled by `upsample` to (B, H, W, C_in) ->
    [G_0 .. G_{L-1}, G_mid], G_l (B, H/2^l, W/2^l, width), G_mid = G_{L-1}.
    """

    width: int = 16
    levels: int = 2
    upsample: int = 1

    @nn.compact
    def __call__(self, m):
        s = self.upsample
        if s > 1:
            m = jnp.repeat(jnp.repeat(m, s, axis=1), s, axis=2)
        h = nn.silu(Conv3(self.width, name="conv0")(m))
        feats = [h]
        for lvl in range(1, self.levels):
            h = nn.silu(Down(self.width, name=f"down{lvl}")(h))
            feats.append(h)
        return feats + [feats[-1]]


def normalise(x, norm: str, groups: int = 32, eps: float = 1e-5):
    """Affine-free normalisation of (B, H, W, C) features: 'batch' (mean / variance over
    (B, H, W) per channel, batch statistics), 'group' (GroupNorm statistics), or 'none'."""
    if norm == "none":
        return x
    if norm == "batch":
        mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps)
    if norm == "group":
        b, h, w, c = x.shape
        g = groups_for(c, groups)
        xg = x.reshape(b, h, w, g, c // g)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        return ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(b, h, w, c)
    raise ValueError(f"AMF norm: one of {NORMS}, got {norm!r}")


class AMF(nn.Module):
    """Adaptive multi-modal fusion of one level (module docstring):
    (1 + gamma(z)) * Norm(f_lr) + beta(z), z = concat(aux), gamma / beta per-pixel MLPs with a
    zero-initialised output layer.
    f_lr (B, H, W, C), aux: sequence of (B, H, W, C_i) -> (B, H, W, C).
    """

    hidden: int = 128
    norm: str = "batch"
    groups: int = 32

    @nn.compact
    def __call__(self, f_lr, aux: Sequence[jax.Array]):
        c = f_lr.shape[-1]
        z = jnp.concatenate(list(aux), axis=-1)

        def mlp(name):
            h = nn.relu(nn.Dense(self.hidden, name=f"{name}_fc1")(z))
            return nn.Dense(c, kernel_init=_ZERO, name=f"{name}_fc2")(h)

        return (1.0 + mlp("gamma")) * normalise(f_lr, self.norm, self.groups) + mlp("beta")


__all__ = ["AMF", "LREncoder", "AuxEncoder", "ResBlock", "Down", "normalise", "groups_for",
           "NORMS"]
