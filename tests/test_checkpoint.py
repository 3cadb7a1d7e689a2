"""Tests for jaxae.checkpoint: exact round trips, save_every/keep, shardings, corrupt files,
bad input, and a SIGKILL in the middle of an asynchronous save."""

import importlib.util
import os
import signal
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxae.checkpoint import Checkpointer, CheckpointError, CorruptCheckpointWarning

# When one array read fails, orbax 0.12 leaves its other read coroutines to the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
TESTS = os.path.dirname(os.path.abspath(__file__))
META = {"config": {"model": "mlp", "latent": 32, "lr": 1e-3}, "data": {"epoch": 3, "batch": 17}}


def init_state():
    model = nnx.Linear(256, 128, rngs=nnx.Rngs(0))  # a 128 KB kernel: the largest data file
    _, params = nnx.split(model, nnx.Param)
    opt_state = optax.adam(1e-3).init(params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.int32(0),
        "key": jax.random.PRNGKey(0),
    }


def state_at(step):
    """A state with values that differ per step, non-zero Adam moments included."""
    state = init_state()
    grads = jax.tree.map(lambda p: jnp.sin(p * step), state["params"])
    updates, opt_state = optax.adam(1e-3).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    key = jax.random.fold_in(state["key"], step)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(step), "key": key}


def assert_same(a, b):
    """Same structure, shapes, dtypes and bytes."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def save_steps(directory, steps, keep=3):
    with Checkpointer(directory, save_every=1, keep=keep) as ckpt:
        for step in steps:
            assert ckpt.save(step, state_at(step), {**META, "step": step})


def files_under(path):
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


@pytest.mark.parametrize("async_save", [True, False])
def test_roundtrip_is_exact(tmp_path, async_save):
    with Checkpointer(tmp_path, save_every=1, async_save=async_save) as ckpt:
        assert ckpt.save(5, state_at(5), META)
        ckpt.wait()
        state, meta = ckpt.restore(5, init_state())
    assert_same(state, state_at(5))
    assert meta == META
    assert state["step"].dtype == jnp.int32 and state["key"].dtype == jnp.uint32

    with Checkpointer(tmp_path, save_every=1) as ckpt:  # a new run resumes from disk
        state, meta, step = ckpt.restore_or_init(init_state)
    assert step == 5 and meta == META
    assert_same(state, state_at(5))


def test_restore_or_init_on_empty_dir_calls_init(tmp_path):
    calls = []

    def init_fn():
        calls.append(1)
        return init_state()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Checkpointer(tmp_path / "new", save_every=1) as ckpt:
            state, meta, step = ckpt.restore_or_init(init_fn)
    assert (meta, step, len(calls)) == (None, None, 1)
    assert_same(state, init_state())


def test_save_every_and_keep_last_k(tmp_path):
    with Checkpointer(tmp_path, save_every=3, keep=2) as ckpt:
        saved = [step for step in range(1, 11) if ckpt.save(step, state_at(step), META)]
        assert saved == [3, 6, 9]  # not step 1, which orbax's own policy would save
        assert ckpt.save(10, state_at(10), META, force=True)  # the final save
        assert not ckpt.save(10, state_at(10), META, force=True)  # already saved: no-op
        ckpt.wait()
        assert ckpt.all_steps() == [9, 10] and ckpt.latest_step() == 10
    assert sorted(os.listdir(tmp_path)) == ["10", "9"]
    with Checkpointer(tmp_path, save_every=3, keep=2) as ckpt:
        assert_same(ckpt.restore(9, init_state())[0], state_at(9))


@pytest.mark.parametrize("placement", ["jit_out_shardings", "device_put"])
def test_sharded_roundtrip_keeps_shardings(tmp_path, placement):
    mesh = Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    if placement == "jit_out_shardings":  # eval_shape gives the shardings: nothing allocated
        init_fn = jax.jit(init_state, out_shardings=replicated)
    else:  # eval_shape has no shardings: they come from one real init
        init_fn = lambda: jax.device_put(init_state(), replicated)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(1, jax.device_put(state_at(1), replicated), META)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        state, _, step = ckpt.restore_or_init(init_fn)
    assert step == 1
    assert_same(state, state_at(1))
    for x in jax.tree.leaves(state):
        assert x.sharding == replicated


def corrupt_largest_state_file(step_dir, how):
    path = max(files_under(os.path.join(step_dir, "state")), key=os.path.getsize)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(size // 2)
        else:  # flip 64 bytes in the middle: orbax alone restores this without error
            f.seek(size // 2)
            flipped = bytes(b ^ 0xFF for b in f.read(64))
            f.seek(size // 2)
            f.write(flipped)


def corrupt_meta(step_dir, how):
    meta = os.path.join(step_dir, "meta", "metadata")
    if how == "delete":
        os.remove(meta)
    else:
        with open(meta, "w") as f:
            f.write('{"config": {"model": ')


@pytest.mark.parametrize(
    "corrupt, how",
    [
        (corrupt_largest_state_file, "truncate"),
        (corrupt_largest_state_file, "garble"),
        (corrupt_meta, "delete"),
        (corrupt_meta, "garble"),
    ],
)
def test_corrupt_latest_falls_back_to_previous(tmp_path, corrupt, how):
    save_steps(tmp_path, [1, 2])
    corrupt(str(tmp_path / "2"), how)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        with pytest.warns(CorruptCheckpointWarning, match="step 2") as record:
            state, meta, step = ckpt.restore_or_init(init_state)
        assert step == 1 and meta == {**META, "step": 1}
        assert_same(state, state_at(1))
        assert str(tmp_path / "2") in str(record[0].message)
        # Set aside, not deleted; step 2 can be saved again.
        assert ckpt.all_steps() == [1]
        assert [n for n in os.listdir(tmp_path) if n.startswith("2.corrupt-")]
        assert ckpt.save(2, state_at(2), META)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        assert ckpt.restore_or_init(init_state)[2] == 2


def test_corrupt_checkpoint_takes_no_keep_place(tmp_path):
    save_steps(tmp_path, [1, 2, 3], keep=2)  # leaves 2 and 3
    corrupt_largest_state_file(str(tmp_path / "3"), "truncate")
    with Checkpointer(tmp_path, save_every=1, keep=2) as ckpt:
        with pytest.warns(CorruptCheckpointWarning, match="step 3"):
            assert ckpt.restore_or_init(init_state)[2] == 2
        ckpt.save(4, state_at(4), META)  # had the corrupt 3 kept a place, 2 would go
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4]
        assert_same(ckpt.restore(2, init_state())[0], state_at(2))


def test_all_corrupt_warns_and_inits(tmp_path):
    save_steps(tmp_path, [1, 2])
    for step in ("1", "2"):
        corrupt_meta(str(tmp_path / step), "delete")
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        with pytest.warns(CorruptCheckpointWarning) as record:
            state, meta, step = ckpt.restore_or_init(init_state)
        assert [str(w.message).split(":")[0] for w in record] == [
            "skipping checkpoint",
            "skipping checkpoint",
            "none of the checkpoints [2, 1] in " + str(tmp_path) + " is readable",
        ]
        assert (meta, step, ckpt.all_steps()) == (None, None, [])
    assert_same(state, init_state())


def test_all_corrupt_strict_raises_and_renames_nothing(tmp_path):
    save_steps(tmp_path, [1])
    corrupt_meta(str(tmp_path / "1"), "garble")
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        with pytest.warns(CorruptCheckpointWarning), pytest.raises(CheckpointError):
            ckpt.restore_or_init(init_state, strict=True)
    assert os.listdir(tmp_path) == ["1"]


def test_restore_of_missing_step_raises(tmp_path):
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        with pytest.raises(CheckpointError, match="step 7"):
            ckpt.restore(7, init_state())


def test_save_every_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="save_every"):
        Checkpointer(tmp_path, save_every=0)


def test_keep_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, save_every=1, keep=0)


def test_directory_that_is_a_file_is_rejected(tmp_path):
    path = tmp_path / "ckpt"
    path.write_text("not a directory")
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpointer(path, save_every=1)


def test_save_never_replaces_a_step_it_did_not_list(tmp_path):
    stale = Checkpointer(tmp_path, save_every=1)
    save_steps(tmp_path, [5])  # another writer, after `stale` listed the directory
    with pytest.raises(CheckpointError, match="not listed"):
        stale.save(5, state_at(6), META)  # orbax alone would delete that step 5 first
    stale.close()
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        assert_same(ckpt.restore(5, init_state())[0], state_at(5))


def test_sigkill_mid_save_keeps_previous_step(tmp_path):
    child_path = os.path.join(TESTS, "_ckpt_child.py")
    repo = os.path.dirname(TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, child_path, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "step 2 committed=False" in proc.stdout  # the kill did land mid-save
    assert sorted(os.listdir(tmp_path)) == ["1", "2.orbax-checkpoint-tmp"]

    spec = importlib.util.spec_from_file_location("_ckpt_child", child_path)
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    with Checkpointer(tmp_path, save_every=1, keep=1) as ckpt:
        assert ckpt.all_steps() == [1]
        with warnings.catch_warnings():
            warnings.simplefilter("error", CorruptCheckpointWarning)
            state, meta, step = ckpt.restore_or_init(child.init_state)
        assert (step, meta) == (1, {"step": 1})
        assert_same(state, child.make_state(1))
        assert ckpt.save(2, child.make_state(2), {"step": 2})  # saving works again
    assert os.listdir(tmp_path) == ["2"]  # tmp folder cleaned up; 1 deleted once 2 was in
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        state, meta, step = ckpt.restore_or_init(child.init_state)
    assert (step, meta) == (2, {"step": 2})
    assert_same(state, child.make_state(2))
