"""DKENet: SSR's Depth-Informed Kernel Estimation Network (Linen, NHWC).

SSR (Lin et al., ECCV 2024) has no public code; this follows the reconstruction in
shared/reference/methods/blinddiff_ssr.md §2.3 ("report"), which is MANet's estimator
(Liang et al., ICCV 2021; report §3.2) with each MABlock replaced by a depth-aware block and a
parallel depth branch merged by SFT layers:

  LR branch (y: (B, h, w, 3), depth d: (B, h, w, 1), both at LR resolution)
    f1 = Conv3x3(y -> nf)
    a  = DABlock(f1, g1)
    x2 = Conv2x2/2(a -> 2nf)                        # downsample
    b  = DABlock(x2, g2)                            # at h/2
    c  = DABlock(ConvT2x2/2(b + x2 -> nf), g3)      # upsample; MANet's skips
    f  = SFT(c + f1, g_final)                       # the depth branch "converges" here
    K  = softmax_{K*K}(Conv3x3(f -> K*K))           # (B, h, w, K, K), each pixel's kernel sums to 1
    K_HR = nearest_upsample_s(K)                    # the "upscale layer" (output="hr")
  depth branch ("a similar feature-extraction process", width nf_depth):
    e1 = Conv3x3(d -> nfd);  g1 = MABlock(e1);  e2 = Conv2x2/2(g1 -> 2nfd);  g2 = MABlock(e2)
    g3 = MABlock(ConvT2x2/2(g2 + e2 -> nfd));  g_final = g3 + e1
  DABlock(x, g) = x + MAConv(ReLU(MAConv(SFT(x, g))))        (MAConv split 2 = "channel split")
  SFT(x, g)     = x * sigmoid(Conv3x3(LReLU_0.2(Conv3x3([x, g] -> 32)) -> C))
                    + Conv3x3(LReLU_0.2(Conv3x3([x, g] -> 32)) -> C)       (IKC/SFTMD's SFT layer)
  MAConv(x), split S = 2, reduction r = 2: split channels into x_1, x_2; for each i
    [s_i, t_i] = Conv1x1(ReLU(Conv1x1(x_{-i} -> (C - C_i) / r)) -> 2 C_i)
    y_i = Conv3x3(x_i * sigmoid(s_i) + t_i);   output concat(y_1, y_2)
  MABlock(x) = x + MAConv(ReLU(MAConv(x)))

With `use_depth=False` the network is exactly MANet's estimator (no SFT, no depth branch), whose
official parameter count is 1,810,361 at nf = 128, K = 21 (report §3.2, §4.0); the tests check it
by `jax.eval_shape`, which pins down the shared layers. The report gives no DKENet count; the full
config here (nf = 128, nf_depth = 64, K = 21, SFT hidden 32) has 3,059,705 parameters, derived
layer by layer and checked by eval_shape in tests/test_dkenet.py: MANet's 1,810,361
+ four SFT layers 923,136 (three at C = 128 with 64 depth channels, 184,640 each: 3x3 convs
192->32, 32->128 for the scale and again for the shift; one on the 256-channel level with 128 depth
channels, 369,216)
+ the depth branch 326,208 (head 1->64 640, MABlock(64) 43,456 twice, 2x2 down 64->128 32,896,
MABlock(128) 172,928, 2x2 transposed up 128->64 32,832).
nf_depth = nf / 2 is a choice (the report's tiny config uses 16 / 8); everything else follows the
report. The tiny config (`tiny_config`: nf 16, nf_depth 8, SFT hidden 16, K 11) has 101,985.

Inputs are replicate-padded at the bottom/right to a multiple of `pad_multiple` (MANet: 8) and the
output is cropped back. Initialisation mimics PyTorch's defaults (kfsr/nets/mcformer.py); convs
are explicit zero padding + VALID (faster weight gradients on XLA:CPU).

Shapes: `DKENet(...).apply(params, lr, depth)` with lr (B, h, w, C_in) in [0, 1], depth (B, h, w, 1)
in [0, 1] (kfsr.depth convention; ignored and optional when use_depth=False) -> kernels
(B, h, w, K, K) (output="lr") or (B, s h, s w, K, K) (output="hr"), row-major K x K, applied by
cross-correlation as all kfsr kernels (`kfsr.degrade.spatial.degrade_spatial` accepts both).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # torch's default


class Conv(nn.Module):
    """Conv with PyTorch-style init; odd kernels zero-padded to 'same', stride as given."""

    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        p = self.kernel // 2 if self.stride == 1 else 0
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        return nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                       padding="VALID", kernel_init=_INIT)(x)


class ConvT2(nn.Module):
    """2x2 stride-2 transposed conv (PyTorch ConvTranspose2d(k=2, s=2)): non-overlapping, so one
    1x1 conv to 4*features followed by a depth-to-space."""

    features: int

    @nn.compact
    def __call__(self, x):
        b, h, w, _ = x.shape
        y = nn.Dense(4 * self.features, use_bias=False, kernel_init=_INIT)(x)  # (B, h, w, 4F)
        y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return y.reshape(b, 2 * h, 2 * w, self.features) + bias


class MAConv(nn.Module):
    """Mutual affine convolution (MANet): each channel split is modulated by the other splits."""

    features: int
    kernel: int = 3
    split: int = 2
    reduction: int = 2

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        in_splits, out_splits = [], []
        for i in range(self.split):
            if i < self.split - 1:
                in_splits.append(round(c_in / self.split))
                out_splits.append(round(self.features / self.split))
            else:
                in_splits.append(c_in - sum(in_splits))
                out_splits.append(self.features - sum(out_splits))
        edges = [0]
        for n in in_splits:
            edges.append(edges[-1] + n)
        parts = [x[..., edges[i]:edges[i + 1]] for i in range(self.split)]
        outs = []
        for i in range(self.split):
            rest = jnp.concatenate(parts[:i] + parts[i + 1:], axis=-1)
            hidden = int((c_in - in_splits[i]) // self.reduction)
            st = nn.Dense(hidden, kernel_init=_INIT, name=f"fc{i}_0")(rest)
            st = nn.Dense(2 * in_splits[i], kernel_init=_INIT, name=f"fc{i}_1")(nn.relu(st))
            scale, shift = st[..., :in_splits[i]], st[..., in_splits[i]:]
            outs.append(Conv(out_splits[i], self.kernel, name=f"conv{i}")(
                parts[i] * jax.nn.sigmoid(scale) + shift))
        return jnp.concatenate(outs, axis=-1)


class MABlock(nn.Module):
    """x + MAConv(ReLU(MAConv(x)))."""

    split: int = 2
    reduction: int = 2

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = MAConv(c, split=self.split, reduction=self.reduction)(x)
        y = MAConv(c, split=self.split, reduction=self.reduction)(nn.relu(y))
        return x + y


class SFT(nn.Module):
    """Spatial feature transform (IKC / SFTMD): x * sigmoid(mul(x, g)) + add(x, g)."""

    hidden: int = 32

    @nn.compact
    def __call__(self, x, g):
        c = x.shape[-1]
        cat = jnp.concatenate([x, g], axis=-1)
        mul = Conv(c, 3, name="mul_conv2")(
            nn.leaky_relu(Conv(self.hidden, 3, name="mul_conv1")(cat), 0.2))
        add = Conv(c, 3, name="add_conv2")(
            nn.leaky_relu(Conv(self.hidden, 3, name="add_conv1")(cat), 0.2))
        return x * jax.nn.sigmoid(mul) + add


class DABlock(nn.Module):
    """Depth-aware block: x + MAConv(ReLU(MAConv(SFT(x, g)))); a MABlock when g is None."""

    sft_hidden: int = 32
    split: int = 2
    reduction: int = 2

    @nn.compact
    def __call__(self, x, g=None):
        c = x.shape[-1]
        y = x if g is None else SFT(self.sft_hidden)(x, g)
        y = MAConv(c, split=self.split, reduction=self.reduction)(y)
        y = MAConv(c, split=self.split, reduction=self.reduction)(nn.relu(y))
        return x + y


class DepthBranch(nn.Module):
    """Depth features at the LR branch's three levels and for the final SFT."""

    nf: int = 64
    split: int = 2
    reduction: int = 2

    @nn.compact
    def __call__(self, d):
        e1 = Conv(self.nf, 3)(d)
        g1 = MABlock(self.split, self.reduction)(e1)
        e2 = Conv(2 * self.nf, 2, stride=2)(g1)
        g2 = MABlock(self.split, self.reduction)(e2)
        g3 = MABlock(self.split, self.reduction)(ConvT2(self.nf)(g2 + e2))
        return g1, g2, g3, g3 + e1


class DKENet(nn.Module):
    """Depth-informed spatially variant kernel estimator (module docstring for the layout).

    Attributes:
      kernel_size: K (21 at x4 in MANet / the report's full config).
      nf: LR-branch width (128 full; 2 nf at half resolution).
      nf_depth: depth-branch width (64 full, a choice; see the module docstring).
      sft_hidden: SFT hidden width (32, IKC).
      scale: SR factor s, used by output="hr".
      output: "lr" -> (B, h, w, K, K); "hr" -> nearest-upscaled (B, s h, s w, K, K).
      use_depth: False gives MANet's estimator exactly (depth ignored).
      split, reduction: MAConv split count and reduction (2, 2).
      pad_multiple: replicate-pad inputs to a multiple of this (MANet: 8), crop back.
    """

    kernel_size: int = 21
    nf: int = 128
    nf_depth: int = 64
    sft_hidden: int = 32
    scale: int = 4
    output: str = "lr"
    use_depth: bool = True
    split: int = 2
    reduction: int = 2
    pad_multiple: int = 8

    @nn.compact
    def __call__(self, lr, depth=None):
        if lr.ndim != 4:
            raise ValueError(f"DKENet: lr must be (B, h, w, C), got {lr.shape}")
        b, h, w, _ = lr.shape
        if self.use_depth:
            if depth is None:
                raise ValueError("DKENet: use_depth=True needs a depth map (B, h, w, 1)")
            if depth.ndim == 3:
                depth = depth[..., None]
            if depth.shape[:3] != (b, h, w):
                raise ValueError(f"DKENet: depth {depth.shape} must be (B, h, w, 1) with lr's "
                                 f"(B, h, w) = {(b, h, w)}")
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        pad = ((0, 0), (0, ph), (0, pw), (0, 0))
        x = jnp.pad(lr, pad, mode="edge")
        blk = dict(sft_hidden=self.sft_hidden, split=self.split, reduction=self.reduction)
        if self.use_depth:
            g1, g2, g3, gf = DepthBranch(self.nf_depth, self.split, self.reduction)(
                jnp.pad(depth.astype(x.dtype), pad, mode="edge"))
        else:
            g1 = g2 = g3 = gf = None
        f1 = Conv(self.nf, 3)(x)
        a = DABlock(**blk)(f1, g1)
        x2 = Conv(2 * self.nf, 2, stride=2)(a)
        bb = DABlock(**blk)(x2, g2)
        c = DABlock(**blk)(ConvT2(self.nf)(bb + x2), g3)
        f = c + f1
        if self.use_depth:
            f = SFT(self.sft_hidden)(f, gf)
        k2 = self.kernel_size ** 2
        logits = Conv(k2, 3)(f)[:, :h, :w]
        k = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        k = k.reshape(b, h, w, self.kernel_size, self.kernel_size)
        if self.output == "hr":
            k = jnp.repeat(jnp.repeat(k, self.scale, axis=1), self.scale, axis=2)
        elif self.output != "lr":
            raise ValueError(f"DKENet.output: use 'lr' or 'hr', got {self.output!r}")
        return k


def full_config(**overrides) -> dict:
    """Keyword arguments of the full-size DKENet (report §4.2: nf 128, K 21, x4)."""
    cfg = dict(kernel_size=21, nf=128, nf_depth=64, sft_hidden=32, scale=4)
    cfg.update(overrides)
    return cfg


def tiny_config(**overrides) -> dict:
    """A CPU-sized DKENet (report §4.2 item 3: nf 16, depth nf 8; K 11 at x2 here)."""
    cfg = dict(kernel_size=11, nf=16, nf_depth=8, sft_hidden=16, scale=2)
    cfg.update(overrides)
    return cfg


def init_params(module: nn.Module, key, *inputs):
    """Parameters of `module` for example `inputs`, drawn like `module.init` would (PyTorch-style
    U(+-1/sqrt(fan_in)) kernels, zero biases) but from ONE `jax.random.uniform` call.

    `module.init` draws every kernel with its own threefry call; with the ~100 small layers of
    DKENet that compiles for minutes on XLA:CPU (measured: 151 s for the tiny config on a loaded
    2-core machine). Shapes come from `jax.eval_shape`, so nothing large is traced.
    """
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [math.prod(leaf.shape) for _, leaf in leaves]
    # Sliced on the host: ~200 eager device slices would each compile their own program.
    u = np.asarray(jax.random.uniform(key, (max(sum(sizes), 1),), jnp.float32, -1.0, 1.0))
    out, off = [], 0
    for (path, leaf), n in zip(leaves, sizes):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            val = u[off:off + n].reshape(leaf.shape) / np.float32(math.sqrt(fan_in))
        else:  # biases (and ConvT2's separate bias) start at zero
            val = np.zeros(leaf.shape)
        out.append(jnp.asarray(val, leaf.dtype))
        off += n
    return jax.tree_util.tree_unflatten(treedef, out)


def param_count(params) -> int:
    """Number of scalars in a parameter pytree (works on `jax.eval_shape` outputs)."""
    return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


__all__ = ["DKENet", "MAConv", "MABlock", "DABlock", "SFT", "DepthBranch", "full_config",
           "tiny_config", "init_params", "param_count"]
