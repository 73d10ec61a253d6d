"""Orbax checkpoints of a loop state plus its metric history (DESIGN.md §7).

A thin wrapper over `orbax.checkpoint.CheckpointManager`. Each step directory holds three items,
saved together through `ocp.args.Composite`:

- ``state``:   the state pytree (`ocp.args.StandardSave` / `StandardRestore`); typed PRNG key
               leaves (``jax.random.key``) are stored as their raw ``uint32`` key data and wrapped
               back on restore using the template's key implementation.
- ``history``: the list of per-step metric dicts (`ocp.args.JsonSave` / `JsonRestore`).
- ``meta``:    a small JSON fingerprint of the run (`kfsr.train.loop` uses it to refuse a
               directory that belongs to a different run).

Saving is asynchronous: `save` copies the state to host memory first (so the caller may donate or
overwrite the device buffers right away) and orbax writes it in a background thread. Call
`wait_until_finished()` (or `close()`) before relying on the files. A step directory appears only
once it is complete (orbax writes to a temporary directory and renames it), so a process killed
mid-save leaves the previous checkpoints intact.
"""
from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointStore", "is_key", "state_fingerprint"]

_ITEMS = ("state", "history", "meta")


def is_key(x) -> bool:
    """True for a typed PRNG key array (``jax.random.key``)."""
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(x):
    """Host (numpy) copy of a leaf; typed keys become their uint32 key data. Orbax refuses
    zero-size arrays, so those are stored as a one-element placeholder (their shape is known
    from the restore template and checked by the run fingerprint)."""
    if is_key(x):
        x = jax.random.key_data(x)
    x = np.asarray(jax.device_get(x))
    return np.zeros((1,), x.dtype) if x.size == 0 else x


def _abstract(x):
    """ShapeDtypeStruct restore target for a template leaf (array, key, or ShapeDtypeStruct)."""
    if is_key(x):
        x = jax.random.key_data(x)
    if not isinstance(x, jax.ShapeDtypeStruct):
        x = ocp.utils.to_shape_dtype_struct(jnp.asarray(x) if not isinstance(x, jax.Array) else x)
    if math.prod(x.shape) == 0:  # stored as a placeholder by _to_host
        return jax.ShapeDtypeStruct((1,), x.dtype)
    return x


def _restored(template, x):
    """The restored leaf in the template's form: typed keys re-wrapped, empty arrays re-made."""
    if is_key(template):
        return jax.random.wrap_key_data(x, impl=jax.random.key_impl(template))
    shape = tuple(np.shape(template))
    if math.prod(shape) == 0:
        return np.zeros(shape, np.asarray(x).dtype)
    return x


def state_fingerprint(state) -> dict:
    """JSON-able description of a state's tree structure, leaf shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    return {
        "treedef": str(treedef),
        "leaves": [
            [jax.tree_util.keystr(path), list(np.shape(x)), str(jnp.result_type(x) if not is_key(x) else x.dtype)]
            for path, x in leaves
        ],
    }


class CheckpointStore:
    """Saves and restores ``(state, history)`` at integer steps in one directory.

    Args:
      directory: checkpoint directory (created if missing).
      max_to_keep: number of most recent step checkpoints kept (older ones are deleted).
      async_save: write in a background thread (orbax's default).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            cleanup_tmp_directories=True,  # remove half-written saves of a killed process
            enable_async_checkpointing=async_save,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    # -- queries ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """Latest complete checkpoint step, or None if the directory has none."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def meta(self, step: int) -> dict | None:
        """The JSON ``meta`` item of a step (None if the checkpoint has none)."""
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception:  # noqa: BLE001 - not a kfsr checkpoint (missing item)
            return None
        return out["meta"]

    # -- save / restore --------------------------------------------------------------------
    def save(self, step: int, state: Any, history: list, meta: dict | None = None) -> None:
        """Save ``state`` (copied to host now) and ``history`` at ``step`` (asynchronously)."""
        host_state = jax.tree.map(_to_host, state)
        self._mngr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state),
                history=ocp.args.JsonSave(list(history)),
                meta=ocp.args.JsonSave(dict(meta or {})),
            ),
            force=True,  # the loop decides when to save, not save_interval_steps
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, list]:
        """Restore ``(state, history)`` at ``step``.

        ``abstract_state`` is a template with the same structure: concrete arrays (e.g. the
        initial state) or ``jax.ShapeDtypeStruct`` leaves. Typed key leaves in the template get
        typed keys back.
        """
        target = jax.tree.map(_abstract, abstract_state)
        out = self._mngr.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()
            ),
        )
        state = jax.tree.map(_restored, abstract_state, out["state"])
        return state, list(out["history"])

    def wait_until_finished(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's resources."""
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
