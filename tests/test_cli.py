"""run.py end to end: outputs, folders with a summary, skip-if-done, one-line errors."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from kfsr import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DKP_SET = os.path.join(ROOT, "..", "shared", "data", "set5_c224_x4_dkp")


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "run.py", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_nonblind_folder_run_writes_outputs_and_summary(tmp_path):
    """A folder of two LR images with per-image kernels and GT: one output folder each + summary."""
    lr_dir, k_dir, gt_dir = (tmp_path / d for d in ("lr", "k", "gt"))
    for d in (lr_dir, k_dir, gt_dir):
        d.mkdir()
    for name in ("bird", "head"):
        for src, dst, ext in (("lr", lr_dir, ".png"), ("kernels", k_dir, ".npy"), ("hr", gt_dir, ".png")):
            (dst / (name + ext)).write_bytes(open(os.path.join(DKP_SET, src, name + ext), "rb").read())
    before = {p: p.read_bytes() for p in lr_dir.iterdir()}
    out = tmp_path / "out"
    r = _run("--config=configs/nonblind.py", f"--input={lr_dir}", f"--kernel={k_dir}",
             f"--gt={gt_dir}", f"--gt_kernel={k_dir}", f"--output={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("bird", "head"):
        files = set(os.listdir(out / name))
        assert {"hr.png", "kernel.npy", "kernel.png", "metrics.json", "config.json"} <= files
        m = json.load(open(out / name / "metrics.json"))
        assert m["psnr_y"] > 28.0 and m["lr_psnr"] > 40.0, m
        assert io.load_image(str(out / name / "hr.png")).shape == (224, 224, 3)
    summary = json.load(open(out / "summary.json"))
    assert [r["image"] for r in summary["images"]] == ["bird", "head"]
    assert "| **mean** |" in open(out / "summary.md").read()
    assert {p: p.read_bytes() for p in lr_dir.iterdir()} == before  # inputs untouched
    # A second run skips the finished images.
    r2 = _run("--config=configs/nonblind.py", f"--input={lr_dir}", f"--kernel={k_dir}",
              f"--output={out}")
    assert r2.returncode == 0 and r2.stdout.count("skipped") == 2, r2.stdout


def test_blind_folder_batches_same_size_images(tmp_path):
    """--batch=2 on a folder: the two same-size images run as one vmapped batch, the odd-size
    one alone; every image gets its outputs; a rerun skips them all."""
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for name, crop in (("bird", 24), ("head", 24), ("woman", 28)):
        img = io.load_image(os.path.join(DKP_SET, "lr", name + ".png"))
        io.save_image(str(lr_dir / (name + ".png")), img[:crop, :crop])
    out = tmp_path / "out"
    args = ["--config=configs/dkp.py:test", f"--input={lr_dir}", f"--output={out}", "--scale=2",
            "--batch=2", "--config.schedule.outer_iters=2", "--config.schedule.i_loop_x=1",
            "--config.pke.warmup_steps=5"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "batch of 2 24x24 images: bird, head" in r.stdout, r.stdout
    # finished: the checkpoints that only served a resume are gone
    assert not os.path.exists(out / ".batches") and not os.path.exists(out / "woman" / "checkpoints")
    hrs = {}
    for name, crop in (("bird", 24), ("head", 24), ("woman", 28)):
        hrs[name] = io.load_image(str(out / name / "hr.png"))
        assert hrs[name].shape == (2 * crop, 2 * crop, 3)
        k = np.load(out / name / "kernel.npy")
        assert k.shape == (11, 11) and abs(float(k.sum()) - 1) < 1e-4
    assert np.abs(hrs["bird"] - hrs["head"]).mean() > 0.02  # each image got its own result
    r2 = _run(*args)
    assert r2.returncode == 0 and r2.stdout.count("skipped") == 3, r2.stdout
    r3 = _run(*args[:-4], "--batch=0")
    assert r3.returncode == 2 and "--batch" in r3.stderr


@pytest.mark.parametrize("args, needle", [
    (["--config=configs/nonblind.py", "--input=/no/such.png"], "file not found"),
    (["--config=configs/nonblind.py", "--config.bogus=1"], "no field 'bogus'"),
    (["--config=configs/nonblind.py", "--config.scale=abc"], "--config.scale"),
    (["--config=configs/nonblind.py", "--scale=0"], "config.scale=0"),
    (["--config=configs/nonblind.py:nope"], "unknown preset"),
    (["--config=configs/no_such.py"], "No such file"),
    (["--config=configs/nonblind.py", "stray"], "unexpected arguments"),
])
def test_bad_flags_give_one_line_errors(args, needle):
    r = _run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_bad_image_and_small_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r = _run("--config=configs/nonblind.py", f"--input={bad}")
    assert r.returncode == 2 and "bad.png" in r.stderr and "Traceback" not in r.stderr
    tiny = tmp_path / "tiny.png"
    io.save_image(str(tiny), np.zeros((2, 2, 3), np.float32))
    r = _run("--config=configs/nonblind.py", f"--input={tiny}")
    assert r.returncode == 2 and "tiny.png" in r.stderr, r.stderr[-800:]


def test_dry_run_prints_resolved_config():
    r = _run("--config=configs/nonblind.py:tv", "--scale=2", "--dry-run")
    assert r.returncode == 0 and "scale: 2" in r.stdout and "solver: tv" in r.stdout, r.stdout


def test_finished_run_drops_checkpoints_but_keeps_a_trained_pd(tmp_path):
    from kfsr import cli

    ck = tmp_path / "img" / "checkpoints"
    (ck / "phase2" / "3").mkdir(parents=True)
    (ck / "pd" / "0").mkdir(parents=True)
    (ck / "pd" / "0" / "params").write_text("x")
    cli._drop_checkpoints(str(ck), str(tmp_path / "img"))
    assert not ck.exists()
    assert (tmp_path / "img" / "pd" / "0" / "params").read_text() == "x"
    cli._drop_checkpoints(str(ck), str(tmp_path / "img"))  # nothing to drop: no error


def _none_leaves(c, prefix=""):
    for name, value in c.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _none_leaves(value, f"{prefix}{name}.")
        elif value is None:
            yield prefix + name, c._fields[name]


@pytest.mark.parametrize("name", ["dkp", "dkp_motion", "diff_dkp", "kernelfusion", "blinddiff",
                                  "ssr", "nonblind"])
def test_every_optional_config_field_can_be_overridden(name):
    """Fields that default to None are typed placeholders: `--config.<field>=value` must work
    (ml_collections refuses to override a plain None), e.g. --config.checkpoint=<dir>."""
    import importlib

    mod = importlib.import_module(f"configs.{name}")
    for preset in getattr(mod, "PRESETS", (None,)):
        c = mod.get_config(preset) if preset else mod.get_config()
        bad = [f for f, ref in _none_leaves(c)
               if not isinstance(ref, ml_collections.FieldReference)]
        assert not bad, (name, preset, bad)
