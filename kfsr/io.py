"""Robust image / kernel reading and atomic result writing.

Reading (:func:`load_image`) returns ``float32 (H, W, 3)`` in [0, 1] (``(H, W, 1)`` with
``keep_grey=True``) for PNG, JPEG, TIFF, BMP (anything Pillow opens): 8-bit data is divided by 255,
16-bit data by 65535 with full 16-bit precision, palette images are expanded, greyscale is replicated
to 3 channels, and an alpha channel is dropped with a warning naming the file. PNG is decoded by
libpng and 16-bit colour TIFF by libtiff (both through ``imagecodecs``; Pillow truncates 16-bit
colour to 8 bits), everything else by Pillow. EXIF orientation is not applied: arrays are returned
as stored, so an HR and its LR read the same way line up. Every problem with the file raises
:class:`kfsr.errors.KfsrInputError` with a one-line message that names the file.

Writing is atomic: data goes to a temporary file in the destination directory, is flushed and
fsync'ed, then ``os.replace``'d onto the target, so a crash or an encoder error never leaves a
half-written file or destroys the previous one. Writers take ``protect=`` (the caller's input paths)
and refuse to overwrite any of them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import secrets
import struct
import warnings
import zlib
from typing import Any, Callable, Iterable, Mapping

import imagecodecs
import numpy as np
from PIL import Image, UnidentifiedImageError

from kfsr.errors import KfsrInputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_image",
    "check_lr",
    "mod_crop",
    "list_images",
    "save_image",
    "read_json",
    "write_json",
    "write_text",
    "save_kernel",
    "save_result",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")


def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


def _err(path, problem: str) -> KfsrInputError:
    return KfsrInputError(_one_line(f"{os.fspath(path)}: {problem}"))


# ----------------------------------------------------------------------------- reading


class _CodecLog(logging.Handler):
    """Collects what libpng / libtiff report through imagecodecs' logger while a file is decoded.

    The messages go into the error message (libpng says *why* an IHDR is invalid) instead of being
    printed by logging's last-resort handler; handlers the application configured still get them.
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _codec_pixels(path: str, decode: Callable[[bytes], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Decode the file with an imagecodecs codec: (uint8/uint16 (H,W) or (H,W,C), has alpha)."""
    with open(path, "rb") as f:
        data = f.read()
    log, logger = _CodecLog(), logging.getLogger("imagecodecs")
    logger.addHandler(log)
    try:
        arr = decode(data)
    except (imagecodecs.PngError, imagecodecs.TiffError, imagecodecs.BmpError, ValueError) as e:
        notes = "; ".join(_one_line(m) for m in log.messages)
        if re.search(r"\b(width|height) is zero", notes):
            raise _err(path, f"zero-size image ({notes})") from e
        raise _err(path, f"truncated or corrupt image ({type(e).__name__}: {e}"
                         f"{'; ' + notes if notes else ''})") from e
    finally:
        logger.removeHandler(log)
    return arr, arr.ndim == 3 and arr.shape[-1] in (2, 4)


def _pillow_truncates(im: Image.Image) -> bool:
    """Whether Pillow would decode this image's >8-bit colour samples to 8 bits (16-bit RGB TIFF)."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA", "LA"):
        return False
    bits = im.tag_v2.get(258, 8)  # BitsPerSample
    return max(bits if isinstance(bits, tuple) else (bits,)) > 8


def _pillow_pixels(im: Image.Image, path: str) -> tuple[np.ndarray, bool]:
    """Pixels of a Pillow image (palette expanded, odd modes converted): (array, has alpha)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    elif mode not in ("L", "LA", "RGB", "RGBA", "F") and not mode.startswith("I"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...
    arr = np.asarray(im)
    if im.mode == "I":  # 32-bit int: Pillow's mode for 16-bit greyscale in some formats
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise _err(path, f"32-bit integer image with values in [{lo}, {hi}], expected 16-bit data")
        arr = arr.astype(np.uint16)
    return arr, im.mode in ("RGBA", "LA")


def _decode(path: str) -> tuple[np.ndarray, bool]:
    """Pixels as stored, (H,W) or (H,W,C) uint8/uint16/float32, and whether the last channel is alpha.

    PNG (every bit depth and colour type) goes to libpng and 16-bit colour TIFF to libtiff (both via
    imagecodecs; Pillow truncates 16-bit colour to 8 bits); everything else to Pillow.
    """
    try:
        im = Image.open(path)
    except UnidentifiedImageError as e:
        # Pillow rejects zero-size images as unidentified: let libpng / the BMP codec say what is wrong.
        with open(path, "rb") as f:
            head = f.read(64)
        for check, decode in ((imagecodecs.png_check, imagecodecs.png_decode),
                              (imagecodecs.bmp_check, imagecodecs.bmp_decode)):
            if check(head):
                return _codec_pixels(path, decode)
        raise _err(path, "not a recognised image file (expected PNG, JPEG, TIFF, BMP, ...)") from e
    with im:
        if im.format == "PNG":
            return _codec_pixels(path, imagecodecs.png_decode)
        if _pillow_truncates(im):
            return _codec_pixels(path, imagecodecs.tiff_decode)
        im.load()
        return _pillow_pixels(im, path)


def load_image(path, keep_grey: bool = False) -> np.ndarray:
    """Read an image as ``float32 (H, W, 3)`` in [0, 1] (``(H, W, 1)`` for grey with ``keep_grey``).

    8-bit data is scaled by 1/255, 16-bit data by 1/65535 (full precision). Greyscale is replicated
    to 3 channels unless ``keep_grey`` (colour images always give 3 channels). Palette images are
    expanded; alpha is dropped with a ``UserWarning`` naming the file.

    Raises KfsrInputError (one line naming the file) for: a missing file, a directory, an empty
    file, a file that is not a recognised image, a truncated or corrupt image, a zero-size image.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _err(path, "file not found")
    if os.path.isdir(path):
        raise _err(path, "is a directory, expected an image file")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise _err(path, f"cannot read file ({e.strerror or e})") from e
    if size == 0:
        raise _err(path, "empty file (0 bytes)")
    try:
        arr, alpha = _decode(path)
    except KfsrInputError:
        raise
    except PermissionError as e:
        raise _err(path, "permission denied") from e
    except Image.DecompressionBombError as e:
        raise _err(path, f"image too large ({e})") from e
    except (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error, IndexError) as e:
        raise _err(path, f"truncated or corrupt image ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.size == 0:
        raise _err(path, f"zero-size image ({arr.shape[1]}x{arr.shape[0]})")
    if alpha:
        opaque = np.all(arr[..., -1] == (np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1))
        note = ("fully opaque" if opaque
                else "has transparent pixels; colours kept as stored, not composited")
        warnings.warn(f"{path}: dropping the alpha channel ({note})", UserWarning, stacklevel=2)
        arr = arr[..., :-1]
    if arr.shape[-1] not in (1, 3):
        raise _err(path, f"unsupported pixel format ({arr.shape[-1]} channels)")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind in "ui" and arr.dtype.itemsize == 2:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise _err(path, "floating-point image with values outside [0, 1] or non-finite")
    else:
        raise _err(path, f"unsupported pixel format ({arr.dtype}, {arr.shape[-1]} channels)")
    if arr.shape[-1] == 1 and not keep_grey:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def mod_crop(img, scale: int):
    """Crop the bottom/right so that height and width are multiples of ``scale``."""
    s = int(scale)
    if s < 1:
        raise KfsrInputError(f"scale: must be a positive integer, got {scale!r}")
    h, w = img.shape[0], img.shape[1]
    return img[: h - h % s, : w - w % s]


def check_lr(img, scale: int, kernel_size: int | None = None, name: str = "input",
             require_divisible: bool = False) -> np.ndarray:
    """Validate an image before a run; returns it as ``float32 (H, W, C)``.

    Raises KfsrInputError (one line naming ``name``) when: ``scale`` is not a positive integer; the
    array is not (H, W) / (H, W, C) with C in {1, 3}; it is empty or non-finite; it is smaller than
    ``kernel_size`` on a side; or, with ``require_divisible`` (e.g. for an HR ground truth), H or W
    is not divisible by ``scale`` (use :func:`mod_crop`).
    """
    try:
        ok = not isinstance(scale, bool) and float(scale).is_integer() and int(scale) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise KfsrInputError(f"scale: must be a positive integer, got {scale!r}")
    s = int(scale)
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise KfsrInputError(f"{name}: expected an image of shape (H,W,3) or (H,W,1), got {arr.shape}")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise KfsrInputError(f"{name}: empty image ({h}x{w})")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise KfsrInputError(f"{name}: image contains NaN or Inf values")
    if kernel_size is not None and (h < int(kernel_size) or w < int(kernel_size)):
        raise KfsrInputError(
            f"{name}: image {h}x{w} is smaller than the {kernel_size}x{kernel_size} kernel")
    if require_divisible and (h % s or w % s):
        raise KfsrInputError(
            f"{name}: size {h}x{w} is not divisible by scale {s}; crop to "
            f"{h - h % s}x{w - w % s} first (kfsr.io.mod_crop)")
    return arr


def list_images(folder) -> list[str]:
    """Sorted paths of the image files (by extension, case-insensitive, no hidden files) in ``folder``."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise _err(folder, "folder not found")
    if not os.path.isdir(folder):
        raise _err(folder, "is not a folder")
    names = sorted(
        n for n in os.listdir(folder)
        if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
        and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise _err(folder, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder")
    return [os.path.join(folder, n) for n in names]


# ----------------------------------------------------------------------------- atomic writing


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_protect(path: str, protect: Iterable) -> None:
    if isinstance(protect, (str, os.PathLike)):
        protect = [protect]
    for p in protect or ():
        if p is not None and _same_file(path, os.fspath(p)):
            raise _err(path, f"refusing to overwrite an input file ({os.fspath(p)})")


def _fsync_dir(d: str) -> None:
    """Best effort: make the rename durable (POSIX); ignored where directories cannot be opened."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path, write: Callable[[Any], None], protect: Iterable = ()) -> str:
    """Write via ``write(fileobj)`` to a temp file beside ``path``, fsync, then ``os.replace``.

    On any error the temp file is removed and an existing ``path`` is left untouched. The new file
    gets the usual permissions (0666 minus umask), not the 0600 of ``tempfile``.
    """
    path = os.fspath(path)
    _check_protect(path, protect)
    if os.path.isdir(path):
        raise _err(path, "is a directory, cannot write a file there")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(d)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _encode_image(f, arr: np.ndarray, fmt: str) -> None:
    """Encode integer pixels ``arr`` (H, W, C) to the open binary file ``f`` in format ``fmt``."""
    if arr.dtype == np.uint16:  # Pillow cannot write 16-bit colour PNG
        f.write(imagecodecs.png_encode(arr[..., 0] if arr.shape[-1] == 1 else arr))
        return
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    img.save(f, format=fmt)


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
            ".bmp": "BMP", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM"}


def _to_levels(img, bits: int) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"save_image: expected (H,W), (H,W,C) with C in 1..4, got {arr.shape}")
    dt = np.uint8 if bits == 8 else np.uint16
    if arr.dtype == dt:
        return arr
    if arr.dtype == np.uint8 and bits == 16:
        return arr.astype(np.uint16) * 257
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"save_image: expected float in [0,1] or {np.dtype(dt).name}, got {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("save_image: image contains NaN or Inf")
    peak = 255.0 if bits == 8 else 65535.0
    return np.clip(np.round(arr * peak), 0, peak).astype(dt)


def save_image(path, img, bits: int = 8, protect: Iterable = ()) -> str:
    """Atomically write ``img`` (float [0,1] (H,W[,C]) or uint8/uint16 levels) and return the path.

    The format follows the extension (.png, .jpg, .tif, .bmp, ...; anything else is refused).
    ``bits=16`` writes a 16-bit PNG (grey, grey+alpha, RGB or RGBA; encoded by libpng through
    ``imagecodecs``). Refuses (KfsrInputError) to
    overwrite any path in ``protect`` (pass the run's input files).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise _err(path, f"unsupported output extension {ext!r} (use one of {', '.join(_FORMATS)})")
    if bits not in (8, 16):
        raise ValueError(f"save_image: bits must be 8 or 16, got {bits}")
    if bits == 16 and ext != ".png":
        raise _err(path, "16-bit output is only supported for .png")
    arr = _to_levels(img, bits)
    if arr.shape[-1] == 2 and bits == 8:
        arr = np.concatenate([np.repeat(arr[..., :1], 3, -1), arr[..., 1:]], -1)  # LA -> RGBA
    fmt = _FORMATS[ext]
    return _atomic_write(path, lambda f: _encode_image(f, arr, fmt), protect)


def _to_jsonable(obj):
    """Recursively convert numpy / jax / ml_collections / dataclass / path values to JSON types."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, np.generic):
        return _to_jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):  # ml_collections ConfigDict
        return _to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(_to_jsonable(k)) if not isinstance(k, str) else k: _to_jsonable(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):  # numpy / jax arrays
        arr = np.asarray(obj)
        return _to_jsonable(arr.item()) if arr.ndim == 0 else _to_jsonable(arr.tolist())
    if isinstance(obj, complex):
        return [obj.real, obj.imag]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return repr(obj)


def write_json(path, obj, protect: Iterable = ()) -> str:
    """Atomically write ``obj`` as indented JSON (numpy/jax scalars and arrays converted).

    Non-finite floats are written as ``NaN`` / ``Infinity`` (Python ``json`` convention, read back by
    ``json.load``), e.g. the PSNR of identical images.
    """
    text = json.dumps(_to_jsonable(obj), indent=2, sort_keys=False) + "\n"
    return write_text(path, text, protect)


def write_text(path, text: str, protect: Iterable = ()) -> str:
    """Atomically write ``text`` (UTF-8, newlines as given) and return the path.

    Same mechanism as :func:`write_json`: temp file, fsync, ``os.replace``; refuses (KfsrInputError)
    to overwrite any path in ``protect``.
    """
    if not isinstance(text, str):
        raise TypeError(f"write_text: expected str, got {type(text).__name__}")
    data = text.encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data), protect)


def read_json(path) -> Any:
    """Read a JSON file (``NaN`` / ``Infinity`` accepted, as :func:`write_json` writes them).

    Raises KfsrInputError (one line naming the file) for a missing file, a directory, an unreadable
    or empty file, text that is not UTF-8, or invalid JSON (with line and column).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _err(path, "file not found")
    if os.path.isdir(path):
        raise _err(path, "is a directory, expected a JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except PermissionError as e:
        raise _err(path, "permission denied") from e
    except UnicodeDecodeError as e:
        raise _err(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise _err(path, f"cannot read file ({e.strerror or e})") from e
    if not text.strip():
        raise _err(path, "empty file, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _err(path, f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e


def _kernel_picture(k: np.ndarray, cmap: str | None, min_size: int = 256) -> np.ndarray:
    """uint8 picture of a kernel: normalised to its max, nearest-neighbour enlarged to >= min_size."""
    kk = np.clip(k, 0.0, None)
    m = kk.max()
    kk = kk / m if m > 0 else kk
    f = max(1, math.ceil(min_size / min(k.shape)))
    big = np.repeat(np.repeat(kk, f, axis=0), f, axis=1)
    if cmap is not None:
        try:
            import matplotlib

            rgb = matplotlib.colormaps[cmap](big)[..., :3]
            return np.round(rgb * 255).astype(np.uint8)
        except ImportError:
            warnings.warn("matplotlib not available: kernel.png is greyscale", UserWarning, stacklevel=3)
    return np.round(big * 255).astype(np.uint8)


def save_kernel(outdir, k, protect: Iterable = (), cmap: str | None = None,
                name: str = "kernel") -> dict[str, str]:
    """Write ``<outdir>/kernel.npy`` (float32, as given) and ``kernel.png`` (for viewing).

    The PNG is the kernel normalised to its maximum (negative entries clipped to 0), enlarged with
    nearest neighbour to at least 256 px, greyscale or with the matplotlib colormap ``cmap``
    (e.g. ``"viridis"``; greyscale with a warning if matplotlib is missing). Returns
    ``{"kernel_npy": path, "kernel_png": path}``.
    """
    k = np.asarray(k, np.float32)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"save_kernel: expected a 2-D kernel, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("save_kernel: kernel contains NaN or Inf")
    outdir = os.fspath(outdir)
    npy = os.path.join(outdir, f"{name}.npy")
    png = os.path.join(outdir, f"{name}.png")
    _check_protect(npy, protect)
    _check_protect(png, protect)
    os.makedirs(outdir, exist_ok=True)
    _atomic_write(npy, lambda f: np.save(f, k, allow_pickle=False), protect)
    save_image(png, _kernel_picture(k, cmap), protect=protect)
    return {"kernel_npy": npy, "kernel_png": png}


def save_result(outdir, hr, kernel, metrics, config, inputs: Iterable = (),
                cmap: str | None = None) -> dict[str, str]:
    """Write a run's outputs to ``outdir`` (created) and return ``{name: path}`` of what was written.

    Files: ``hr.png`` (8-bit), ``kernel.npy`` + ``kernel.png`` (skipped if ``kernel`` is None),
    ``metrics.json``, ``config.json`` (``config``: ml_collections ConfigDict -> ``.to_dict()``, a
    dict, a dataclass or None). Refuses (KfsrInputError, nothing written) if ``outdir`` is one of
    ``inputs`` or any output file would overwrite one of ``inputs``.
    """
    outdir = os.fspath(outdir)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs or ())
    for p in inputs:
        if p is not None and _same_file(outdir, os.fspath(p)):
            raise _err(outdir, f"output folder is an input ({os.fspath(p)})")
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise _err(outdir, "output path exists and is not a folder")
    paths = {
        "hr": os.path.join(outdir, "hr.png"),
        "metrics": os.path.join(outdir, "metrics.json"),
        "config": os.path.join(outdir, "config.json"),
    }
    if kernel is not None:
        paths["kernel_npy"] = os.path.join(outdir, "kernel.npy")
        paths["kernel_png"] = os.path.join(outdir, "kernel.png")
    for p in paths.values():
        _check_protect(p, inputs)
    if hasattr(config, "to_dict") and callable(config.to_dict):
        config = config.to_dict()
    os.makedirs(outdir, exist_ok=True)
    written = {"hr": save_image(paths["hr"], hr, protect=inputs)}
    if kernel is not None:
        written.update(save_kernel(outdir, kernel, protect=inputs, cmap=cmap))
    written["metrics"] = write_json(paths["metrics"], metrics if metrics is not None else {},
                                    protect=inputs)
    written["config"] = write_json(paths["config"], config if config is not None else {},
                                   protect=inputs)
    return written
