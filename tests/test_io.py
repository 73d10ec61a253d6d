"""Tests for kfsr.io: every read path, every input error, atomic and protected writes."""
import io
import json
import os
import struct
import warnings
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from kfsr import io as kio
from kfsr.errors import KfsrInputError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- fixtures


def write_png16(path, a):
    """16-bit PNG via libpng (imagecodecs); Pillow cannot write 16-bit colour."""
    with open(path, "wb") as fh:
        fh.write(imagecodecs.png_encode(a[..., 0] if a.shape[-1] == 1 else a))


def with_size(data, width, height):
    """A PNG with its IHDR width/height replaced (and the chunk CRC fixed), e.g. zero-size."""
    ihdr = bytearray(data[12:33])  # b"IHDR" + 13 data bytes + CRC
    ihdr[4:12] = struct.pack(">II", width, height)
    ihdr[17:21] = struct.pack(">I", zlib.crc32(bytes(ihdr[:17])))
    return data[:12] + bytes(ihdr) + data[33:]


def rand16(shape):
    a = RNG.integers(0, 65536, size=shape, dtype=np.uint16)
    a.flat[0] = 0x0102  # low byte not a copy of the high byte: 8-bit*257 could not produce it
    return a


def rand8(shape):
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- reading


def test_png8_rgb(tmp_path):
    a = rand8((7, 9, 3))
    Image.fromarray(a).save(tmp_path / "a.png")
    x = kio.load_image(tmp_path / "a.png")
    assert x.dtype == np.float32 and x.shape == (7, 9, 3)
    np.testing.assert_array_equal(x, a.astype(np.float32) / 255)


@pytest.mark.parametrize("channels", [3, 4])
def test_png16_colour_full_precision(tmp_path, channels):
    a = rand16((6, 5, channels))
    write_png16(tmp_path / "a.png", a)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        x = kio.load_image(tmp_path / "a.png")
    assert x.shape == (6, 5, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(np.round(x.astype(np.float64) * 65535).astype(np.uint16), a[..., :3])
    assert (len(rec) == 1 and "a.png" in str(rec[0].message)) == (channels == 4)


def test_png16_grey_and_grey_alpha(tmp_path):
    g = rand16((5, 8))
    Image.fromarray(g).save(tmp_path / "g.png")  # Pillow writes mode I;16
    x = kio.load_image(tmp_path / "g.png", keep_grey=True)
    assert x.shape == (5, 8, 1)
    np.testing.assert_array_equal(np.round(x[..., 0].astype(np.float64) * 65535), g)
    x3 = kio.load_image(tmp_path / "g.png")
    assert x3.shape == (5, 8, 3)
    np.testing.assert_array_equal(x3, np.repeat(x, 3, -1))
    la = rand16((4, 3, 2))
    write_png16(tmp_path / "la.png", la)
    with pytest.warns(UserWarning, match="la.png.*alpha"):
        y = kio.load_image(tmp_path / "la.png", keep_grey=True)
    np.testing.assert_array_equal(np.round(y[..., 0].astype(np.float64) * 65535), la[..., 0])


def test_grey8_replicated(tmp_path):
    g = rand8((6, 4))
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    x = kio.load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(x, np.repeat(g[..., None], 3, -1) / np.float32(255))
    assert kio.load_image(tmp_path / "g.png", keep_grey=True).shape == (6, 4, 1)
    Image.fromarray(g > 128).save(tmp_path / "b.png")  # mode "1"
    np.testing.assert_array_equal(kio.load_image(tmp_path / "b.png", keep_grey=True)[..., 0], g > 128)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_dropped_with_warning(tmp_path, mode):
    a = rand8((5, 6, 4 if mode == "RGBA" else 2))
    a[..., -1] = 255
    Image.fromarray(a, mode).save(tmp_path / "alpha.png")
    with pytest.warns(UserWarning, match=r"alpha\.png: dropping the alpha channel \(fully opaque\)"):
        x = kio.load_image(tmp_path / "alpha.png")
    ref = a[..., :3] if mode == "RGBA" else np.repeat(a[..., :1], 3, -1)
    np.testing.assert_array_equal(x, ref / np.float32(255))


def test_palette(tmp_path):
    a = rand8((8, 8, 3))
    p = Image.fromarray(a).quantize(colors=16)
    p.save(tmp_path / "p.png")
    x = kio.load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(x, np.asarray(p.convert("RGB")) / np.float32(255))
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    with pytest.warns(UserWarning, match="pt.png"):
        assert kio.load_image(tmp_path / "pt.png").shape == (8, 8, 3)


@pytest.mark.parametrize("ext", ["jpg", "tif", "bmp"])
def test_other_formats_8bit(tmp_path, ext):
    a = (np.linspace(0, 255, 16 * 16 * 3).reshape(16, 16, 3)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / f"a.{ext}", **({"quality": 95} if ext == "jpg" else {}))
    x = kio.load_image(tmp_path / f"a.{ext}")
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    with Image.open(tmp_path / f"a.{ext}") as im:
        np.testing.assert_array_equal(x, np.asarray(im.convert("RGB")) / np.float32(255))
    if ext != "jpg":
        np.testing.assert_array_equal(x, a / np.float32(255))


@pytest.mark.parametrize("layout", [
    {}, {"planarconfig": "separate", "compression": "zlib", "predictor": True}, {"byteorder": ">"}])
def test_tiff16(tmp_path, layout):
    tifffile = pytest.importorskip("tifffile")  # an independent (pure Python) TIFF writer
    a = rand16((4, 6, 3))
    tifffile.imwrite(tmp_path / "c.tif", a, photometric="rgb", **layout)
    x = kio.load_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(np.round(x.astype(np.float64) * 65535).astype(np.uint16), a)
    g = rand16((3, 5))
    Image.fromarray(g).save(tmp_path / "g.tif")
    y = kio.load_image(tmp_path / "g.tif", keep_grey=True)
    np.testing.assert_array_equal(np.round(y[..., 0].astype(np.float64) * 65535), g)


def test_tiff16_alpha(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = rand16((4, 6, 4))
    tifffile.imwrite(tmp_path / "ca.tif", a, photometric="rgb", extrasamples=["unassalpha"])
    with pytest.warns(UserWarning, match=r"ca\.tif: dropping the alpha channel \(has transparent"):
        x = kio.load_image(tmp_path / "ca.tif")
    np.testing.assert_array_equal(np.round(x.astype(np.float64) * 65535).astype(np.uint16), a[..., :3])


# ----------------------------------------------------------------------------- read errors


def _make_bad(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.png"
    if kind == "missing":
        pass
    elif kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello, I am not a picture\n")
    elif kind in ("truncated_png", "truncated_jpg"):
        buf = tmp_path / ("full.png" if kind == "truncated_png" else "full.jpg")
        Image.fromarray(rand8((64, 64, 3))).save(buf)
        data = buf.read_bytes()
        p = tmp_path / f"bad_{kind}.{buf.suffix[1:]}"
        p.write_bytes(data[: len(data) // 2])
    elif kind == "zero_size":
        buf = io.BytesIO()
        Image.fromarray(rand16((1, 4, 3))[..., 0]).save(buf, format="PNG")
        p.write_bytes(with_size(buf.getvalue(), 4, 0))
    elif kind == "zero_size_bmp":
        buf = io.BytesIO()
        Image.fromarray(rand8((2, 4, 3))).save(buf, format="BMP")
        data = bytearray(buf.getvalue())
        data[22:26] = struct.pack("<i", 0)  # BITMAPINFOHEADER height
        p = tmp_path / "bad_zero.bmp"
        p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("kind,words", [
    ("missing", "not found"), ("directory", "directory"), ("empty", "empty"),
    ("text", "not a recognised image"), ("truncated_png", "truncated"),
    ("truncated_jpg", "truncated"), ("zero_size", "zero-size"), ("zero_size_bmp", "zero-size"),
])
def test_read_errors_one_line_naming_file(tmp_path, capsys, kind, words):
    p = _make_bad(tmp_path, kind)
    with pytest.raises(KfsrInputError) as ei:
        kio.load_image(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg and words in msg, msg
    assert "PNG warning" not in capsys.readouterr().err  # libpng's diagnosis is in msg, not on stderr


# ----------------------------------------------------------------------------- checks and listing


def test_check_lr_and_mod_crop():
    img = np.zeros((10, 13, 3), np.float32)
    assert kio.check_lr(img, 2, kernel_size=9).shape == (10, 13, 3)
    with pytest.raises(KfsrInputError, match=r"^lr: image 10x13 is smaller than the 11x11 kernel$"):
        kio.check_lr(img, 2, kernel_size=11, name="lr")
    with pytest.raises(KfsrInputError, match=r"hr: size 10x13 is not divisible by scale 2.*mod_crop"):
        kio.check_lr(img, 2, name="hr", require_divisible=True)
    for bad in (0, 2.5, -1, "four"):
        with pytest.raises(KfsrInputError, match="scale"):
            kio.check_lr(img, bad)
    with pytest.raises(KfsrInputError, match="NaN"):
        kio.check_lr(np.full((4, 4, 3), np.nan), 2)
    assert kio.mod_crop(img, 4).shape == (8, 12, 3)
    kio.check_lr(kio.mod_crop(img, 2), 2, require_divisible=True)


def test_list_images(tmp_path):
    for n in ["b.PNG", "a.jpg", "c.tif", "notes.txt", ".hidden.png"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [os.path.basename(p) for p in kio.list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tif"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KfsrInputError, match=r"empty: no image files"):
        kio.list_images(empty)
    with pytest.raises(KfsrInputError, match="not found"):
        kio.list_images(tmp_path / "nope")


# ----------------------------------------------------------------------------- writing


def _tmp_leftovers(d):
    return [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_save_image_roundtrip_8_and_16(tmp_path):
    x = RNG.random((5, 7, 3)).astype(np.float32)
    p8 = kio.save_image(tmp_path / "x8.png", x)
    np.testing.assert_array_equal(kio.load_image(p8), np.round(x * 255) / np.float32(255))
    p16 = kio.save_image(tmp_path / "x16.png", x, bits=16)
    y = kio.load_image(p16)
    np.testing.assert_allclose(y, x, atol=0.5 / 65535 + 1e-7)
    levels = np.round(x.astype(np.float64) * 65535).astype(np.uint16)
    with Image.open(p16) as im:  # a real PNG that Pillow reads too (colour: high bytes only)
        assert im.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), (levels >> 8).astype(np.uint8))
    g = kio.save_image(tmp_path / "g16.png", x[..., :1], bits=16)
    np.testing.assert_allclose(kio.load_image(g, keep_grey=True), x[..., :1], atol=0.5 / 65535 + 1e-7)
    with Image.open(g) as im:  # Pillow reads 16-bit grey at full precision
        np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), levels[..., 0])
    assert oct(os.stat(p8).st_mode & 0o777) != oct(0o600)  # normal permissions, not tempfile's
    assert not _tmp_leftovers(tmp_path)


def test_save_image_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    kio.save_image(target, np.zeros((4, 4, 3), np.float32))
    before = target.read_bytes()

    def broken(f, arr, fmt):
        f.write(b"\x89PNG partial garbage")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(kio, "_encode_image", broken)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        kio.save_image(target, np.ones((4, 4, 3), np.float32))
    assert target.read_bytes() == before
    assert not _tmp_leftovers(tmp_path)


def test_write_json_atomic_and_converts(tmp_path, monkeypatch):
    import jax.numpy as jnp
    import ml_collections

    obj = {"psnr": np.float32(30.5), "n": np.int64(3), "arr": np.arange(3), "j": jnp.ones(2),
           "js": jnp.float32(2.0), "t": (1, 2), 4: "int key", "inf": float("inf"),
           "cfg": ml_collections.ConfigDict({"a": 1, "b": {"c": 0.5}})}
    p = kio.write_json(tmp_path / "m.json", obj)
    back = json.loads(open(p).read())
    assert back == {"psnr": 30.5, "n": 3, "arr": [0, 1, 2], "j": [1.0, 1.0], "js": 2.0, "t": [1, 2],
                    "4": "int key", "inf": float("inf"), "cfg": {"a": 1, "b": {"c": 0.5}}}
    before = open(p, "rb").read()
    monkeypatch.setattr(kio.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(TypeError("boom")))
    with pytest.raises(TypeError):
        kio.write_json(p, {"x": 1})
    assert open(p, "rb").read() == before and not _tmp_leftovers(tmp_path)


def test_read_json(tmp_path):
    obj = {"psnr": float("nan"), "inf": float("inf"), "k": [1, 2.5], "s": "ü"}
    p = kio.write_json(tmp_path / "m.json", obj)
    back = kio.read_json(p)
    assert np.isnan(back.pop("psnr")) and back == {"inf": float("inf"), "k": [1, 2.5], "s": "ü"}
    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }\n')
    (tmp_path / "empty.json").write_text("  \n")
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    (tmp_path / "dir.json").mkdir()
    for name, words in [("missing.json", "file not found"), ("bad.json", "invalid JSON"),
                        ("empty.json", "empty file"), ("latin1.json", "not UTF-8"),
                        ("dir.json", "is a directory")]:
        with pytest.raises(KfsrInputError) as ei:
            kio.read_json(tmp_path / name)
        msg = str(ei.value)
        assert "\n" not in msg and msg.startswith(str(tmp_path / name)) and words in msg, msg
    with pytest.raises(KfsrInputError, match=r"bad\.json: invalid JSON \(Expecting value at line 2, column 7\)"):
        kio.read_json(tmp_path / "bad.json")


def test_write_text_atomic_and_protected(tmp_path, monkeypatch):
    p = kio.write_text(tmp_path / "sub" / "log.txt", "line 1\nü\n")
    assert p == str(tmp_path / "sub" / "log.txt")
    assert open(p, "rb").read() == "line 1\nü\n".encode("utf-8")
    with pytest.raises(TypeError, match="expected str"):
        kio.write_text(p, b"bytes")
    with pytest.raises(KfsrInputError, match="refusing to overwrite an input"):
        kio.write_text(p, "other", protect=[p])

    def crash(fd):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(kio.os, "fsync", crash)  # fails after the data went to the temp file
    with pytest.raises(RuntimeError, match="disk gone"):
        kio.write_text(p, "new text")
    monkeypatch.undo()
    assert open(p, encoding="utf-8").read() == "line 1\nü\n"
    assert not _tmp_leftovers(tmp_path / "sub")


def test_protect_inputs(tmp_path):
    inp = tmp_path / "in.png"
    kio.save_image(inp, np.zeros((4, 4, 3), np.float32))
    before = inp.read_bytes()
    link = tmp_path / "link.png"
    os.symlink(inp, link)
    for target in (inp, link, tmp_path / "." / "in.png"):
        with pytest.raises(KfsrInputError, match="refusing to overwrite an input"):
            kio.save_image(target, np.ones((4, 4, 3), np.float32), protect=[str(inp)])
    with pytest.raises(KfsrInputError, match="refusing"):
        kio.write_json(inp, {}, protect=inp)
    assert inp.read_bytes() == before


def test_save_kernel(tmp_path):
    k = np.zeros((19, 19), np.float32)
    k[8:11, 7:12] = 1.0
    k /= k.sum()
    paths = kio.save_kernel(tmp_path / "o", k)
    np.testing.assert_array_equal(np.load(paths["kernel_npy"]), k)
    pic = kio.load_image(paths["kernel_png"], keep_grey=True)
    assert min(pic.shape[:2]) >= 256 and pic.shape[0] % 19 == 0
    assert pic.max() == 1.0 and pic.min() == 0.0
    f = pic.shape[0] // 19
    np.testing.assert_array_equal(pic[::f, ::f, 0], k / k.max())  # nearest-neighbour enlargement
    cm = kio.save_kernel(tmp_path / "c", k, cmap="viridis")
    with Image.open(cm["kernel_png"]) as im:
        assert im.mode == "RGB"


def test_save_result(tmp_path):
    import ml_collections

    inp = tmp_path / "lr.png"
    kio.save_image(inp, np.zeros((4, 4, 3), np.float32))
    cfg = ml_collections.ConfigDict({"scale": 4, "lr": 5e-3})
    hr = RNG.random((16, 16, 3)).astype(np.float32)
    k = np.full((5, 5), 1 / 25, np.float32)
    out = tmp_path / "run" / "img"
    paths = kio.save_result(out, hr, k, {"psnr": np.float64(28.0)}, cfg, inputs=[str(inp)])
    assert set(paths) == {"hr", "kernel_npy", "kernel_png", "metrics", "config"}
    assert sorted(os.listdir(out)) == ["config.json", "hr.png", "kernel.npy", "kernel.png",
                                       "metrics.json"]
    assert json.load(open(paths["config"])) == {"scale": 4, "lr": 5e-3}
    assert json.load(open(paths["metrics"])) == {"psnr": 28.0}
    np.testing.assert_array_equal(kio.load_image(paths["hr"]), np.round(hr * 255) / np.float32(255))
    # refusing: the input lies where an output would go, or the output folder is an input
    inside = tmp_path / "d"
    kio.save_image(inside / "hr.png", hr)
    before = (inside / "hr.png").read_bytes()
    with pytest.raises(KfsrInputError, match="hr.png: refusing to overwrite an input"):
        kio.save_result(inside, hr, k, {}, {}, inputs=[inside / "hr.png"])
    assert (inside / "hr.png").read_bytes() == before
    assert sorted(os.listdir(inside)) == ["hr.png"]  # nothing else written
    with pytest.raises(KfsrInputError, match="output folder is an input"):
        kio.save_result(inside, hr, k, {}, {}, inputs=[inside])
    with pytest.raises(KfsrInputError, match="not a folder"):
        kio.save_result(inp, hr, k, {}, {})
