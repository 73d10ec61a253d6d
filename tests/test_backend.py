"""kfsr.backend: the persistent compilation cache default (XLA flags: tests/test_dip.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = "import kfsr, jax; print(jax.config.jax_compilation_cache_dir)"


def _probe(tmp_path, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "KFSR_COMPILE_CACHE")}
    e.update(KFSR_CACHE_DIR=str(tmp_path), **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_compile_cache_default_user_override_and_off(tmp_path):
    assert _probe(tmp_path) == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
    assert _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine")) == str(tmp_path / "mine")
    assert _probe(tmp_path, KFSR_COMPILE_CACHE="0") == "None"
