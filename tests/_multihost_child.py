"""One process of the two-process training run in `test_multihost.py`.

Run as ``python tests/_multihost_child.py PORT PROCESS_ID NUM_PROCESSES OUT.npz`` with
``JAX_NUM_CPU_DEVICES`` and ``JAX_PLATFORMS=cpu`` in the environment. Every process joins the
cluster through `jax.distributed.initialize` (CPU collectives through gloo), builds one global
``('data',)`` mesh and trains the same tiny autoencoder on its own rows of each global batch.
Process 0 writes the final parameters. The test imports the training functions below to run
the same steps in one process, so the two runs share every line of training code.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

from jaxae import models, objectives, parallel, stream, train

IMAGE_SHAPE = (8, 8, 1)
LATENT_DIM = 4
NUM_EXAMPLES = 80
BATCH_SIZE = 16  # global; each of P processes feeds BATCH_SIZE // P rows
NUM_STEPS = 5  # NUM_STEPS * BATCH_SIZE == NUM_EXAMPLES: one epoch


def dataset() -> dict[str, np.ndarray]:
    """The same synthetic images on every process: {'image': float32 [N, 8, 8, 1]}."""
    rng = np.random.default_rng(0)
    return {"image": rng.random((NUM_EXAMPLES, *IMAGE_SHAPE), dtype=np.float32)}


def example_order() -> np.ndarray:
    """A fixed shuffle, so batches are not contiguous rows: int32 [N]."""
    return np.random.default_rng(1).permutation(NUM_EXAMPLES).astype(np.int32)


def setup(mesh):
    """(update, replicated initial state), identical on every process."""
    spec = {"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": LATENT_DIM,
            "image_shape": list(IMAGE_SHAPE), "seed": 0}  # fmt: skip
    graphdef, params, model_state = objectives.split(models.build(spec))
    update = train.single(objectives.loss_fn(graphdef), optax.adam(1e-2))
    state = train.init_state(params, update, seed=0, model_state=model_state)
    return update, parallel.replicate(state, mesh)


def local_rows(mesh) -> slice:
    """This process's rows of a global batch.

    `jax.make_array_from_process_local_data` fills this process's devices, in mesh order, with
    the local rows; they are rows ``[i * B/P, (i + 1) * B/P)`` only when process i owns a
    contiguous block of the mesh, which `data_mesh()` gives (devices are ordered by process).
    """
    owners = [d.process_index for d in mesh.devices.flat]
    if owners != sorted(owners):
        raise AssertionError(f"mesh devices are not grouped by process: {owners}")
    n, i = jax.process_count(), jax.process_index()
    per_process = BATCH_SIZE // n
    return slice(i * per_process, (i + 1) * per_process)


def train_steps(mesh) -> dict:
    """NUM_STEPS calls of `make_train_step`, each process feeding only its own rows."""
    update, state = setup(mesh)
    train_step = train.make_train_step(update, mesh)
    data, order, rows = dataset(), example_order(), local_rows(mesh)
    for t in range(NUM_STEPS):
        idx = order[t * BATCH_SIZE : (t + 1) * BATCH_SIZE]
        local = {k: v[idx][rows] for k, v in data.items()}
        state, _ = train_step(state, parallel.shard_batch(local, mesh))
    return state


def train_chunk(mesh) -> dict:
    """The same NUM_STEPS steps as one `make_train_chunk` scan over the replicated dataset."""
    update, state = setup(mesh)
    chunk = train.make_train_chunk(update, BATCH_SIZE, mesh)
    data = parallel.replicate(dataset(), mesh)
    perm = parallel.replicate(example_order(), mesh)
    state, _ = chunk(state, data, perm, 0, NUM_STEPS)
    return state


def train_streamed(mesh) -> dict:
    """The same steps with batches streamed from the host (`jaxae.stream.Batches`): each
    process reads only its own rows of each global batch, two steps' batches per call."""
    update, state = setup(mesh)
    order = lambda epoch: example_order()  # noqa: E731
    batches = stream.Batches(dataset(), order, batch_size=BATCH_SIZE, steps_per_epoch=NUM_STEPS,
                             total=NUM_STEPS, start=0, mesh=mesh)  # fmt: skip
    chunk = train.make_stream_chunk(update, mesh)
    for k in (2, 2, 1):
        state, _ = chunk(state, batches.take(k))
    return state


def flat_params(state) -> list[np.ndarray]:
    """The parameter leaves on the host (replicated arrays are readable on every process)."""
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def main(port: int, process_id: int, num_processes: int, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    try:
        mesh = parallel.data_mesh()
        assert mesh.devices.size == jax.device_count() == num_processes * jax.local_device_count()
        step_params = flat_params(train_steps(mesh))
        chunk_params = flat_params(train_chunk(mesh))
        streamed_params = flat_params(train_streamed(mesh))
        if jax.process_index() == 0:
            arrays = {f"step_{k}": v for k, v in enumerate(step_params)}
            arrays |= {f"chunk_{k}": v for k, v in enumerate(chunk_params)}
            arrays |= {f"streamed_{k}": v for k, v in enumerate(streamed_params)}
            np.savez(out, **arrays)
    finally:
        jax.distributed.shutdown()


if __name__ == "__main__":
    port, process_id, num_processes, out = sys.argv[1:]
    main(int(port), int(process_id), int(num_processes), out)
