"""SSR's AMF-conditioned denoiser: a pixel-space UNet guided by LR, depth and kernel features.

The conditioning follows a ControlNet / StableSR-style adapter (blinddiff_ssr.md §2.5 [R]): the LR
half-UNet, the depth and kernel encoders and the AMF of `kfsr.nets.amf` produce a fused feature
map per UNet level, which the Feature Translate Block (FTB, a 1x1 conv per level) injects into the
denoiser after the level's residual blocks:

    c_l = AMF_l(F_LR,l, [F_K,l, F_D,l])                           (kfsr.nets.amf)
    "add": h_l <- h_l + FTB_l(c_l)
    "sft": h_l <- h_l * (1 + FTB^a_l(c_l)) + FTB^b_l(c_l)
with the FTB optionally zero-initialised (`zero_init`: the denoiser is then exactly unconditioned
at step 0, the adapter convention for a pretrained backbone; off for from-scratch training).

Denoiser (DDPM-style UNet, no attention; module docstring of kfsr.nets.amf for the deviations):

    emb  = MLP(sinusoid(t, ch)) -> 4 ch                      (Dense, SiLU, Dense)
    h    = conv3(x_t);  skips = [h]
    level l = 0 .. L-1 (width ch * mult[l]): [Down if l > 0, appended to skips];
             n_res x ResBlock(h, emb) (each appended), the last one followed by the injection
    mid  : ResBlock, injection of the middle-block features, ResBlock
    up   : level l = L-1 .. 0: (n_res + 1) x ResBlock(concat(h, skips.pop()), emb);
           nearest x2 + conv3 if l > 0
    out  = conv3(SiLU(GroupNorm(h))) -> out_channels         (eps or v, the config's choice)

Shapes: x_t (B, H, W, C) in the diffusion's [-1, 1] units; t (B,) int timesteps (original chain
indices); lr (B, h, w, 3) in [-1, 1] with H = scale * h; codes (B, h, w, L) PCA kernel codes;
depth (B, h, w, 1) in [0, 1] (ignored when `use_depth` is False) -> (B, H, W, out_channels).
H and W must be multiples of 2^(L-1) (`hr_multiple`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfsr.nets.amf import AMF, AuxEncoder, Down, LREncoder, ResBlock, groups_for
from kfsr.nets.mcformer import bicubic_upsample
from kfsr.nets.patch_denoiser import Conv3, sinusoidal_embedding

INJECTIONS = ("add", "sft")


class Up(nn.Module):
    """Nearest x2 upsampling + 3x3 conv."""

    features: int

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return Conv3(self.features, name="conv")(x)


class SSRDenoiser(nn.Module):
    """AMF-conditioned pixel-space denoiser (module docstring).

    Attributes:
      ch, mult, n_res: UNet width, per-level multipliers, residual blocks per level.
      enc_n_res: residual blocks per level of the LR half-UNet (the largest encoder).
      kernel_width, depth_width: widths of the small kernel-code and depth encoders.
      amf_hidden, amf_norm: AMF MLP hidden width (paper 128) and normalisation ("batch" paper).
      injection: "add" | "sft" (how the FTB injects the fused features).
      zero_init: zero-initialise the FTB projections.
      use_depth: False drops the depth encoder (AMF then fuses the kernel features only).
      scale: SR factor (the LR image and the maps are upsampled by it).
      groups: GroupNorm groups (at most; 32 as DDPM / SD).
      out_channels: None -> as many as x_t.
    """

    ch: int = 32
    mult: Sequence[int] = (1, 2)
    n_res: int = 1
    enc_n_res: int = 1
    kernel_width: int = 16
    depth_width: int = 8
    amf_hidden: int = 128
    amf_norm: str = "batch"
    injection: str = "add"
    zero_init: bool = True
    use_depth: bool = True
    scale: int = 4
    groups: int = 32
    out_channels: int | None = None

    @nn.compact
    def __call__(self, x_t, t, lr, codes, depth=None):
        if x_t.ndim != 4 or lr.ndim != 4 or codes.ndim != 4:
            raise ValueError(f"SSRDenoiser: x_t, lr, codes must be (B, H, W, C); got {x_t.shape}, "
                             f"{lr.shape}, {codes.shape}")
        s, n_lvl = self.scale, len(self.mult)
        b, hh, ww, c = x_t.shape
        if (lr.shape[1] * s, lr.shape[2] * s) != (hh, ww) or codes.shape[:3] != lr.shape[:3]:
            raise ValueError(f"SSRDenoiser: x_t {x_t.shape} must be scale {s} x lr {lr.shape}; "
                             f"codes {codes.shape} on lr's grid")
        m = 2 ** (n_lvl - 1)
        if hh % m or ww % m:
            raise ValueError(f"SSRDenoiser: H, W must be multiples of {m}, got {(hh, ww)}")
        if self.injection not in INJECTIONS:
            raise ValueError(f"SSRDenoiser.injection: one of {INJECTIONS}, got {self.injection!r}")

        # -- conditioning: encoders of different sizes + AMF per level (+ the middle block)
        f_lr = LREncoder(self.ch, tuple(self.mult), self.enc_n_res, self.groups,
                         name="lr_encoder")(bicubic_upsample(lr.astype(x_t.dtype), s))
        f_k = AuxEncoder(self.kernel_width, n_lvl, s, name="kernel_encoder")(
            codes.astype(x_t.dtype))
        aux = [f_k]
        if self.use_depth:
            if depth is None:
                raise ValueError("SSRDenoiser: use_depth=True needs depth (B, h, w, 1)")
            if depth.ndim == 3:
                depth = depth[..., None]
            aux.append(AuxEncoder(self.depth_width, n_lvl, s, name="depth_encoder")(
                depth.astype(x_t.dtype)))
        cond = [AMF(self.amf_hidden, self.amf_norm, self.groups, name=f"amf{i}")(
            f_lr[i], [a[i] for a in aux]) for i in range(n_lvl + 1)]

        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()

        def inject(h, c_l, name):
            width = h.shape[-1]
            if self.injection == "add":
                return h + nn.Dense(width, kernel_init=init, name=f"{name}_ftb")(c_l)
            a = nn.Dense(width, kernel_init=init, name=f"{name}_ftb_scale")(c_l)
            bb = nn.Dense(width, kernel_init=init, name=f"{name}_ftb_shift")(c_l)
            return h * (1.0 + a) + bb

        # -- denoiser
        tb = jnp.broadcast_to(jnp.asarray(t).reshape(-1), (b,))
        emb = nn.Dense(4 * self.ch, name="time_fc1")(sinusoidal_embedding(tb, self.ch))
        emb = nn.Dense(4 * self.ch, name="time_fc2")(nn.silu(emb))
        h = Conv3(self.ch * self.mult[0], name="conv_in")(x_t)
        skips = [h]
        for lvl, mu in enumerate(self.mult):
            if lvl > 0:
                h = Down(self.ch * mu, name=f"down{lvl}")(h)
                skips.append(h)
            for r in range(self.n_res):
                h = ResBlock(self.ch * mu, self.groups, name=f"enc{lvl}_{r}")(h, emb)
                if r == self.n_res - 1:
                    h = inject(h, cond[lvl], f"inj{lvl}")
                skips.append(h)
        h = ResBlock(h.shape[-1], self.groups, name="mid1")(h, emb)
        h = inject(h, cond[n_lvl], "inj_mid")
        h = ResBlock(h.shape[-1], self.groups, name="mid2")(h, emb)
        for lvl in reversed(range(n_lvl)):
            mu = self.mult[lvl]
            for r in range(self.n_res + 1):
                h = ResBlock(self.ch * mu, self.groups, name=f"dec{lvl}_{r}")(
                    jnp.concatenate([h, skips.pop()], axis=-1), emb)
            if lvl > 0:
                h = Up(self.ch * mu, name=f"up{lvl}")(h)
        h = nn.silu(nn.GroupNorm(groups_for(h.shape[-1], self.groups), name="norm_out")(h))
        return Conv3(self.out_channels or c, name="conv_out")(h)


def hr_multiple(mult: Sequence[int]) -> int:
    """HR sizes must be multiples of 2^(levels-1)."""
    return 2 ** (len(mult) - 1)


def param_shapes(net: SSRDenoiser, lr_size: int = 8, codes: int = 10, batch: int = 1):
    """`jax.eval_shape` of `net.init` on an (lr_size x lr_size) LR grid: the parameter tree as
    ShapeDtypeStructs (nothing allocated; use for parameter counts of full-size configs)."""
    s = net.scale
    hr = lr_size * s
    args = (jax.ShapeDtypeStruct((batch, hr, hr, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.int32),
            jax.ShapeDtypeStruct((batch, lr_size, lr_size, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch, lr_size, lr_size, codes), jnp.float32),
            jax.ShapeDtypeStruct((batch, lr_size, lr_size, 1), jnp.float32))
    return jax.eval_shape(lambda *a: net.init(jax.random.key(0), *a), *args)


__all__ = ["SSRDenoiser", "Up", "hr_multiple", "param_shapes", "INJECTIONS"]
