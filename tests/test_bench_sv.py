"""The spatially variant benchmark (issue 6): the `depth_field` set of kfsr.data, the field metrics
of kfsr.bench (aligned per-pixel kernel error, MANet's LR-consistency PSNR) and a bench run over
bicubic, DIP-DKP and the SSR rows (random-init SSR weights: plumbing only)."""
import json
import os

import numpy as np
import pytest

from kfsr import bench, data, metrics
from kfsr.degrade import spatial
from kfsr.errors import KfsrInputError

# x2 set = the SSR test preset's family (K 11); tiny crops so that everything stays cheap
CROP, SCALE = 32, 2
DKP_FAST = ["--set", "schedule.outer_iters=2", "--set", "schedule.i_loop_x=1",
            "--set", "pke.warmup_steps=5"]


def test_depth_field_set_is_reproducible_and_its_lr_is_the_sv_degradation(tmp_path):
    root = data.build_set("set14", crop=CROP, scale=SCALE, family="depth_field", seed=1,
                          out_root=str(tmp_path / "a"), limit=2)
    assert os.path.basename(root) == f"set14_c{CROP}_x{SCALE}_depth_field_s1"
    m = json.load(open(os.path.join(root, "manifest.json")))
    assert m["kernel_family"] == "depth_field" and m["spatially_variant"] and m["kernel_size"] == 11
    assert m["degradation"]["padding"] == "reflect" and m["degradation"]["sampling"] == "stride"
    assert m["quantised"] == "uint8" and len(m["images"]) == 2
    assert {"theta", "anisotropy", "depth_key"} <= set(m["images"][0])
    spec = data.degradation_of("depth_field", SCALE)
    cases = data.load_set(root)
    h = CROP // SCALE
    for c in cases:
        assert c.kernel.shape == (h, h, 11, 11) and c.depth.shape == (h, h)
        np.testing.assert_allclose(c.kernel.sum((-2, -1)), 1.0, atol=1e-5)
        assert 0.0 <= c.depth.min() and c.depth.max() <= 1.0
        # the stored LR is the stored HR degraded with the stored field, up to uint8 rounding
        again = np.asarray(spatial.degrade_spatial(c.hr, c.kernel, spec))
        assert np.abs(np.clip(again, 0, 1) - c.lr).max() <= 0.5 / 255 + 1e-4
    assert not np.allclose(cases[0].kernel[0, 0], cases[0].kernel[-1, -1])  # spatially variant
    root_b = data.build_set("set14", crop=CROP, scale=SCALE, family="depth_field", seed=1,
                            out_root=str(tmp_path / "b"), limit=2)
    for c, c_b in zip(cases, data.load_set(root_b)):
        np.testing.assert_array_equal(c.kernel, c_b.kernel)
        np.testing.assert_array_equal(c.depth, c_b.depth)
        np.testing.assert_array_equal(c.lr, c_b.lr)
    # a cached set made with another family than configs/ssr.py's is refused, not reused
    m["family"]["anisotropy"] = [0.0, 0.1]
    with open(os.path.join(root_b, "manifest.json"), "w") as f:
        json.dump(m, f)
    with pytest.raises(KfsrInputError, match="delete the folder"):
        data.build_set("set14", crop=CROP, scale=SCALE, family="depth_field", seed=1,
                       out_root=str(tmp_path / "b"), limit=2)


def test_depth_field_family_per_scale():
    """x4: the SSR cpu preset's family (K 21, MANet's); no preset at x3 -> one-line error."""
    setup = data.depth_field_setup(4)
    assert setup.kernel_size == 21 and setup.family.size == 21 and setup.spec.padding == "reflect"
    with pytest.raises(KfsrInputError, match="depth_field"):
        data.degradation_of("depth_field", 3)


def _constructed_case(seed: int = 0):
    """A tiny SV case without quantisation: HR (32, 32, 3), depth field (16, 16, 11, 11) of the
    x2 family, clean LR = degrade_spatial(HR, field)."""
    import jax

    rng = np.random.default_rng(seed)
    hr = rng.random((CROP, CROP, 3)).astype(np.float32)
    setup = data.depth_field_setup(SCALE)
    ex = data.make_depth_field_case(hr, jax.random.key(seed), setup.family, setup.spec)
    return hr, ex, setup.spec


def test_field_metrics_on_a_constructed_case():
    hr, ex, spec = _constructed_case()
    field, lr = ex["field"], ex["lr"]
    # the true field: no error, the LR reproduced exactly
    assert metrics.aligned_field_errors(field, field).max() < 1e-6
    assert metrics.field_lr_psnr(hr, field, lr, spec) > 80
    # a global kernel == the constant field of that kernel, pixel by pixel equal to
    # kfsr.metrics.aligned_kernel_error (here a 9x9 kernel vs the 11x11 truth)
    k = np.asarray(spatial.gaussian_field(9, 2.0, 1.0, 0.3, scale=SCALE))
    const = np.broadcast_to(k, field.shape[:2] + k.shape)
    e_global = metrics.aligned_field_errors(k, field)
    np.testing.assert_allclose(metrics.aligned_field_errors(const, field), e_global, rtol=1e-12)
    for y, x in ((0, 0), (5, 11), (15, 15)):
        assert abs(e_global[y, x] - metrics.aligned_kernel_error(k, field[y, x])) < 1e-9
    assert metrics.field_lr_psnr(hr, k, lr, spec) == metrics.field_lr_psnr(hr, const, lr, spec)
    assert metrics.field_lr_psnr(hr, k, lr, spec) < metrics.field_lr_psnr(hr, field, lr, spec)
    # the harness' per-case metrics: a blind global kernel gets both field metrics, the oracle
    # row (given the field) none; an SV set has no kernel PSNR / method LR PSNR
    case = data.Case(name="x", lr=lr, hr=hr, kernel=field, depth=ex["depth"])
    m = bench._metrics_of("dkp", case, np.clip(hr, 0, 1), k, SCALE, spec)
    assert m["field_error"] == pytest.approx(float(np.mean(e_global)))
    assert m["field_lr_psnr"] == pytest.approx(metrics.field_lr_psnr(hr, k, lr, spec))
    assert m["psnr_y"] == float("inf") or m["psnr_y"] > 90
    assert "kernel_psnr" not in m and "lr_psnr" not in m
    oracle = bench._metrics_of("ssr_oracle", case, hr, field, SCALE, spec)
    assert set(oracle) == {"psnr_y", "ssim_y"}


def test_sv_table_columns_and_unchanged_default_table():
    rows = [dict(method="bicubic", image="a", psnr_y=20.0, ssim_y=0.5, seconds=1.0),
            dict(method="ssr", image="a", psnr_y=22.0, ssim_y=0.6, svkr_psnr_y=21.0,
                 field_error=0.25, field_lr_psnr=40.0, seconds=9.0),
            dict(method="ssr_oracle", image="a", psnr_y=24.0, ssim_y=0.7, seconds=9.0)]
    sv = bench._table(rows, ["bicubic", "ssr", "ssr_oracle"], spatially_variant=True)
    assert "SVKR PSNR-Y" in sv and "field err" in sv and "field LR PSNR (MANet)" in sv
    line = {ln.split("|")[1].strip(): ln for ln in sv.splitlines()[2:]}
    assert "| 21.00 | 0.2500 | 40.00 |" in line["ssr"]
    assert line["ssr"].rstrip(" |").endswith("50 % (ssr_oracle)")
    plain = bench._table(rows[:1], ["bicubic"])
    assert plain.splitlines()[0] == (
        "| method | n | PSNR-Y | SSIM-Y | kernel PSNR | aligned kernel err | LR PSNR | median s / image "
        "| median peak MiB | % of oracle gain |")


def test_bench_ssr_flags_fail_in_one_line(tmp_path):
    base = ["--dataset", "set14", "--kernels", "depth_field", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="ssr needs --ssr-ckpt dkenet=DIR,rrdb=DIR,denoiser=DIR"):
        bench.main(base + ["--methods", "ssr"])
    with pytest.raises(SystemExit, match="ssr_nodepth needs --ssr-nodepth-ckpt"):
        bench.main(base + ["--methods", "ssr_nodepth", "--ssr-ckpt",
                           f"dkenet={tmp_path},rrdb={tmp_path},denoiser={tmp_path}"])
    with pytest.raises(SystemExit, match="no such folder"):
        bench.main(base + ["--methods", "ssr", "--ssr-ckpt", "dkenet=/nonexistent"])
    with pytest.raises(SystemExit, match="no such config field"):
        bench.main(base + ["--methods", "dkp", "--set", "not_a_field=1"])


def test_bench_sv_run_writes_the_field_columns(tmp_path, capsys):
    """bicubic, DIP-DKP (test preset, 2 outer iterations) and SSR with / without depth / oracle
    (test preset, random-init weights) on one depth_field image; oracle_fft is skipped."""
    out = str(tmp_path / "res")
    methods = ["bicubic", "dkp", "ssr", "ssr_nodepth", "ssr_oracle"]
    bench.main(["--dataset", "set14", "--kernels", "depth_field", "--crop", str(CROP),
                "--scale", str(SCALE), "--limit", "1", "--preset", "test", "--_ssr-random-init",
                "--methods", ",".join(methods + ["oracle_fft"]), "--out", out] + DKP_FAST)
    assert "oracle_fft: skipped" in capsys.readouterr().out
    run_dir = os.path.join(out, f"set14_c{CROP}_x{SCALE}_depth_field_s0")
    rows = {r["method"]: r for r in json.load(open(os.path.join(run_dir, "results.json")))}
    assert sorted(rows) == sorted(methods)
    for m in ("dkp", "ssr", "ssr_nodepth"):
        assert np.isfinite(rows[m]["field_error"]) and np.isfinite(rows[m]["field_lr_psnr"])
    for m in ("ssr", "ssr_nodepth", "ssr_oracle"):
        assert np.isfinite(rows[m]["svkr_psnr_y"]) and rows[m]["random_init"] == 1.0
        assert "_random_init" in rows[m]["kernel_path"]  # kept apart from real results
        assert np.load(rows[m]["kernel_path"]).shape == (16, 16, 11, 11)
    assert "field_error" not in rows["ssr_oracle"] and "field_error" not in rows["bicubic"]
    # the set's fields are centred in the 'aligned' convention: DIP-DKP's prior is centred there
    record = json.load(open(rows["dkp"]["kernel_path"].replace("_kernel.npy", "_config.json")))
    assert record["rks"]["center"] == "aligned"
    table = open(os.path.join(run_dir, "table.md")).read()
    assert "field LR PSNR (MANet)" in table and "ssr_oracle" in table
    assert os.path.isfile(os.path.join(run_dir, "kernels.png"))
