"""The chunked loop driver shared by every method (DESIGN.md §1, §6).

``run(step_fn, state, num_steps)`` applies ``step_fn`` ``num_steps`` times. Steps run in chunks
of ``chunk`` steps, aligned to multiples of ``chunk`` from step 0; the host syncs only between
chunks, where it

1. fetches the chunk's metrics (one transfer per chunk) and appends them to the history,
2. checks every leaf of the state and every metric is finite (else `NonFiniteError`; the bad
   state is not saved, so the last good checkpoint stays),
3. updates the progress bar / log,
4. saves an orbax checkpoint every ``checkpoint_every`` chunks and at the end,
5. calls ``on_chunk(step, state, history)``.

A run that finds a checkpoint in ``checkpoint_dir`` resumes from its latest step. Because chunk
boundaries do not depend on where a run started and PRNG keys live in the state, a resumed run is
bit-identical to an uninterrupted one (same loop mode, same machine).

History: a list with one dict per step, ``{"step": i, **metrics}``, with ``i`` the 0-based index
of the step that produced the metrics (so after ``n`` steps, ``history[-1]["step"] == n - 1``).
Checkpoint step numbers count completed steps (a checkpoint at ``n`` holds the state after ``n``
steps).
"""
from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kfsr.errors import KfsrInputError, NonFiniteError
from kfsr.train.checkpoint import CheckpointStore, is_key, state_fingerprint

__all__ = ["run", "resolve_loop"]

_FINGERPRINT_VERSION = 1


def resolve_loop(loop: str) -> str:
    """'python' | 'scan' | 'auto' -> 'python' or 'scan'.

    'auto' picks a Python loop of one jitted step on CPU and `lax.scan` chunks elsewhere:
    DESIGN.md §6 measured a DIP training step (conv forward + backward + Adam) 14-20x slower inside
    `lax.scan` than under plain `jax.jit` on XLA:CPU (64 ch: 6.6 s vs 0.48 s per step), because the
    gradient convolutions lose their fast path in a loop body (jax-ml/jax#12868). On GPU/TPU, scan
    removes the per-step dispatch and host round trips.
    """
    if loop == "auto":
        return "python" if jax.default_backend() == "cpu" else "scan"
    if loop not in ("python", "scan"):
        raise KfsrInputError(f"loop must be 'auto', 'python' or 'scan', got {loop!r}")
    return loop


# ---------------------------------------------------------------------------------------------
# state helpers


def _copy_leaf(x):
    if is_key(x):
        data = jnp.array(jax.random.key_data(x), copy=True)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = jnp.array(x, copy=True)
    return jax.lax.convert_element_type(x, x.dtype)  # drop weak_type: stable jit signature


def _uncommitted(x):
    """Restored arrays are committed to a device, which would make jit compile the step again
    (committedness is part of jit's cache key); go through host memory to drop it."""
    if is_key(x):
        return jax.random.wrap_key_data(np.asarray(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return np.asarray(x)


@jax.jit
def _fresh_copy(state):
    """A fresh, strongly typed device copy of a state (the caller's arrays are never donated).

    One jitted program per state structure rather than one tiny eager copy per leaf shape.
    """
    return jax.tree.map(_copy_leaf, state)


def _wrap_step(step_fn: Callable) -> Callable:
    """step_fn with its new state cast to the incoming leaf dtypes (no weak types, no drift).

    A carried state whose dtypes changed from step to step would retrace the jitted step (and
    break `lax.scan`); casting to the incoming dtype is a no-op when they already agree.
    """

    def step(state):
        out = step_fn(state)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise TypeError("step_fn must return (state, metrics) with metrics a dict of scalars")
        new, metrics = out
        if jax.tree.structure(new) != jax.tree.structure(state):
            raise TypeError(
                "step_fn changed the state's tree structure: "
                f"{jax.tree.structure(state)} -> {jax.tree.structure(new)}"
            )

        def cast(path, old, x):
            if np.shape(x) != np.shape(old):
                raise TypeError(
                    f"step_fn changed the shape of state leaf {jax.tree_util.keystr(path)}: "
                    f"{np.shape(old)} -> {np.shape(x)}"
                )
            return x if is_key(old) else jax.lax.convert_element_type(x, old.dtype)

        new = jax.tree_util.tree_map_with_path(cast, state, new)
        for name, value in metrics.items():
            if np.shape(value) != ():
                raise TypeError(f"metric {name!r} must be a scalar, got shape {np.shape(value)}")
        return new, dict(metrics)

    return step


@jax.jit
def _finite_flags(state):
    """One bool per float/complex leaf: all elements finite."""
    return [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(state)
        if not is_key(x) and jnp.issubdtype(x.dtype, jnp.inexact)
    ]


def _nonfinite_leaves(state) -> list[str]:
    paths = [
        jax.tree_util.keystr(p)
        for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
        if not is_key(x) and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    flags = jax.device_get(_finite_flags(state))
    return [p for p, ok in zip(paths, flags) if not ok]


def _fingerprint(state, num_steps: int, chunk: int) -> dict:
    return {
        "kfsr_loop": _FINGERPRINT_VERSION,
        "num_steps": int(num_steps),
        "chunk": int(chunk),
        **state_fingerprint(state),
    }


def _check_fingerprint(saved: dict | None, expected: dict, directory: str, step: int) -> None:
    where = f"checkpoint dir {directory} (step {step})"
    if not saved or saved.get("kfsr_loop") != _FINGERPRINT_VERSION:
        raise KfsrInputError(f"{where} was not written by kfsr.train.loop.run; use an empty directory")
    for field in ("num_steps", "chunk"):
        if saved.get(field) != expected[field]:
            raise KfsrInputError(
                f"{where} belongs to another run: {field}={saved.get(field)}, "
                f"this run has {field}={expected[field]}; use another checkpoint_dir"
            )
    s_leaves, e_leaves = saved.get("leaves", []), expected["leaves"]
    if len(s_leaves) != len(e_leaves):
        raise KfsrInputError(
            f"{where} belongs to another run: state has {len(s_leaves)} leaves, "
            f"this run's state has {len(e_leaves)}; use another checkpoint_dir"
        )
    for s, e in zip(s_leaves, e_leaves):
        if list(s) != list(e):
            raise KfsrInputError(
                f"{where} belongs to another run: state leaf {s[0]} is {s[2]}{tuple(s[1])}, "
                f"this run has {e[0]} {e[2]}{tuple(e[1])}; use another checkpoint_dir"
            )
    if saved.get("treedef") != expected["treedef"]:
        raise KfsrInputError(
            f"{where} belongs to another run: the state's tree structure differs; "
            "use another checkpoint_dir"
        )


# ---------------------------------------------------------------------------------------------
# chunk runners: (state, n) -> (state, list of per-step metric dicts on host)


# Jitted chunk programs are cached per step_fn (weakly: an entry dies with its step_fn and holds
# it only through a weak reference), so repeated runs of the same step function (e.g. one run per
# image of a benchmark, or a resume in the same process) compile once.
_PROGRAMS: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def _programs(step_fn: Callable) -> dict:
    try:
        return _PROGRAMS.setdefault(step_fn, {})
    except TypeError:  # not weak-referenceable: no caching
        return {}


def _weak_step(step_fn: Callable) -> Callable:
    try:
        ref = weakref.ref(step_fn)
    except TypeError:
        return _wrap_step(step_fn)
    return _wrap_step(lambda state: ref()(state))


def _python_runner(step_fn: Callable) -> Callable:
    cache = _programs(step_fn)
    if "python" not in cache:
        cache["python"] = jax.jit(_weak_step(step_fn), donate_argnums=0)
    jstep = cache["python"]

    def run_chunk(state, n):
        ms = []
        for _ in range(n):
            state, m = jstep(state)
            ms.append(m)
        return state, jax.device_get(ms)  # the one host sync of the chunk

    return run_chunk


def _scan_runner(step_fn: Callable, unroll: int) -> Callable:
    cache = _programs(step_fn)  # per (length, unroll): chunk and the last partial chunk

    def make(n):
        step = _weak_step(step_fn)

        def many(state):
            return jax.lax.scan(lambda c, _: step(c), state, None, length=n, unroll=min(unroll, n))

        return jax.jit(many, donate_argnums=0)

    def run_chunk(state, n):
        key = ("scan", n, unroll)
        if key not in cache:
            cache[key] = make(n)
        state, stacked = cache[key](state)
        stacked = jax.device_get(stacked)
        return state, [{k: v[i] for k, v in stacked.items()} for i in range(n)]

    return run_chunk


# ---------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def run(
    step_fn: Callable[[Any], tuple[Any, dict]],
    state: Any,
    num_steps: int,
    *,
    chunk: int = 50,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    loop: str = "auto",
    unroll: int = 1,
    progress: bool = True,
    desc: str = "",
    log_every: int | None = None,
    on_chunk: Callable[[int, Any, list], None] | None = None,
    max_to_keep: int = 2,
) -> tuple[Any, list[dict]]:
    """Run ``step_fn`` ``num_steps`` times in host-synced chunks; returns ``(state, history)``.

    Args:
      step_fn: pure ``state -> (state, metrics)``; ``state`` any pytree of arrays (PRNG keys
        included; keep them in the state for reproducible resumes), ``metrics`` a dict of scalar
        arrays. It must keep the state's structure and shapes; new leaves are cast back to the
        incoming dtypes.
      state: initial state. It is copied, never donated; it also serves as the restore template.
      num_steps: total number of steps of the run (counting steps done before a resume).
      chunk: steps between host syncs. Chunks are ``[0, chunk), [chunk, 2*chunk), ...`` with a
        shorter last chunk if ``chunk`` does not divide ``num_steps``.
      checkpoint_dir: orbax checkpoint directory. If it already holds a checkpoint of this run
        (same num_steps, chunk and state structure/shapes/dtypes) the run resumes from its latest
        step; a checkpoint of another run raises `KfsrInputError` (a ValueError).
      checkpoint_every: save every this many chunks (and always after the last chunk).
      loop: 'python' (jitted step with donated state in a Python loop), 'scan' (one jitted
        `lax.scan` per chunk) or 'auto' (python on CPU, scan on GPU/TPU; see `resolve_loop`).
      unroll: `lax.scan` unroll factor (loop='scan' only).
      progress: show a tqdm bar (tqdm hides it automatically when stderr is not a TTY).
      desc: progress bar label / log prefix.
      log_every: if set, `absl.logging.info` the latest metrics whenever a chunk passes a multiple
        of ``log_every`` steps (useful in non-interactive jobs).
      on_chunk: ``on_chunk(step, state, history)`` after each chunk (after the checkpoint save);
        ``step`` is the number of completed steps. The ``state`` passed is donated to the next
        chunk: copy what you want to keep (``jax.device_get``).
      max_to_keep: number of checkpoints kept in ``checkpoint_dir``.

    Raises:
      NonFiniteError: a chunk produced NaN/Inf in the state or the metrics. Its ``history``
        attribute holds the history up to the failing chunk, ``step_range`` the failing chunk.
    """
    if num_steps < 0 or chunk < 1 or checkpoint_every < 1 or unroll < 1:
        raise KfsrInputError(
            f"need num_steps >= 0, chunk >= 1, checkpoint_every >= 1, unroll >= 1; got "
            f"num_steps={num_steps}, chunk={chunk}, checkpoint_every={checkpoint_every}, unroll={unroll}"
        )
    mode = resolve_loop(loop)
    state = _fresh_copy(state)
    history: list[dict] = []
    start = 0

    store = None
    fingerprint = _fingerprint(state, num_steps, chunk)
    if checkpoint_dir is not None:
        store = CheckpointStore(checkpoint_dir, max_to_keep=max_to_keep)
    try:
        if store is not None:
            latest = store.latest_step()
            if latest is not None:
                _check_fingerprint(store.meta(latest), fingerprint, store.directory, latest)
                state, history = store.restore(latest, state)  # dtypes of the copied state
                state = _fresh_copy(jax.tree.map(_uncommitted, state))
                start = latest
                if len(history) != start:
                    raise KfsrInputError(
                        f"checkpoint dir {store.directory} (step {latest}) is corrupt: "
                        f"history has {len(history)} entries, expected {start}"
                    )
                logging.info("%sresuming from step %d of %d (%s)", desc and desc + ": ", start,
                             num_steps, store.directory)
        if start >= num_steps:
            return state, history

        run_chunk = _python_runner(step_fn) if mode == "python" else _scan_runner(step_fn, unroll)
        bar = _progress_bar(progress, desc, num_steps, start)
        try:
            done = start
            n_chunk = done // chunk  # index of the next chunk (start is chunk-aligned)
            while done < num_steps:
                n = min(chunk, num_steps - done)  # chunk ends at a multiple of chunk or num_steps
                lo, hi = done, done + n
                state, ms = run_chunk(state, n)
                rows = [{"step": lo + i, **{k: float(v) for k, v in m.items()}} for i, m in enumerate(ms)]
                _check_finite(state, rows, lo, hi, history)
                history.extend(rows)
                done, n_chunk = hi, n_chunk + 1
                latest = rows[-1]
                if bar is not None:
                    if len(latest) > 1:
                        bar.set_postfix({k: _fmt(v) for k, v in latest.items() if k != "step"},
                                        refresh=False)
                    bar.update(n)  # redraws (with the postfix) at most every 0.1 s
                if log_every and (hi // log_every > lo // log_every or hi == num_steps):
                    logging.info("%sstep %d/%d %s", desc and desc + ": ", hi, num_steps,
                                 " ".join(f"{k}={_fmt(v)}" for k, v in latest.items() if k != "step"))
                if store is not None and (n_chunk % checkpoint_every == 0 or done == num_steps):
                    store.save(done, state, history, meta=fingerprint)
                if on_chunk is not None:
                    on_chunk(done, state, history)
        finally:
            if bar is not None:
                bar.close()
        return state, history
    finally:
        if store is not None:
            store.close()  # wait_until_finished: every save issued above is on disk


def _progress_bar(progress: bool, desc: str, total: int, initial: int):
    if not progress:
        return None
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a TTY (no noise in logs of batch jobs)
    return tqdm(total=total, initial=initial, desc=desc or None, unit="step", disable=None,
                file=sys.stderr, dynamic_ncols=True)


def _check_finite(state, rows: list[dict], lo: int, hi: int, history: list) -> None:
    bad_metric = None
    for row in rows:
        for k, v in row.items():
            if not math.isfinite(v):
                bad_metric = (k, row["step"], v)
                break
        if bad_metric:
            break
    bad_leaves = _nonfinite_leaves(state)
    if bad_metric is None and not bad_leaves:
        return
    parts = []
    if bad_metric is not None:
        parts.append(f"metric {bad_metric[0]!r}={bad_metric[2]} first at step {bad_metric[1]}")
    if bad_leaves:
        more = f" (+{len(bad_leaves) - 3} more)" if len(bad_leaves) > 3 else ""
        parts.append("state leaves " + ", ".join(bad_leaves[:3]) + more)
    err = NonFiniteError(
        f"non-finite values in steps [{lo}, {hi}): {'; '.join(parts)}; "
        "this chunk's state was not saved"
    )
    err.history = list(history)
    err.step_range = (lo, hi)
    raise err

