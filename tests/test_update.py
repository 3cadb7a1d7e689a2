"""`train.Update`: a BatchNorm model (model state) and a two-group adversarial model
(`train.grouped`) each train the same on 1 and 4 devices and resume bit for bit after a kill;
the trainer's input and loss-term checks; the chunked epoch compiles once."""

import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import config as jconfig
from jaxae import models, objectives, parallel, train

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402
import _train_child as child  # noqa: E402

B = 16


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _batch(seed=0, n=B):
    return {"image": jnp.asarray(np.random.default_rng(seed).random((n, *child.SHAPE), np.float32))}


def _changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


# --- BatchNorm: the model state --------------------------------------------------------------


def test_batchnorm_statistics_update_in_train_mode():
    """One step moves the running statistics by the momentum towards the batch's own."""
    graphdef, params, model_state, update = child.setup("bn")
    model = objectives.merge(graphdef, params, model_state)
    bn = model.bn
    np.testing.assert_array_equal(bn.mean[...], 0.0)
    np.testing.assert_array_equal(bn.var[...], 1.0)
    batch = _batch()
    h = model.hidden(batch["image"].reshape(B, -1))
    step = jax.jit(update.step)
    new_params, new_state, _, metrics = step(
        params, model_state, update.init(params), batch, jax.random.PRNGKey(0)
    )
    m = bn.momentum
    np.testing.assert_allclose(
        new_state["bn"]["mean"][...], (1 - m) * h.mean(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        new_state["bn"]["var"][...], m + (1 - m) * h.var(0), rtol=1e-5, atol=1e-6
    )
    assert _changed(params, new_params) and np.isfinite(metrics["loss"])
    # in train mode the layer normalises with the batch's statistics
    out = model.features(batch["image"])
    np.testing.assert_allclose(out.mean(0), bn.bias[...], atol=1e-5)


def test_objectives_loss_fn_trains_batchnorm():
    graphdef, params, model_state, _ = child.setup("bn")
    update = train.single(objectives.loss_fn(graphdef), optax.adam(1e-2))
    _, new_state, _, _ = jax.jit(update.step)(
        params, model_state, update.init(params), _batch(), jax.random.PRNGKey(0)
    )
    assert _changed(model_state, new_state)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(model, devices)``: 12 steps (2 epochs) of `child.run` on the first `devices`
    devices, trained once per module."""
    runs = {}

    def get(model: str, devices: int):
        if (model, devices) not in runs:
            workdir = tmp_path_factory.mktemp(f"{model}_{devices}")
            mesh = parallel.data_mesh(jax.devices()[:devices])
            runs[model, devices] = child.run(workdir, 12, model, mesh=mesh, checkpoint_every=12)
        return runs[model, devices]

    return get


def test_batchnorm_eval_mode_uses_the_stored_statistics(fitted):
    result = fitted("bn", 4)
    state0 = child.setup("bn")[2]
    state = parallel.to_host(result.state)
    assert _changed(state0, state["model_state"]), "training left the running statistics alone"

    eval_graphdef = objectives.split(models.build(_bn_spec()), train=False)[0]
    params, stats = state["params"], state["model_state"]
    model = objectives.merge(eval_graphdef, *jax.tree.map(jnp.asarray, (params, stats)))
    bn = model.bn
    assert bn.use_running_average
    x = _batch(seed=1)["image"]
    h = model.hidden(x.reshape(B, -1))
    want = (h - bn.mean[...]) / jnp.sqrt(bn.var[...] + bn.epsilon) * bn.scale[...]
    np.testing.assert_allclose(model.features(x), want + bn.bias[...], rtol=1e-5, atol=1e-5)
    # one image's code does not depend on the rest of the batch (in train mode it does)
    np.testing.assert_allclose(model.encode(x[:2]), model.encode(x)[:2], rtol=1e-5, atol=1e-6)
    train_graphdef = objectives.split(models.build(_bn_spec()), train=True)[0]
    trained = objectives.merge(train_graphdef, *jax.tree.map(jnp.asarray, (params, stats)))
    assert not np.allclose(trained.encode(x[:2]), trained.encode(x)[:2], atol=1e-3)
    # eval mode read the statistics and left them as they were
    np.testing.assert_array_equal(model.bn.mean[...], stats["bn"]["mean"][...])


def _bn_spec():
    return {"kind": "bn_test_ae", "arch": "mlp", "head": "mse", "latent_dim": child.LATENT,
            "image_shape": list(child.SHAPE)}  # fmt: skip


# --- Two groups: the adversarial model -------------------------------------------------------


def test_each_group_steps_only_its_own_params():
    graphdef, params, model_state, _ = child.setup("gan")
    groups = child.gan_groups(graphdef)
    assert set(params) == {"generator", "critic"}
    batch, key = _batch(), jax.random.PRNGKey(0)
    for name, group in groups.items():
        update = train.grouped({name: group})
        new, _, opt_state, metrics = jax.jit(update.step)(
            params, model_state, update.init(params), batch, key
        )
        assert set(metrics) == {f"{name}/loss", f"{name}/grad_norm"}  # no total loss
        assert set(opt_state) == {name}
        for attr in params:
            # the generator's loss reaches the critic's weights too: only its own move
            assert _changed(params[attr], new[attr]) == (attr in group.params), (name, attr)

    update = train.grouped(groups)
    new, _, opt_state, metrics = jax.jit(update.step)(
        params, model_state, update.init(params), batch, key
    )
    assert _changed(params["critic"], new["critic"])
    assert _changed(params["generator"], new["generator"])
    assert int(opt_state["critic"][0].count) == 3  # steps=3: three Adam steps per iteration
    assert int(opt_state["generator"][0].count) == 1
    # each group's own terms; no sum of the critic's and the generator's opposing losses
    assert set(metrics) == {"critic/loss", "critic/grad_norm", "generator/loss",
                            "generator/grad_norm"}  # fmt: skip


def test_grouped_keeps_the_params_structure():
    graphdef, params, model_state, _ = child.setup("gan")
    update = train.grouped(child.gan_groups(graphdef))
    new, _, opt_state, _ = jax.jit(update.step)(
        params, model_state, update.init(params), _batch(), jax.random.PRNGKey(0)
    )
    assert jax.tree.structure(new) == jax.tree.structure(params)
    # so the chunked fast path (a lax.scan over steps) accepts the update
    mesh = parallel.data_mesh()
    chunk = train.make_train_chunk(update, B, mesh)
    state = parallel.replicate(train.init_state(params, update, 0, model_state), mesh)
    data = parallel.replicate({"image": child.images()}, mesh)
    chunk(state, data, jnp.arange(child.NUM_EXAMPLES), 0, 2)


def test_grouped_rejects_bad_groups():
    graphdef, params, _, _ = child.setup("gan")
    g = child.gan_groups(graphdef)
    with pytest.raises(ValueError, match="overlap"):
        train.grouped({"a": g["critic"], "b": g["critic"]})
    with pytest.raises(ValueError, match="group 'critic': steps must be an integer >= 1"):
        train.grouped({"critic": g["critic"]._replace(steps=0)})
    with pytest.raises(ValueError, match=r"owns \['discriminator'\]"):
        train.grouped({"d": g["critic"]._replace(params=("discriminator",))}).init(params)


# --- Both: 1 vs 4 devices, and resume after SIGKILL ------------------------------------------


@pytest.mark.parametrize("model", ["bn", "gan"])
def test_one_and_four_devices_agree(fitted, model):
    assert len(jax.devices()) == 4, "conftest sets JAX_NUM_CPU_DEVICES=4"
    one, four = fitted(model, 1), fitted(model, 4)
    assert int(four.state["step"]) == 12
    init = child.setup(model)
    for part, start in [("params", init[1]), ("model_state", init[2])]:
        a, b = _leaves(one.state[part]), _leaves(four.state[part])
        assert len(a) == len(b) == len(jax.tree.leaves(start))
        for x, y, z in zip(a, b, _leaves(start), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=part)
            assert not np.allclose(x, z), part  # it trained (BatchNorm: its statistics moved)
    if model == "bn":
        assert len(jax.tree.leaves(four.state["model_state"])) == 2  # running mean and variance


# The killed child runs (SIGKILL during the save at step 9, mid-epoch), started in the background
# when the tests are collected (tests/_child.py).
BACKGROUND = {
    f"test_resume_after_kill_is_bit_exact[{model}]": (
        lambda model=model: child.killed_run(model, max_steps=15, kill_at=9)
    )
    for model in ("bn", "gan")
}


@pytest.mark.parametrize("model", ["bn", "gan"])
def test_resume_after_kill_is_bit_exact(request, tmp_path, model):
    # killed during the save at step 9; resumed from step 6 or 9
    killed = _child.result(__file__, request.node.name, BACKGROUND)
    resumed, full = child.kill_then_resume(killed, tmp_path, model, max_steps=15, kill_at=9)
    assert jax.tree.structure(full.state) == jax.tree.structure(resumed.state)
    for a, b in zip(_leaves(full.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    if model == "gan":
        assert set(full.state["opt_state"]) == {"critic", "generator"}
        assert {"critic/loss", "generator/loss"} <= set(full.history[-1])
        assert "loss" not in full.history[-1]
    else:
        assert jax.tree.leaves(full.state["model_state"])


# --- Loss terms: one value per example, checked when traced ----------------------------------


def test_reduce_terms_errors_and_masked_mean():
    with pytest.raises(ValueError, match=r"including 'loss'; got \['mse'\]"):
        train.reduce_terms({"mse": jnp.ones(4)})
    with pytest.raises(ValueError, match="including 'loss'; got tuple"):
        train.reduce_terms((jnp.ones(4),))
    with pytest.raises(ValueError, match=r"loss term 'loss' has shape \(\)"):
        train.reduce_terms({"loss": jnp.float32(1.0)})
    with pytest.raises(ValueError, match=r"loss term 'kl' has shape \(4, 3\)"):
        train.reduce_terms({"loss": jnp.ones(4), "kl": jnp.ones((4, 3))})
    with pytest.raises(ValueError, match=r"loss term 'loss' has shape \(3,\); .* \[B\] = \[4\]"):
        train.reduce_terms({"loss": jnp.ones(3)}, mask=jnp.ones(4, bool))
    got = train.reduce_terms(
        {"loss": jnp.array([1.0, 2.0, 3.0, 100.0])}, mask=jnp.array([True, True, True, False])
    )
    np.testing.assert_allclose(got["loss"], 2.0)


def _mse(params, batch):
    """A per-example term [B] that depends on the parameters."""
    w = params["net"]["decoder"]["kernel"][...]
    return {"mse": jnp.mean((batch["image"].reshape(B, -1) - jnp.mean(w)) ** 2, axis=1)}


@pytest.mark.parametrize(
    "terms, message",
    [
        (lambda t: {"mse": t}, r"including 'loss'; got \['mse'\]"),
        (lambda t: {"loss": jnp.mean(t)}, r"loss term 'loss' has shape \(\)"),
        (lambda t: {"loss": t, "kl": jnp.zeros((B, 3))}, r"loss term 'kl' has shape \(16, 3\)"),
        (lambda t: {"loss": jnp.sum(t, keepdims=True)}, r"loss term 'loss' has shape \(1,\)"),
    ],
    ids=["no-loss", "scalar", "B-by-D", "batch-sum"],
)
def test_bad_terms_fail_when_the_step_is_traced(terms, message):
    _, params, model_state, _ = child.setup("ae")

    def loss(params, batch, key):
        return terms(_mse(params, batch)["mse"])

    update = train.single(train.stateless(loss), optax.adam(1e-2))
    mesh = parallel.data_mesh()
    step = train.make_train_step(update, mesh)
    state = parallel.replicate(train.init_state(params, update, 0, model_state), mesh)
    with pytest.raises(ValueError, match=message):
        step(state, parallel.shard_batch({"image": np.asarray(_batch()["image"])}, mesh))


# --- Input checks ----------------------------------------------------------------------------


def _bad_images(kind):
    x = np.random.default_rng(0).random((96, *child.SHAPE)).astype(np.float32)
    if kind == "0-255":
        return x * 255
    x[5, 3, 3, 0] = np.nan
    return x


def test_train_step_rejects_unscaled_and_nan_batches():
    _, params, model_state, update = child.setup("ae")
    mesh = parallel.data_mesh()
    step = train.make_train_step(update, mesh)
    state = parallel.replicate(train.init_state(params, update, 0, model_state), mesh)
    with pytest.raises(
        ValueError, match=r"batch\['image'\]: float pixels in \[0\.\d+, 25\d\.\d+\]"
    ):
        step(state, parallel.shard_batch({"image": _bad_images("0-255")[:B]}, mesh))
    with pytest.raises(ValueError, match=r"batch\['image'\]: 1 NaN or infinite pixel"):
        step(state, parallel.shard_batch({"image": _bad_images("nan")[:B]}, mesh))
    # the state was not donated to a failed call: a good batch still trains
    state, metrics = step(state, parallel.shard_batch({"image": _bad_images("nan")[16:32]}, mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 1


@pytest.mark.parametrize(
    "kind, message",
    [
        ("0-255", r"train\['image'\]: float pixels out of range \[0, 1\]"),
        ("nan", r"train\['image'\]: 1 NaN and 0 inf pixels"),
    ],
)
def test_fit_rejects_bad_pixels_before_training(tmp_path, kind, message):
    _, params, model_state, update = child.setup("ae")
    with pytest.raises(ValueError, match=message):
        train.fit(
            child.config("ae"),
            tmp_path / "run",
            params=params,
            model_state=model_state,
            update=update,
            train={"image": _bad_images(kind)},
            progress=False,
        )
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_shard_batch_needs_rows_divisible_by_devices():
    mesh = parallel.data_mesh()
    with pytest.raises(ValueError, match="batch size 18 is not divisible by the device count 4"):
        parallel.shard_batch({"image": np.zeros((18, *child.SHAPE), np.float32)}, mesh)


def test_config_names_an_unknown_head():
    with pytest.raises(ValueError, match=r"config model\.head='t_diagonal': must be one of"):
        jconfig.make(model=dict(head="t_diagonal"))


# --- Compilation -----------------------------------------------------------------------------


def test_chunked_epochs_trace_the_loss_once():
    """Three epochs of the scanned fast path, plus a shorter last chunk's own compile: the
    loss function is traced once per chunk length, never per epoch or per step."""
    graphdef, params, model_state, _ = child.setup("ae")
    counted = chex.assert_max_traces(objectives.loss_fn(graphdef), n=1)
    update = train.single(counted, optax.adam(1e-2))
    mesh = parallel.data_mesh()
    chunk = train.make_train_chunk(update, B, mesh)
    state = parallel.replicate(train.init_state(params, update, 0, model_state), mesh)
    data = parallel.replicate({"image": child.images()}, mesh)
    for epoch in range(3):
        perm = train.epoch_permutation(train.data_key(0), epoch, child.NUM_EXAMPLES)
        state, metrics = chunk(state, data, perm, 0, 6)
    assert metrics["loss"].shape == (6,) and int(state["step"]) == 18
    with pytest.raises(AssertionError, match="traced > 1 times"):
        chunk(state, data, perm, 0, 3)  # a new static length retraces (and is caught)
