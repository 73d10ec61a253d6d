"""What every method shares: the Result type and the method registry.

A method module exposes
    init(config, lr, key) -> State                    # one pytree: params, opt states, kernel, key ...
    make_step(config, lr) -> step_fn                   # step_fn(state) -> (state, metrics dict)
    run(config, lr, key, *, checkpoint_dir=None, progress=True, kernel=None, monitor=None) -> Result
and registers itself with `@register("name")` on its `run` function. `monitor(step, hr, kernel)`
(optional) receives host copies of the current iterate after every loop chunk (the benchmark's
PSNR-vs-step curves); `kernel` (optional) makes the run non-blind.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


_REGISTRY: dict[str, Callable[..., "Result"]] = {}
_BATCH_REGISTRY: dict[str, Callable[..., "Result"]] = {}


@dataclasses.dataclass(frozen=True)
class Result:
    """Output of a super-resolution run.

    hr: (H*s, W*s, 3) float32 in [0, 1] (or (B, H*s, W*s, 3) for a batched run).
    kernel: (K, K) float32, non-negative, sums to 1 (or (B, K, K)).
    history: list of per-step dicts of Python floats (host side).
    """

    hr: Any
    kernel: Any
    history: Any = dataclasses.field(default_factory=list)


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def register_batch(name: str):
    """Register `run_batch(config, lrs (B, h, w, C), key, *, checkpoint_dir, progress,
    num_devices)` for a method that can optimise several same-size images at once."""
    def deco(fn):
        _BATCH_REGISTRY[name] = fn
        return fn

    return deco


def get_batch_method(name: str) -> Callable[..., Result] | None:
    """The batched `run` of a registered method, or None if it has none."""
    import kfsr.methods  # noqa: F401

    return _BATCH_REGISTRY.get(name)


def get_method(name: str) -> Callable[..., Result]:
    """The `run` function of a registered method (imports kfsr.methods to populate the registry)."""
    import kfsr.methods  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_config(build: Callable[[Any], Any], config, name: str) -> None:
    """Run `build(config)` (a method's make_setup); a config it cannot read (missing section,
    wrong type) becomes a KfsrInputError naming the method. Every method's `validate` uses it."""
    from kfsr.errors import KfsrInputError

    try:
        build(config)
    except KfsrInputError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise KfsrInputError(f"config ({name}): {type(e).__name__}: {e}") from None
