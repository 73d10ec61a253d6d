"""Scale-out of per-image work: shard a batch axis across devices (DESIGN.md §5).

Zero-shot methods optimise each image independently, so a vmapped state with a leading batch
axis B is embarrassingly parallel: put it on a 1-D `Mesh` over the devices with
`NamedSharding(mesh, P("batch"))` and XLA's SPMD partitioner runs each device's images locally.
The same code runs on CPU with `XLA_FLAGS=--xla_force_host_platform_device_count=N` (how the tests
check it), on one GPU/TPU host, and on several hosts after `jax.distributed.initialize()` (call it
first on every host; `jax.devices()` then lists the devices of all hosts and the mesh spans them;
each host must feed the same global batch).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def batch_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis "batch" over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    if num_devices is not None:
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("batch",))


def usable_devices(batch: int, num_devices: int | None = None) -> int:
    """The largest device count <= available that divides the batch (1 if none does)."""
    n = min(num_devices or jax.device_count(), batch)
    while n > 1 and batch % n:
        n -= 1
    return max(n, 1)


def shard_batch(tree, batch: int, mesh: Mesh | None = None):
    """Place every leaf whose leading axis is `batch` sharded over the mesh; replicate the rest."""
    mesh = mesh or batch_mesh(usable_devices(batch))
    split = NamedSharding(mesh, P("batch"))
    whole = NamedSharding(mesh, P())

    def put(x):
        if hasattr(x, "shape") and len(x.shape) >= 1 and x.shape[0] == batch:
            return jax.device_put(x, split)
        return jax.device_put(x, whole)

    return jax.tree.map(put, tree)
