"""Data parallelism with `jax.jit` and `NamedSharding` over a 1-D ``('data',)`` mesh.

This replaces `jax.pmap` (in maintenance mode since JAX 0.8): parameters are replicated, the batch
is split along its leading axis, and XLA's SPMD partitioner inserts the gradient all-reduce. The
same code runs on one CPU device, on N CPU devices (``JAX_NUM_CPU_DEVICES``), on N GPUs, and on
several hosts that joined through `jax.distributed.initialize()` (the mesh is then global).
"""

from __future__ import annotations

import inspect
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over `devices` (default: every device of every process).

    Auto axis type: with Explicit axes batch indexing and ``x.T @ x`` fail to type-check.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimizer state and on-device datasets: a full copy per device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of a global batch: the leading axis split over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA))


def data_parallel(fn, mesh: Mesh, *, batch_argnums=(1,), donate_argnums=(0,)):
    """`jax.jit` `fn` for data parallelism on `mesh`: the successor of ``jax.pmap(fn)``.

    Unlike pmap, `fn` is written for the *global* batch (means are over all examples, no
    ``lax.pmean``): arguments in `batch_argnums` are sharded along their leading axis, every
    other argument and all outputs are replicated. The compiler partitions the computation.

    Args:
      fn: pure function of pytrees.
      mesh: a ``('data',)`` mesh from `data_mesh`.
      batch_argnums: positions of the arguments whose leaves have a leading batch axis.
      donate_argnums: arguments whose buffers are reused for the outputs (the train state).
    """
    nargs = len(inspect.signature(fn).parameters)
    in_shardings = tuple(
        batch_sharded(mesh) if i in batch_argnums else replicated(mesh) for i in range(nargs)
    )
    return jax.jit(
        fn,
        in_shardings=in_shardings,
        out_shardings=replicated(mesh),
        donate_argnums=donate_argnums,
    )


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices of `mesh`."""
    n = mesh.devices.size
    if batch_size < 1 or batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the device count {n}: "
            f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)})"
        )


def replicate(tree, mesh: Mesh):
    """Place a host pytree (the same on every process) on every device of `mesh`."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def shard_batch(local_batch, mesh: Mesh):
    """Build global batch arrays from each process's own rows.

    With one process the local batch is the global batch. With several, process ``i`` passes
    its ``1/num_processes`` slice and the result is one global array sharded over ``data``.
    """
    for x in jax.tree.leaves(local_batch):
        check_batch_size(np.shape(x)[0] * jax.process_count(), mesh)
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def shard_global_batch(batch, mesh: Mesh):
    """Like `shard_batch`, when every process holds the same whole global batch (evaluation)."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
        batch,
    )


def initialize_distributed() -> None:
    """Join a multi-host run, if this process is part of one; call before any other JAX use.

    Under SLURM with several tasks, `jax.distributed.initialize()` reads the job's variables.
    Elsewhere, set ``JAXAE_COORDINATOR=host:port``, ``JAXAE_NUM_PROCESSES`` and
    ``JAXAE_PROCESS_ID`` on every host. With neither, this is a single-process run: no-op.
    """
    if "JAXAE_COORDINATOR" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAXAE_COORDINATOR"],
            num_processes=int(os.environ["JAXAE_NUM_PROCESSES"]),
            process_id=int(os.environ["JAXAE_PROCESS_ID"]),
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def to_host(tree):
    """NumPy copies of replicated arrays, also on hosts that see only their own devices."""
    return jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)) if hasattr(x, "addressable_data") else x, tree
    )


def map_batches(fn, data, batch_size: int, *, args=(), mesh: Mesh | None = None, progress=None):
    """``fn(*args, batch)`` over a whole host dataset, batch by batch: the one evaluation loop.

    `data` is a pytree of host arrays with a shared leading example axis (every process holds
    all of it); `fn` returns a pytree of per-example arrays ``[B, ...]``. The last batch is
    padded with copies of the last example (so `fn` compiles once) and the padding dropped;
    batch i is fetched while batch i + 1 runs. `fn` should be jitted for `mesh` (e.g. by
    `data_parallel` with ``batch_argnums=(len(args),)``); `args` are passed through unchanged.
    `progress`: a tqdm bar to advance by the examples done.

    Returns:
      The outputs for every example, concatenated on the host: a pytree of ``[N, ...]``.
    """
    mesh = mesh or data_mesh()
    check_batch_size(batch_size, mesh)
    leaves = jax.tree.leaves(data)
    n = len(leaves[0])
    if n == 0:
        raise ValueError("map_batches: the dataset is empty (0 examples)")
    if any(len(x) != n for x in leaves):
        raise ValueError(f"map_batches: arrays of {[len(x) for x in leaves]} examples differ")
    outputs, pending = [], None

    def fetch(pending):
        result, size = pending
        outputs.append(jax.tree.map(lambda x: np.asarray(to_host(x))[:size], result))
        if progress is not None:
            progress.update(size)

    for start in range(0, n, batch_size):

        def pad(x, start=start):
            part = np.asarray(x[start : start + batch_size])
            extra = batch_size - len(part)
            return np.concatenate([part, np.repeat(part[-1:], extra, 0)]) if extra else part

        batch = shard_global_batch(jax.tree.map(pad, data), mesh)
        result = fn(*args, batch)
        if pending is not None:
            fetch(pending)
        pending = (result, min(batch_size, n - start))
    fetch(pending)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def batch_means(fn, data, batch_size: int, *, args=(), mesh: Mesh | None = None) -> dict:
    """Means over a whole dataset of ``fn(*args, batch) -> {name: [B]}`` (`map_batches`)."""
    per_example = map_batches(fn, data, batch_size, args=args, mesh=mesh)
    return {k: float(np.mean(v, dtype=np.float64)) for k, v in per_example.items()}
