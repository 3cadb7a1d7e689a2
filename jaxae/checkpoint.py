"""Checkpoints: an orbax `CheckpointManager` behind one small class.

A checkpoint is a folder `<directory>/<step>` holding one `ocp.args.Composite` of three items:
`state` (the train-state pytree `{params, opt_state, step, key}`, `StandardSave`), `meta` (a
JSON dict: run config, data position) and `checksum` (one uint32 per state leaf, JSON).

Atomicity (checked in orbax-checkpoint 0.12.8, local filesystem): a save writes into
`<step>.orbax-checkpoint-tmp`, adds `commit_success.txt` and renames the folder to `<step>` (one
POSIX `rename`). Only integer names count as steps, so a save killed at any moment leaves older
steps intact plus an ignored tmp folder (removed when a manager next opens the directory). Steps
beyond `keep` are deleted only after the new step's rename, never if its write failed. Only the
array data is fsynced (by tensorstore), not the JSON files or the rename: after a power cut the
newest step may come back incomplete, and `restore_or_init` skips it. Orbax keeps no checksum of
array data (a garbled block restores silently as other numbers), hence our per-leaf fingerprint.
"""

import os
import time
import warnings

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
    """

    def __init__(self, directory, *, save_every: int, keep: int = 3, async_save: bool = True):
        for name, value in (("save_every", save_every), ("keep", keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} is not a directory")
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler()}
        handlers |= {name: ocp.JsonCheckpointHandler() for name in ("meta", "checksum")}
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Starts saving `state` and the JSON dict `meta` as `step`; returns whether it did.

        Saves when `step % save_every == 0` or `force`. Steps at or before the latest saved one
        are skipped, so a forced final save of a step just saved periodically is a no-op. This
        rule replaces orbax's, which would also save the first step whatever its number.
        """
        step, latest = int(step), self.latest_step()
        if not (force or step % self.save_every == 0) or (latest is not None and step <= latest):
            return False
        if os.path.exists(self.path(step)):  # orbax would delete it before writing the new one
            raise CheckpointError(f"{self.path(step)} exists but was not listed: another writer?")
        checksum = ocp.args.JsonSave(np.asarray(_fingerprint(state)).tolist())
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta), checksum=checksum
        )
        return self._mngr.save(step, args=args, force=True)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
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

    def restore(self, step: int, abstract_state):
        """Returns `(state, meta)` of `step`, bit for bit as saved.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (or arrays) whose structure,
        dtypes and shardings (else those saved) the restored state takes. Raises
        `CheckpointError` naming the step, its path and the cause if an item cannot be read or
        the state fails its checksum.
        """
        self.wait()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        json, state = ocp.args.JsonRestore(), ocp.args.StandardRestore(target)
        args = ocp.args.Composite(state=state, meta=json, checksum=json)
        try:
            out = self._mngr.restore(step, args=args)
            if np.asarray(_fingerprint(out["state"])).tolist() != out["checksum"]:
                raise ValueError("the state does not match the checksum saved with it")
        except Exception as e:  # whatever the failure, this step is unusable
            root = e  # orbax wraps tensorstore errors: the innermost one says what is wrong
            while root.__cause__ is not None:
                root = root.__cause__
            why = f"{type(root).__name__}: {str(root).partition(chr(10))[0][:300]}"
            raise CheckpointError(f"cannot restore step {step} ({self.path(step)}): {why}") from e
        return out["state"], out["meta"]

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
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
