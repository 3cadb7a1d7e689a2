"""The trainer: a jitted, buffer-donating, data-parallel train step, an epoch-as-one-`lax.scan`
fast path over on-device data, and a short loop with progress bar, JSON-lines metrics (one line
per epoch), exact orbax resume and a non-finite-loss guard.

How a model trains comes from the model itself: `model_update` reads its parameter groups
(`jaxae.models.Model.groups`) and builds `single` (one loss and optimizer over everything) or
`grouped` (an adversarial model: each group its own loss, optimizer and steps).

Sections follow big_vision's `train.py`: mesh, input, state, update step, checkpoint, loop.
"""

from __future__ import annotations

import functools
import json
import os
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import objectives, parallel, stream
from jaxae.checkpoint import Checkpointer, depended_steps

# A loss function maps (params, model_state, batch, key) to (per-example terms {name: [B]} with
# 'loss', the new model state); `stateless` adapts one of (params, batch, key) -> terms.
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[dict[str, jax.Array], Any]]
# `prepare(batch, key)` turns a raw batch (uint8 pixels) into model inputs, on device.
PrepareFn = Callable[[dict, jax.Array], dict]


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


# --- Update: optax-shaped (init, step) ------------------------------------------------------


class Update(NamedTuple):
    """How one iteration changes the trainable state, in the shape of an optax transformation.

    init(params) -> opt_state
    step(params, model_state, opt_state, batch, key) -> (params, model_state, opt_state, metrics)

    `metrics` are scalars (batch means of the loss terms, gradient norms). `single` is the
    default; `grouped` trains several parameter groups, each with its own loss and optimizer;
    `model_update` picks between them from the model's own groups.
    """

    init: Callable
    step: Callable


class Group(NamedTuple):
    """A parameter group of `grouped`: the top-level attributes of the model it owns (`params`,
    e.g. ``('critic',)``; None: every parameter no other group owns), its loss, its optax
    optimizer and how many steps it takes per iteration (a critic 5 : generator 1 schedule is
    ``steps=5`` on the critic)."""

    params: tuple | None
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    steps: int = 1


def stateless(fn) -> LossFn:
    """A `LossFn` from ``fn(params, batch, key) -> terms`` for models without model state."""

    def loss_fn(params, model_state, batch, key):
        return fn(params, batch, key), model_state

    return loss_fn


def _batch_size(batch) -> int:
    return int(jax.tree.leaves(batch)[0].shape[0])


def _grad_step(loss_fn, optimizer, params, model_state, opt_state, batch, key):
    """One optimizer step on `params`: (params, model_state, opt_state, metrics)."""
    size = _batch_size(batch)

    def objective(p):
        terms, new_model_state = loss_fn(p, model_state, batch, key)
        metrics = reduce_terms(terms, batch_size=size)
        return metrics["loss"], (metrics, new_model_state)

    grads, (metrics, model_state) = jax.grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return params, model_state, opt_state, metrics


def single(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Update:
    """One loss, one optimizer over every parameter: the default `Update`."""

    def step(params, model_state, opt_state, batch, key):
        return _grad_step(loss_fn, optimizer, params, model_state, opt_state, batch, key)

    return Update(optimizer.init, step)


def grouped(groups: dict[str, Group]) -> Update:
    """Several named parameter groups, stepped in the order given, each `steps` times per
    iteration (an inner `lax.scan`, so the iteration stays one jitted call).

    Each group's loss sees every parameter but differentiates only its own; the model state
    (BatchNorm statistics) threads through every step. One group may own "the rest"
    (``params=None``): every top-level parameter no other group names. The optimizer state is
    a dict keyed by group. Metrics are each group's, prefixed ``<group>/`` and averaged over
    its inner steps; there is no total ``loss`` (the sum of a critic's and a generator's
    opposing objectives means nothing). Step t of group g uses ``fold_in(fold_in(key, g), t)``
    and the same batch.

    Raises:
      ValueError: a group's steps are not an integer >= 1; groups overlap; two groups own the
        rest; a group owns nothing, or (when the parameters are seen) attributes the model lacks.
    """
    for name, g in groups.items():
        if not isinstance(g.steps, int) or g.steps < 1:
            raise ValueError(f"group {name!r}: steps must be an integer >= 1, got {g.steps!r}")
        if g.params is not None and (not isinstance(g.params, tuple | list) or not g.params):
            raise ValueError(
                f"group {name!r}: params must be a non-empty tuple of the model's top-level "
                f"attributes, or None (every parameter no other group owns), got {g.params!r}"
            )
    rest = [name for name, g in groups.items() if g.params is None]
    if len(rest) > 1:
        raise ValueError(
            f"parameter groups {rest} all have params=None (the rest): at most one group may own "
            "the rest; name the attributes of the others (e.g. params=('critic',))"
        )
    owners = [k for g in groups.values() if g.params is not None for k in g.params]
    if len(set(owners)) != len(owners):
        raise ValueError(f"parameter groups overlap: {owners}")

    def raw(state):  # nested plain dicts, as `nnx.split` stores them, so the tree is unchanged
        return state.raw_mapping if isinstance(state, nnx.State) else state

    def owned(params) -> dict[str, tuple]:
        """Each group's top-level attributes, the rest resolved against `params`."""
        keys, out = list(raw(params)), {}
        for name, g in groups.items():
            if g.params is not None:
                missing = [k for k in g.params if k not in keys]
                if missing:
                    raise ValueError(
                        f"parameter group {name!r} owns {missing}, not in the model's {keys}"
                    )
        for name, g in groups.items():
            mine = g.params if g.params is not None else [k for k in keys if k not in owners]
            out[name] = tuple(mine)
            if not out[name]:
                raise ValueError(
                    f"parameter group {name!r} (params=None: every parameter no other group "
                    f"owns) owns nothing: the groups {[n for n in groups if n != name]} own all "
                    f"of the model's {keys}"
                )
        return out

    def own(params, mine):
        return nnx.State({k: raw(params)[k] for k in mine})

    def init(params):
        mine = owned(params)
        return {name: g.optimizer.init(own(params, mine[name])) for name, g in groups.items()}

    def step(params, model_state, opt_state, batch, key):
        opt_state, metrics = dict(opt_state), {}
        attrs = owned(params)
        for i, (name, g) in enumerate(groups.items()):
            rest = nnx.State({k: v for k, v in raw(params).items() if k not in attrs[name]})

            def group_loss(mine, model_state, batch, key, rest=rest, g=g):
                return g.loss_fn(nnx.State({**raw(rest), **raw(mine)}), model_state, batch, key)

            group_key = jax.random.fold_in(key, i)

            def body(carry, t, g=g, group_loss=group_loss, group_key=group_key):
                mine, model_state, o = carry
                k = jax.random.fold_in(group_key, t)
                mine, model_state, o, m = _grad_step(
                    group_loss, g.optimizer, mine, model_state, o, batch, k
                )
                return (mine, model_state, o), m

            carry = (own(params, attrs[name]), model_state, opt_state[name])
            (mine, model_state, opt_state[name]), m = jax.lax.scan(body, carry, jnp.arange(g.steps))
            params = nnx.State({**raw(rest), **raw(mine)})
            # the mean over the group's inner steps (its last one alone would hide the rest)
            metrics.update({f"{name}/{k}": jnp.mean(v, axis=0) for k, v in m.items()})
        return params, model_state, opt_state, metrics

    return Update(init, step)


def make_optimizer(opt, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer of a config's ``optimizer`` section: Adam at `learning_rate` with
    betas (`b1`, `b2`), the rate multiplied by `decay_factor` at each of `decay_epochs`
    (`steps_per_epoch` optimizer steps each)."""
    rate = opt.learning_rate
    if opt.decay_epochs:
        boundaries = {int(e) * steps_per_epoch: opt.decay_factor for e in opt.decay_epochs}
        rate = optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
    return optax.adam(rate, b1=opt.b1, b2=opt.b2)


def _group_optimizer(opt, name: str, overrides):
    """A config ``optimizer`` section with a parameter group's (field, value) `overrides`."""
    if not overrides:
        return opt
    fields = opt.to_dict() if hasattr(opt, "to_dict") else dict(opt)
    where = f"parameter group {name!r}"
    try:
        changes = dict(overrides)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: optimizer overrides must be (field, value) pairs, e.g. "
            f"(('learning_rate', 5e-4), ('b1', 0.5)), got {overrides!r}"
        ) from None
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: optimizer override of {unknown}, not fields of config.optimizer "
            f"({', '.join(fields)})"
        )
    fields.update(changes)
    jconfig.check_optimizer(fields, f"{where}: optimizer")
    return types.SimpleNamespace(**fields)


def model_update(model, graphdef, optimizer_config, steps_per_epoch: int) -> Update:
    """The `Update` a model declares (`jaxae.models.Model.groups`).

    One group owning every parameter with one step per iteration (every model without a
    critic): `single` on its loss, exactly as before models declared groups. Otherwise
    `grouped`, so that a model with several groups is never trained on one summed loss. Each
    group's loss is `jaxae.objectives.loss_fn` of its ``loss`` method and its optimizer is
    `make_optimizer` of `optimizer_config` with the group's overrides (the schedule counted in
    the group's own steps: ``steps_per_epoch * steps`` per epoch).

    Args:
      model: the `jaxae.models.Model` (its parameters' top-level attributes resolve a group's
        ``params=None``).
      graphdef: the graphdef of the model as trained (`jaxae.objectives.split`).
      optimizer_config: the config's ``optimizer`` section.
      steps_per_epoch: iterations per epoch (for the decay schedule).

    Raises:
      ValueError: no groups, a group's loss method is missing, or a bad optimizer override.
    """
    groups = model.groups()
    if not isinstance(groups, dict) or not groups:
        raise ValueError(
            f"{type(model).__name__}.groups() must return a non-empty dict {{name: ParamGroup}}, "
            f"got {groups!r}"
        )
    keys = list(nnx.state(model, nnx.Param))
    built = {}
    for name, g in groups.items():
        if g.loss != "terms" and not callable(getattr(model, g.loss, None)):
            raise ValueError(
                f"parameter group {name!r}: loss {g.loss!r} is not a method of "
                f"{type(model).__name__} (a method (x, key) -> {{'loss': [B], ...}}, or 'terms')"
            )
        if not isinstance(g.steps, int) or isinstance(g.steps, bool) or g.steps < 1:
            raise ValueError(f"group {name!r}: steps must be an integer >= 1, got {g.steps!r}")
        opt = _group_optimizer(optimizer_config, name, g.optimizer)
        built[name] = Group(
            None if g.params is None else tuple(g.params),
            objectives.loss_fn(graphdef, g.loss),
            make_optimizer(opt, steps_per_epoch * g.steps),
            g.steps,
        )
    if len(built) == 1:
        (g,) = built.values()
        if g.steps == 1 and (g.params is None or set(g.params) == set(keys)):
            return single(g.loss_fn, g.optimizer)
    return grouped(built)


# --- State -------------------------------------------------------------------------------------


def init_state(params, update, seed: int, model_state=None, *, keep_best: bool = False) -> dict:
    """The train state pytree ``{params, model_state, opt_state, step, key}`` (host values).

    `update` is an `Update` (or any optax transformation: its ``init`` is all that is used).
    `keep_best` (early stopping) adds ``best``: a copy of the parameters and model state at the
    best evaluation so far, its value and epoch, and whether the run has stopped.
    """
    model_state = nnx.State({}) if model_state is None else model_state
    state = {
        "params": params,
        "model_state": model_state,
        "opt_state": update.init(params),
        "step": np.int32(0),
        "key": np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), 1)),
    }
    if keep_best:
        copy = lambda tree: jax.tree.map(lambda x: np.array(x, copy=True), tree)  # noqa: E731
        state["best"] = {"params": copy(params), "model_state": copy(model_state),
                         "value": np.float32(np.inf), "epoch": np.int32(0),
                         "stopped": np.int32(0)}  # fmt: skip
    return state


def data_key(seed: int) -> jax.Array:
    """Key of the data order; epoch e is shuffled with ``fold_in(data_key, e)``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 2)


@functools.partial(jax.jit, static_argnums=2)
def epoch_permutation(key: jax.Array, epoch, num_examples: int) -> jax.Array:
    """The example order of `epoch`: a pure function of (key, epoch), so resume is exact."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


# --- Update step -------------------------------------------------------------------------------


def reduce_terms(terms: dict, mask: jax.Array | None = None, batch_size: int | None = None):
    """The one place where per-example terms [B] become batch means (masked for padding).

    Checked when traced: `terms` is a dict holding ``'loss'``, and every term is one value per
    example, [B] (a scalar or a batch sum would train silently on the wrong objective).
    """
    if not isinstance(terms, dict) or "loss" not in terms:
        got = sorted(terms) if isinstance(terms, dict) else type(terms).__name__
        raise ValueError(
            f"a loss function must return per-example terms {{name: [B]}} including 'loss'; "
            f"got {got}"
        )
    size = batch_size if batch_size is not None else (None if mask is None else mask.shape[0])
    for name, value in terms.items():
        shape = jnp.shape(value)
        if len(shape) != 1 or (size is not None and shape[0] != size):
            raise ValueError(
                f"loss term {name!r} has shape {shape}; terms are per example, [B] = "
                f"[{size if size is not None else 'B'}]: do not reduce over the batch (the "
                "trainer does), and sum or average other axes per example"
            )
    if mask is None:
        return {k: jnp.mean(v) for k, v in terms.items()}
    w = mask.astype(jnp.float32)
    return {k: jnp.sum(jnp.where(mask, v, 0.0)) / jnp.sum(w) for k, v in terms.items()}


def _step_fn(update: Update, prepare: PrepareFn | None):
    """The pure single-step update ``(state, batch) -> (state, metrics)`` on a global batch."""

    def train_step(state, batch):
        key = jax.random.fold_in(state["key"], state["step"])  # never reused across steps
        prep_key, loss_key = jax.random.split(key)
        if prepare is not None:
            batch = prepare(batch, prep_key)
        params, model_state, opt_state, metrics = update.step(
            state["params"], state["model_state"], state["opt_state"], batch, loss_key
        )
        new_state = {**state, "params": params, "model_state": model_state,
                     "opt_state": opt_state, "step": state["step"] + 1}  # fmt: skip
        return new_state, metrics

    return train_step


def make_train_step(update: Update, mesh=None, prepare: PrepareFn | None = None):
    """One jitted, state-donating, data-parallel step ``(state, batch) -> (state, metrics)``.

    `batch` is a dict of global arrays sharded over the ``data`` axis (see
    `jaxae.parallel.shard_batch`); the state is replicated. Float ``'image'`` batches are
    checked for NaN/inf and for pixels outside [-1, 1] before the step (one small reduction:
    raw uint8 pixels belong in `prepare`, which scales them on the device; without a `prepare`
    integer ones are refused, `check_scaled`).
    """
    mesh = mesh or parallel.data_mesh()
    step = parallel.data_parallel(_step_fn(update, prepare), mesh)

    def checked_step(state, batch):
        if isinstance(batch, dict) and "image" in batch:
            if prepare is None:
                check_scaled(batch["image"], "batch['image']")
            check_pixels(batch["image"], "batch['image']")
        return step(state, batch)

    checked_step.lower = step.lower  # ahead-of-time compiling (the benchmarks count its FLOPs)
    return checked_step


@jax.jit
def _pixel_stats(x):
    return jnp.sum(~jnp.isfinite(x)), jnp.nanmin(x), jnp.nanmax(x)


def check_scaled(x, name: str) -> None:
    """Images that reach the model without a `prepare` must already be floats in [0, 1]: raw
    integer pixels would be trained on as values 0-255. Reads the dtype only. Raises ValueError
    naming `name` and the fix."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name}: {x.dtype} pixels reach the model unscaled (no `prepare`), so it would "
            "train on values 0-255: pass prepare=lambda batch, key: {**batch, 'image': "
            "jaxae.data.Preprocess()(batch['image'], key)} (the model's pixel scale), or "
            "give floats in [0, 1] (images / 255)"
        )


def check_pixels(x, name: str) -> None:
    """Raw integer pixels pass; float pixels must be finite and inside [-1, 1] (a [0, 255]
    float image is a forgotten scaling). Raises ValueError naming `name`."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return
    bad, lo, hi = (float(v) for v in _pixel_stats(x))
    if bad:
        raise ValueError(f"{name}: {int(bad)} NaN or infinite pixel values")
    if lo < -1 or hi > 1:
        raise ValueError(
            f"{name}: float pixels in [{lo:g}, {hi:g}], expected [0, 1] (or [-0.5, 0.5]): "
            "pass uint8 images and scale them in `prepare` (jaxae.data.Preprocess)"
        )


def make_train_chunk(update: Update, batch_size: int, mesh=None, prepare: PrepareFn | None = None):
    """The fast path: `num_steps` steps in one jitted `lax.scan` over on-device data.

    Returns ``chunk(state, data, perm, start, num_steps) -> (state, metrics [num_steps])``: step
    t trains on ``data[perm[(start + t) * batch_size : ...]]``, so there is no host round trip
    per step. `data` is a dict of replicated arrays; each batch is resharded over ``data``.
    """
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(batch_size, mesh)
    train_step = _step_fn(update, prepare)
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


# --- Loop --------------------------------------------------------------------------------------


class FitResult(NamedTuple):
    """What `fit` returns: the final train `state`, the `history` of per-epoch metrics dicts, and
    the step it `resumed_from` (None for a fresh run)."""

    state: dict
    history: list[dict]
    resumed_from: int | None


class EarlyStopping(NamedTuple):
    """Stop when ``eval_<metric>`` (lower is better) has not improved by more than `min_delta`
    for `patience` epochs; the run then ends (and its last checkpoint holds) the parameters and
    model state of its best epoch. A run that reaches ``training.epochs`` ends with them too."""

    metric: str
    patience: int
    min_delta: float = 0.0


def fit(
    config,
    workdir: str | Path,
    *,
    params,
    update: Update,
    train: dict[str, np.ndarray],
    model_state=None,
    prepare: PrepareFn | None = None,
    mesh=None,
    eval_fn: Callable[[dict], dict] | None = None,
    progress: bool = True,
    model: dict | None = None,
    data_files=(),
    early_stopping: EarlyStopping | None = None,
    extra_meta: dict | None = None,
) -> FitResult:
    """Train (or resume) until ``training.epochs`` epochs or ``training.max_steps`` steps.

    Args:
      config: the run's config (`jaxae.config`; saved with every checkpoint).
      workdir: run folder; holds ``checkpoints/`` and ``metrics.jsonl``.
      params: initial parameters (an `nnx.State`), used when there is no checkpoint.
      update: how one iteration trains (`single(loss_fn, optimizer)`, `grouped(...)`).
      train: host arrays with a leading example axis, e.g. ``{'image': uint8 [N,H,W,C]}``,
        placed on every device once; or, when they take more than ``data.memory_budget_mb``
        (or `train` is a record source: ``len()`` and ``train[i] -> {name: array}``), streamed
        from the host batch by batch (`jaxae.stream`), in the same order. Images are checked
        first (`jaxae.data.check_images`; against ``model['image_shape']`` when given) and
        [N, H, W] gets its channel axis.
        Integer pixels need a `prepare` that scales them (`check_scaled`).
      model_state: initial non-parameter state (BatchNorm statistics), if the model has any.
      prepare: on-device preprocessing of each raw batch (uint8 pixels: `jaxae.data.Preprocess`).
      mesh: defaults to a ``('data',)`` mesh over all devices.
      eval_fn: called with the train state at every epoch end; its dict of scalars is logged
        (as ``eval_<name>``).
      progress: show a progress bar; False: print one line per epoch instead (process 0).
      model: JSON description of the model (`jaxae.models.build` rebuilds it), saved with
        every checkpoint so that the run can be restored and evaluated later.
      data_files: the files the training data was read from, saved with every checkpoint.
      early_stopping: stop on a plateau of one of `eval_fn`'s metrics (`EarlyStopping`); the
        train state then carries the best parameters (``state['best']``), so a resumed run
        stops at the same epoch with the same result.
      extra_meta: more JSON saved in every checkpoint's meta (a later stage records there the
        checkpoint it was fitted on: `jaxae.checkpoint.stage_record`).

    Returns:
      `FitResult` with the final state, the logged metric lines (one per epoch: its chunks'
      means, summed seconds, and its evaluation; plus a line for the steps of an epoch a run
      stops inside of, which the run resumed later replaces by the whole epoch's), and the step
      resumed from. `single` logs the loss terms and ``grad_norm``; `grouped` each group's,
      prefixed ``<group>/``, and no total ``loss``.
    """
    config = jconfig.validate(config)
    tc = config.training
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(tc.batch_size, mesh)

    # --- Input: the whole dataset lives on the devices, or (above the memory budget, or a
    # record source) batches stream from the host (`jaxae.stream`).
    num_examples = stream.check_source(train)
    lazy = isinstance(train, dict) and isinstance(train.get("image"), jdata.LazyImages)
    if isinstance(train, dict) and "image" in train:  # here, not inside a compiled step
        shape = (model or {}).get("image_shape")
        if lazy:  # read when used, and checked as they are read (`jaxae.data.LazyImages`)
            if shape is not None and tuple(train["image"].shape[1:]) != tuple(shape):
                raise ValueError(f"train['image']: images {list(train['image'].shape)}, but "
                                 f"the model takes [B, {', '.join(map(str, shape))}]")  # fmt: skip
        else:
            images = jdata.check_images(train["image"], "train['image']", shape)
            if prepare is None:
                check_scaled(images, "train['image']")
            train = {**train, "image": images}
    steps_per_epoch = num_examples // tc.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set has {num_examples} examples, fewer than one batch of "
            f"{tc.batch_size}: an empty epoch"
        )
    budget = stream.budget_bytes(config.data.memory_budget_mb, mesh.devices.flat)
    streamed = lazy or not isinstance(train, dict) or stream.nbytes(train) > budget
    total = total_steps(tc, num_examples)

    # --- State and checkpoint.
    if early_stopping is not None and eval_fn is None:
        raise ValueError("early stopping needs an eval_fn whose metric it watches")
    keep_best = early_stopping is not None
    host_state = jax.device_get(
        init_state(params, update, tc.seed, model_state, keep_best=keep_best)
    )

    def init_fn():
        return parallel.replicate(host_state, mesh)

    every = tc.checkpoint_every or steps_per_epoch
    # A later stage of this run (the PAE's flow in <workdir>/stage2) was fitted on one of these
    # checkpoints: it is kept whatever keep_checkpoints says, so the stages still restore together.
    ckpt = Checkpointer(workdir / "checkpoints", save_every=every, keep=tc.keep_checkpoints,
                        preserve=depended_steps(workdir))  # fmt: skip
    meta = {
        "config": config.to_dict(),
        "data": {"steps_per_epoch": steps_per_epoch, "num_examples": num_examples,
                 "files": [str(f) for f in data_files], "streamed": streamed},
        **({"model": model} if model else {}),
        **(extra_meta or {}),
    }  # fmt: skip
    try:
        state, saved, resumed = ckpt.restore_or_init(init_fn)
        if saved is not None:
            _check_resumable(saved, config, num_examples)
        step = int(state["step"])
        if jax.process_index() == 0:
            if resumed is not None:
                print(f"resumed from step {step} ({workdir / 'checkpoints'})", flush=True)
            if streamed:
                size = stream.nbytes(train) / 2**20 if isinstance(train, dict) else None
                what = f"takes {size:,.1f} MiB" if size is not None else "is a record source"
                print(f"streaming batches from the host: the training set {what}, over the "
                      f"memory budget of {budget / 2**20:,.1f} MiB (data.memory_budget_mb)",
                      flush=True)  # fmt: skip
        # The epoch the checkpoint is inside of: its steps so far, kept in the checkpoint's meta
        # until its line is written. A run that trains on rewrites the line of a run stopped
        # inside this epoch (at max_steps) as the whole epoch's.
        pending = _EpochLog.restore(saved, step % steps_per_epoch)
        _trim_log(workdir / "metrics.jsonl", step - pending.steps if step < total else step)
        key = data_key(tc.seed)
        if streamed:
            order = lambda epoch: epoch_permutation(key, epoch, num_examples)  # noqa: E731
            batches = stream.Batches(
                train, order, batch_size=tc.batch_size, steps_per_epoch=steps_per_epoch,
                total=total, start=step, mesh=mesh,
                state=(saved or {}).get("data", {}).get("pipeline"),
            )  # fmt: skip
            feed = _Streamed(make_stream_chunk(update, mesh, prepare), batches)
        else:
            chunk_fn = make_train_chunk(update, tc.batch_size, mesh, prepare)
            feed = _InMemory(chunk_fn, parallel.replicate(train, mesh), key, steps_per_epoch)
        loop = _Loop(ckpt, every, feed, tc, steps_per_epoch, total, meta, early_stopping)
        state, history = loop.run(state, workdir, eval_fn, progress, pending)
    finally:
        ckpt.close()  # waits for an in-flight save, so Ctrl-C leaves a complete checkpoint
    return FitResult(state=state, history=history, resumed_from=resumed)


def total_steps(training, num_examples: int) -> int:
    """The global step `fit` trains to: ``training.epochs`` epochs of ``num_examples //
    training.batch_size`` steps, capped at ``training.max_steps`` (0: no cap)."""
    total = training.epochs * (num_examples // training.batch_size)
    return min(total, training.max_steps) if training.max_steps else total


def _check_resumable(meta: dict, config, num_examples: int) -> None:
    saved = jconfig.flatten(jconfig.from_dict(meta.get("config", {})))
    now = jconfig.flatten(config)
    diff = [
        f"{k}: {saved.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in jconfig.RESUMABLE and saved.get(k) != now[k]
    ]
    before = meta.get("data", {}).get("num_examples", num_examples)
    if not diff and before != num_examples:
        raise ValueError(
            f"cannot resume: the checkpoint was trained on {before} examples, the data now hold "
            f"{num_examples} (files added or removed since, with the same config): a run "
            "resumes only on the data it started on. Put the files back, or train on the new "
            "data in a new workdir"
        )
    if before != num_examples:
        diff.append(f"num_examples: {before} -> {num_examples}")
    if diff:
        raise ValueError(
            "cannot resume: the checkpoint was written by a different run ("
            + "; ".join(diff)
            + "). Use a new workdir, or the original config."
        )


class _EpochLog:
    """The metrics of one epoch's chunks until its line is written: per-term sums over its steps
    (float64, added step by step in order, so that how the epoch was cut into chunks, or a
    resume in its middle, does not change its means), its steps and seconds. Saved in every
    checkpoint's meta (``epoch_log``) so that a resumed run finishes the epoch's line exactly."""

    def __init__(self, steps: int = 0, seconds: float = 0.0, sums: dict | None = None):
        self.steps, self.seconds, self.sums = steps, seconds, dict(sums or {})

    @classmethod
    def restore(cls, meta: dict | None, offset: int) -> _EpochLog:
        """The log of a checkpoint's meta whose step is `offset` steps into its epoch; an empty
        one where the meta has none (checkpoints of earlier releases) or it does not match."""
        saved = (meta or {}).get("epoch_log") or {}
        if offset == 0 or saved.get("steps") != offset:
            return cls()
        return cls(saved["steps"], saved["seconds"], saved["sums"])

    def add(self, metrics: dict, n: int, seconds: float) -> None:
        """Add a chunk of `n` steps: `metrics` {term: [n]}, `seconds` its wall time."""
        for name, values in metrics.items():
            total = self.sums.get(name, 0.0)
            for v in np.asarray(values, np.float64).reshape(n):
                total += float(v)
            self.sums[name] = total
        self.steps += n
        self.seconds += seconds

    def line(self, step: int, steps_per_epoch: int, batch_size: int) -> dict:
        """The log line at `step`: the means over the epoch's steps so far."""
        return {
            "step": step,
            "epoch": step / steps_per_epoch,
            **{k: v / self.steps for k, v in self.sums.items()},
            "examples_per_s": self.steps * batch_size / self.seconds,
            "seconds": self.seconds,
        }

    def to_meta(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "sums": dict(self.sums)}


def _losses(line: dict) -> dict[str, float]:
    """The training losses of a log line: {"loss": ...} (`single`), else each group's
    {"<group>/loss": ...} (`grouped`: no total)."""
    if "loss" in line:
        return {"loss": line["loss"]}
    return {k: v for k, v in line.items() if k.endswith("/loss") and not k.startswith("eval_")}


def _eval_line(eval_fn, state) -> dict:
    """``{eval_<name>: float}`` of `eval_fn`'s scalars; a ValueError names any other value."""
    out = eval_fn(state)
    if not isinstance(out, dict):
        raise ValueError(f"eval_fn must return a dict {{name: scalar}}, got {type(out).__name__}")
    line = {}
    for name, value in out.items():
        shape = np.shape(value)
        if shape != ():
            raise ValueError(
                f"eval_fn returned {name!r} of shape {shape}: its values are logged as numbers, "
                "so each must be a scalar (e.g. the mean over the held-out set); reduce it"
            )
        line[f"eval_{name}"] = float(value)
    return line


class _InMemory:
    """Chunks of steps over the whole training set on the devices (`make_train_chunk`)."""

    def __init__(self, chunk_fn, data: dict, key: jax.Array, steps_per_epoch: int):
        self.chunk_fn, self.data, self.key = chunk_fn, data, key
        self.steps_per_epoch, self.num_examples = steps_per_epoch, len(jax.tree.leaves(data)[0])
        self._epoch, self._perm = -1, None

    def __call__(self, state, step: int, n: int):
        epoch, offset = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(self.key, epoch, self.num_examples)
        return self.chunk_fn(state, self.data, self._perm, offset, n)

    def position(self) -> dict:
        return {}


class _Streamed:
    """Steps over batches streamed from the host (`jaxae.stream.Batches`): a few steps' batches
    at a time, scanned by one call; the next ones are read while the devices run (dispatch is
    asynchronous)."""

    def __init__(self, scan_fn, batches: stream.Batches):
        self.scan_fn, self.batches = scan_fn, batches

    def __call__(self, state, step: int, n: int):
        k, metrics = self.batches.steps_per_call(n), []
        for start in range(0, n, k):
            state, m = self.scan_fn(state, self.batches.take(min(k, n - start)))
            metrics.append(m)
        return state, jax.tree.map(lambda *x: jnp.concatenate(x), *metrics)

    def position(self) -> dict:
        return {"pipeline": self.batches.state}


def make_stream_chunk(update: Update, mesh=None, prepare: PrepareFn | None = None):
    """The streamed path: ``chunk(state, batches) -> (state, metrics [k])`` scans the steps of
    `k` host-fed batches ``{name: [k, B, ...]}`` (`jaxae.stream.Batches.take`) in one call."""
    mesh = mesh or parallel.data_mesh()
    train_step = _step_fn(update, prepare)
    return jax.jit(
        lambda state, batches: jax.lax.scan(train_step, state, batches),
        in_shardings=(parallel.replicated(mesh), NamedSharding(mesh, P(None, "data"))),
        out_shardings=parallel.replicated(mesh),
        donate_argnums=0,
    )


class _Loop(NamedTuple):
    """Run chunks of scanned steps, cut at epoch ends and checkpoint steps."""

    ckpt: Checkpointer
    every: int
    feed: _InMemory | _Streamed
    tc: Any  # the config's training section
    steps_per_epoch: int
    total: int
    meta: dict
    early_stopping: EarlyStopping | None = None

    def _track_best(self, state, line: dict, epoch: int):
        """(state with `best` updated from this epoch's evaluation, whether to stop now)."""
        es, best = self.early_stopping, state["best"]
        value = line.get(f"eval_{es.metric}")
        if value is None:
            raise ValueError(f"early stopping watches eval_{es.metric}, which eval_fn lacks")
        put = lambda x: jax.device_put(x, state["step"].sharding)  # noqa: E731
        if value < float(best["value"]) - es.min_delta:
            copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 (params get donated)
            best = {**best, "params": copy(state["params"]),
                    "model_state": copy(state["model_state"]),
                    "value": put(np.float32(value)), "epoch": put(np.int32(epoch))}  # fmt: skip
        stop = epoch - int(best["epoch"]) >= es.patience or int(state["step"]) >= self.total
        if stop:  # end with the best epoch's model
            best = {**best, "stopped": put(np.int32(1))}
            state = {**state, "params": best["params"], "model_state": best["model_state"]}
        return {**state, "best": best}, stop

    def run(self, state, workdir, eval_fn, progress, pending: _EpochLog | None = None):
        tc, steps_per_epoch, total = self.tc, self.steps_per_epoch, self.total
        step = int(state["step"])
        history = []
        last_saved = self.ckpt.latest_step()
        lead = jax.process_index() == 0  # one process writes the log and shows the bar
        stopped = self.early_stopping is not None and int(state["best"]["stopped"])
        epoch_log = pending or _EpochLog()  # this epoch's chunks, until its line is written
        with (
            open(workdir / "metrics.jsonl" if lead else os.devnull, "a") as log,
            tqdm(total=total, initial=step, disable=not (progress and lead), unit="step") as bar,
        ):
            while step < total and not stopped:
                offset = step % steps_per_epoch
                n = min(steps_per_epoch - offset, total - step, self.every - step % self.every)
                if tc.steps_per_call:
                    n = min(n, tc.steps_per_call)
                t0 = time.perf_counter()
                state, metrics = self.feed(state, step, n)
                metrics = jax.device_get(metrics)  # waits for the chunk: [n] per term
                seconds = time.perf_counter() - t0
                _check_finite(metrics, step, last_saved)
                step += n
                epoch_log.add(metrics, n, seconds)
                bar.update(n)
                chunk = {k: float(np.mean(v)) for k, v in metrics.items()}
                bar.set_postfix({**{k.removesuffix("/loss"): f"{v:.4g}"
                                    for k, v in _losses(chunk).items()},
                                 "ex_s": f"{n * tc.batch_size / seconds:.0f}"})  # fmt: skip
                epoch_end = step % steps_per_epoch == 0
                if epoch_end or step == total:  # one line per epoch, and one where the run ends
                    line = epoch_log.line(step, steps_per_epoch, tc.batch_size)
                    if epoch_end and eval_fn is not None:
                        line.update(_eval_line(eval_fn, state))
                        if self.early_stopping is not None:
                            state, stopped = self._track_best(state, line, step // steps_per_epoch)
                            line["best_epoch"] = int(state["best"]["epoch"])
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    history.append(line)
                    if lead and not progress:
                        print(_epoch_summary(line, tc.epochs, total), flush=True)
                    if epoch_end:
                        epoch_log = _EpochLog()
                position = {"epoch": step // steps_per_epoch, "batch": step % steps_per_epoch,
                            "step": step, **self.feed.position()}  # fmt: skip
                meta = {**self.meta, "data": {**self.meta["data"], **position},
                        "epoch_log": epoch_log.to_meta()}  # fmt: skip
                if stopped:
                    meta["early_stopping"] = {
                        **self.early_stopping._asdict(),
                        "best_epoch": int(state["best"]["epoch"]),
                        "best_value": float(state["best"]["value"]),
                    }
                if self.ckpt.save(step, state, meta, force=step == total or stopped):
                    last_saved = step
        return state, history


def _epoch_summary(line: dict, epochs: int, total: int) -> str:
    """One printed line for an epoch's log line (`_Loop.run` without a progress bar): where the
    run is, the epoch's mean training loss (each group's, for `grouped`), its evaluation, its
    seconds and examples/s."""
    losses = "".join(f"  {k} {v:.5g}" for k, v in _losses(line).items())
    evals = "".join(f"  {k} {v:.5g}" for k, v in line.items() if k.startswith("eval_"))
    speed = f"{line['seconds']:.1f} s  {line['examples_per_s']:,.0f} examples/s"
    return f"epoch {line['epoch']:g}/{epochs}  step {line['step']}/{total}{losses}{evals}  {speed}"


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past `step`: those written after the restored checkpoint before a crash,
    and the line of a run stopped inside an epoch that the resumed run writes whole."""
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
        # Name the per-example terms before their reductions ('loss', 'grad_norm'; a group's
        # '<group>/loss', '<group>/grad_norm').
        terms.sort(key=lambda k: (k.rsplit("/", 1)[-1] in ("loss", "grad_norm"), k))
        raise NonFiniteLossError(first_step + i + 1, terms, last_saved)
