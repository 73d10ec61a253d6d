"""benchmarks/records.py: finished bench cases round-trip through the committed records; partial,
unfinished, large and generated files do not, and nothing that exists is overwritten."""
import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("records", os.path.join(ROOT, "benchmarks", "records.py"))
records = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(records)


def _write(path, data=b"{}"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_save_keeps_only_finished_small_records_and_load_restores_them(tmp_path):
    res, rec, back = tmp_path / "res", tmp_path / "rec", tmp_path / "back"
    m = res / "set5_c224_x4_motion_s0" / "dkp_cpu"
    _write(m / "baby.json", b'{"psnr_y": 30.0}')
    _write(m / "baby_config.json")
    _write(m / "baby_curve.json")
    np.save(m / "baby_kernel.npy", np.ones((33, 33), np.float32))
    _write(m / "baby.png", b"png")                      # SR image: not kept
    _write(m / "bird_partial.json")                     # unfinished case: not kept
    _write(m / "bird_config.json")
    _write(m / "bird.ckpt" / "10" / "x.json")           # checkpoint: not kept
    _write(m / "head_field.npy", b"0" * 10)             # not a record suffix
    _write(m / "head.json", b"{}")
    _write(m / "head_kernel.npy", b"0" * (records.MAX_BYTES + 1))  # too large
    _write(res / "set5_c224_x4_motion_s0" / "results.json")        # aggregate: rebuilt
    _write(res / "data" / "set5_c224_x4_motion_s0" / "manifest.json")

    n, conflicts = records.copy_tree(str(res), str(rec))
    kept = sorted(os.path.relpath(os.path.join(d, f), rec) for d, _, fs in os.walk(rec) for f in fs)
    assert kept == [os.path.join("set5_c224_x4_motion_s0", "dkp_cpu", f) for f in
                    ("baby.json", "baby_config.json", "baby_curve.json", "baby_kernel.npy",
                     "head.json")]
    assert n == 5 and conflicts == []

    assert records.main(["load", "--records", str(rec), "--results", str(back)]) == 0
    assert (back / "set5_c224_x4_motion_s0" / "dkp_cpu" / "baby.json").read_bytes() == \
        b'{"psnr_y": 30.0}'

    # a rerun with another result is a conflict, not a silent overwrite
    _write(m / "baby.json", b'{"psnr_y": 31.0}')
    n, conflicts = records.copy_tree(str(res), str(rec))
    assert n == 0 and conflicts == [os.path.join("set5_c224_x4_motion_s0", "dkp_cpu", "baby.json")]
    assert (rec / "set5_c224_x4_motion_s0" / "dkp_cpu" / "baby.json").read_bytes() == \
        b'{"psnr_y": 30.0}'
    n, _ = records.copy_tree(str(res), str(rec), overwrite_conflicts=True)
    assert n == 1


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert records.main(["load", "--records", str(tmp_path / "none"),
                         "--results", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err
