"""RRDB-SFT: the non-blind SR network conditioned on per-pixel kernel codes (Linen, NHWC).

SSR's "lightweight, RRDB-based non-blind SR" R (blinddiff_ssr.md §2.4) reconstructed as MANet's
stage-2 network (ESRGAN's RRDB with an SFT layer at the start of every block):

    fea   = Conv3x3(lr -> nf)
    t     = fea
    repeat nb times:  t = RRDB_SFT(t, codes)
    fea   = fea + Conv3x3(t -> nf)                        # trunk conv + global residual
    sr    = PixelShuffle_s(Conv3x3(fea -> 3 s^2))         # PyTorch channel order

    RRDB_SFT(x, c) = x + 0.2 * RDB3(RDB2(RDB1(SFT(x, c))))
    RDB(x)         = x + 0.2 * conv5([x, x1, x2, x3, x4]),
                     x_i = LReLU_0.2(conv_i([x, x1 .. x_{i-1}]))
                     (5 3x3 convs, growth gc; conv5 back to nf)
    SFT(x, c)      = x * sigmoid(mul(x, c)) + add(x, c)   (kfsr.nets.dkenet.SFT, hidden 32)

`codes` (B, h, w, L) is the per-pixel kernel code map at LR resolution: MANet projects each
kernel of the field onto an uncentred 15-d PCA basis (`kfsr.degrade.spatial.fit_pca_basis(...,
center=False)` then `project_onto_basis`; report §2.4, §3.1). Full config (nf 64, nb 10, gc 32,
L 15, x4): 8,086,256 parameters, the report's number [N], checked by `jax.eval_shape` in
tests/test_rrdb.py:
  conv_first 1,792 + 10 x (SFT 82,560 + 3 RDBs x 239,808) + trunk conv 36,928 + up conv 27,696.
Tiny config (nf 32, nb 2, gc 16, L 10, x4): 469,520 (report: "about 0.48M").

Shapes: lr (B, h, w, 3) in [0, 1], codes (B, h, w, L) -> (B, s h, s w, 3) (not clipped).
Initialisation: PyTorch-like (`kfsr.nets.dkenet.init_params` draws it with one threefry call).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from kfsr.nets.dkenet import SFT, Conv
from kfsr.nets.mcformer import pixel_shuffle


class RDB(nn.Module):
    """Residual dense block: five 3x3 convs with dense connections, residual scale 0.2."""

    gc: int = 32

    @nn.compact
    def __call__(self, x):
        nf = x.shape[-1]
        feats = [x]
        for i in range(4):
            y = Conv(self.gc, 3, name=f"conv{i + 1}")(jnp.concatenate(feats, axis=-1))
            feats.append(nn.leaky_relu(y, 0.2))
        y = Conv(nf, 3, name="conv5")(jnp.concatenate(feats, axis=-1))
        return x + 0.2 * y


class RRDBSFT(nn.Module):
    """SFT(x, codes), three RDBs, outer residual scale 0.2."""

    gc: int = 32
    sft_hidden: int = 32

    @nn.compact
    def __call__(self, x, codes):
        y = SFT(self.sft_hidden)(x, codes)
        for _ in range(3):
            y = RDB(self.gc)(y)
        return x + 0.2 * y


class RRDBSFTNet(nn.Module):
    """Non-blind SR conditioned on a per-pixel kernel-code map (module docstring)."""

    nf: int = 64
    nb: int = 10
    gc: int = 32
    scale: int = 4
    out_channels: int = 3
    sft_hidden: int = 32

    @nn.compact
    def __call__(self, lr, codes):
        if lr.ndim != 4 or codes.ndim != 4 or codes.shape[:3] != lr.shape[:3]:
            raise ValueError(f"RRDBSFTNet: lr (B, h, w, C) and codes (B, h, w, L) must share "
                             f"(B, h, w); got {lr.shape} and {codes.shape}")
        fea = Conv(self.nf, 3, name="conv_first")(lr)
        t = fea
        for i in range(self.nb):
            t = RRDBSFT(self.gc, self.sft_hidden, name=f"block{i}")(t, codes.astype(t.dtype))
        fea = fea + Conv(self.nf, 3, name="trunk_conv")(t)
        up = Conv(self.out_channels * self.scale ** 2, 3, name="upconv")(fea)
        return pixel_shuffle(up, self.scale)


def full_config(**overrides) -> dict:
    """MANet stage-2 RRDB-SFT (report §2.4): nf 64, nb 10, gc 32, x4; codes of length 15."""
    cfg = dict(nf=64, nb=10, gc=32, scale=4)
    cfg.update(overrides)
    return cfg


def tiny_config(**overrides) -> dict:
    """Report §4.2 item 3: nf 32, nb 2, gc 16 (PCA-10 codes)."""
    cfg = dict(nf=32, nb=2, gc=16, scale=4)
    cfg.update(overrides)
    return cfg


__all__ = ["RRDBSFTNet", "RRDBSFT", "RDB", "full_config", "tiny_config"]
