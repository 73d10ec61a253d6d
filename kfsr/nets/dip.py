"""Deep Image Prior "skip" encoder-decoder, exactly as the official DIP-DKP (and DIP-FKP) code builds it.

Reference: XYLGroup/DKP `DIPDKP/model/networks.py::skip` (FKP's version with non-local blocks),
`common.py`, `non_local_dot_product.py`; see shared/reference/methods/dkp.md §3.2. Official call:
`skip(3, 3, num_channels_down=[128]*5, num_channels_up=[128]*5, num_channels_skip=[16]*5,
upsample_mode='bilinear', need_sigmoid=True, need_bias=True, pad='reflection', act_fun='LeakyReLU')`
-> 2,359,939 parameters (== `SkipNet()` here on a 3-channel input).

Per scale i (input depth `Cin` at i=0, `channels_down[i-1]` after):

    skip  = LReLU(BN(conv1x1(x -> channels_skip)))
    d     = LReLU(BN(conv3x3/2(x -> channels_down)))          reflection pad 1, stride 2
    d     = NonLocal(d)                                         if i >= nonlocal_from
    d     = LReLU(BN(conv3x3(d)))
    d     = scale(i+1)(d)                                       if not the deepest scale
    d     = upsample x2 (bilinear, align_corners=False)
    y     = concat[skip, d] (centre-crop to the smaller size) -> BN -> conv3x3 -> BN -> LReLU
            -> conv1x1 -> BN -> LReLU
    head  = sigmoid(conv1x1(y -> out_channels))

Layout NHWC, float32. BatchNorm is always in train mode (`BatchStatNorm`), no running statistics,
so `SkipNet().apply(params, z)` needs no mutable collections. Initialisation = PyTorch defaults.

Speed (benchmarks/dip_step_speed.py: forward + MSE + backward + Adam, 128 ch, 256x256, 2-core
AVX2 EPYC, XLA flags of kfsr/backend.py, quiet machine): 2.4 s/step vs PyTorch 2.13 2.6 s (NCHW)
and 3.5 s (channels-last). Where the time goes (one core): 3x3 convolutions ~70 % (Eigen, at the
machine's GEMM speed), 1x1 convolutions and other dots ~13 %, elementwise/copies the rest; the
non-local blocks and the bilinear upsampling are negligible. Two hand-written backward passes
give ~8 % over plain autodiff and are the defaults: `conv_vjp="custom"` (1x1-conv weight gradient
as x^T g instead of XLA's transposed copy + slow GEMM; bias gradients as matmuls) and
`bn_stats="fused"` (BatchNorm sums as matmuls, torch-like backward). Both give the same numbers
as `conv_vjp="autodiff"`, `bn_stats="reduce"` up to float32 rounding.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfsr.errors import KfsrInputError
from kfsr.nets.norm import BatchStatNorm

IntOrSeq = Union[int, Sequence[int]]

PADDINGS = ("reflect", "zero")
UPSAMPLES = ("bilinear", "nearest")


# ----------------------------------------------------------------------------- initialisers
def torch_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default conv/linear weight init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).

    `shape` is HWIO (or (in, out) for dense): fan_in = prod(shape[:-1]).
    """
    fan_in = int(np.prod(shape[:-1]))
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch's default conv/linear bias init: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ----------------------------------------------------------------------------- layers
def leaky_relu(x, slope: float = 0.2):
    return jnp.where(x >= 0, x, slope * x)


def pad_hw(x, p: int, mode: str):
    """Pad the two spatial axes of (..., H, W, C) by p on every side."""
    if p == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)]
    if mode == "reflect":  # torch ReflectionPad2d == numpy 'reflect' (edge not repeated)
        return jnp.pad(x, widths, mode="reflect")
    if mode == "zero":
        return jnp.pad(x, widths)
    raise KfsrInputError(f"SkipNet.padding: unknown mode {mode!r}; expected one of {PADDINGS}")


def strided_conv_phase(x, w, s: int):
    """VALID cross-correlation with stride s, as a stride-1 conv on the s*s polyphase components.

    x (B,H,W,C) already padded, w (k,k,C,O). Same result as lax.conv with strides (s,s); its
    gradients are plain stride-1 convolutions (no dilated convolutions in the backward pass).
    """
    b, h, wd, c = x.shape
    k, o = w.shape[0], w.shape[-1]
    ho, wo = (h - k) // s + 1, (wd - k) // s + 1
    kp = -(-k // s)  # taps per phase
    hp, wp = ho + kp - 1, wo + kp - 1  # phase-image size needed
    x = x[:, : s * hp, : s * wp]
    x = jnp.pad(x, ((0, 0), (0, s * hp - x.shape[1]), (0, s * wp - x.shape[2]), (0, 0)))
    x = x.reshape(b, hp, s, wp, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, s * s * c)
    w = jnp.pad(w, ((0, kp * s - k), (0, kp * s - k), (0, 0), (0, 0)))
    w = w.reshape(kp, s, kp, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(kp, kp, s * s * c, o)
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


_DN = ("NHWC", "HWIO", "NHWC")


def _channel_sum(g):
    """Sum of (..., C) over all leading axes, as a (1,N)@(N,C) matmul (XLA:CPU turns big
    reductions into slow reduce-windows; a GEMV runs at memory speed)."""
    g2 = g.reshape(-1, g.shape[-1])
    return jnp.dot(jnp.ones((1, g2.shape[0]), g.dtype), g2)[0]


@jax.custom_vjp
def dense_nd(x, w, b):
    """x (..., Ci) @ w (Ci, Co) + b, with a hand-written backward.

    Autodiff's weight gradient contracts over the leading (pixel) axes, for which XLA:CPU
    materialises a transposed copy and runs a slow GEMM; `x2.T @ g2` is 2.5x faster.
    """
    return (jnp.dot(x.reshape(-1, x.shape[-1]), w) + b).reshape(x.shape[:-1] + (w.shape[-1],))


def _dense_fwd(x, w, b):
    return dense_nd(x, w, b), (x, w)


def _dense_bwd(res, g):
    x, w = res
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    dx = jnp.dot(g2, w.T).reshape(x.shape)
    dw = jnp.dot(x2.T, g2)
    return dx, dw, _channel_sum(g2)


dense_nd.defvjp(_dense_fwd, _dense_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_bias(x, w, b, stride: int = 1):
    """VALID NHWC/HWIO cross-correlation + bias; the bias gradient is a matmul (see `_channel_sum`)."""
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=_DN) + b


def _conv_fwd(x, w, b, stride):
    return conv_bias(x, w, b, stride), (x, w)


def _conv_bwd(stride, res, g):
    x, w = res
    _, vjp = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), "VALID", dimension_numbers=_DN), x, w)
    dx, dw = vjp(g)
    return dx, dw, _channel_sum(g)


conv_bias.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
    """2-D convolution (cross-correlation), NHWC, 'same'-style padding of (k-1)//2 like DIP's `conv`.

    Weights HWIO. Defaults reproduce `nn.Conv2d` initialisation. `vjp="custom"` uses the
    hand-written backward passes above (same numbers, faster on XLA:CPU); "autodiff" plain jax.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: str = "reflect"
    use_bias: bool = True
    strided: str = "native"  # stride>1: "native" lax conv, or "phase" (space-to-depth + stride-1 conv)
    vjp: str = "custom"  # "custom" or "autodiff"
    kernel_init: Callable = torch_kernel_init
    bias_init: Optional[Callable] = None  # None: torch default from fan_in

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        k = self.kernel_size
        w = self.param("kernel", self.kernel_init, (k, k, cin, self.features), jnp.float32)
        if self.use_bias:
            binit = self.bias_init if self.bias_init is not None else torch_bias_init(cin * k * k)
            b = self.param("bias", binit, (self.features,), jnp.float32)
        else:
            b = jnp.zeros((self.features,), jnp.float32)
        custom = self.vjp == "custom"
        if k == 1 and self.stride == 1:
            if custom:
                return dense_nd(x, w[0, 0], b)
            y = jnp.einsum("...c,cd->...d", x, w[0, 0])
        else:
            x = pad_hw(x, (k - 1) // 2, self.padding)
            if self.stride > 1 and self.strided == "phase":
                y = strided_conv_phase(x, w, self.stride)
            elif custom:
                return conv_bias(x, w, b, self.stride)
            else:
                y = jax.lax.conv_general_dilated(x, w, (self.stride, self.stride), "VALID",
                                                 dimension_numbers=_DN)
        return y + b if self.use_bias else y


def max_pool2(x):
    """2x2 max-pool, stride 2, floor (drops a trailing odd row/column), on (B,H,W,C)."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2]
    return jnp.max(x.reshape(b, h2, 2, w2, 2, c), axis=(2, 4))


def _upsample2_axis(x, axis: int):
    """Bilinear x2 along one axis, half-pixel centres (torch align_corners=False), edge clamp."""
    n = x.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                            jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis),
                           jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
    even = 0.75 * x + 0.25 * prev  # output 2i   <- source i - 0.25
    odd = 0.75 * x + 0.25 * nxt    # output 2i+1 <- source i + 0.25
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def upsample2(x, mode: str = "bilinear"):
    """x2 upsampling of the spatial axes of (..., H, W, C).

    'bilinear' == torch `nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False)` ==
    `jax.image.resize(x, 2x, 'bilinear', antialias=False)`, written as two fixed-weight stencils
    (cheaper than resize's dense interpolation matrices).
    """
    if mode == "bilinear":
        return _upsample2_axis(_upsample2_axis(x, x.ndim - 3), x.ndim - 2)
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    raise KfsrInputError(f"SkipNet.upsample: unknown mode {mode!r}; expected one of {UPSAMPLES}")


def concat_center_crop(xs):
    """Concatenate on channels after centre-cropping every input to the smallest H and W (DIP Concat)."""
    th = min(x.shape[-3] for x in xs)
    tw = min(x.shape[-2] for x in xs)
    out = []
    for x in xs:
        dh, dw = (x.shape[-3] - th) // 2, (x.shape[-2] - tw) // 2
        out.append(x[..., dh: dh + th, dw: dw + tw, :])
    return jnp.concatenate(out, axis=-1)


class NonLocalBlock(nn.Module):
    """Dot-product non-local block (`NONLocalBlock2D`, sub_sample=True, bn_layer=True).

    theta = conv1x1(x); phi, g = maxpool2(conv1x1(x)); f = theta phi^T / N_pooled (no softmax);
    y = f g; z = BN(conv1x1(y)) + x with the BN's scale and bias initialised to 0.
    `reassociate=True` computes theta (phi^T g) / N instead of (theta phi^T) g / N: the same
    product, fewer FLOPs; False follows torch's order.
    """

    inter_channels: Optional[int] = None  # None: C // 2 (torch default; 64 for 128 channels)
    reassociate: bool = True
    bn_stats: str = "fused"
    conv_vjp: str = "custom"

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        ci = self.inter_channels or max(c // 2, 1)
        g = max_pool2(Conv(ci, 1, vjp=self.conv_vjp, name="g")(x))
        theta = Conv(ci, 1, vjp=self.conv_vjp, name="theta")(x)
        phi = max_pool2(Conv(ci, 1, vjp=self.conv_vjp, name="phi")(x))
        g = g.reshape(b, -1, ci)
        theta = theta.reshape(b, -1, ci)
        phi = phi.reshape(b, -1, ci)
        n = phi.shape[1]
        if self.reassociate:
            y = jnp.einsum("bnc,bcd->bnd", theta, jnp.einsum("bmc,bmd->bcd", phi, g) / n)
        else:
            f = jnp.einsum("bnc,bmc->bnm", theta, phi) / n
            y = jnp.einsum("bnm,bmd->bnd", f, g)
        y = y.reshape(b, h, w, ci)
        wy = Conv(c, 1, vjp=self.conv_vjp, name="W_conv")(y)
        wy = BatchStatNorm(stats=self.bn_stats, scale_init=nn.initializers.zeros, name="W_bn")(wy)
        return wy + x


def _per_scale(v: IntOrSeq, n: int, name: str):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise KfsrInputError(f"SkipNet.{name}: {len(v)} values for {n} scales")
    return v


class SkipNet(nn.Module):
    """The DIP-DKP skip U-Net. `__call__(z)`: z (B,H,W,Cin) or (H,W,Cin) -> same leading shape, out_channels.

    Defaults are the official configuration (2,359,939 parameters for Cin=3). BatchNorm uses the
    statistics of the batch it is given (torch train mode): `vmap` over images to normalise each
    image by its own statistics.
    """

    out_channels: int = 3
    num_scales: int = 5
    channels_down: IntOrSeq = 128
    channels_up: IntOrSeq = 128
    channels_skip: IntOrSeq = 16
    filter_size_down: int = 3
    filter_size_up: int = 3
    filter_size_skip: int = 1
    nonlocal_from: Optional[int] = 2  # scales i >= this get a non-local block; None: none
    nonlocal_inter_channels: Optional[int] = None  # None: channels_down // 2 (= 64 officially)
    nonlocal_reassociate: bool = True
    upsample: str = "bilinear"
    padding: str = "reflect"
    strided_conv: str = "native"  # "native" or "phase" (see strided_conv_phase): same numbers
    bn_stats: str = "fused"  # BatchStatNorm.stats: "fused" (fastest), "dot" or "reduce"
    conv_vjp: str = "custom"  # Conv.vjp: "custom" (fastest) or "autodiff"
    need_sigmoid: bool = True
    need_bias: bool = True
    need1x1_up: bool = True
    negative_slope: float = 0.2

    def _bn_act(self, x, name):
        return leaky_relu(BatchStatNorm(stats=self.bn_stats, name=name)(x), self.negative_slope)

    def _scale(self, x, i, down, up, skip):
        conv = lambda f, k, s=1, name=None: Conv(f, k, s, self.padding, self.need_bias,
                                                 self.strided_conv, self.conv_vjp, name=name)
        last = i == self.num_scales - 1
        branches = []
        if skip[i]:
            s = conv(skip[i], self.filter_size_skip, name=f"s{i}_skip_conv")(x)
            branches.append(self._bn_act(s, f"s{i}_skip_bn"))
        d = conv(down[i], self.filter_size_down, 2, name=f"s{i}_down_conv")(x)
        d = self._bn_act(d, f"s{i}_down_bn")
        if self.nonlocal_from is not None and i >= self.nonlocal_from:
            d = NonLocalBlock(self.nonlocal_inter_channels, self.nonlocal_reassociate, self.bn_stats,
                              self.conv_vjp, name=f"s{i}_nonlocal")(d)
        d = conv(down[i], self.filter_size_down, name=f"s{i}_down_conv2")(d)
        d = self._bn_act(d, f"s{i}_down_bn2")
        if not last:
            d = self._scale(d, i + 1, down, up, skip)
        d = upsample2(d, self.upsample)
        branches.append(d)
        y = concat_center_crop(branches) if len(branches) > 1 else branches[0]
        y = BatchStatNorm(stats=self.bn_stats, name=f"s{i}_cat_bn")(y)
        y = conv(up[i], self.filter_size_up, name=f"s{i}_up_conv")(y)
        y = self._bn_act(y, f"s{i}_up_bn")
        if self.need1x1_up:
            y = conv(up[i], 1, name=f"s{i}_up_conv1x1")(y)
            y = self._bn_act(y, f"s{i}_up_bn1x1")
        return y

    @nn.compact
    def __call__(self, z):
        if self.padding not in PADDINGS:
            raise KfsrInputError(f"SkipNet.padding: unknown mode {self.padding!r}; expected one of {PADDINGS}")
        if self.upsample not in UPSAMPLES:
            raise KfsrInputError(f"SkipNet.upsample: unknown mode {self.upsample!r}; expected one of {UPSAMPLES}")
        if z.ndim not in (3, 4):
            raise KfsrInputError(f"SkipNet input: expected (B,H,W,C) or (H,W,C), got shape {z.shape}")
        unbatched = z.ndim == 3
        if unbatched:
            z = z[None]
        n = self.num_scales
        down = _per_scale(self.channels_down, n, "channels_down")
        up = _per_scale(self.channels_up, n, "channels_up")
        skip = _per_scale(self.channels_skip, n, "channels_skip")
        y = self._scale(z.astype(jnp.float32), 0, down, up, skip)
        y = Conv(self.out_channels, 1, 1, self.padding, self.need_bias, vjp=self.conv_vjp,
                 name="head")(y)
        if self.need_sigmoid:
            y = jax.nn.sigmoid(y)
        return y[0] if unbatched else y


def dip_input(key, hr_shape, channels: int = 3):
    """DIP's fixed input noise, U[0,1) * 0.1, float32.

    `hr_shape`: (H, W), (H, W, C) or (B, H, W, C) of the HR image; returns (H, W, channels) or
    (B, H, W, channels).
    """
    hr_shape = tuple(int(a) for a in hr_shape)
    if len(hr_shape) in (2, 3):
        shape = hr_shape[:2] + (channels,)
    elif len(hr_shape) == 4:
        shape = hr_shape[:3] + (channels,)
    else:
        raise KfsrInputError(f"dip_input: hr_shape must be (H,W), (H,W,C) or (B,H,W,C), got {hr_shape}")
    return jax.random.uniform(key, shape, jnp.float32) * 0.1


def init_params(module: nn.Module, key, *args, **kwargs):
    """`module.init(key, *args)` jit-compiled at XLA backend optimisation level 0.

    An init graph is hundreds of tiny RNG kernels that run once; compiling them with LLVM
    optimisations costs more than running them (official SkipNet: 16 s -> 8 s of compile on the
    2-core CPU). Same values as `module.init` (up to 1 ulp of the uniform scaling).
    """
    f = jax.jit(module.init).lower(key, *args, **kwargs).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return f(key, *args, **kwargs)


def num_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
