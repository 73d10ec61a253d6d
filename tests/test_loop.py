"""Tests of kfsr.train.loop.run: loop modes, history, resume (incl. a real SIGKILL), NaN guard."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfsr  # noqa: F401
from kfsr.errors import NonFiniteError
from kfsr.train.checkpoint import CheckpointStore
from kfsr.train.loop import resolve_loop, run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loop_child import flat, init_state, mlp_step  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_loop_child.py")
N, CHUNK = 23, 5  # 4 full chunks + a partial chunk of 3


def assert_same_state(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted runs in both modes (shared by several tests)."""
    return {m: run(mlp_step, init_state(), N, chunk=CHUNK, loop=m, progress=False)
            for m in ("python", "scan")}


def test_modes_equal_and_history(reference):
    s0 = init_state()
    # python vs scan (incl. the partial last chunk): bit-identical for this step on XLA:CPU
    assert_same_state(reference["python"][0], reference["scan"][0])
    assert reference["python"][1] == reference["scan"][1]
    hist = reference["python"][1]
    assert [h["step"] for h in hist] == list(range(N))
    assert all(set(h) == {"step", "loss", "gnorm"} for h in hist)
    assert all(type(h["loss"]) is float and type(h["step"]) is int for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]  # it trains
    assert resolve_loop("auto") == ("python" if jax.default_backend() == "cpu" else "scan")
    # the caller's state is copied, not donated
    state, _ = run(mlp_step, s0, 2, chunk=CHUNK, loop="python", progress=False)
    assert not s0["params"]["w1"].is_deleted()
    assert int(jax.random.key_data(s0["key"])[0]) == int(jax.random.key_data(init_state()["key"])[0])
    # zero steps: the state back, empty history
    state, hist = run(mlp_step, s0, 0, progress=False)
    assert hist == [] and np.array_equal(state["params"]["w1"], s0["params"]["w1"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode,every,stop_at,resume_at",
                         [("python", 1, 10, 10), ("scan", 2, 15, 10)])
def test_resume_bit_identical(reference, tmp_path, mode, every, stop_at, resume_at):
    ck = str(tmp_path / "ck")

    def stop(step, state, history):
        if step == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        run(mlp_step, init_state(), N, chunk=CHUNK, loop=mode, progress=False,
            checkpoint_dir=ck, checkpoint_every=every, on_chunk=stop)
    with CheckpointStore(ck) as store:
        assert store.latest_step() == resume_at
    seen = []
    state, hist = run(mlp_step, init_state(), N, chunk=CHUNK, loop=mode, progress=False,
                      checkpoint_dir=ck, checkpoint_every=every,
                      on_chunk=lambda step, s, h: seen.append(step))
    assert seen[0] == resume_at + CHUNK  # really resumed
    ref_state, ref_hist = reference[mode]
    assert_same_state(state, ref_state)
    assert hist == ref_hist
    # a finished run: returns the saved final state without stepping
    with CheckpointStore(ck) as store:
        assert store.latest_step() == N
        assert len(store.all_steps()) <= 2  # max_to_keep
    state2, hist2 = run(lambda s: 1 / 0, init_state(), N, chunk=CHUNK, loop=mode,
                        progress=False, checkpoint_dir=ck)
    assert_same_state(state2, ref_state)
    assert hist2 == ref_hist


def test_sigkill_resume(reference, tmp_path):
    """SIGKILL a child mid-run, restart it: its final state equals the uninterrupted run.

    The reference is the in-process python-mode run: same step, same XLA flags (kfsr sets them
    in conftest before jax initialises), same machine.
    """
    ck, marker, out = str(tmp_path / "ck"), str(tmp_path / "marker.txt"), str(tmp_path / "out.npz")
    args = [CHILD, out, "--steps", str(N), "--chunk", str(CHUNK), "--ckpt", ck, "--marker", marker]
    # a persistent compilation cache lets the restarted child skip compiling
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jitcache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    victim = subprocess.Popen([sys.executable, *args, "--sleep", "0.5"], env=env)
    try:
        # 2 chunks done => the save after chunk 1 is complete (orbax's save() waits for the
        # previous save); the kill may land during the save of chunk 2, 3 or 4.
        deadline = time.time() + 60
        while time.time() < deadline and victim.poll() is None:
            if os.path.exists(marker) and open(marker).read().count("\n") >= 2:
                break
            time.sleep(0.02)
        assert victim.poll() is None, "child finished or died before it could be killed"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not os.path.exists(out)
    killed_after = int(open(marker).read().split()[-2])
    assert 2 * CHUNK <= killed_after < N
    open(marker, "w").close()
    subprocess.run([sys.executable, *args], env=env, check=True, timeout=120)
    first = int(open(marker).read().split()[0])
    assert 2 * CHUNK <= first <= killed_after + CHUNK  # resumed from a checkpoint, not step 0
    got = np.load(out)
    ref_state, ref_hist = reference["python"]
    ref = flat(ref_state)
    assert sorted(got.files) == sorted([*ref, "history"])
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k
    assert json.loads(str(got["history"])) == ref_hist


def _counter_step(nan_at, metrics=True):
    def step(state):
        i = state["i"] + 1
        x = jnp.where(i == nan_at, jnp.nan, state["x"] + 1.0)
        return {"x": x, "i": i}, ({"x": x} if metrics else {})
    return step


@pytest.mark.parametrize("metrics", [True, False])
def test_nan_guard_keeps_last_good_checkpoint(tmp_path, metrics):
    ck = str(tmp_path / "ck")
    s0 = {"x": jnp.zeros(()), "i": jnp.zeros((), jnp.int32)}
    with pytest.raises(NonFiniteError) as e:
        run(_counter_step(13, metrics), s0, 30, chunk=5, loop="python", progress=False,
            checkpoint_dir=ck)
    msg = str(e.value)
    assert "\n" not in msg and "[10, 15)" in msg and "['x']" in msg
    if metrics:
        assert "metric 'x'" in msg and "step 12" in msg
    assert e.value.step_range == (10, 15) and len(e.value.history) == 10
    with CheckpointStore(ck) as store:
        assert store.latest_step() == 10
        state, hist = store.restore(10, s0)
    assert float(state["x"]) == 10.0 and int(state["i"]) == 10 and len(hist) == 10


def test_incompatible_checkpoint_dir(tmp_path):
    ck = str(tmp_path / "ck")
    s0 = {"x": jnp.zeros((2,))}
    step = lambda s: ({"x": s["x"] + 1}, {})  # noqa: E731
    run(step, s0, 4, chunk=2, loop="python", progress=False, checkpoint_dir=ck)
    with pytest.raises(ValueError, match="chunk=2, this run has chunk=4"):
        run(step, s0, 4, chunk=4, loop="python", progress=False, checkpoint_dir=ck)
    with pytest.raises(ValueError, match="num_steps=4, this run has num_steps=6"):
        run(step, s0, 6, chunk=2, loop="python", progress=False, checkpoint_dir=ck)
    with pytest.raises(ValueError, match=r"state leaf \['x'\] is float32\(2,\)"):
        run(step, {"x": jnp.zeros((3,))}, 4, chunk=2, loop="python", progress=False,
            checkpoint_dir=ck)


def test_zero_size_leaves_checkpoint_and_resume(tmp_path):
    """Orbax refuses zero-size arrays; the store keeps them (e.g. DKP's unused fixed kernel)."""
    def step(s):
        return {"x": s["x"] + 1.0, "empty": s["empty"]}, {"x": s["x"].sum()}

    state = {"x": jnp.zeros((3,)), "empty": jnp.zeros((0, 0))}
    ckpt = str(tmp_path / "ck")

    def stop(step_, s, h):
        if step_ >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(step, state, 6, chunk=2, checkpoint_dir=ckpt, progress=False, on_chunk=stop)
    out, hist = run(step, state, 6, chunk=2, checkpoint_dir=ckpt, progress=False)
    np.testing.assert_array_equal(out["x"], np.full((3,), 6.0))
    assert out["empty"].shape == (0, 0) and len(hist) == 6
