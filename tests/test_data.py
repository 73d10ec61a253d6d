"""Benchmark data: c224 protocol sets with manifests, the DIV2KRK loader, the bench harness."""
import json
import os

import numpy as np
import scipy.io

from kfsr import bench, data, io, metrics
from kfsr.degrade import Degradation, degrade


def test_build_set_is_reproducible_and_documented(tmp_path):
    root = data.build_set("set5", scale=4, family="motion", seed=3, out_root=str(tmp_path), limit=2)
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["degradation"]["padding"] == "circular" and manifest["kernel_family"] == "motion"
    cases = data.load_set(root)
    assert len(cases) == 2
    for c in cases:
        assert c.hr.shape == (224, 224, 3) and c.lr.shape == (56, 56, 3)
        assert c.kernel.shape == (19, 19) and abs(c.kernel.sum() - 1) < 1e-5
        # The stored LR is the stored HR degraded with the stored kernel (up to uint8 rounding).
        again = np.asarray(degrade(c.hr, c.kernel, Degradation.dkp(4)))
        assert metrics.psnr(again, c.lr) > 50
    # Same seed -> same kernels when rebuilt elsewhere.
    root2 = data.build_set("set5", scale=4, family="motion", seed=3, out_root=str(tmp_path / "b"),
                           limit=2)
    k1 = np.load(os.path.join(root, "kernels", cases[0].name + ".npy"))
    k2 = np.load(os.path.join(root2, "kernels", cases[0].name + ".npy"))
    np.testing.assert_array_equal(k1, k2)


def test_div2krk_loader(tmp_path):
    """A generated folder in the DIV2KRK layout loads with its kernels and ground truth."""
    rng = np.random.default_rng(0)
    for d in ("lr_x2", "gt_k_x2", "gt"):
        (tmp_path / d).mkdir()
    for n in (1, 2, 10):
        hr = rng.random((32, 32, 3)).astype(np.float32)
        k = rng.random((11, 11))
        k /= k.sum()
        io.save_image(str(tmp_path / "gt" / f"img_{n}_gt.png"), hr)
        io.save_image(str(tmp_path / "lr_x2" / f"im_{n}.png"), hr[::2, ::2])
        scipy.io.savemat(str(tmp_path / "gt_k_x2" / f"kernel_{n}.mat"), {"Kernel": k})
    cases = data.load_div2krk(str(tmp_path), 2)
    assert [c.name for c in cases] == ["im_1", "im_10", "im_2"]
    for c in cases:
        n = c.name.split("_")[1]
        assert c.kernel.shape == (11, 11) and c.hr.shape == (32, 32, 3)
        np.testing.assert_allclose(
            c.hr, io.load_image(str(tmp_path / "gt" / f"img_{n}_gt.png")))


def test_bench_resumes_and_writes_tables(tmp_path, monkeypatch, capsys):
    """bicubic + FFT oracle on 2 images; a second call reuses the finished cases; a call with
    another config warns (naming the field) and reuses them too."""
    out = str(tmp_path / "res")
    args = ["--methods", "bicubic,bicubic_rolled,oracle_fft", "--dataset", "set5_dkp", "--limit",
            "2", "--out", out]
    bench.main(args)
    run_dir = os.path.join(out, "set5_dkp")
    rows = json.load(open(os.path.join(run_dir, "results.json")))
    assert {r["method"] for r in rows} == {"bicubic", "bicubic_rolled", "oracle_fft"}
    assert len(rows) == 6
    oracle, bicubic, rolled = (np.mean([r["psnr_y"] for r in rows if r["method"] == m])
                               for m in ("oracle_fft", "bicubic", "bicubic_rolled"))
    assert oracle > bicubic + 3, (oracle, bicubic)
    # DKP-centred kernels put the HR image s - 1 px up-left of bicubic's: rolling it there gains
    assert oracle > rolled > bicubic + 1, (oracle, rolled, bicubic)
    assert os.path.isfile(os.path.join(run_dir, "table.md"))
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: calls.append(a))
    bench.main(args)
    assert calls == []  # everything was already done
    record = json.load(open(os.path.join(run_dir, "oracle_fft", rows[-1]["image"] + "_config.json")))
    assert record["tikhonov"]["alpha"] == 1e-4 and record["scale"] == 4
    for m in ("bicubic", "bicubic_rolled"):
        assert not any(f.endswith("_config.json") for f in os.listdir(os.path.join(run_dir, m)))
    assert "WARNING" not in capsys.readouterr().out
    bench.main(args + ["--set", "tikhonov.alpha=0.001"])
    out = capsys.readouterr().out
    assert calls == [] and out.count("WARNING: finished with another config") == 2, out
    assert "tikhonov.alpha: 0.0001 -> 0.001" in out and "run with another config" in out


def test_bench_table_reports_share_of_oracle_gain():
    rows = [dict(method=m, image=i, psnr_y=p + d, seconds=1.0)
            for m, p in (("bicubic", 20.0), ("oracle_dip", 30.0), ("dkp", 28.0), ("dkp_paper", 29.0))
            for i, d in (("a", 0.0), ("b", 1.0)) if not (m == "dkp_paper" and i == "b")]
    table = bench._table(rows, ["bicubic", "oracle_dip", "dkp", "dkp_paper"])
    line = {ln.split("|")[1].strip(): ln for ln in table.splitlines()[2:]}
    assert line["dkp"].rstrip(" |").endswith("80 % (oracle_dip)")
    assert line["dkp_paper"].rstrip(" |").endswith("90 % (oracle_dip)")  # over its own images
    assert line["bicubic"].rstrip(" |").endswith("–")


def test_bench_figures_curves_and_crops(tmp_path):
    import types

    rng = np.random.default_rng(0)
    cases = [types.SimpleNamespace(name=n, hr=rng.random((40, 40, 3)).astype(np.float32), kernel=None)
             for n in ("a", "b")]
    rows = []
    for m in ("bicubic", "dkp"):
        for c in cases:
            base = str(tmp_path / f"{m}_{c.name}")
            io.save_image(base + ".png", c.hr)
            row = dict(method=m, image=c.name, psnr_y=25.0, hr_path=base + ".png")
            if m == "dkp":
                io.write_json(base + "_curve.json", [[10, 20.0], [20, 24.0]])
                row["curve_path"] = base + "_curve.json"
            rows.append(row)
    assert bench._curve_figure(rows, ["bicubic", "dkp"], str(tmp_path / "curves.png"))
    assert bench._crop_figure(rows, cases, ["bicubic", "dkp"], str(tmp_path / "crops.png"), size=32)
    for f in ("curves.png", "crops.png"):
        assert io.load_image(str(tmp_path / f)).shape[0] > 100
    assert not bench._curve_figure(rows[:2], ["bicubic"], str(tmp_path / "none.png"))


def test_bench_generated_set_crop_and_shape_families(tmp_path):
    out = str(tmp_path / "res")
    bench.main(["--methods", "bicubic", "--dataset", "set5", "--kernels", "shapes", "--crop", "64",
                "--limit", "1", "--out", out])
    for fam in ("l_shape", "empty_square", "filled_square"):
        root = os.path.join(out, "data", f"set5_c64_x4_{fam}_s0")
        m = json.load(open(os.path.join(root, "manifest.json")))
        assert m["protocol"] == "c64" and m["kernel_family"] == fam
        rows = json.load(open(os.path.join(out, f"set5_c64_x4_{fam}_s0", "results.json")))
        assert len(rows) == 1 and np.isfinite(rows[0]["psnr_y"])
        assert io.load_image(os.path.join(root, "lr", rows[0]["image"] + ".png")).shape == (16, 16, 3)


def test_bench_case_lock_skips_live_and_clears_stale(tmp_path):
    lock = str(tmp_path / "case.json.lock")
    assert bench._claim(lock) == lock and open(lock).read() == str(os.getpid())
    assert bench._claim(lock) is None  # held by a live process (this one)
    with open(lock, "w") as f:
        f.write("999999999")  # no such process: a stale lock is taken over
    assert bench._claim(lock) == lock


def test_bench_batches_same_size_images(tmp_path):
    """--batch 2: DIP-DKP on two same-size images in ONE vmapped run (one subprocess). The LR
    size (24x24), config and overrides are those of tests/test_cli.py's folder batch, so the two
    tests share one compiled program through the session's compilation cache."""
    out = str(tmp_path / "res")
    args = ["--methods", "dkp", "--dataset", "set5", "--crop", "48", "--scale", "2", "--limit", "2",
            "--preset", "test", "--batch", "2", "--out", out, "--set", "schedule.outer_iters=2",
            "--set", "schedule.i_loop_x=1", "--set", "pke.warmup_steps=5"]
    bench.main(args)
    rows = json.load(open(os.path.join(out, "set5_c48_x2_gaussian_s0", "results.json")))
    assert len(rows) == 2 and all(r["batch"] == 2 for r in rows)
    assert rows[0]["seconds"] == rows[1]["seconds"]  # the batch time shared out
    assert all(np.isfinite(r["psnr_y"]) and np.isfinite(r["kernel_error"]) for r in rows)


def test_bench_report_only_runs_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: calls.append(a))
    out = str(tmp_path / "res")
    bench.main(["--methods", "bicubic", "--dataset", "set5_dkp", "--limit", "1", "--out", out,
                "--report-only"])
    assert calls == [] and json.load(open(os.path.join(out, "set5_dkp", "results.json"))) == []


def test_usrnet_motion_family_is_a_real_kernel_in_dkp_centring():
    """The 'usrnet_motion' family: one of USRNet's six real motion kernels (chosen by the key),
    25x25, sum 1, centre of mass at DKP's (K - s) / 2; kernel PSNR across sizes pads centrally."""
    import jax

    from kfsr.degrade import kernels

    names = set()
    for i in range(12):
        k = data.make_kernel("usrnet_motion", jax.random.fold_in(jax.random.key(0), i), 4, 19)
        assert k.shape == (25, 25) and abs(float(k.sum()) - 1) < 1e-5 and float(k.min()) >= 0
        np.testing.assert_allclose(np.asarray(kernels.center_of_mass(k)), 10.5, atol=1e-3)
        names.add(k.tobytes())
    assert len(names) >= 3  # several different kernels are drawn
    g = np.zeros((19, 19), np.float32)
    g[9, 9] = 1.0
    assert bench._kernel_psnr_any_size(np.pad(g, 3), g) == float("inf")
    assert np.isnan(bench._kernel_psnr_any_size(np.pad(g, ((3, 4), (3, 4))), g))


def test_kernelfusion_rows_model_the_sets_own_degradation():
    """KernelFusion's forward model is a config choice (default DIV2KRK's reflect padding): the
    bench sets it to the one each set was made with (generated sets: DKP's circular padding)."""
    from kfsr.degrade import Degradation

    for dataset, family, want in (("set14", "l_shape", Degradation.dkp(4)),
                                  ("set5_dkp", "gaussian", Degradation.dkp(4)),
                                  ("div2krk:/data", "gaussian", Degradation.div2krk(4))):
        fwd = bench.dataset_forward_model(dataset, family, 4)
        assert fwd == want
        for method in ("kernelfusion", "kf_unet_only", "kf_one_unet_pass", "oracle_kf"):
            c = bench._config_for(method, 4, "cpu", {}, fwd)
            assert (c.padding, c.sampling, c.offset) == (want.padding, want.sampling, want.offset)
            # the rows differ from the method only in their ablation switch
            assert c.phase2.learn_kernel == (method != "oracle_kf")
            assert c.phase2.use_pd == (method != "kf_unet_only")
            assert c.phase2.second_unet_pass == (method != "kf_one_unet_pass")
    assert bench._given_kernel("oracle_kf") and not bench._given_kernel("kernelfusion")
    assert bench.dataset_forward_model("folder:/x", "gaussian", 4) is None


def test_bench_case_killed_midway_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A DIP-DKP case interrupted after its 3rd of 4 loop chunks (the run's checkpoint and
    `_partial.json` on disk) resumes from that chunk and ends with the uninterrupted run's
    output; its curve keeps the points of the first attempt."""
    from kfsr import metrics as m

    _, cases = bench.load_cases("set5", 2, "gaussian", 0, str(tmp_path), 1, crop=48)
    over = {"schedule.outer_iters": "8", "loop.chunk": "2", "schedule.i_loop_x": "1",
            "pke.warmup_steps": "5"}
    args = ("dkp", cases[0], 2, "test", 0, over)
    full, hr_full, k_full, curve_full = bench.run_case(*args)
    assert [c[0] for c in curve_full] == [2, 4, 6, 8]

    work = str(tmp_path / "dkp_test" / cases[0].name)
    os.makedirs(os.path.dirname(work))
    real, calls = m.psnr_y, []

    def killed_at_third_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after chunk 3's checkpoint
        return real(*a, **k)

    monkeypatch.setattr(m, "psnr_y", killed_at_third_chunk)
    try:
        bench.run_case(*args, work=work)
        raise AssertionError("not interrupted")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(m, "psnr_y", real)
    assert os.path.isdir(work + ".ckpt")
    assert [c[0] for c in json.load(open(work + "_partial.json"))["curve"]] == [2, 4]
    out, hr, kernel, curve = bench.run_case(*args, work=work)
    np.testing.assert_array_equal(hr, hr_full)
    np.testing.assert_array_equal(kernel, k_full)
    assert out["resumed"] == 1.0 and out["psnr_y"] == full["psnr_y"]
    assert [c[0] for c in curve] == [2, 4, 8] and curve[:2] == curve_full[:2]
    bench._drop_work(work)
    assert not os.path.exists(work + ".ckpt") and not os.path.exists(work + "_partial.json")
