"""Streaming input: training batches from a prefetching host pipeline, for a training set that
does not fit in device memory (`jaxae.train.fit` switches to it above ``data.memory_budget_mb``).

The in-memory path places the whole set on every device and gathers each batch inside the
compiled epoch. Streaming reads the same batches, in the same order (the epoch permutation of
`jaxae.train.epoch_permutation`), on the host: step ``s`` reads rows ``perm[offset * B : ...]``
of its epoch's permutation, each process only its own ``1/num_processes`` of them
(`jax.process_index`), and the rows become one global batch sharded over the mesh's ``data``
axis. Worker threads read and stack the next batches while the devices run the current step.

Why grain (not tf.data): it is the JAX ecosystem's own loader, a small pure-Python package on
top of numpy, whereas tf.data needs all of TensorFlow; its random-access ``MapDataset`` makes
the batch of a step a pure function of the step, and its iterator state is one small dict
(``{'next_index': step}``) that every checkpoint saves in its meta (``data.pipeline``), so a
killed run resumes to the same batches, and the same parameters, bit for bit.

A source is anything with ``len()`` and ``source[i] -> {name: array}`` (one record; a grain
``RandomAccessDataSource``), or a dict of host arrays with a leading example axis (an
``np.memmap`` or an ``np.load(..., mmap_mode='r')`` array is read row by row from disk).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxae import parallel

THREADS = 4  # batches read at once; reading is I/O and numpy copies, which release the GIL
PREFETCH = 8  # batches read ahead of the step that trains on them
# The most bytes of batches placed on the devices for one call: the steps of a call run as one
# `lax.scan` over them, as fast as the in-memory path's (a jitted call per step runs the
# infoGAN AE's step 12-23% slower on CPU than the same step inside a scan).
CALL_BYTES = 64 * 2**20


def budget_bytes(megabytes: float, devices=None) -> int:
    """The bytes of device memory the training set may take: ``megabytes`` MiB, or (0) a quarter
    of the smallest device's memory (its ``bytes_limit``; CPU devices report none and share the
    host's memory: a quarter of the host's physical memory)."""
    if megabytes:
        return int(megabytes * 2**20)
    limits = []
    for d in devices if devices is not None else jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    if limits:
        return min(limits) // 4
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def nbytes(train: dict) -> int:
    """The bytes a dict of host arrays takes on each device when placed there whole."""
    return sum(int(v.nbytes if hasattr(v, "nbytes") else np.asarray(v).nbytes)
               for v in train.values())  # fmt: skip


def _rows(source, idx: np.ndarray) -> dict:
    """The records `idx` of `source`, stacked: {name: [len(idx), ...]}."""
    if isinstance(source, dict):
        # Read in ascending order (sequential on disk for a memmap), then restore the order.
        order = np.argsort(idx, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(idx))
        return {k: np.asarray(v[idx[order]])[back] for k, v in source.items()}
    records = [source[int(i)] for i in idx]
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def check_source(source) -> int:
    """The number of examples of `source`; a ValueError names what is wrong with it."""
    if isinstance(source, dict):
        sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in source.items()}
        if not sizes or len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"train arrays need one shared leading example axis, got {sizes}")
        return next(iter(sizes.values()))
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise TypeError(
            f"a training source is a dict of arrays or has len() and source[i] -> "
            f"{{name: array}}; got {type(source).__name__}"
        )
    n = len(source)
    if n == 0:
        raise ValueError("the training source has no records: an empty dataset")
    first = source[0]
    if not isinstance(first, dict) or not first:
        raise ValueError(f"source[0] must be a dict {{name: array}}, got {type(first).__name__}")
    return n


class _Batch:
    """Step -> this process's rows of the step's global batch (called by grain's readers)."""

    def __init__(self, source, order: Callable[[int], np.ndarray], batch_size: int,
                 steps_per_epoch: int):  # fmt: skip
        self.source, self.order = source, order
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        share = batch_size // jax.process_count()
        self.rows = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        self._lock, self._perms = threading.Lock(), {}

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:  # threads ask for the same epoch at once: compute it once
            if epoch not in self._perms:
                self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
                self._perms[epoch] = np.asarray(self.order(epoch))
            return self._perms[epoch]

    def __call__(self, step) -> dict:
        epoch, offset = divmod(int(step), self.steps_per_epoch)
        start = offset * self.batch_size
        idx = self._perm(epoch)[start : start + self.batch_size][self.rows]
        return _rows(self.source, idx)


class Batches:
    """The batches of steps ``start, start + 1, ...`` of a run, read ahead by worker threads.

    ``take(k)`` stacks the next `k` steps' global batches; `state` is the pipeline's position,
    saved with each checkpoint.
    """

    def __init__(self, source, order, *, batch_size: int, steps_per_epoch: int, total: int,
                 start: int, mesh, state: dict | None = None, threads: int = THREADS,
                 prefetch: int = PREFETCH):  # fmt: skip
        parallel.check_batch_size(batch_size, mesh)
        if batch_size % jax.process_count():
            raise ValueError(
                f"batch size {batch_size} does not split over {jax.process_count()} processes"
            )
        self.mesh = mesh
        ds = grain.MapDataset.range(total).map(_Batch(source, order, batch_size, steps_per_epoch))
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
        self._it = iter(ds.to_iter_dataset(options))
        if state is not None and state.get("next_index") != start:
            raise ValueError(
                f"the checkpoint's input pipeline position {state} does not match its step "
                f"{start}: the checkpoint's meta is corrupt; resume from an earlier checkpoint "
                "or use a new workdir"
            )
        self._it.set_state({"next_index": start})
        row = {k: np.asarray(v) for k, v in _rows(source, np.zeros(1, np.int64)).items()}
        self._batch_bytes = batch_size * sum(v.nbytes for v in row.values())

    @property
    def state(self) -> dict:
        """The position of the next batch ``{'next_index': step}`` (grain's iterator state)."""
        return self._it.get_state()

    def steps_per_call(self, n: int) -> int:
        """How many of `n` steps' batches to place on the devices at once (`CALL_BYTES`)."""
        return max(1, min(n, CALL_BYTES // max(1, self._batch_bytes)))

    def take(self, k: int) -> dict:
        """The next `k` steps' batches, stacked: global arrays [k, B, ...] sharded over the
        mesh's ``data`` axis on their batch axis (each process contributes its own rows)."""
        local = [next(self._it) for _ in range(k)]
        sharding = NamedSharding(self.mesh, P(None, "data"))
        out = {}
        for name in local[0]:
            x = np.stack([b[name] for b in local])
            shape = (k, x.shape[1] * jax.process_count(), *x.shape[2:])
            out[name] = jax.make_array_from_process_local_data(sharding, x, shape)
        return out
