"""The public surface: what other JAX pipelines embed (DESIGN.md §4).

    import kfsr
    k = kfsr.estimate_kernel(lr, scale=4, method="dkp", key=key)          # (K, K)
    res = kfsr.super_resolve(lr, scale=4, method="dkp", key=key)          # Result(hr, kernel, history)
    lr = kfsr.degrade(hr, kernel, kfsr.Degradation(scale=4, padding="reflect"), key=key)
"""
from __future__ import annotations

import importlib

import ml_collections

from kfsr.methods.base import Result, get_method

_CONFIG_MODULES = {"dkp": "dkp", "dkp_motion": "dkp_motion", "nonblind": "nonblind",
                   "kernelfusion": "kernelfusion", "blinddiff": "blinddiff",
                   "diff_dkp": "diff_dkp", "ssr": "ssr"}


def default_config(method: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """The config of `configs/<method>.py` for `preset` (the method's default preset if None)."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    if method not in _CONFIG_MODULES:
        raise KeyError(f"unknown method {method!r}; known: {', '.join(sorted(_CONFIG_MODULES))}")
    module = importlib.import_module(f"configs.{_CONFIG_MODULES[method]}")
    return module.get_config(preset) if preset else module.get_config()


def _config(method, scale, config, overrides):
    c = default_config(method) if config is None else ml_collections.ConfigDict(config.to_dict())
    c.scale = int(scale)
    for k, v in overrides.items():
        c[k] = v
    return c


def super_resolve(lr, *, scale: int, method: str = "dkp", key=None, config=None,
                  progress: bool = False, **overrides) -> Result:
    """Blind SR of one LR image (h, w, 3) in [0, 1]: Result(hr (h*s, w*s, 3), kernel (K, K), history)."""
    import jax

    c = _config(method, scale, config, overrides)
    key = jax.random.key(c.seed) if key is None else key
    return get_method(c.method)(c, lr, key, progress=progress)


def estimate_kernel(lr, *, scale: int, method: str = "dkp", key=None, config=None,
                    **overrides):
    """The kernel (K, K) that `method` estimates for the LR image (h, w, 3)."""
    return super_resolve(lr, scale=scale, method=method, key=key, config=config,
                         **overrides).kernel
