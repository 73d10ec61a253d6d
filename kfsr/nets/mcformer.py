"""BlindDiff's MCFormer: a kernel estimator plus a kernel/time-modulated Restormer (Linen, NHWC).

Source: shared/reference/methods/blinddiff_ssr.md §1.5 ("report" below), which describes the
official code (lifengcs/BlindDiff, class `Restormer2` / `BlindDiff`); the paper's §3.3 text differs
in two places (report §1.8), and this module follows the CODE:
  * the kernel estimator has six 5x5 convs (the 4th with stride 2) and a full 441-way softmax,
    no PCA (paper: "four conv layers ... PCA"); the parameter count proves the code's version is
    the paper's model (26,509,267 = "26.51M"; tests/test_blinddiff.py checks it by eval_shape);
  * the refinement stage runs at 2*dim = 96 channels (paper: 48).

    y_up   = bicubic_upsample(y, scale)             PyTorch F.interpolate (a=-0.75, no antialias)
    inp    = concat(x_t, y_up)                      (B, H, W, 2C)
    k      = softmax(Dense(GAP(predictor(inp))))    (B, K*K) on the simplex; 6 convs 5x5 + LReLU
    c      = MLP_t(sinusoid(t)) + MLP_k(k)          (B, dim): one conditioning vector for all blocks
    x      = conv3x3(inp)                           patch embedding, dim channels
    L-level encoder/decoder of TransformerBlocks (MDTA + GDFN, LayerNorm modulated by c; L = 4
    in BlindDiff, fewer allowed for tiny test models), PixelUnshuffle/PixelShuffle between levels,
    skip concatenations, refinement blocks,
    out    = conv3x3(x) + concat(x_t, x_t)          (B, H, W, out_channels): (eps, v) halves

    TransformerBlock(x, c):  (a1, b1, a2, b2) = Dense_{4C}(Mish(c))
        x = x + MDTA(LN(x) * (1 + b1) + a1)
        x = x + GDFN(LN(x) * (1 + b2) + a2)

Shapes: x_t (B, H, W, C) with H, W multiples of 2^(L-1) (8 for L = 4); t (B,) the ORIGINAL
diffusion timestep (timestep_map applied, no rescaling); y (B, H/s, W/s, C) the LR image; all in
the diffusion's data range (the method maps [0, 1] images to it). `kernel` (B, K*K) or (B, K, K),
optional: replaces the estimate in the modulation (the "oracle" with a known kernel; with the
traced bool `use_kernel` only where it is true, so blind and oracle runs share one program). Returns
(out (B, H, W, out_channels), k (B, K*K)): out = eps (+ learned-variance channels v in [-1, 1]
when out_channels = 2C, ADM's LEARNED_RANGE), k the estimated kernel (or the given one), row-major
(K, K) flattening, applied by cross-correlation as every kfsr kernel.

Initialisation mimics PyTorch's defaults (weights U(+-1/sqrt(fan_in)), i.e. variance_scaling(1/3,
fan_in, uniform); biases zero instead of PyTorch's uniform), so a port trains like the original.
Convolutions are explicit padding + VALID (XLA:CPU computes their weight gradients 2-4x faster
than 'SAME', kfsr/nets/patch_denoiser.py). PixelUnshuffle/PixelShuffle use PyTorch's channel order
c*r^2 + i*r + j, so official weights port by transposing conv kernels OIHW -> HWIO.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfsr.nets.patch_denoiser import sinusoidal_embedding

_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # torch's default


def mish(x):
    """Mish(x) = x * tanh(softplus(x)) (torch.nn.Mish)."""
    return x * jnp.tanh(jax.nn.softplus(x))


# --------------------------------------------------------------------------------------------
# resampling helpers
# --------------------------------------------------------------------------------------------
def pixel_unshuffle(x, r: int = 2):
    """(B, H, W, C) -> (B, H/r, W/r, C*r*r), PyTorch's channel order c*r^2 + i*r + j."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)              # b, h, i, w, j, c
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x, r: int = 2):
    """(B, H, W, C*r*r) -> (B, H*r, W*r, C), the inverse of `pixel_unshuffle`."""
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)                        # b, h, w, c, i, j
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


def _keys_cubic(x, a: float):
    ax = np.abs(x)
    return np.where(ax <= 1, ((a + 2) * ax - (a + 3)) * ax * ax + 1,
                    np.where(ax < 2, ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a, 0.0))


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's `F.interpolate(mode='bicubic', align_corners=False)`
    along one axis: source coordinate (i + 0.5) * n_in / n_out - 0.5, Keys cubic with a = -0.75,
    4 taps with indices clamped to the border (replicate), no antialiasing."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        f = math.floor(src)
        for tap in range(-1, 3):
            j = min(max(f + tap, 0), n_in - 1)
            m[i, j] += float(_keys_cubic(np.array(src - (f + tap)), -0.75))
    return m.astype(np.float32)


def bicubic_upsample(y, scale: int):
    """PyTorch-style bicubic upsampling of (B, h, w, C) by an integer factor -> (B, h*s, w*s, C)
    (how MCFormer upsamples its LR condition; not MATLAB's imresize)."""
    _, h, w, _ = y.shape
    mh = jnp.asarray(torch_bicubic_matrix(h, h * scale))
    mw = jnp.asarray(torch_bicubic_matrix(w, w * scale))
    hp = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,bhwc->bowc", mh, y, precision=hp)
    return jnp.einsum("ow,bhwc->bhoc", mw, y, precision=hp)


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------
class Conv(nn.Module):
    """k x k conv with zero padding k//2 (PyTorch `padding=k//2`), explicit pad + VALID.

    groups = feature_group_count (depthwise when groups == in channels == features)."""

    features: int
    size: int = 3
    stride: int = 1
    use_bias: bool = False
    groups: int = 1

    @nn.compact
    def __call__(self, x):
        p = self.size // 2
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        return nn.Conv(self.features, (self.size, self.size), strides=self.stride,
                       padding="VALID", use_bias=self.use_bias,
                       feature_group_count=self.groups, kernel_init=_INIT, name="conv")(x)


class DWConv3(nn.Module):
    """Depthwise 3x3 conv, zero padding 1, no bias: param `kernel` (3, 3, 1, C) (flax's HWIO
    layout of a depthwise conv). Computed as 9 shifted multiply-adds: XLA:CPU's grouped
    convolution is 6-11x slower for forward + backward (measured 4x32x32x128: 538 ms vs 47 ms;
    8x64x64x32: 658 ms vs 107 ms; jax 0.10.2, 2 shared cores)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        w = self.param("kernel", _INIT, (3, 3, 1, c))[:, :, 0, :]
        h, wd = x.shape[1], x.shape[2]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = xp[:, 0:h, 0:wd, :] * w[0, 0]
        for i in range(3):
            for j in range(3):
                if i or j:
                    out = out + xp[:, i:i + h, j:j + wd, :] * w[i, j]
        return out


def _dense(features, name=None, use_bias=True):
    return nn.Dense(features, use_bias=use_bias, kernel_init=_INIT, name=name)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention (Restormer): attention across channels.

    x (B, H, W, C) -> (B, H, W, C). q, k L2-normalised along the spatial axis (eps 1e-12), per-head
    learnable temperature (init 1), A = softmax(q k^T * temp) of size (C/h, C/h) per head."""

    heads: int

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        qkv = Conv(3 * c, 1, name="qkv")(x)
        qkv = DWConv3(name="qkv_dwconv")(qkv)
        q, k, v = jnp.split(qkv, 3, axis=-1)

        def heads_first(t):  # 'b (head c) h w -> b head c (h w)'
            return t.reshape(b, h * w, self.heads, c // self.heads).transpose(0, 2, 3, 1)

        q, k, v = heads_first(q), heads_first(k), heads_first(v)
        q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
        k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
        temp = self.param("temperature", nn.initializers.ones, (self.heads,))
        attn = jnp.einsum("bhcn,bhdn->bhcd", q, k) * temp[None, :, None, None]
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bhcd,bhdn->bhcn", attn, v)
        out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
        return Conv(c, 1, name="project_out")(out)


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network: hidden = int(C * expansion);
    conv1x1 C -> 2h, depthwise 3x3, GELU(first half) * second half, conv1x1 h -> C. No biases."""

    expansion: float

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        hid = int(c * self.expansion)
        x = Conv(2 * hid, 1, name="project_in")(x)
        x = DWConv3(name="dwconv")(x)
        g, v = jnp.split(x, 2, axis=-1)
        return Conv(c, 1, name="project_out")(jax.nn.gelu(g, approximate=False) * v)


class TransformerBlock(nn.Module):
    """Kernel/time-modulated Restormer block: x (B, H, W, C), cond (B, D) -> (B, H, W, C).

    LayerNorm per pixel over channels (eps 1e-5, with bias), DiT-style shift/scale from one
    Dense(4C) on Mish(cond) per block, no gating."""

    heads: int
    expansion: float

    @nn.compact
    def __call__(self, x, cond):
        c = x.shape[-1]
        mod = _dense(4 * c, name="modulation")(mish(cond))[:, None, None, :]
        a1, b1, a2, b2 = jnp.split(mod, 4, axis=-1)
        u = nn.LayerNorm(epsilon=1e-5, name="norm1")(x) * (1 + b1) + a1
        x = x + MDTA(self.heads, name="attn")(u)
        u = nn.LayerNorm(epsilon=1e-5, name="norm2")(x) * (1 + b2) + a2
        return x + GDFN(self.expansion, name="ffn")(u)


class KernelPredictor(nn.Module):
    """The kernel estimator: convs 5x5 (+bias, LeakyReLU 0.2) with the given strides, GAP, Dense
    to K*K (the code's 1x1 conv), softmax. inp (B, H, W, 2C) -> (B, K*K)."""

    kernel_size: int
    width: int
    strides: Sequence[int]
    input_norm: bool = False

    @nn.compact
    def __call__(self, inp):
        x = inp
        if self.input_norm:
            # per example and per half (x_t | up(y)): channel means removed, then divided by the
            # half's RMS over pixels and channels. GAP + a linear head is linear in the image's
            # contrast, so without this the estimate cannot tell "blurry" from "low contrast";
            # the halves separately, or x_t's noise would set the scale of up(y) [I]
            def normalise(a):
                a = a - jnp.mean(a, axis=(1, 2), keepdims=True)
                return a * jax.lax.rsqrt(jnp.mean(jnp.square(a), axis=(1, 2, 3), keepdims=True) + 1e-6)

            c = x.shape[-1] // 2
            x = jnp.concatenate([normalise(x[..., :c]), normalise(x[..., c:])], axis=-1)
        for i, s in enumerate(self.strides):
            x = nn.leaky_relu(Conv(self.width, 5, stride=s, use_bias=True, name=f"conv{i}")(x), 0.2)
        x = jnp.mean(x, axis=(1, 2))
        return jax.nn.softmax(_dense(self.kernel_size ** 2, name="head")(x), axis=-1)


class Stage(nn.Module):
    """n TransformerBlocks with the same width and heads (optionally rematerialised)."""

    n: int
    heads: int
    expansion: float
    remat: bool = False

    @nn.compact
    def __call__(self, x, cond):
        block = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        for i in range(self.n):
            x = block(self.heads, self.expansion, name=f"block{i}")(x, cond)
        return x


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
class MCFormer(nn.Module):
    """BlindDiff's denoiser + kernel estimator; see the module docstring for shapes.

    Defaults are the official full configuration (26,509,267 parameters): dim 48, blocks
    (2, 3, 6, 8), 2 refinement blocks, heads (1, 2, 4, 8), FFN expansion 2.66, 21x21 kernels,
    x4, 3 -> 6 channels (eps + learned variance), predictor 6 convs of width 48 (stride 2 at the
    4th), time MLP hidden 4*dim.
    """

    dim: int = 48
    num_blocks: Sequence[int] = (2, 3, 6, 8)
    num_refinement_blocks: int = 2
    heads: Sequence[int] = (1, 2, 4, 8)
    ffn_expansion: float = 2.66
    kernel_size: int = 21
    scale: int = 4
    in_channels: int = 3
    out_channels: int = 6
    predictor_width: int = 48
    predictor_strides: Sequence[int] = (1, 1, 1, 2, 1, 1)
    remat: bool = False
    # stop the denoiser's gradient at the kernel estimate (the estimator then learns from the
    # kernel loss alone, as MANet's); False = the code (end-to-end through the modulation)
    detach_kernel: bool = False
    kernel_input_norm: bool = False  # KernelPredictor.input_norm [I]; False = the code

    @nn.compact
    def __call__(self, x_t, t, y, kernel=None, use_kernel=None):
        levels = len(self.num_blocks)
        if levels < 2 or len(self.heads) != levels:
            raise ValueError("MCFormer: num_blocks and heads need the same number (>= 2) of levels")
        b, h, w, c = x_t.shape
        m = 2 ** (levels - 1)
        if h % m or w % m:
            raise ValueError(f"MCFormer: HR size {h}x{w} must be a multiple of {m}")
        if y.shape[1] * self.scale != h or y.shape[2] * self.scale != w:
            raise ValueError(f"MCFormer: LR {y.shape} times scale {self.scale} != HR {x_t.shape}")
        d, ex = self.dim, self.ffn_expansion
        inp = jnp.concatenate([x_t, bicubic_upsample(y, self.scale)], axis=-1)

        k = KernelPredictor(self.kernel_size, self.predictor_width, tuple(self.predictor_strides),
                            self.kernel_input_norm, name="predictor")(inp)
        if kernel is not None:  # a known kernel replaces the estimate in the modulation
            given = jnp.broadcast_to(jnp.asarray(kernel, k.dtype).reshape(-1, k.shape[-1]), k.shape)
            # use_kernel (traced bool scalar, optional): pick the given kernel or the estimate at
            # run time, so one compiled program serves the blind and the known-kernel sampler
            k = given if use_kernel is None else jnp.where(use_kernel, given, k)
        k_mod = jax.lax.stop_gradient(k) if self.detach_kernel else k
        e_t = sinusoidal_embedding(jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,)), d)
        e_t = _dense(d, "t_mlp_out")(mish(_dense(4 * d, "t_mlp_in")(e_t)))
        e_k = _dense(d, "k_mlp_out")(mish(_dense(d, "k_mlp_in")(k_mod)))
        cond = e_t + e_k

        def stage(x, n, heads, name):
            return Stage(n, heads, ex, self.remat, name=name)(x, cond)

        nb, hd = self.num_blocks, self.heads
        # encoder: level l (0-based) has d * 2^l channels at H / 2^l; the last level is the latent
        x = Conv(d, 3, name="patch_embed")(inp)
        skips = []
        for lvl in range(levels - 1):
            x = stage(x, nb[lvl], hd[lvl], f"enc{lvl + 1}")
            skips.append(x)
            ch = d * 2 ** lvl
            x = pixel_unshuffle(Conv(ch // 2, 3, name=f"down{lvl + 1}_{lvl + 2}")(x))   # -> 2 ch
        x = stage(x, nb[-1], hd[-1], "latent")
        # decoder: up (conv to 2C, PixelShuffle -> C/2), concat the skip, 1x1 reduce (not at level 0)
        for lvl in range(levels - 2, -1, -1):
            ch = d * 2 ** lvl
            x = pixel_shuffle(Conv(4 * ch, 3, name=f"up{lvl + 2}_{lvl + 1}")(x))          # -> ch
            x = jnp.concatenate([x, skips[lvl]], axis=-1)                                  # 2 ch
            if lvl > 0:
                x = Conv(ch, 1, name=f"reduce{lvl + 1}")(x)
            x = stage(x, nb[lvl], hd[lvl], f"dec{lvl + 1}")
        x = stage(x, self.num_refinement_blocks, hd[0], "refinement")                      # 2 d
        out = Conv(self.out_channels, 3, name="output")(x)
        reps = self.out_channels // c
        return out + jnp.concatenate([x_t] * reps, axis=-1), k


def count_params(tree) -> int:
    """Number of scalars in a params pytree (concrete arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_shapes(net: MCFormer, hr_size: int = 64, batch: int = 1):
    """`jax.eval_shape` of `net.init`: the parameter tree without allocating it."""
    c = net.in_channels
    x = jax.ShapeDtypeStruct((batch, hr_size, hr_size, c), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, hr_size // net.scale, hr_size // net.scale, c), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(lambda x, t, y: net.init(jax.random.key(0), x, t, y), x, t, y)
