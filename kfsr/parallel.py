"""Scale-out of per-image work: shard a batch axis across devices (DESIGN.md §5).

Zero-shot methods optimise each image independently, so a vmapped state with a leading batch
axis B is embarrassingly parallel: put it on a 1-D `Mesh` over the devices with
`NamedSharding(mesh, P("batch"))` and XLA's SPMD partitioner runs each device's images locally.
The step runs under `jax.shard_map` (each device applies the vmapped step to its own slice of
the batch) rather than through the automatic SPMD partitioner: it is the same per-device
program as the single-device run, and XLA:CPU's FFT rejects the layouts the partitioner picks
for batched FFTs (jaxlib 0.10.2: RET_CHECK `IsMonotonicWithDim0Major` in fft_thunk.cc).

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


def shard_vmapped(fn, mesh: Mesh):
    """`fn` vmapped over a leading batch axis of every input and output leaf, with that axis
    split over `mesh` ("batch"): each device runs `vmap(fn)` on its local images. Call it on
    arrays placed by `shard_batch` (or let jit move them)."""
    spec = P("batch")
    return jax.shard_map(jax.vmap(fn), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
