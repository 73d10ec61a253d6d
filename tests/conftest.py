"""Test set-up: the repo root on sys.path (for `configs.*`), shared data location, light jax."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import kfsr  # noqa: E402,F401  (sets XLA CPU flags before jax initialises)
