"""Spatially variant (SV) blur with per-pixel kernels, its low-rank (PCA) form, SV kernel fields.

Conventions (the same as `kfsr.degrade.ops`, docs/ARCHITECTURE.md):
  * images float32 `(H, W, C)` (or batched `(B, H, W, C)`), values in [0, 1];
  * a kernel *field* is `(Ho, Wo, K, K)`: one non-negative, sum-1 `(K, K)` kernel per OUTPUT pixel
    of the blur, applied by cross-correlation anchored at K//2 on the padded image:

        y[i, j, c] = sum_{m,n} field[i, j, m, n] * x_pad[o + s*i + m, o + s*j + n, c]

    with `x_pad = ops.pad(x, K, padding)` (padding "circular" | "reflect" | "zero" | "valid"),
    stride `s` and offset `o` (s = 1, o = 0 for a plain SV blur). With a constant field this is exactly
    `ops.blur` followed by `ops.downsample(., s, o)`: the invariant forward model is a special
    case.
    This is MANet's "filter-flow"/gather model (blinddiff_ssr.md §3.4): each output pixel reads its
    own kernel, so a field given at LR resolution describes `degrade_spatial` with stride sampling
    exactly and nothing is computed at the HR pixels that sampling drops.
  * low-rank form: `field[i, j] = sum_r coeffs[i, j, r] * basis[r]` with `basis (R, K, K)` and
    `coeffs (Ho, Wo, R)`. The blur is then R ordinary (FFT) blurs of the whole image by the basis
    kernels, weighted per pixel: `y = sum_r coeffs[..., r, None] * S_s(basis[r] * P(x))`. Exact for
    fields in the span of the basis, and the cheap path for large images (no per-pixel K*K work).
    `fit_pca_basis` returns a centred basis whose first element is the mean kernel with
    coefficient 1 everywhere (MANet's PCA codes are the other coefficients).

Implementation of the dense SV blur: shift-and-accumulate. A `lax.scan` over the K kernel rows adds,
for each row m, `sum_n field[..., m, n] * x_pad[rows m + s*i, cols n + s*j]` (the K column shifts of
one row are unrolled and fused by XLA). Memory is O(Ho*Wo*C) plus the field itself: the
`(Ho, Wo, K*K, C)` patch tensor of an unfold/einsum implementation is never built. The scan body is
rematerialised (`jax.checkpoint`), so reverse-mode differentiation (w.r.t. the image and the field)
does not store K shifted copies either. Everything is jittable (shapes and modes are static).

Speed (benchmarks/sv_blur.py; 256x256x3, K = 21, reflect; jax 0.10.2 on the shared 2-core EPYC
at load ~10, so absolute numbers are inflated, ms): dense stride 1 forward 805 / gradient 3,356;
dense stride 4 (the LR grid of x4 stride sampling) 68 / 541; rank-16 basis stride 1 230 / 377,
stride 4 155 / 261. Use the basis form for large images and for fitting fields by gradient
descent; the dense form for exact per-pixel fields on the LR grid. (Variants tried and rejected:
an unfold/patches einsum, 7 s forward and minutes for the gradient; a scan over all K*K offsets
and a per-row `einsum` over stacked shifts, both slower than the fused row-wise FMAs; a field
pre-transposed to (K, K, H, W) runs the stride-1 forward in 67 ms, but the transpose itself costs
as much as it saves when done inside the call.)

Synthetic fields:
  * `depth_gaussian_field`: per-pixel anisotropic Gaussians (kfsr.degrade.kernels'
    `gaussian_from_params` parameterisation: eigenvalues are variances, px^2) whose size and
    anisotropy grow with a depth map (thin-lens-like distance from a focus depth), so depth is
    informative about the kernel (SSR, blinddiff_ssr.md §4.2 item 2);
  * `block_field`: MANet-style piecewise-constant fields, a random kernel per block (MANet's
    `sv_mode` 5, 40x40-pixel blocks, blinddiff_ssr.md §3.5);
  * `manet_sv_field`: MANet's deterministic test fields (`sv_mode` 1-4 and 6, same table).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kfsr.degrade import kernels as _kernels
from kfsr.degrade.imresize import imresize
from kfsr.degrade.ops import _check_padding, _out_hw, add_noise, blur_many, pad
from kfsr.degrade.spec import Degradation
from kfsr.errors import KfsrInputError

_F32 = jnp.float32


# ----------------------------------------------------------------------------------------------
# shapes and checks
# ----------------------------------------------------------------------------------------------
def blurred_shape(h: int, w: int, size: int, padding: str) -> tuple[int, int]:
    """Spatial shape of the stride-1 blur of an (h, w) image by size-K kernels: (h, w), or
    (h-K+1, w-K+1) for padding="valid" (the invariant blur's rule, kfsr.degrade.ops)."""
    return _out_hw(h, w, size, padding, name="spatial blur")


def output_shape(h: int, w: int, size: int, padding: str, stride: int = 1,
                 offset: int = 0) -> tuple[int, int]:
    """(Ho, Wo) of `sv_blur(..., stride, offset)`: ceil((H' - offset) / stride) per axis, where
    (H', W') = `blurred_shape` (the same grid as `ops.downsample` of the invariant blur)."""
    hb, wb = blurred_shape(h, w, size, padding)
    return -(-(hb - offset) // stride), -(-(wb - offset) // stride)


def _check_stride(stride, offset, name):
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise KfsrInputError(f"{name}: stride must be an integer >= 1, got {stride!r}")
    if isinstance(offset, bool) or int(offset) != offset or not 0 <= offset < stride:
        raise KfsrInputError(f"{name}: offset must be an integer in [0, {stride}), got {offset!r}")


def _check_image(x, name):
    if x.ndim != 3:
        raise KfsrInputError(f"{name}: image must be (H, W, C) (vmap for batches), got {x.shape}")


def _check_field(field, name):
    if field.ndim != 4 or field.shape[-1] != field.shape[-2]:
        raise KfsrInputError(f"{name}: kernel field must be (H, W, K, K), got shape {field.shape}")


def _field_on_grid(field, hw_blur, hw_out, stride, offset, name):
    """A field given at blurred (HR) resolution is sampled on the output grid; one given at the
    output resolution is used as is. Anything else is an error naming both accepted shapes."""
    fh, fw = field.shape[0], field.shape[1]
    if (fh, fw) == tuple(hw_out):
        return field
    if (fh, fw) == tuple(hw_blur):
        return field[offset::stride, offset::stride]
    raise KfsrInputError(
        f"{name}: field spatial shape {(fh, fw)} must be the blurred image's {tuple(hw_blur)} "
        f"(one kernel per HR pixel) or the output grid's {tuple(hw_out)}")


# ----------------------------------------------------------------------------------------------
# dense SV blur
# ----------------------------------------------------------------------------------------------
def _sv_blur_core(xp, field, stride: int, unroll: int):
    """xp (Hp, Wp, C) padded and offset-cropped; field (Ho, Wo, K, K) -> (Ho, Wo, C)."""
    ho, wo, size, _ = field.shape
    s = stride
    span_h, span_w = s * (ho - 1) + 1, s * (wo - 1) + 1
    fdt = jnp.result_type(xp.dtype, field.dtype)
    xp = xp.astype(fdt)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def row(acc, inp):
        m, fm = inp                                   # fm (Ho, Wo, K): kernel row m at each pixel
        rows = lax.dynamic_slice_in_dim(xp, m, span_h, axis=0)[::s]   # (Ho, Wp, C)
        for n in range(size):                         # unrolled; XLA fuses the K FMAs
            acc = acc + fm[:, :, n, None].astype(fdt) * rows[:, n:n + span_w:s]
        return acc, None

    acc0 = jnp.zeros((ho, wo, xp.shape[-1]), fdt)
    rows_in = (jnp.arange(size), jnp.moveaxis(field, 2, 0))           # (K,), (K, Ho, Wo, K)
    acc, _ = lax.scan(row, acc0, rows_in, unroll=unroll)
    return acc


def sv_blur(x, field, padding: str = "reflect", *, stride: int = 1, offset: int = 0,
            unroll: int = 1):
    """Spatially variant blur (and optional stride sampling) with per-pixel kernels.

    Args:
      x: (H, W, C) image, or (B, H, W, C) (then `field` is (B, ...) or shared).
      field: (Ho, Wo, K, K) kernels on the OUTPUT grid, or (H', W', K, K) at the blurred image's
        resolution ((H', W') = (H, W), or (H-K+1, W-K+1) for "valid"), which is then sampled at
        `[offset::stride, offset::stride]`. Kernels are cross-correlation kernels anchored at K//2
        (non-negativity and sum 1 are the caller's business; the op is linear in the field).
      padding: "circular" | "reflect" | "zero" | "valid" (as `ops.pad`).
      stride, offset: output pixel (i, j) is blurred pixel (offset + stride*i, offset + stride*j).
      unroll: `lax.scan` unroll over the K kernel rows (compile time vs speed).
    Returns:
      (Ho, Wo, C) with (Ho, Wo) = `output_shape(H, W, K, padding, stride, offset)`; dtype of x.
    """
    x = jnp.asarray(x)
    field = jnp.asarray(field)
    _check_padding(padding, "sv_blur")
    _check_stride(stride, offset, "sv_blur")
    if x.ndim == 4:
        if field.ndim == 5:
            if field.shape[0] != x.shape[0]:
                raise KfsrInputError(
                    f"sv_blur: field batch {field.shape[0]} != image batch {x.shape[0]}")
            return jax.vmap(lambda a, f: sv_blur(a, f, padding, stride=stride, offset=offset,
                                                 unroll=unroll))(x, field)
        return jax.vmap(lambda a: sv_blur(a, field, padding, stride=stride, offset=offset,
                                          unroll=unroll))(x)
    _check_image(x, "sv_blur")
    _check_field(field, "sv_blur")
    size = field.shape[-1]
    h, w = x.shape[0], x.shape[1]
    hw_blur = blurred_shape(h, w, size, padding)
    hw_out = output_shape(h, w, size, padding, stride, offset)
    field = _field_on_grid(field, hw_blur, hw_out, stride, offset, "sv_blur")
    return _sv_blur_jit(x, field, padding, int(stride), int(offset), int(unroll))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _sv_blur_jit(x, field, padding, stride, offset, unroll):
    # One program per (shapes, padding, stride, offset): eager callers do not compile the
    # padding and slicing ops one by one (inlined when called under an outer jit).
    xp = pad(x, field.shape[-1], padding)[offset:, offset:]
    return _sv_blur_core(xp, field, stride, unroll).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# low-rank (basis) form
# ----------------------------------------------------------------------------------------------
def field_from_basis(basis, coeffs):
    """Dense field `sum_r coeffs[..., r] * basis[r]`: basis (R, K, K), coeffs (..., R) ->
    (..., K, K)."""
    basis, coeffs = jnp.asarray(basis), jnp.asarray(coeffs)
    if basis.ndim != 3 or basis.shape[-1] != basis.shape[-2]:
        raise KfsrInputError(f"field_from_basis: basis must be (R, K, K), got {basis.shape}")
    if coeffs.shape[-1] != basis.shape[0]:
        raise KfsrInputError(
            f"field_from_basis: coeffs last axis {coeffs.shape[-1]} != basis rank {basis.shape[0]}")
    return jnp.einsum("...r,rmn->...mn", coeffs, basis)


def sv_blur_basis(x, basis, coeffs, padding: str = "reflect", *, stride: int = 1,
                  offset: int = 0):
    """SV blur by a low-rank field `field[i, j] = sum_r coeffs[i, j, r] * basis[r]`.

    Blurs the image once with each basis kernel (`ops.blur_many`: one batched FFT, the image FFT
    computed once), samples at the stride grid and sums with the per-pixel weights. Equal to
    `sv_blur(x, field_from_basis(basis, coeffs), ...)`; cost R FFT blurs instead of Ho*Wo*K*K MACs.

    Args:
      x: (H, W, C) image (vmap for batches).
      basis: (R, K, K) kernels (cross-correlation, anchored at K//2).
      coeffs: (Ho, Wo, R) on the output grid, or (H', W', R) at the blurred resolution (sampled
        at [offset::stride, offset::stride]), as `sv_blur`'s field.
      padding, stride, offset: as `sv_blur`.
    Returns:
      (Ho, Wo, C), dtype of x.
    """
    x, basis, coeffs = jnp.asarray(x), jnp.asarray(basis), jnp.asarray(coeffs)
    _check_padding(padding, "sv_blur_basis")
    _check_stride(stride, offset, "sv_blur_basis")
    _check_image(x, "sv_blur_basis")
    if basis.ndim != 3 or basis.shape[-1] != basis.shape[-2]:
        raise KfsrInputError(f"sv_blur_basis: basis must be (R, K, K), got {basis.shape}")
    if coeffs.ndim != 3 or coeffs.shape[-1] != basis.shape[0]:
        raise KfsrInputError(
            f"sv_blur_basis: coeffs must be (H, W, R={basis.shape[0]}), got {coeffs.shape}")
    size = basis.shape[-1]
    h, w = x.shape[0], x.shape[1]
    hw_blur = blurred_shape(h, w, size, padding)
    hw_out = output_shape(h, w, size, padding, stride, offset)
    coeffs = _coeffs_on_grid(coeffs, hw_blur, hw_out, stride, offset)
    return _sv_blur_basis_jit(x, basis, coeffs, padding, int(stride), int(offset))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _sv_blur_basis_jit(x, basis, coeffs, padding, stride, offset):
    blurred = blur_many(x, basis.astype(x.dtype), padding)          # (R, H', W', C)
    blurred = blurred[:, offset::stride, offset::stride]             # (R, Ho, Wo, C)
    return jnp.einsum("rhwc,hwr->hwc", blurred, coeffs.astype(x.dtype),
                      precision=lax.Precision.HIGHEST)


def _coeffs_on_grid(coeffs, hw_blur, hw_out, stride, offset):
    ch, cw = coeffs.shape[0], coeffs.shape[1]
    if (ch, cw) == tuple(hw_out):
        return coeffs
    if (ch, cw) == tuple(hw_blur):
        return coeffs[offset::stride, offset::stride]
    raise KfsrInputError(
        f"sv_blur_basis: coeffs spatial shape {(ch, cw)} must be the blurred image's "
        f"{tuple(hw_blur)} or the output grid's {tuple(hw_out)}")


def fit_pca_basis(kernels, rank: int, *, center: bool = True):
    """Fit a PCA basis to a set or field of kernels and return it with the coefficients.

    Args:
      kernels: (..., K, K), e.g. a field (H, W, K, K) or a set (N, K, K).
      rank: number R of basis kernels returned: 1 <= R <= K*K, or K*K + 1 with `center=True`
        (the mean plus K*K components). For fields of sum-1 kernels the centred data lie in a
        (K*K - 1)-dimensional subspace, so R = K*K is already exact.
      center: True: basis[0] is the mean kernel and coeffs[..., 0] == 1 exactly; basis[1:] are the
        top R-1 principal directions of the centred kernels (orthonormal, sorted by variance) and
        coeffs[..., 1:] the projections `<k - mean, basis[r]>`. False: MANet's uncentred form,
        basis = top R right singular vectors of the raw kernels, coeffs = `<k, basis[r]>`.
    Returns:
      (basis (R, K, K), coeffs (..., R)); `field_from_basis(basis, coeffs)` is the best rank-R
      (affine, if centred) approximation in the least-squares sense, exact at full rank.
    Not jittable in `rank` (static); the rest traces.
    """
    kernels = jnp.asarray(kernels, _F32)
    if kernels.ndim < 3 or kernels.shape[-1] != kernels.shape[-2]:
        raise KfsrInputError(f"fit_pca_basis: kernels must be (..., K, K), got {kernels.shape}")
    size = kernels.shape[-1]
    d = size * size
    rmax = d + 1 if center else d
    if isinstance(rank, bool) or int(rank) != rank or not 1 <= rank <= rmax:
        raise KfsrInputError(
            f"fit_pca_basis: rank must be an integer in [1, {rmax}], got {rank!r}")
    basis, coeffs = _fit_pca_jit(kernels.reshape(-1, d), int(rank), bool(center))
    return (basis.reshape(rank, size, size),
            coeffs.reshape(kernels.shape[:-2] + (rank,)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fit_pca_jit(flat, rank, center):
    d = flat.shape[-1]
    mean = jnp.mean(flat, axis=0) if center else jnp.zeros((d,), _F32)
    xc = flat - mean
    # Eigen-decomposition of the (K^2, K^2) scatter matrix: cheap for any number of kernels.
    scatter = jnp.einsum("nd,ne->de", xc, xc, precision=lax.Precision.HIGHEST)
    _, vecs = jnp.linalg.eigh(scatter)                      # ascending eigenvalues
    vecs = vecs[:, ::-1]
    n_comp = rank - 1 if center else rank
    comps = vecs[:, :n_comp].T                              # (n_comp, K^2) orthonormal
    proj = jnp.einsum("nd,rd->nr", xc, comps, precision=lax.Precision.HIGHEST)
    if center:
        basis = jnp.concatenate([mean[None], comps], axis=0)
        coeffs = jnp.concatenate([jnp.ones((flat.shape[0], 1), _F32), proj], axis=1)
    else:
        basis, coeffs = comps, proj
    return basis, coeffs


def project_onto_basis(kernels, basis, *, center: bool = True):
    """Coefficients of kernels (..., K, K) in a basis from `fit_pca_basis` (same `center`):
    (..., R). For MANet-style PCA codes of a predicted field use `center=False` bases, or drop
    the constant first coefficient of a centred one."""
    kernels, basis = jnp.asarray(kernels, _F32), jnp.asarray(basis, _F32)
    if basis.ndim != 3 or kernels.shape[-2:] != basis.shape[-2:]:
        raise KfsrInputError(
            f"project_onto_basis: kernels {kernels.shape} and basis {basis.shape} must share "
            f"(K, K)")
    if center:
        proj = jnp.einsum("...mn,rmn->...r", kernels - basis[0], basis[1:])
        return jnp.concatenate([jnp.ones(proj.shape[:-1] + (1,), _F32), proj], axis=-1)
    return jnp.einsum("...mn,rmn->...r", kernels, basis)


# ----------------------------------------------------------------------------------------------
# forward model
# ----------------------------------------------------------------------------------------------
def _finish(y, spec, key, name):
    if spec.noise_sigma > 0:
        if key is None:
            raise KfsrInputError(f"{name}: spec.noise_sigma > 0 needs a jax.random key (key=...)")
        y = add_noise(y, spec.noise_sigma, key)
    return y


def degrade_spatial(x, field, spec: Degradation, key=None, *, unroll: int = 1):
    """The SV forward model y = S_s(k_p * P(x)) + n, consistent with `kfsr.degrade.degrade`.

    Args:
      x: (H, W, C) or (B, H, W, C) HR image.
      field: per-pixel kernels. Stride sampling: (H', W', K, K), one per blurred HR pixel, or
        (h, w, K, K) on the LR grid (h = ceil((H' - offset) / s)); bicubic sampling: (H', W', K, K)
        only. (B, ...) for one field per batch element.
      spec: a `Degradation` (padding, sampling, scale, offset, noise); static under jit.
      key: required iff spec.noise_sigma > 0.
    Returns:
      LR image with `degrade`'s shape rules; with a constant field it equals `degrade(x, k, spec)`.
    """
    if not isinstance(spec, Degradation):
        raise KfsrInputError(
            f"degrade_spatial: spec must be a kfsr.degrade.Degradation, got {type(spec)}")
    x = jnp.asarray(x)
    field = jnp.asarray(field)
    if spec.noise_sigma > 0 and key is None:
        raise KfsrInputError("degrade_spatial: spec.noise_sigma > 0 needs a jax.random key")
    if spec.sampling == "stride":
        y = sv_blur(x, field, spec.padding, stride=spec.scale, offset=spec.offset, unroll=unroll)
    else:
        size = field.shape[-1]
        hb, wb = blurred_shape(x.shape[-3], x.shape[-2], size, spec.padding)
        if field.shape[-4:-2] != (hb, wb):
            raise KfsrInputError(
                f"degrade_spatial: bicubic sampling needs a field at the blurred HR resolution "
                f"{(hb, wb)}, got {field.shape[-4:-2]}")
        y = sv_blur(x, field, spec.padding, unroll=unroll)
        y = imresize(y, scale=1.0 / spec.scale, output_shape=(-(-hb // spec.scale),
                                                              -(-wb // spec.scale)))
    return _finish(y, spec, key, "degrade_spatial")


def degrade_spatial_basis(x, basis, coeffs, spec: Degradation, key=None):
    """`degrade_spatial` with a low-rank field (basis (R, K, K), coeffs (H', W', R) or, for
    stride sampling, (h, w, R)); x (H, W, C). The efficient path for large images."""
    if not isinstance(spec, Degradation):
        raise KfsrInputError(
            f"degrade_spatial_basis: spec must be a kfsr.degrade.Degradation, got {type(spec)}")
    x = jnp.asarray(x)
    if spec.noise_sigma > 0 and key is None:
        raise KfsrInputError("degrade_spatial_basis: spec.noise_sigma > 0 needs a jax.random key")
    if spec.sampling == "stride":
        y = sv_blur_basis(x, basis, coeffs, spec.padding, stride=spec.scale, offset=spec.offset)
    else:
        y = sv_blur_basis(x, basis, coeffs, spec.padding)
        hb, wb = y.shape[0], y.shape[1]
        y = imresize(y, scale=1.0 / spec.scale, output_shape=(-(-hb // spec.scale),
                                                              -(-wb // spec.scale)))
    return _finish(y, spec, key, "degrade_spatial_basis")


def upscale_field(field, scale: int):
    """Nearest-neighbour upscaling of a field (h, w, ...) -> (h*s, w*s, ...) (MANet's LR -> HR
    kernel map; with stride sampling at offset 0 the HR field sampled back gives the input)."""
    field = jnp.asarray(field)
    return jnp.repeat(jnp.repeat(field, scale, axis=0), scale, axis=1)


# ----------------------------------------------------------------------------------------------
# synthetic fields
# ----------------------------------------------------------------------------------------------
def _default_range(scale, lambda_min, lambda_max):
    lo, hi = _kernels.dkp_test_range(scale)
    return (lo if lambda_min is None else lambda_min), (hi if lambda_max is None else lambda_max)


def gaussian_field(size: int, lambda1, lambda2, theta, *, scale: int = 1,
                   convention: str = "aligned", recenter: str = "mean"):
    """Per-pixel anisotropic Gaussians from parameter maps.

    lambda1, lambda2, theta: broadcastable arrays of shape (H, W) (variances px^2 and angle, the
    `kernels.gaussian_from_params` parameterisation). Centre of mass at
    `kernels.target_center(size, scale, convention)`. Returns (H, W, K, K), each sum 1.
    """
    l1, l2, th = jnp.broadcast_arrays(jnp.asarray(lambda1, _F32), jnp.asarray(lambda2, _F32),
                                      jnp.asarray(theta, _F32))
    c = _kernels.target_center(size, scale, convention)
    k = _gaussians_flat(l1.ravel(), l2.ravel(), th.ravel(), size=size, center=float(c),
                        recenter=recenter)
    return k.reshape(l1.shape + (size, size))


@functools.partial(jax.jit, static_argnames=("size", "center", "recenter"))
def _gaussians_flat(l1, l2, th, *, size, center, recenter):
    # jitted so that eager callers do not dispatch the per-pixel Newton re-centring op by op.
    one = functools.partial(_kernels.gaussian_from_params, size, center=center, recenter=recenter)
    return jax.vmap(lambda a, b, t: one(a, b, t))(l1, l2, th)


def depth_blur_amount(depth, focus: float = 0.0):
    """Thin-lens-like defocus amount g in [0, 1] from a depth map in [0, 1]:
    g = |depth - focus| / max(focus, 1 - focus), clipped. A fixed function of depth (not normalised
    per image), so the depth -> kernel map is the same for every image."""
    depth = jnp.asarray(depth, _F32)
    return jnp.clip(jnp.abs(depth - focus) / max(focus, 1.0 - focus), 0.0, 1.0)


def depth_gaussian_field(depth, size: int, scale: int, *, lambda_min=None, lambda_max=None,
                         focus: float = 0.0, anisotropy: float = 0.6, theta=0.0,
                         convention: str = "aligned", recenter: str = "mean"):
    """Depth-dependent SV Gaussian field (SSR-style synthetic data).

    With g = `depth_blur_amount(depth, focus)` in [0, 1] (focus=0: blur grows monotonically with
    depth; 0 < focus < 1: a focal plane with blur growing away from it):
        lambda1 = lambda_min + (lambda_max - lambda_min) * g
        lambda2 = max(lambda1 * (1 - anisotropy * g), lambda_min)
    (variances, px^2; default range `kernels.dkp_test_range(scale)` = [0.175 s, min(2.5 s, 10)]),
    orientation `theta` (scalar or (H, W) map, radians). So both the blur width and the anisotropy
    grow with the defocus amount: in-focus pixels get the narrowest isotropic kernel.

    Args:
      depth: (H, W) (or (H, W, 1)) float in [0, 1], larger = farther (kfsr.depth convention).
      size, scale: kernel size K and SR scale (centre convention as `kernels.target_center`).
    Returns:
      (H, W, K, K) field, every kernel non-negative with sum 1.
    """
    depth = jnp.asarray(depth, _F32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise KfsrInputError(f"depth_gaussian_field: depth must be (H, W), got {depth.shape}")
    lo, hi = _default_range(scale, lambda_min, lambda_max)
    return _depth_field_jit(depth, lo, hi, anisotropy, theta, size=size, scale=scale,
                            focus=float(focus), convention=convention, recenter=recenter)


@functools.partial(jax.jit, static_argnames=("size", "scale", "focus", "convention", "recenter"))
def _depth_field_jit(depth, lo, hi, anisotropy, theta, *, size, scale, focus, convention,
                     recenter):
    g = depth_blur_amount(depth, focus)
    l1 = lo + (hi - lo) * g
    l2 = jnp.maximum(l1 * (1.0 - anisotropy * g), lo)
    return gaussian_field(size, l1, l2, jnp.broadcast_to(jnp.asarray(theta, _F32), depth.shape),
                          scale=scale, convention=convention, recenter=recenter)


def _blocks_to_pixels(block_values, hw, block):
    """(nbh, nbw, ...) -> (H, W, ...) by repeating each block value over its block x block
    pixels (the last row/column of blocks is cropped)."""
    h, w = hw
    out = jnp.repeat(jnp.repeat(block_values, block, axis=0), block, axis=1)
    return out[:h, :w]


def block_field(key, hw, block: int, size: int, scale: int, *, lambda_min=None,
                lambda_max=None, noise_level=0.0, convention: str = "aligned",
                recenter: str = "mean"):
    """MANet-style piecewise-constant field: an independent random anisotropic Gaussian
    (`kernels.anisotropic_gaussian`: variances ~ U[lambda_min, lambda_max], angle ~ U[0, pi)) per
    `block` x `block` block (MANet `sv_mode` 5 uses 40x40 HR blocks and the range
    [0.175 s, 2.5 s]). `recenter` as `kernels.gaussian_from_params` ("none" is much cheaper to
    compile). Returns (H, W, K, K) for hw = (H, W)."""
    h, w = hw
    nbh, nbw = -(-h // block), -(-w // block)
    lo, hi = _default_range(scale, lambda_min, lambda_max)
    ks = _block_kernels(key, lo, hi, noise_level=float(noise_level), n=nbh * nbw, size=size,
                        scale=scale, convention=convention, recenter=recenter)
    return _blocks_to_pixels(ks.reshape(nbh, nbw, size, size), hw, block)


@functools.partial(jax.jit, static_argnames=("noise_level", "n", "size", "scale", "convention",
                                             "recenter"))
def _block_kernels(key, lo, hi, *, noise_level, n, size, scale, convention, recenter):
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: _kernels.anisotropic_gaussian(
        k, size, scale, lo, hi, noise_level, convention, recenter=recenter))(keys)


def manet_sv_field(mode: int, hw, size: int, scale: int, *, block: int = 40, key=None,
                   convention: str = "aligned", recenter: str = "mean"):
    """MANet's spatially variant test fields (`sv_mode`, blinddiff_ssr.md §3.5), per block.

    a = (2.5 - 0.175) s, b = 0.175 s (variances); r, c = block row / column fractions in [0, 1):
      1: (a+b, a r + b, 0)      2: (a c + b, a r + b, 0)      3: (a+b, b, pi r)
      4: (a c + b, a r + b, pi r)   5: random per block (`block_field`, needs key)
      6: (a+b, b, pi/4 or 3pi/4 in a checkerboard)
    Kernels use kfsr's centre `convention` (MANet's own top-left shift is not reproduced).
    Returns (H, W, K, K).
    """
    h, w = hw
    if mode == 5:
        if key is None:
            raise KfsrInputError("manet_sv_field: mode 5 needs a key")
        return block_field(key, hw, block, size, scale, lambda_min=0.175 * scale,
                           lambda_max=2.5 * scale, convention=convention, recenter=recenter)
    if mode not in (1, 2, 3, 4, 6):
        raise KfsrInputError(f"manet_sv_field: mode must be one of 1..6, got {mode!r}")
    nbh, nbw = -(-h // block), -(-w // block)
    a, b = (2.5 - 0.175) * scale, 0.175 * scale
    r = (np.arange(nbh) / nbh)[:, None] * np.ones((1, nbw))
    c = np.ones((nbh, 1)) * (np.arange(nbw) / nbw)[None, :]
    full = np.full((nbh, nbw), a + b)
    if mode == 1:
        l1, l2, th = full, a * r + b, 0 * r
    elif mode == 2:
        l1, l2, th = a * c + b, a * r + b, 0 * r
    elif mode == 3:
        l1, l2, th = full, 0 * r + b, math.pi * r
    elif mode == 4:
        l1, l2, th = a * c + b, a * r + b, math.pi * r
    else:
        checker = (np.arange(nbh)[:, None] + np.arange(nbw)[None, :]) % 2
        l1, l2, th = full, 0 * r + b, np.where(checker == 0, math.pi / 4, 3 * math.pi / 4)
    ks = gaussian_field(size, l1, l2, th, scale=scale, convention=convention, recenter=recenter)
    return _blocks_to_pixels(ks, hw, block)


__all__ = ["sv_blur", "sv_blur_basis", "field_from_basis", "fit_pca_basis", "project_onto_basis",
           "degrade_spatial", "degrade_spatial_basis", "upscale_field", "output_shape",
           "blurred_shape", "gaussian_field", "depth_blur_amount", "depth_gaussian_field",
           "block_field", "manet_sv_field"]
