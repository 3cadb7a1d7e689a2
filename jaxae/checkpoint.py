"""Checkpoints: an orbax `CheckpointManager` behind one small class.

A checkpoint is a folder `<directory>/<step>` holding one `ocp.args.Composite` of four items:
`model` (`{params, model_state}`: what a trained model is, `StandardSave`), `train` (`{opt_state,
step, key}`: what resuming needs besides), `meta` (a JSON dict: run config, model description,
data position and files) and `checksum` (one uint32 per leaf of model then train, JSON). So a
model is restored from its own item without knowing how it was trained (`restore_params`).
Checkpoints of earlier releases hold the whole train state as one item `state`; both read.

A checkpoint whose tree or shapes differ from what is asked for (the network was edited, the
optimizer changed) is not corrupt: `ModelMismatchError` names the first differing leaf and both
shapes, and nothing is renamed. Only an unreadable step is set aside.

A run may have later stages fitted on its model (the PAE's latent flow in ``<run>/stage2``,
`jaxae.pae.fit_flow`). Each checkpoint of a later stage records in its meta which checkpoint of
the stage before it was read (``meta['stage']['fitted_on']``: step and `Checkpointer.fingerprint`,
`stage_record`). Restoring the whole run checks that this is still that stage's newest
checkpoint (`StageMismatchError` if not), and training the first stage again keeps that step
whatever ``keep`` says (`depended_steps`).

Atomicity (checked in orbax-checkpoint 0.12.8, local filesystem): a save writes into
`<step>.orbax-checkpoint-tmp`, adds `commit_success.txt` and renames the folder to `<step>` (one
POSIX `rename`). Only integer names count as steps, so a save killed at any moment leaves older
steps intact plus an ignored tmp folder (removed when a manager next opens the directory). Steps
beyond `keep` are deleted only after the new step's rename, never if its write failed. Only the
array data is fsynced (by tensorstore), not the JSON files or the rename: after a power cut the
newest step may come back incomplete, and `restore_or_init` skips it. Orbax keeps no checksum of
array data (a garbled block restores silently as other numbers), hence our per-leaf fingerprint.
"""

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax
from jax.experimental import multihost_utils


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step could not be read and was skipped."""


class CheckpointError(RuntimeError):
    """A checkpoint directory or step cannot be used."""


class ModelMismatchError(CheckpointError):
    """A readable checkpoint holds a different tree or shapes than the model asked for."""


class StageMismatchError(CheckpointError):
    """A run's stages disagree: a later stage (the PAE's latent flow, ``<run>/stage2``) was
    fitted on a checkpoint of the stage before it that is no longer that stage's newest (it was
    trained further, or trained again). The message names the run, both stages and both steps.
    Restore ``stage=1`` for the first stage alone, or fit the later stage again."""


MODEL_KEYS = ("params", "model_state")  # the `model` item; the rest of the state is `train`


def _split_state(state: dict) -> tuple[dict, dict]:
    model = {k: state[k] for k in MODEL_KEYS}
    return model, {k: v for k, v in state.items() if k not in MODEL_KEYS}


def _path_str(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _shapes(tree) -> dict[str, tuple]:
    """{'params/net/encoder/kernel/value': shape} of a pytree of arrays or orbax metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): tuple(getattr(x, "shape", np.shape(x))) for p, x in leaves}


def compare_trees(saved: dict[str, tuple], wanted: dict[str, tuple], what: str) -> None:
    """Raise `ModelMismatchError` naming the first leaf whose presence or shape differs."""
    for name in sorted(set(saved) | set(wanted)):
        a, b = saved.get(name), wanted.get(name)
        if a != b:
            a_s = "absent" if a is None else f"shape {a}"
            b_s = "absent" if b is None else f"shape {b}"
            raise ModelMismatchError(
                f"{what}: the checkpoint's {name} has {a_s}, the model's has {b_s} "
                f"({len(saved)} saved leaves, {len(wanted)} expected). It is intact and was left "
                "as it is: restore it with the model it was trained with, or train in a new folder."
            )


@jax.jit
def _fingerprint(state):
    """uint32[num_leaves]: per leaf, sum_i bits_i * w_i mod 2**32 with odd weights w_i. Exact in
    any order (so sharding-independent); changing any one 32-bit word always changes it."""

    def one(x):
        x = jnp.asarray(x)
        if x.dtype.itemsize < 4:  # bool, 8- and 16-bit types: widen their bits to 32
            u = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
            x = x.astype(u) if x.dtype == jnp.bool_ else lax.bitcast_convert_type(x, u)
            x = x.astype(jnp.uint32)
        bits = lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 64-bit: two words each
        weights = lax.iota(jnp.uint32, bits.size) * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
        return jnp.sum(bits * weights, dtype=jnp.uint32)

    return jnp.array([one(x) for x in jax.tree.leaves(state)], dtype=jnp.uint32)


class Checkpointer:
    """Saves every `save_every` steps (or when forced), keeps the last `keep`, restores or inits.

    Args:
      directory: folder of step folders; created if missing.
      save_every: `save(step, ...)` writes when `step % save_every == 0` (or `force=True`).
      keep: number of most recent checkpoints kept.
      async_save: write in a background thread; `save` returns once the arrays are copied off
        the device (they may then be donated). `wait()` before reading a checkpoint elsewhere.
      preserve: steps never deleted, whatever `keep` says: those a later stage of the run was
        fitted on (`depended_steps`).
      read_only: only read (another stage's checkpoints, while that stage may be training):
        nothing is saved, deleted, created or cleaned up.
    """

    def __init__(self, directory, *, save_every: int, keep: int = 3, async_save: bool = True,
                 preserve=(), read_only: bool = False):  # fmt: skip
        for name, value in (("save_every", save_every), ("keep", keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        preserve = sorted({int(x) for x in preserve})
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} is not a directory")
        self.save_every = save_every
        policy = ocp.checkpoint_managers.LatestN(keep)
        if preserve:  # a step is kept if either policy keeps it
            policy = ocp.checkpoint_managers.AnyPreservationPolicy(
                [policy, ocp.checkpoint_managers.CustomSteps(preserve)]
            )
        # read_only: orbax's own option logs a warning per manager; since orbax deletes steps
        # only when saving and `save` refuses, not creating the folder is all that is left.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=False,  # done below, before the manager starts
            create=not read_only,
        )
        self.read_only = read_only
        handlers = {name: ocp.StandardCheckpointHandler() for name in ("model", "train", "state")}
        handlers |= {name: ocp.JsonCheckpointHandler() for name in ("meta", "checksum")}
        # Orbax's own clean-up of a killed save's temporary folders runs in a thread that only
        # `save` waits for: two managers opened in turn could delete the same files at once.
        if jax.process_index() == 0 and os.path.isdir(self.directory) and not read_only:
            for name in os.listdir(self.directory):
                if ".orbax-checkpoint-tmp" in name:
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def path(self, step: int) -> str:
        """The folder of checkpoint `step`: ``<directory>/<step>``."""
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Starts saving `state` and the JSON dict `meta` as `step`; returns whether it did.

        Saves when `step % save_every == 0` or `force`. Steps at or before the latest saved one
        are skipped, so a forced final save of a step just saved periodically is a no-op. This
        rule replaces orbax's, which would also save the first step whatever its number.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read_only: nothing is saved")
        step, latest = int(step), self.latest_step()
        if not (force or step % self.save_every == 0) or (latest is not None and step <= latest):
            return False
        if os.path.exists(self.path(step)):  # orbax would delete it before writing the new one
            raise CheckpointError(f"{self.path(step)} exists but was not listed: another writer?")
        model, train = _split_state(state)
        checksum = {k: np.asarray(_fingerprint(v)).tolist() for k, v in (("model", model),
                    ("train", train))}  # fmt: skip
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(model),
            train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta),
            checksum=ocp.args.JsonSave(checksum),
        )
        return self._mngr.save(step, args=args, force=True)

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        """Every saved step, oldest first."""
        return sorted(self._mngr.all_steps())

    def read_meta(self, step: int) -> dict:
        """The JSON meta saved with `step` (config, data position, model), without the state."""
        self.wait()
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out["meta"]
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a {type(meta).__name__}, not a JSON object")
        except Exception as e:
            why = f"cannot read the meta of step {step} ({self.path(step)}): {e}"
            raise CheckpointError(why) from e
        return meta

    def fingerprint(self, step: int) -> str:
        """A short hex digest of the model item of `step` (16 characters), from the checksum
        saved with it: reads no array. Two checkpoints with the same fingerprint hold the same
        weights (up to the per-leaf checksum's collisions); another training gives another."""
        self.wait()
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(checksum=ocp.args.JsonRestore()))
            checksum = out["checksum"]
        except Exception as e:
            why = f"cannot read the checksum of step {step} ({self.path(step)}): {e}"
            raise CheckpointError(why) from e
        # an earlier release's single `state` item: its list covers the whole train state
        model = checksum.get("model") if isinstance(checksum, dict) else checksum
        return hashlib.sha256(json.dumps(model).encode()).hexdigest()[:16]

    def is_legacy(self, step: int) -> bool:
        """Whether `step` was written by an earlier release (one `state` item)."""
        return os.path.isdir(os.path.join(self.path(step), "state"))

    def _check_shapes(self, step: int, items: dict) -> None:
        """`ModelMismatchError` if the saved trees differ from `items` (name -> abstract tree);
        `CheckpointError` if the step's metadata cannot be read (an unreadable step)."""
        try:
            saved = self._mngr.item_metadata(step)
            saved = {name: _shapes(saved[name]) for name in items}
        except Exception as e:
            raise CheckpointError(f"cannot read step {step} ({self.path(step)}): {e}") from e
        for name, tree in items.items():
            compare_trees(saved[name], _shapes(tree), f"step {step} ({self.path(step)})")

    def _restore_items(self, step: int, targets: dict):
        """Restore the named items (templates or None for as-saved) plus meta and checksum."""
        json = ocp.args.JsonRestore()
        args = {name: ocp.args.StandardRestore(t) for name, t in targets.items()}
        try:
            return self._mngr.restore(
                step, args=ocp.args.Composite(**args, meta=json, checksum=json)
            )
        except Exception as e:  # whatever the failure, this step is unusable
            root = e  # orbax wraps tensorstore errors: the innermost one says what is wrong
            while root.__cause__ is not None:
                root = root.__cause__
            why = f"{type(root).__name__}: {str(root).partition(chr(10))[0][:300]}"
            raise CheckpointError(f"cannot restore step {step} ({self.path(step)}): {why}") from e

    def _verify(self, step: int, trees: dict, checksum) -> None:
        for name, tree in trees.items():
            expected = checksum if name == "state" else checksum.get(name)
            if np.asarray(_fingerprint(tree)).tolist() != expected:
                raise CheckpointError(
                    f"cannot restore step {step} ({self.path(step)}): the {name} item does not "
                    "match the checksum saved with it"
                )

    def restore(self, step: int, abstract_state):
        """Returns `(state, meta)` of `step`, bit for bit as saved.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (or arrays) whose structure,
        dtypes and shardings (else those saved) the restored state takes. Raises
        `ModelMismatchError` if the saved trees differ from it (nothing is read), and
        `CheckpointError` naming the step, its path and the cause if an item cannot be read or
        fails its checksum.
        """
        self.wait()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        if self.is_legacy(step):
            legacy = {k: v for k, v in target.items() if k != "model_state"}
            state, meta = self._read_legacy(step, legacy)
            return {**state, "model_state": abstract_state["model_state"]}, meta
        model, train = _split_state(target)
        self._check_shapes(step, {"model": model, "train": train})
        out = self._restore_items(step, {"model": model, "train": train})
        self._verify(step, {"model": out["model"], "train": out["train"]}, out["checksum"])
        return {**out["model"], **out["train"]}, out["meta"]

    def restore_model(self, step: int, abstract_model: dict):
        """`({params, model_state}, meta)` of `step`, without the optimizer state.

        Earlier releases' steps hold one `state` item; it is read as saved (no template, so
        the optimizer need not be known) and its parameters taken out.
        """
        self.wait()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_model)
        if not self.is_legacy(step):
            self._check_shapes(step, {"model": target})
            out = self._restore_items(step, {"model": target})
            self._verify(step, {"model": out["model"]}, out["checksum"])
            return out["model"], out["meta"]
        state, meta = self._read_legacy(step, {"params": target["params"]}, partial=True)
        return {"params": state["params"], "model_state": target["model_state"]}, meta

    def _read_legacy(self, step: int, target: dict, partial: bool = False):
        """An earlier release's `state` item into `target`'s tree, verified by its checksum.

        Read with `target` as template where the trees agree; else read as saved and matched
        leaf by leaf by path, the first ``net/`` level dropped: the earlier `ae` models were
        the network itself. `partial`: `target` holds some top-level entries only (the params).
        """
        try:
            saved = _shapes(self._mngr.item_metadata(step)["state"])
        except Exception as e:
            raise CheckpointError(f"cannot read step {step} ({self.path(step)}): {e}") from e
        if partial:
            saved = {n: v for n, v in saved.items() if n.split("/")[0] in target}
        mine = _shapes(target)
        if not partial and set(saved) == set(mine):
            compare_trees(saved, mine, f"step {step} ({self.path(step)})")
            out = self._restore_items(step, {"state": target})
            self._verify(step, {"state": out["state"]}, out["checksum"])
            return out["state"], out["meta"]
        rename = (
            (lambda n: n) if set(mine) <= set(saved) else (lambda n: n.replace("/net/", "/", 1))
        )
        compare_trees(saved, {rename(n): v for n, v in mine.items()}, f"step {step}")
        out = self._restore_items(step, {"state": None})
        sums = sorted(np.asarray(_fingerprint(out["state"])).tolist())
        if sums != sorted(out["checksum"]):  # the leaves come back in another order: as sets
            raise CheckpointError(f"step {step} ({self.path(step)}) does not match its checksum")
        leaves = jax.tree_util.tree_flatten_with_path(out["state"])[0]
        by_path = {_path_str(p): x for p, x in leaves}
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        placed = []
        for p, t in flat:
            x = jnp.asarray(by_path[rename(_path_str(p))], dtype=t.dtype)
            sharding = getattr(t, "sharding", None)
            placed.append(x if sharding is None else jax.device_put(x, sharding))
        return jax.tree.unflatten(treedef, placed), out["meta"]

    def restore_or_init(self, init_fn, *, strict: bool = False):
        """`(state, meta, step)` from the newest readable step, else `(init_fn(), None, None)`.

        Steps are tried newest first. Each unreadable one (truncated or garbled files, missing or
        invalid meta, checksum mismatch) gives a `CorruptCheckpointWarning` naming it and is
        renamed `<step>.corrupt-<ns>`: kept but ignored by orbax, so it neither takes one of the
        `keep` places (getting good older steps deleted) nor blocks saving its step number again.
        Restored arrays get the shardings of `init_fn()`'s result, read from
        `jax.eval_shape(init_fn)` if it has them all (a jit with `out_shardings`: no real init),
        else from one `init_fn()` call. `strict=True`: if no step can be read, raise
        `CheckpointError` (renaming nothing) instead of returning `init_fn()`.
        """
        self.wait()
        steps = self.all_steps()[::-1]
        if not steps:
            return init_fn(), None, None
        abstract, fresh = jax.eval_shape(init_fn), None
        if any(getattr(x, "sharding", None) is None for x in jax.tree.leaves(abstract)):
            fresh = init_fn()  # kept as the fallback state
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
        bad, found = [], None
        for step in steps:
            try:
                found = (*self.restore(step, abstract), step)
                break
            except ModelMismatchError:
                raise  # a different model, not a damaged file: touch nothing
            except CheckpointError as e:
                warnings.warn(f"skipping checkpoint: {e}", CorruptCheckpointWarning, stacklevel=2)
                bad.append(step)
        if found is None and strict:
            raise CheckpointError(f"no readable checkpoint in {self.directory} (steps {steps})")
        if jax.process_index() == 0:
            for step in bad:
                os.rename(self.path(step), f"{self.path(step)}.corrupt-{time.time_ns()}")
        if bad and jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxae.checkpoint.set_aside")
        self._mngr.reload()
        if found is not None:
            return found
        msg = f"none of the checkpoints {steps} in {self.directory} is readable: using init_fn()"
        warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
        return (init_fn() if fresh is None else fresh), None, None

    def wait(self) -> None:
        """Blocks until background saves are committed (raises if one failed)."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's manager."""
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Restored(NamedTuple):
    """A trained model restored from a run folder, in eval mode, with host arrays."""

    model: Any  # the `jaxae.models.Model` with the checkpoint's weights (and model state)
    spec: dict  # its description (`models.build`)
    config: Any  # the run's `jaxae.config` ConfigDict
    step: int  # the restored stage's step
    meta: dict  # the checkpoint's metadata (config, model, data: num_examples, files, ...)
    # the step of each stage up to the restored one, e.g. (300, 3210): the PAE's autoencoder and
    # its flow; None where a stage fitted by an earlier release recorded nothing
    stage_steps: tuple = ()


def stage_dirs(run_dir) -> list[Path]:
    """The run's stages with checkpoints, in order: ``<run>`` (its training), then any later
    stage ``<run>/stage2``, ``<run>/stage3``... (e.g. the PAE's latent flow, `jaxae.pae`)."""
    run_dir = Path(run_dir)
    later = sorted(run_dir.glob("stage[0-9]*"), key=lambda p: int(p.name[5:] or 0))
    return [run_dir] + [p for p in later if (p / "checkpoints").is_dir()]


def stage_record(stage_dir, step: int, *, stage: int, name: str) -> dict:
    """What a later stage saves in every checkpoint's meta, as ``meta['stage']['fitted_on']``,
    about the checkpoint it was fitted on: step `step` of stage `stage` (whose folder
    `stage_dir` holds ``checkpoints/``), called `name` in messages ('autoencoder').

    Returns:
      ``{'stage': int, 'name': str, 'step': int, 'fingerprint': str}`` (`Checkpointer.fingerprint`).
    """
    with Checkpointer(Path(stage_dir) / "checkpoints", save_every=1, read_only=True) as ckpt:
        fingerprint = ckpt.fingerprint(step)
    return {"stage": int(stage), "name": name, "step": int(step), "fingerprint": fingerprint}


def _fitted_on(stage_dir: Path, meta: dict) -> tuple[str | None, dict | None]:
    """(the later stage's name, its `stage_record`) from one of its checkpoints' meta."""
    info = meta.get("stage") or {}
    if info.get("fitted_on") is not None:
        return info.get("name"), info["fitted_on"]
    # Fitted by an earlier release, which recorded the autoencoder's step in the flow stage's
    # summary only (`jaxae.pae.fit_flow`): check that step, without a fingerprint.
    try:
        summary = json.loads((stage_dir / "summary.json").read_text())
        step = int(summary["autoencoder_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    return "latent flow", {"stage": 1, "name": "autoencoder", "step": step}


def _check_fitted_on(run_dir, stages: list[Path], index: int, step: int, meta: dict):
    """``(earlier step, its meta)``: the checkpoint of stage ``index - 1`` that step `step` of
    stage `index` (1-based, >= 2; `meta` its meta) was fitted on, which must be that stage's
    newest; `StageMismatchError` if it is not. ``(None, None)`` if nothing was recorded."""
    later, earlier = stages[index - 1], stages[index - 2]
    later_name, rec = _fitted_on(later, meta)
    if rec is None:
        return None, None
    later_name = later_name or f"stage-{index} model"
    name, fitted = rec.get("name") or f"stage-{index - 1} model", int(rec["step"])
    newest, why, earlier_meta = None, None, None
    if (earlier / "checkpoints").is_dir():
        with Checkpointer(earlier / "checkpoints", save_every=1, read_only=True) as ckpt:
            newest = ckpt.latest_step()
            if newest == fitted and rec.get("fingerprint"):
                try:
                    if ckpt.fingerprint(newest) != rec["fingerprint"]:
                        why = (f"the {name}'s checkpoint of step {newest} holds other weights "
                               "than when it was fitted (it was trained again)")  # fmt: skip
                except CheckpointError as e:
                    why = f"the {name}'s checkpoint of step {newest} cannot be read ({e})"
            if newest == fitted and why is None and index > 2:
                earlier_meta = ckpt.read_meta(newest)
    if newest is None:
        why = f"the {name} has no checkpoint left"
    elif newest != fitted:
        how = "trained further after" if newest > fitted else f"step {fitted} deleted since"
        why = f"the {name}'s newest checkpoint is step {newest} ({how} the {later_name} was fitted)"
    if why is not None:
        raise StageMismatchError(
            f"{run_dir}: its {later_name} ({later.name}, step {step}) was fitted on the {name} "
            f"at step {fitted}, but {why}. Restore stage={index - 1} for the {name} alone, or fit "
            f"the {later_name} again in a new run folder (or after deleting {later} deliberately)."
        )
    return fitted, earlier_meta


def _stage_steps(run_dir, stages: list[Path], index: int, step: int, meta: dict) -> tuple:
    """(step of stage 1, ..., `step` of stage `index`), each later stage checked against the
    stage before it (`_check_fitted_on`)."""
    steps = [step]
    for i in range(index, 1, -1):
        fitted, meta = _check_fitted_on(run_dir, stages, i, steps[0], meta)
        if fitted is None:
            return (None,) * (i - 1) + tuple(steps)
        steps.insert(0, fitted)
    return tuple(steps)


def check_stages(run_dir) -> tuple:
    """Checks that each later stage's newest checkpoint was fitted on the newest checkpoint of
    the stage before it; returns those steps, e.g. (300, 3210) (None: not recorded).

    Raises:
      StageMismatchError: naming the run, both stages and both steps.
    """
    stages = stage_dirs(run_dir)
    for index in range(len(stages), 1, -1):  # the last stage with a checkpoint checks them all
        with Checkpointer(stages[index - 1] / "checkpoints", save_every=1, read_only=True) as ckpt:
            step = ckpt.latest_step()
            if step is not None:
                return _stage_steps(run_dir, stages, index, step, ckpt.read_meta(step))
    if not (Path(run_dir) / "checkpoints").is_dir():  # a new run: nothing to check or create
        return (None,)
    with Checkpointer(Path(run_dir) / "checkpoints", save_every=1, read_only=True) as ckpt:
        return (ckpt.latest_step(),)


def depended_steps(run_dir) -> list[int]:
    """The steps of ``<run>/checkpoints`` that a later stage (``<run>/stage2``...) was fitted
    on, over all its checkpoints: training the first stage again must keep them (`Checkpointer`'s
    `preserve`) and must not train past them (``experiments/train.py``)."""
    steps = set()
    for later in stage_dirs(run_dir)[1:]:
        with Checkpointer(later / "checkpoints", save_every=1, read_only=True) as ckpt:
            metas = []
            for step in ckpt.all_steps():
                try:
                    metas.append(ckpt.read_meta(step))
                except CheckpointError:
                    continue  # an unreadable step depends on nothing
        for meta in metas or [{}]:
            rec = _fitted_on(later, meta)[1]
            if rec is not None and rec.get("stage", 1) == 1:
                steps.add(int(rec["step"]))
    return sorted(steps)


def restore_params(run_dir, step: int | None = None, *, stage: int | None = None) -> Restored:
    """The model of a run folder (``<run>/checkpoints``) at its newest readable step.

    A run with later stages (`stage_dirs`) gives the last stage's model (the PAE: the
    autoencoder with its fitted flow); ``stage=1`` the first stage's (the autoencoder alone).
    A later stage is restored only while the stage before it still has, as its newest
    checkpoint, the one it was fitted on (`StageMismatchError` otherwise): a PAE whose
    autoencoder was trained further is not one model any more.

    Reads only the parameters and model state, so how the run was trained (optimizer,
    schedule, parameter groups) does not matter. A step that cannot be read is skipped with a
    `CorruptCheckpointWarning` naming it; a checkpoint whose tree differs from the model its
    description builds raises `ModelMismatchError`.
    """
    from flax import nnx

    from jaxae import config as jconfig
    from jaxae import models

    stages = stage_dirs(run_dir)
    if stage is not None and not 1 <= stage <= len(stages):
        raise FileNotFoundError(f"{run_dir} has {len(stages)} stage(s), not stage {stage}")
    if stage is None and len(stages) > 1:  # a later stage counts once it has a checkpoint
        stage = next(
            (
                i + 1
                for i in range(len(stages) - 1, 0, -1)
                if any(c.name.isdigit() for c in (stages[i] / "checkpoints").iterdir())
            ),
            1,
        )
    index = stage or 1
    ckpt_dir = stages[index - 1] / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} does not exist: is {run_dir} a training run folder?")
    with Checkpointer(ckpt_dir, save_every=1) as ckpt:
        steps = ckpt.all_steps()[::-1] if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint")
        errors = []
        for s in steps:
            try:
                meta = ckpt.read_meta(s)
                if "model" not in meta:
                    raise CheckpointError(f"step {s} has no model description in its meta")
                config = jconfig.from_dict(meta["config"], module=meta["model"].get("module"))
                stage_steps = _stage_steps(run_dir, stages, index, s, meta)
                # descriptions saved before models knew their pixel scale: the run's
                model = models.build({"scale": config.data.scale, **meta["model"]})
                graphdef, params, state = nnx.split(model, nnx.Param, ...)
                template = jax.tree.map(jnp.asarray, {"params": params, "model_state": state})
                item, _ = ckpt.restore_model(s, template)
            except (ModelMismatchError, StageMismatchError):
                raise
            except (CheckpointError, KeyError, ValueError) as e:
                errors.append(f"step {s}: {e}")
                continue
            if errors:
                warnings.warn(
                    f"{run_dir}: using step {s}; newer steps could not be read: "
                    + "; ".join(errors),
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
            item = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), item)
            model = nnx.merge(graphdef, item["params"], item["model_state"])
            model.eval()
            return Restored(model, dict(meta["model"]), config, s, meta, stage_steps)
    raise CheckpointError(f"no checkpoint of {run_dir} could be restored: " + "; ".join(errors))
