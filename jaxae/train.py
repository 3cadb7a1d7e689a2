"""The trainer: a jitted, buffer-donating, data-parallel train step, an epoch-as-one-`lax.scan`
fast path over on-device data, and a short loop with progress bar, JSON-lines metrics, exact
orbax resume and a non-finite-loss guard.

Sections follow big_vision's `train.py`: mesh, input, state, update step, checkpoint, loop.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxae import parallel
from jaxae.checkpoint import Checkpointer
from jaxae.config import TrainConfig

# A loss function maps (params, batch, key) to per-example terms {name: [B]}, with 'loss'.
LossFn = Callable[[Any, dict, jax.Array], dict[str, jax.Array]]
# `prepare(batch, key)` turns a raw batch (uint8 pixels) into model inputs, on device.
PrepareFn = Callable[[dict, jax.Array], dict]

# Fields that may change between a run and its resumption (they set the budget and the loop,
# not the trajectory). Any other difference is an error.
RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "steps_per_call",
    "checkpoint_every",
    "keep_checkpoints",
)


class NonFiniteLossError(FloatingPointError):
    """A training term became NaN or infinite; carries the global step and the term names."""

    def __init__(self, step: int, terms: list[str], checkpoint_step: int | None):
        self.step, self.terms = step, terms
        kept = (
            f"the last good checkpoint (step {checkpoint_step}) is kept"
            if checkpoint_step is not None
            else "no checkpoint was saved yet"
        )
        super().__init__(
            f"non-finite value in {', '.join(terms)} at step {step}; training stopped and {kept}"
        )


# --- State -------------------------------------------------------------------------------------


def init_state(params, optimizer: optax.GradientTransformation, seed: int) -> dict:
    """The train state pytree ``{params, opt_state, step, key}`` (host values)."""
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": np.int32(0),
        "key": np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), 1)),
    }


def data_key(seed: int) -> jax.Array:
    """Key of the data order; epoch e is shuffled with ``fold_in(data_key, e)``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 2)


@functools.partial(jax.jit, static_argnums=2)
def epoch_permutation(key: jax.Array, epoch, num_examples: int) -> jax.Array:
    """The example order of `epoch`: a pure function of (key, epoch), so resume is exact."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


# --- Update step -------------------------------------------------------------------------------


def reduce_terms(terms: dict[str, jax.Array], mask: jax.Array | None = None) -> dict:
    """The one place where per-example terms [B] become batch means (masked for padding)."""
    if mask is None:
        return {k: jnp.mean(v) for k, v in terms.items()}
    w = mask.astype(jnp.float32)
    return {k: jnp.sum(jnp.where(mask, v, 0.0)) / jnp.sum(w) for k, v in terms.items()}


def _step_fn(loss_fn: LossFn, optimizer, prepare: PrepareFn | None):
    """The pure single-step update ``(state, batch) -> (state, metrics)`` on a global batch."""

    def train_step(state, batch):
        key = jax.random.fold_in(state["key"], state["step"])  # never reused across steps
        prep_key, loss_key = jax.random.split(key)
        if prepare is not None:
            batch = prepare(batch, prep_key)

        def objective(params):
            metrics = reduce_terms(loss_fn(params, batch, loss_key))
            return metrics["loss"], metrics

        grads, metrics = jax.grad(objective, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    return train_step


def make_train_step(loss_fn: LossFn, optimizer, mesh=None, prepare: PrepareFn | None = None):
    """One jitted, state-donating, data-parallel step ``(state, batch) -> (state, metrics)``.

    `batch` is a dict of global arrays sharded over the ``data`` axis (see
    `jaxae.parallel.shard_batch`); the state is replicated.
    """
    mesh = mesh or parallel.data_mesh()
    return parallel.data_parallel(_step_fn(loss_fn, optimizer, prepare), mesh)


def make_train_chunk(
    loss_fn: LossFn, optimizer, batch_size: int, mesh=None, prepare: PrepareFn | None = None
):
    """The fast path: `num_steps` steps in one jitted `lax.scan` over on-device data.

    Returns ``chunk(state, data, perm, start, num_steps) -> (state, metrics [num_steps])``: step
    t trains on ``data[perm[(start + t) * batch_size : ...]]``, so there is no host round trip
    per step. `data` is a dict of replicated arrays; each batch is resharded over ``data``.
    """
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(batch_size, mesh)
    train_step = _step_fn(loss_fn, optimizer, prepare)
    sharded = parallel.batch_sharded(mesh)

    def chunk(state, data, perm, start, num_steps):
        def body(state, t):
            idx = jax.lax.dynamic_slice_in_dim(perm, (start + t) * batch_size, batch_size)
            # Gather whole rows of a 2-D view: XLA:CPU gathers [N, 28, 28, 1] uint8 slowly.
            rows = lambda a: a.reshape(a.shape[0], -1)[idx].reshape(batch_size, *a.shape[1:])
            batch = jax.lax.with_sharding_constraint(jax.tree.map(rows, data), sharded)
            return train_step(state, batch)

        return jax.lax.scan(body, state, jnp.arange(num_steps))

    return jax.jit(
        chunk,
        static_argnums=4,
        in_shardings=parallel.replicated(mesh),
        out_shardings=parallel.replicated(mesh),
        donate_argnums=0,
    )


# --- Evaluation --------------------------------------------------------------------------------


def evaluate(per_example_fn, params, data: dict, batch_size: int, mesh=None) -> dict:
    """Average ``per_example_fn(params, batch) -> {name: [B]}`` over a whole host dataset.

    The last batch is padded to `batch_size` and masked out of the means (big_vision style).
    """
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(batch_size, mesh)
    fn = _eval_fn(per_example_fn, mesh)
    n = len(next(iter(data.values())))
    totals, count = {}, 0
    for lo in range(0, n, batch_size):
        part = {k: np.asarray(v[lo : lo + batch_size]) for k, v in data.items()}
        m = len(next(iter(part.values())))
        pad = {
            k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, 0)]) for k, v in part.items()
        }
        mask = np.arange(batch_size) < m
        sums = fn(params, parallel.shard_global_batch({**pad, "_mask": mask}, mesh))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        count += m
    return {k: v / count for k, v in totals.items()}


@functools.lru_cache(maxsize=32)
def _eval_fn(per_example_fn, mesh):
    def sums(params, batch):
        mask = batch.pop("_mask")
        terms = per_example_fn(params, batch)
        return {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in terms.items()}

    return parallel.data_parallel(sums, mesh, donate_argnums=())


# --- Loop --------------------------------------------------------------------------------------


class FitResult(NamedTuple):
    state: dict
    history: list[dict]
    resumed_from: int | None


def fit(
    config: TrainConfig,
    workdir: str | Path,
    *,
    params,
    loss_fn: LossFn,
    train: dict[str, np.ndarray],
    prepare: PrepareFn | None = None,
    optimizer: optax.GradientTransformation | None = None,
    mesh=None,
    eval_fn: Callable[[dict], dict] | None = None,
    progress: bool = True,
    model: dict | None = None,
) -> FitResult:
    """Train (or resume) until ``config.epochs`` epochs or ``config.max_steps`` steps.

    Args:
      config: the run's `TrainConfig` (saved with every checkpoint).
      workdir: run folder; holds ``checkpoints/`` and ``metrics.jsonl``.
      params: initial parameters (an `nnx.State`), used when there is no checkpoint.
      loss_fn: per-example loss, see `LossFn`.
      train: host arrays with a leading example axis, e.g. ``{'image': uint8 [N,H,W,C]}``;
        placed on every device once.
      prepare: on-device preprocessing of each raw batch.
      optimizer: defaults to ``optax.adam(config.learning_rate)``.
      mesh: defaults to a ``('data',)`` mesh over all devices.
      eval_fn: called with the params at every epoch end; its dict is logged.
      progress: show a progress bar.
      model: JSON-able description of the model (`jaxae.models.build` rebuilds it), saved
        with every checkpoint so that the run can be restored and evaluated later.

    Returns:
      `FitResult` with the final state, the logged metric lines, and the step resumed from.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    optimizer = optimizer or optax.adam(config.learning_rate)

    # --- Input: the whole dataset lives on the devices.
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in train.items()}
    if not sizes or len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"train arrays need one shared leading example axis, got sizes {sizes}")
    num_examples = next(iter(sizes.values()))
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set has {num_examples} examples, fewer than one batch of "
            f"{config.batch_size}: an empty epoch"
        )
    data = parallel.replicate(train, mesh)
    total = config.epochs * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps)

    # --- State and checkpoint.
    host_state = jax.device_get(init_state(params, optimizer, config.seed))

    def init_fn():
        return parallel.replicate(host_state, mesh)

    every = config.checkpoint_every or steps_per_epoch
    ckpt = Checkpointer(workdir / "checkpoints", save_every=every, keep=config.keep_checkpoints)
    try:
        state, meta, resumed = ckpt.restore_or_init(init_fn)
        if meta is not None:
            _check_resumable(meta, config, num_examples)
        _trim_log(workdir / "metrics.jsonl", int(state["step"]))
        chunk_fn = make_train_chunk(loss_fn, optimizer, config.batch_size, mesh, prepare)
        state, history = _loop(
            state,
            ckpt,
            every,
            chunk_fn,
            data,
            config,
            workdir,
            steps_per_epoch,
            total,
            eval_fn,
            progress,
            model,
        )
    finally:
        ckpt.close()  # waits for an in-flight save, so Ctrl-C leaves a complete checkpoint
    return FitResult(state=state, history=history, resumed_from=resumed)


def _check_resumable(meta: dict, config: TrainConfig, num_examples: int) -> None:
    saved = meta.get("config", {})
    now = config.to_dict()
    diff = [
        f"{k}: {saved.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]
    ]
    if meta.get("data", {}).get("num_examples", num_examples) != num_examples:
        diff.append(f"num_examples: {meta['data']['num_examples']} -> {num_examples}")
    if diff:
        raise ValueError(
            "cannot resume: the checkpoint was written by a different run ("
            + "; ".join(diff)
            + "). Use a new workdir, or the original config."
        )


def _loop(
    state,
    ckpt,
    every,
    chunk_fn,
    data,
    config,
    workdir,
    steps_per_epoch,
    total,
    eval_fn,
    progress,
    model,
):
    """Run chunks of scanned steps, cut at epoch ends and checkpoint steps."""
    key = data_key(config.seed)
    num_examples = len(jax.tree.leaves(data)[0])
    step = int(state["step"])
    history, perm, perm_epoch = [], None, -1
    last_saved = ckpt.latest_step()
    lead = jax.process_index() == 0  # one process writes the log and shows the bar
    with (
        open(workdir / "metrics.jsonl" if lead else os.devnull, "a") as log,
        tqdm(total=total, initial=step, disable=not (progress and lead), unit="step") as bar,
    ):
        while step < total:
            epoch, offset = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = epoch_permutation(key, epoch, num_examples), epoch
            n = min(steps_per_epoch - offset, total - step, every - step % every)
            if config.steps_per_call:
                n = min(n, config.steps_per_call)
            t0 = time.perf_counter()
            state, metrics = chunk_fn(state, data, perm, offset, n)
            metrics = jax.device_get(metrics)  # waits for the chunk: [n] per term
            seconds = time.perf_counter() - t0
            _check_finite(metrics, step, last_saved)
            step += n
            line = {
                "step": step,
                "epoch": epoch + (offset + n) / steps_per_epoch,
                **{k: float(np.mean(v)) for k, v in metrics.items()},
                "examples_per_s": n * config.batch_size / seconds,
                "seconds": seconds,
            }
            if step % steps_per_epoch == 0 and eval_fn is not None:
                line.update({f"eval_{k}": float(v) for k, v in eval_fn(state["params"]).items()})
            log.write(json.dumps(line) + "\n")
            log.flush()
            history.append(line)
            bar.update(n)
            bar.set_postfix(loss=f"{line['loss']:.4g}", ex_s=f"{line['examples_per_s']:.0f}")
            meta = {
                "config": config.to_dict(),
                "data": {
                    "epoch": step // steps_per_epoch,
                    "batch": step % steps_per_epoch,
                    "step": step,
                    "steps_per_epoch": steps_per_epoch,
                    "num_examples": num_examples,
                },
                **({"model": model} if model else {}),
            }
            if ckpt.save(step, state, meta, force=step == total):
                last_saved = step
    return state, history


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past the restored step (written after the checkpoint before a crash)."""
    if path.exists() and jax.process_index() == 0:
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        keep = [x for x in lines if json.loads(x).get("step", 0) <= step]
        if len(keep) != len(lines):
            path.write_text("".join(x + "\n" for x in keep))


def _check_finite(metrics: dict, first_step: int, last_saved: int | None) -> None:
    bad = {k: ~np.isfinite(np.asarray(v)) for k, v in metrics.items()}
    hit = [i for i in range(len(next(iter(bad.values())))) if any(b[i] for b in bad.values())]
    if hit:
        i = hit[0]
        terms = [k for k, b in bad.items() if b[i]]
        # Name the per-example terms before their reductions ('loss', 'grad_norm').
        terms.sort(key=lambda k: (k in ("loss", "grad_norm"), k))
        raise NonFiniteLossError(first_step + i + 1, terms, last_saved)
