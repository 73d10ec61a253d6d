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

import kfsr  # noqa: E402,F401  (sets XLA CPU flags before jax initialises)
