"""Data-parallel training with ``jax.jit`` and shardings: one code path for 1 and N devices.

A 1-D device mesh with axis ``'data'`` (:func:`make_mesh`); batches are split along their
example axis over it (:func:`shard_batch`), the train state is replicated
(:func:`replicate`), and :func:`data_parallel` jits a train step with those shardings.
XLA's SPMD partitioner turns the step's batch mean into a cross-device reduction, so the
same step on 1 or N devices computes the same numbers up to float rounding. No
``jax.pmap``.

With several processes (``jax.distributed.initialize()``, see :func:`initialize`), each
process passes *its own* slice of the global batch to :func:`shard_batch`, which
assembles the global array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"
ENV_DISTRIBUTED = "KD_REGRESSION_DISTRIBUTED"
ENV_PROCESSES = "KD_REGRESSION_NUM_PROCESSES"
ENV_PROCESS_ID = "KD_REGRESSION_PROCESS_ID"


def initialize(enabled: bool | None = None) -> bool:
    """Starts JAX's multi-process runtime when ``enabled`` (default: the environment
    variable ``KD_REGRESSION_DISTRIBUTED=1``); returns whether it did.

    ``jax.distributed.initialize()`` finds the coordinator, the process count and this
    process's id itself on Cloud TPU, SLURM and Open MPI. Elsewhere (e.g. several
    processes started by hand on one GPU host) set JAX's ``JAX_COORDINATOR_ADDRESS``
    (``host:port`` of process 0) and our ``KD_REGRESSION_NUM_PROCESSES`` and
    ``KD_REGRESSION_PROCESS_ID``. Call it before any other JAX call.
    """
    if enabled is None:
        enabled = os.environ.get(ENV_DISTRIBUTED, "") == "1"
    if not enabled:
        return False
    kwargs = {}
    for key, env in (("num_processes", ENV_PROCESSES), ("process_id", ENV_PROCESS_ID)):
        value = os.environ.get(env)
        if value is not None:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"{env}={value!r}: not an integer") from None
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh ``('data',)`` over the first ``num_devices`` devices (default: all)."""
    available = jax.device_count()
    n = available if num_devices is None else int(num_devices)
    if not 1 <= n <= available:
        raise ValueError(f"num_devices={num_devices}: must be in [1, {available}] (devices)")
    return jax.make_mesh((n,), (DATA,), devices=jax.devices()[:n])


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split ``axis`` (the example axis; 1 for a population ``[S, B, ...]``) over 'data'."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """A ValueError unless ``batch_size`` splits evenly over the processes and over the
    mesh's devices."""
    process_rows(batch_size)  # raises if it does not split over the processes
    n = mesh.shape[DATA]
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        raise ValueError(
            f"batch_size={batch_size} does not split over {n} devices: use a multiple of "
            f"{n} (e.g. {lower or n} or {upper})"
        )


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, axis: int = 0) -> dict[str, jax.Array]:
    """Places a batch on the mesh, split along ``axis``.

    In one process, ``batch`` is the global batch. With several processes, it is this
    process's slice (global batch / process count, examples in process order).
    """
    sharding = batch_sharding(mesh, axis)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim <= axis:
            raise ValueError(f"batch[{key!r}] has shape {value.shape}: no example axis {axis}")
        local = value.shape[axis]
        global_size = local * jax.process_count()
        check_batch_size(global_size, mesh)
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            shape = (*value.shape[:axis], global_size, *value.shape[axis + 1 :])
            out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def process_rows(batch_size: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a global batch that this process feeds.

    Process ``p`` of ``P`` feeds rows ``[p * b / P, (p + 1) * b / P)``; the mesh's devices
    are in process order, so these are the rows its own devices hold.
    """
    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ValueError(
            f"batch_size={batch_size} does not split over {count} processes: use a multiple "
            f"of {count}"
        )
    local = batch_size // count
    return index * local, (index + 1) * local


def is_primary() -> bool:
    """Whether this process writes shared files (results, summaries, store commits)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def check_agreement(text: str, what: str) -> None:
    """Raises in every process unless all of them hold the same ``text`` (nothing with
    one process): a decision each makes from shared files must not differ, or the
    collectives that follow would wait for each other forever."""
    if jax.process_count() > 1:
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
        multihost_utils.assert_equal(digest, f"the processes disagree on {what}")


def local_copy(tree: Any) -> Any:
    """Fully replicated arrays as this process's own single-device copies.

    Prediction and evaluation then run on one local device, without the other processes
    (which need not call them in step) and without repeating the work on every device.
    """

    def local(a):
        if not isinstance(a, jax.Array) or len(a.sharding.device_set) == 1:
            return a
        if not a.is_fully_replicated:
            raise ValueError(f"local_copy: an array of sharding {a.sharding} is not replicated")
        return a.addressable_data(0)

    return jax.tree.map(local, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` copied to every device of the mesh.

    With several processes each passes the same values (e.g. a state initialised from the
    same seed, or restored from the same checkpoint); each fills its own devices.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def data_parallel(
    train_step: Callable, mesh: Mesh, *, axis: int = 0, donate: bool = True
) -> Callable:
    """``train_step`` jitted with a replicated state and a batch split along ``axis``."""
    rep = replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(rep, batch_sharding(mesh, axis)),
        out_shardings=(rep, rep),
        donate_argnums=0 if donate else (),
    )
