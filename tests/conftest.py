"""Test set-up: the repo root on sys.path (for `configs.*`), a session-wide persistent XLA
compilation cache (shared with the notebook kernels and CLI subprocesses, which inherit the
environment), and kfsr's XLA flags before jax initialises."""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Compile time dominates the suite on 2 cores; identical programs compile once per session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kfsr-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

# Compiling is most of the suite's time and XLA:CPU spends it in LLVM: -O0 codegen halves it
# (whole suite on 2 cores: 647 s -> 414 s wall, 1242 -> 779 CPU-s, 2026-11-23) and the tiny test
# programs run about as fast. Semantics are unchanged; float32 results may differ from -O2 in the
# last bits (no FMA contraction). KFSR_TEST_XLA_OPT=1 tests with XLA's default optimisation.
if os.environ.get("KFSR_TEST_XLA_OPT", "0") != "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import kfsr  # noqa: E402,F401  (sets XLA CPU flags before jax initialises)
import pytest  # noqa: E402


@pytest.fixture
def run_on_forced_devices():
    """run(code, n) -> the finished subprocess: `python -c code` from the repo root, with
    `n` forced XLA host devices (`--xla_force_host_platform_device_count`), output captured."""
    import subprocess

    def run(code: str, n: int, timeout: int = 600):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + f" --xla_force_host_platform_device_count={n}").strip()
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    return run


# Longest files first: the suite runs in two xdist workers with `--dist loadfile`, which hands out
# whole files (two per worker at the start, then one per finished file) in collection order, so a
# long file handed out last would run alone at the end.
# (Order measured from `--durations`; files not listed keep their alphabetical order after these.)
_LONGEST_FIRST = ("test_dkp.py", "test_notebooks.py", "test_cli.py", "test_parallel.py",
                  "test_data.py", "test_kernelfusion.py", "test_dip.py", "test_diff_dkp.py",
                  "test_blinddiff.py", "test_ssr.py", "test_bench_sv.py", "test_spatial.py",
                  "test_rks.py", "test_supervised.py")


def pytest_configure(config):
    # keep that order: xdist would otherwise re-sort the files by their number of tests
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(os.path.basename(str(it.path)), len(rank)))
