"""Tests for jaxae.checkpoint: exact round trips, save_every/keep, shardings, corrupt files,
bad input, a SIGKILL in the middle of an asynchronous save, a changed model (refused, nothing
touched), and checkpoints of the earlier release (one `state` item) restored and resumed."""

import importlib.util
import json
import os
import signal
import sys
import warnings

import _child
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _legacy import save_legacy
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxae import checkpoint, models, nets, objectives, train
from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpointWarning,
    ModelMismatchError,
)

# When one array read fails, orbax 0.12 leaves its other read coroutines to the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
TESTS = os.path.dirname(os.path.abspath(__file__))
META = {"config": {"model": "mlp", "latent": 32, "lr": 1e-3}, "data": {"epoch": 3, "batch": 17}}


def init_state():
    # a 128 KB kernel (the largest file of the `model` item) and BatchNorm statistics (model state)
    model = nnx.Sequential(
        nnx.Linear(256, 128, rngs=nnx.Rngs(0)), nnx.BatchNorm(128, rngs=nnx.Rngs(0))
    )
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    opt_state = optax.adam(1e-3).init(params)
    return {
        "params": params,
        "model_state": model_state,
        "opt_state": opt_state,
        "step": jnp.int32(0),
        "key": jax.random.PRNGKey(0),
    }


def state_at(step):
    """A state with values that differ per step, non-zero Adam moments and statistics included."""
    state = init_state()
    grads = jax.tree.map(lambda p: jnp.sin(p * step), state["params"])
    updates, opt_state = optax.adam(1e-3).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    model_state = jax.tree.map(
        lambda s: s + jnp.cos(step * jnp.arange(s.size)), state["model_state"]
    )
    key = jax.random.fold_in(state["key"], step)
    return {"params": params, "model_state": model_state, "opt_state": opt_state,
            "step": jnp.int32(step), "key": key}  # fmt: skip


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


def corrupt_largest_file(step_dir, how, item="model"):
    """Truncate or garble the item's largest data file. Orbax merges the per-process OCDBT
    database into the item's root after a save and reads that copy: every file of the largest
    size (the data file and its per-process twin) is damaged alike."""
    files = files_under(os.path.join(step_dir, item))
    size = max(map(os.path.getsize, files))
    for path in [f for f in files if os.path.getsize(f) == size]:
        with open(path, "r+b") as f:
            if how == "truncate":
                f.truncate(size // 2)
            else:  # flip 64 bytes in the middle: orbax alone restores this without error
                f.seek(size // 2)
                flipped = bytes(b ^ 0xFF for b in f.read(64))
                f.seek(size // 2)
                f.write(flipped)


def corrupt_largest_train_file(step_dir, how):  # the Adam moments of the kernel
    corrupt_largest_file(step_dir, how, item="train")


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
        (corrupt_largest_file, "truncate"),
        (corrupt_largest_file, "garble"),
        (corrupt_largest_train_file, "truncate"),
        (corrupt_largest_train_file, "garble"),
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
    corrupt_largest_file(str(tmp_path / "3"), "truncate")
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


CKPT_CHILD = os.path.join(TESTS, "_ckpt_child.py")


def _killed_save():
    """`_ckpt_child.py` in a scratch folder: (the folder, the finished process)."""
    folder = _child.scratch()
    repo = os.path.dirname(TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    return folder, _child.run([sys.executable, CKPT_CHILD, str(folder)], 300, env=env)


# the killed child, started in the background when the tests are collected (tests/_child.py)
BACKGROUND = {"test_sigkill_mid_save_keeps_previous_step": _killed_save}


def test_sigkill_mid_save_keeps_previous_step(request):
    folder, proc = _child.result(__file__, request.node.name, BACKGROUND)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "step 2 committed=False" in proc.stdout  # the kill did land mid-save
    assert sorted(os.listdir(folder)) == ["1", "2.orbax-checkpoint-tmp"]

    spec = importlib.util.spec_from_file_location("_ckpt_child", CKPT_CHILD)
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    with Checkpointer(folder, save_every=1, keep=1) as ckpt:
        assert ckpt.all_steps() == [1]
        with warnings.catch_warnings():
            warnings.simplefilter("error", CorruptCheckpointWarning)
            state, meta, step = ckpt.restore_or_init(child.init_state)
        assert (step, meta) == (1, {"step": 1})
        assert_same(state, child.make_state(1))
        assert ckpt.save(2, child.make_state(2), {"step": 2})  # saving works again
    assert os.listdir(folder) == ["2"]  # tmp folder cleaned up; 1 deleted once 2 was in
    with Checkpointer(folder, save_every=1) as ckpt:
        state, meta, step = ckpt.restore_or_init(child.init_state)
    assert (step, meta) == (2, {"step": 2})
    assert_same(state, child.make_state(2))


# --- runs of jaxae.train.fit: a changed model, an unreadable newest step ----------------------

SHAPE = (8, 8, 1)
IMAGES = np.random.default_rng(0).integers(0, 256, (64, *SHAPE), dtype=np.uint8)


def _prepare(batch, key):
    return {**batch, "image": jdata.Preprocess()(batch["image"], key)}


def fit_ae(workdir, latent_dim=4, **training):
    """A tiny MLP autoencoder run: 4 steps of 16 per epoch."""
    training = {"batch_size": 16, "epochs": 1, **training}
    cfg = jconfig.make(data=dict(dataset="synthetic"), model=dict(latent_dim=latent_dim),
                       training=training)  # fmt: skip
    model = models.build({**cfg.model.to_dict(), "image_shape": list(SHAPE), "seed": 0})
    graphdef, params, model_state = objectives.split(model)
    update = train.single(objectives.loss_fn(graphdef), optax.adam(cfg.optimizer.learning_rate))
    return train.fit(
        cfg, workdir, params=params, model_state=model_state, update=update,
        train={"image": IMAGES}, prepare=_prepare, progress=False, model=model.spec,
    )  # fmt: skip


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {os.path.relpath(f, folder): open(f, "rb").read() for f in files_under(folder)}


def test_a_changed_model_is_refused_and_nothing_is_touched(tmp_path):
    fit_ae(tmp_path, latent_dim=4, checkpoint_every=2)
    before = snapshot(tmp_path)
    assert {"2", "4"} <= {p.split(os.sep)[1] for p in before if p.startswith("checkpoints")}
    assert "metrics.jsonl" in before
    with pytest.raises(ModelMismatchError) as err:
        fit_ae(tmp_path, latent_dim=8, checkpoint_every=2)
    msg = str(err.value)
    assert "params/net/decoder/kernel" in msg, msg  # the first differing leaf, sorted by name
    assert "(4, 64)" in msg and "(8, 64)" in msg, msg
    assert "step 4" in msg and "tree structures do not match" not in msg
    # not set aside as corrupt, not deleted, not rewritten: the run is as it was
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if "corrupt" in p]
    assert snapshot(tmp_path) == before
    with Checkpointer(tmp_path / "checkpoints", save_every=1) as ckpt:
        assert ckpt.all_steps() == [2, 4]


def test_restore_params_skips_an_unreadable_newest_step(tmp_path):
    result = fit_ae(tmp_path, checkpoint_every=2)
    assert int(result.state["step"]) == 4
    with Checkpointer(tmp_path / "checkpoints", save_every=1) as ckpt:
        want = jax.device_get(ckpt.restore(2, result.state)[0]["params"])
    corrupt_largest_file(str(tmp_path / "checkpoints" / "4"), "truncate")
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.warns(CorruptCheckpointWarning, match="using step 2") as record:
        restored = checkpoint.restore_params(tmp_path)
    assert len(record) == 1 and "step 4" in str(record[0].message)
    assert restored.step == 2 and restored.meta["data"]["step"] == 2
    assert restored.spec == models.build(restored.spec).spec
    assert restored.spec["latent_dim"] == 4 and restored.config.model.latent_dim == 4
    got = nnx.state(restored.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, want, got)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before  # reading renames nothing


def test_a_description_that_does_not_match_the_saved_tree_names_the_leaf(tmp_path):
    fit_ae(tmp_path)
    meta_file = tmp_path / "checkpoints" / "4" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model"]["latent_dim"] = 8  # a description edited by hand (or a changed builder)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        ModelMismatchError, match=r"params/net/decoder/kernel\S* has shape \(4, 64\)"
    ):
        checkpoint.restore_params(tmp_path)
    # a tree with a leaf the checkpoint lacks: named as absent, not "tree structures do not match"
    restored_spec = {**meta["model"], "latent_dim": 4}
    graphdef, params, model_state = objectives.split(models.build(restored_spec), train=False)
    params = nnx.to_pure_dict(jax.device_get(params))
    params["extra"] = {"w": np.zeros(3, np.float32)}
    template = {"params": params, "model_state": model_state}
    with Checkpointer(tmp_path / "checkpoints", save_every=1) as ckpt:
        with pytest.raises(ModelMismatchError, match="params/extra/w has absent") as err:
            ckpt.restore_model(4, template)
    assert "tree structures do not match" not in str(err.value)
    assert os.listdir(tmp_path / "checkpoints") == ["4"]


# --- checkpoints of the earlier release: one `state` item, a flat TrainConfig ------------------

LEGACY_CONFIG = {"dataset": "fashion_mnist", "model": "mlp", "head": "normal_diag", "mixture_k": 1,
                 "latent_dim": 32, "batch_size": 64, "epochs": 1, "learning_rate": 0.001,
                 "seed": 0, "scale": "unit", "dequantize": False, "pad_to_32": False,
                 "val_size": 0, "steps_per_call": 0, "checkpoint_every": 0,
                 "keep_checkpoints": 3, "max_steps": 4}  # fmt: skip
LEGACY_DATA = {"steps_per_epoch": 4, "num_examples": 256, "epoch": 1, "batch": 0, "step": 4}
LEGACY_IMAGES = np.random.default_rng(1).integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)


def legacy_state(params, steps=4):
    """The earlier trainer's state after `steps` Adam steps (on made-up gradients)."""
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    for step in range(1, steps + 1):
        grads = jax.tree.map(lambda p, s=step: jnp.sin(p * s), params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 1)
    return {"params": params, "opt_state": opt_state, "step": np.int32(steps), "key": key}


def pure(tree):
    """Nested dicts of host arrays of an `nnx.State` (or of dicts holding some)."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if isinstance(tree, dict):
        return {k: pure(v) for k, v in tree.items()}
    return np.asarray(jax.device_get(tree))


def assert_params_equal(want, model):
    """The model's parameters are `want`'s: the same tree, bit for bit."""
    want, got = pure(want), pure(nnx.state(model, nnx.Param))
    assert jax.tree.structure(want) == jax.tree.structure(got)
    jax.tree.map(np.testing.assert_array_equal, want, got)


LEGACY_VPAE = {"kind": "vpae", "head": "normal_diag", "k": 1, "arch": "mlp",
               "image_shape": [28, 28, 1]}  # fmt: skip


def test_a_legacy_vpae_checkpoint_restores(tmp_path):
    # the earlier VPAE's tree is the Autoencoder's (`net/encoder`, `net/decoder`); seed 3, not
    # the description's default 0, so the weights can only come from the checkpoint
    model = models.build({**models.vpae_spec("normal_diag", 1, "mlp"), "seed": 3})
    state = legacy_state(nnx.state(model, nnx.Param))
    meta = {"config": LEGACY_CONFIG, "model": LEGACY_VPAE, "data": LEGACY_DATA}
    save_legacy(tmp_path, 4, state, meta)
    with Checkpointer(tmp_path / "checkpoints", save_every=1) as ckpt:
        assert ckpt.all_steps() == [4] and ckpt.is_legacy(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCheckpointWarning)
        restored = checkpoint.restore_params(tmp_path)
    assert restored.step == 4 and restored.spec == LEGACY_VPAE and restored.meta == meta
    assert isinstance(restored.model, models.Autoencoder)
    assert restored.model.head.name == "normal_diag" and restored.model.arch == "mlp"
    c = restored.config
    assert (c.model.kind, c.model.head, c.model.k, c.training.batch_size) == ("ae", "normal_diag",
                                                                              1, 64)  # fmt: skip
    assert_params_equal(state["params"], restored.model)
    x = jnp.asarray(LEGACY_IMAGES[:2], jnp.float32) / 255
    assert restored.model.decode(restored.model.encode(x)).shape == (2, 2 * 784 + 1)


def save_legacy_ae(run_dir):
    """An earlier `ae` run's step 4: the model was the network itself, no `net` level."""
    net = nets.MLPAutoencoder((28, 28, 1), 8, rngs=nnx.Rngs(params=5))
    state = legacy_state(nnx.state(net, nnx.Param))
    spec = {"kind": "ae", "arch": "mlp", "latent_dim": 8, "image_shape": [28, 28, 1]}
    config = {**LEGACY_CONFIG, "head": "mse", "latent_dim": 8}
    save_legacy(run_dir, 4, state, {"config": config, "model": spec, "data": LEGACY_DATA})
    return state, spec


def test_a_legacy_ae_checkpoint_restores(tmp_path):
    state, spec = save_legacy_ae(tmp_path)
    restored = checkpoint.restore_params(tmp_path)
    assert restored.step == 4 and restored.spec == spec
    assert restored.model.head.name == "mse" and restored.model.latent_dim == 8
    assert restored.config.model.head == "mse" and restored.config.model.latent_dim == 8
    assert_params_equal({"net": state["params"]}, restored.model)


def test_a_damaged_legacy_checkpoint_is_not_restored(tmp_path):
    model = models.build(models.vpae_spec("normal_diag", 1, "mlp"))
    state = legacy_state(nnx.state(model, nnx.Param))
    save_legacy(tmp_path, 4, state, {"config": LEGACY_CONFIG, "model": LEGACY_VPAE,
                                     "data": LEGACY_DATA})  # fmt: skip
    corrupt_largest_file(str(tmp_path / "checkpoints" / "4"), "garble", item="state")
    with pytest.raises(CheckpointError, match="could be restored: step 4"):
        checkpoint.restore_params(tmp_path)


def fit_on_legacy_images(cfg, run_dir, model):
    """`train.fit` of `model` with Adam as configured, on the legacy runs' 256 images."""
    graphdef, params, model_state = objectives.split(model)
    update = train.single(objectives.loss_fn(graphdef), train.make_optimizer(cfg.optimizer, 4))
    pre = jdata.Preprocess()
    return train.fit(
        cfg, run_dir, params=params, model_state=model_state, update=update,
        train={"image": LEGACY_IMAGES}, prepare=lambda b, k: {**b, "image": pre(b["image"])},
        progress=False, model=model.spec,
    )  # fmt: skip


def test_fit_resumes_a_legacy_checkpoint(tmp_path):
    spec = {**models.vpae_spec("normal_diag", 1, "mlp"), "seed": 3}
    state = legacy_state(nnx.state(models.build(spec), nnx.Param))
    meta = {"config": LEGACY_CONFIG, "model": LEGACY_VPAE, "data": LEGACY_DATA}
    save_legacy(tmp_path, 4, state, meta)
    # the same run (a flat config of these values) with a larger budget: 4 more steps
    cfg = jconfig.make(model=dict(head="normal_diag"), optimizer=dict(learning_rate=1e-3),
                       training=dict(batch_size=64, epochs=2, seed=0, max_steps=8))  # fmt: skip
    model = models.build({**models.vpae_spec("normal_diag", 1, "mlp"), "seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCheckpointWarning)
        result = fit_on_legacy_images(cfg, tmp_path, model)
    assert result.resumed_from == 4 and int(result.state["step"]) == 8
    assert [line["step"] for line in result.history] == [8]
    # Adam's count went on from the legacy opt_state's 4 (a fresh init would end at 4)
    counts = [int(x) for x in jax.tree.leaves(result.state["opt_state"]) if np.ndim(x) == 0]
    assert counts == [8]
    trained = jax.device_get(result.state["params"])
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(state["params"]), strict=True):
        assert a.shape == b.shape and not np.array_equal(a, b)  # it trained on from there
    with Checkpointer(tmp_path / "checkpoints", save_every=1) as ckpt:
        assert ckpt.all_steps() == [4, 8]
        assert ckpt.is_legacy(4) and not ckpt.is_legacy(8)
    restored = checkpoint.restore_params(tmp_path)
    assert restored.step == 8 and restored.spec == model.spec
    assert_params_equal(trained, restored.model)


def test_fit_resumes_a_legacy_ae_checkpoint(tmp_path):
    state, spec = save_legacy_ae(tmp_path)
    cfg = jconfig.make(model=dict(latent_dim=8),
                       training=dict(batch_size=64, epochs=2, max_steps=8))  # fmt: skip
    model = models.build({**cfg.model.to_dict(), "image_shape": [28, 28, 1]})
    result = fit_on_legacy_images(cfg, tmp_path, model)
    assert result.resumed_from == 4 and int(result.state["step"]) == 8
