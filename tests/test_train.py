"""Trainer: 1 vs 4 devices, exact resume, the fast path, non-finite guard, config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import config as jconfig
from jaxae import models, objectives, parallel, train

SHAPE = (8, 8, 1)


def _setup(seed=0, latent=4):
    """(graphdef, params, model_state, loss_fn) of the tiny MLP autoencoder (mse head)."""
    spec = {"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": latent,
            "image_shape": list(SHAPE), "seed": seed}  # fmt: skip
    graphdef, params, model_state = objectives.split(models.build(spec))
    return graphdef, params, model_state, objectives.loss_fn(graphdef)


def _update(loss_fn, lr=1e-2):
    return train.single(loss_fn, optax.adam(lr))


def _images(n=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _prepare(batch, key):
    # dequantization noise makes the result depend on the per-step key as well
    x = (batch["image"].astype(jnp.float32) + jax.random.uniform(key, batch["image"].shape)) / 256
    return {**batch, "image": x}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _config(**training):
    base = dict(batch_size=16, epochs=3)
    return jconfig.make(
        data=dict(dataset="synthetic"),
        model=dict(latent_dim=4),
        optimizer=dict(learning_rate=1e-2),
        training={**base, **training},
    )


def _fit(tmp_path, name, config, mesh=None, **kw):
    _, params, model_state, loss_fn = _setup()
    return train.fit(
        config,
        tmp_path / name,
        params=params,
        model_state=model_state,
        update=_update(loss_fn, config.optimizer.learning_rate),
        train={"image": _images()},
        prepare=_prepare,
        mesh=mesh,
        progress=False,
        **kw,
    )


def test_one_and_four_devices_agree(tmp_path):
    assert len(jax.devices()) == 4, "conftest sets JAX_NUM_CPU_DEVICES=4"
    cfg = _config(epochs=2)
    one = _fit(tmp_path, "one", cfg, mesh=parallel.data_mesh(jax.devices()[:1]))
    four = _fit(tmp_path, "four", cfg, mesh=parallel.data_mesh())
    init = _leaves(_setup()[1])
    for a, b, c in zip(
        _leaves(one.state["params"]), _leaves(four.state["params"]), init, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, c)  # it trained
    assert int(four.state["step"]) == 2 * (96 // 16)


def test_step_path_equals_scan_path():
    """The per-step jitted path (host-fed batches) and the scanned fast path agree."""
    _, params, model_state, loss_fn = _setup()
    update = _update(loss_fn)
    mesh = parallel.data_mesh()
    images = _images()
    state0 = train.init_state(params, update, seed=0, model_state=model_state)
    perm = np.asarray(train.epoch_permutation(train.data_key(0), 0, len(images)))

    step = train.make_train_step(update, mesh, prepare=_prepare)
    s = parallel.replicate(state0, mesh)
    for t in range(4):
        batch = parallel.shard_batch({"image": images[perm[t * 16 : (t + 1) * 16]]}, mesh)
        s, m = step(s, batch)
    chunk = train.make_train_chunk(update, 16, mesh, prepare=_prepare)
    c, ms = chunk(
        parallel.replicate(state0, mesh), parallel.replicate({"image": images}, mesh), perm, 0, 4
    )
    assert ms["loss"].shape == (4,)
    np.testing.assert_allclose(float(m["loss"]), float(ms["loss"][-1]), rtol=1e-5)
    for a, b in zip(_leaves(s["params"]), _leaves(c["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps_per_call", [0, 2])
def test_resume_is_bit_exact(tmp_path, steps_per_call):
    """Stop after step s, resume to 2s: identical to an uninterrupted run, data order included."""
    s = 9  # not an epoch boundary (6 steps per epoch): the resume starts mid-epoch
    training = dict(epochs=3, checkpoint_every=3, steps_per_call=steps_per_call)
    full = _fit(tmp_path, "full", _config(**training, max_steps=2 * s))
    first = _fit(tmp_path, "cut", _config(**training, max_steps=s))
    assert int(first.state["step"]) == s and first.resumed_from is None
    second = _fit(tmp_path, "cut", _config(**training, max_steps=2 * s))
    assert second.resumed_from == s and int(second.state["step"]) == 2 * s
    for a, b in zip(_leaves(full.state), _leaves(second.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # metrics.jsonl has one line per epoch: the first run's line at its stop inside epoch 2
    # (step 9) was replaced by the resumed run's line of the whole epoch, which carried the
    # first run's steps of it in the checkpoint, so the lines are the uninterrupted run's
    assert [x["step"] for x in first.history] == [6, 9]
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [x["step"] for x in full.history] == [6, 12, 18]
    for got, want in zip(lines, full.history, strict=True):
        timing = ("seconds", "examples_per_s")
        assert {k: v for k, v in got.items() if k not in timing} == {
            k: v for k, v in want.items() if k not in timing
        }
    assert lines[1]["seconds"] > first.history[1]["seconds"]  # both sessions' seconds of epoch 2
    # run again with nothing left to train, a run stopped inside an epoch keeps its last line
    _fit(tmp_path, "cut2", _config(**training, max_steps=s))
    again = _fit(tmp_path, "cut2", _config(**training, max_steps=s))
    assert again.resumed_from == s and again.history == []
    logged = (tmp_path / "cut2" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in logged] == [6, 9]


def test_resume_with_other_config_is_refused(tmp_path):
    _fit(tmp_path, "run", _config(max_steps=3))
    with pytest.raises(ValueError, match=r"cannot resume.*training.batch_size: 16 -> 32"):
        _fit(tmp_path, "run", _config(batch_size=32))


def test_non_finite_loss_names_step_and_term(tmp_path):
    _, params, model_state, loss_fn = _setup()
    images = _images()
    flag = np.zeros(len(images), np.float32)
    flag[37] = 1.0  # one poisoned example

    def poisoned(params, batch, key):
        terms, _ = loss_fn(params, model_state, batch, key)
        recon = terms["mse"] + jnp.where(batch["flag"] > 0, jnp.nan, 0.0)
        return {"loss": recon, "recon": recon}

    cfg = _config(epochs=3, checkpoint_every=2)
    with pytest.raises(
        train.NonFiniteLossError, match=r"non-finite value in recon, loss at step"
    ) as e:
        train.fit(
            cfg,
            tmp_path / "nan",
            params=params,
            update=_update(train.stateless(poisoned)),
            train={"image": images, "flag": flag},
            prepare=_prepare,
            progress=False,
        )
    # the poisoned example appears in epoch 0: the step is where it was drawn
    perm = np.asarray(train.epoch_permutation(train.data_key(0), 0, 96))
    assert e.value.step == int(np.argmax(perm == 37)) // 16 + 1
    assert "recon" in e.value.terms


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"optimizer\.learning_rate"):
        jconfig.make(optimizer=dict(learning_rate=-1e-3))
    with pytest.raises(ValueError, match=r"model\.latent_dim"):
        jconfig.make(model=dict(latent_dim=0))
    with pytest.raises(ValueError, match=r"training\.batch_size"):
        jconfig.make(training=dict(batch_size=0))
    with pytest.raises(ValueError, match=r"model\.arch"):
        jconfig.make(model=dict(arch="transformer"))
    with pytest.raises(ValueError, match=r"unknown config field training\.latent"):
        jconfig.make(training=dict(latent=3))
    with pytest.raises(ValueError, match=r"unknown config section 'trainer'"):
        jconfig.make(trainer=dict(epochs=3))
    with pytest.raises(ValueError, match=r"unknown config fields \['latent'\]"):
        jconfig.from_dict({"latent": 3})


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(ValueError, match="not divisible by the device count 4"):
        _fit(tmp_path, "x", _config(batch_size=18))


def test_empty_dataset(tmp_path):
    _, params, _, loss_fn = _setup()
    for n, message in [(0, r"empty data set"), (8, "fewer than one batch")]:
        with pytest.raises(ValueError, match=message):
            train.fit(
                _config(),
                tmp_path / f"e{n}",
                params=params,
                update=_update(loss_fn),
                train={"image": _images(n)},
                prepare=_prepare,
                progress=False,
            )


def test_fit_refuses_raw_integer_pixels_without_prepare(tmp_path):
    """uint8 images with no `prepare` would train on 0-255 values: refused before any step, by
    `fit` and by `make_train_step` alike, naming the fix."""
    _, params, model_state, loss_fn = _setup()
    fix = r"train\['image'\]: uint8 pixels reach the model unscaled .*prepare=.*Preprocess.*/ 255"
    with pytest.raises(ValueError, match=fix):
        train.fit(_config(), tmp_path / "x", params=params, update=_update(loss_fn),
                  train={"image": _images()}, progress=False)  # fmt: skip
    assert not (tmp_path / "x" / "checkpoints").exists()
    mesh = parallel.data_mesh()
    step = train.make_train_step(_update(loss_fn), mesh)
    state = parallel.replicate(train.init_state(params, _update(loss_fn), 0, model_state), mesh)
    with pytest.raises(ValueError, match=r"batch\['image'\]: uint8 pixels .*prepare="):
        step(state, parallel.shard_batch({"image": _images(16)}, mesh))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((96, 8, 8), None),  # one channel: [N, H, W] gets its channel axis
        ((96, 1, 8, 8), r"channels-first .*pass images\.transpose\(0, 2, 3, 1\)"),
        ((96, 4, 4, 1), r"takes \[B, H, W, C\] = \[B, 8, 8, 1\]: .*8x8 pixels"),
    ],
    ids=["no-channel-axis", "channels-first", "other-size"],
)
def test_fit_checks_images_against_the_model(tmp_path, shape, message):
    """`fit(model=spec)` checks the images against the spec's image_shape before compiling
    (`jaxae.data.check_image_shape`'s messages), and [N, H, W] trains as documented."""
    _, params, model_state, loss_fn = _setup()
    spec = {"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": 4,
            "image_shape": list(SHAPE)}  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    kw = dict(params=params, model_state=model_state, update=_update(loss_fn),
              train={"image": images}, prepare=_prepare, progress=False, model=spec)  # fmt: skip
    if message is None:
        result = train.fit(_config(epochs=1), tmp_path / "x", **kw)
        assert int(result.state["step"]) == 96 // 16
        return
    with pytest.raises(ValueError, match=r"train\['image'\]: an array of shape .*" + message):
        train.fit(_config(epochs=1), tmp_path / "x", **kw)


def test_evaluate_masks_the_padded_batch():
    """`parallel.batch_means` over 37 images in batches of 8: the padded rows do not count."""
    _, params, model_state, loss_fn = _setup()
    images = _images(37).astype(np.float32) / 255
    mesh = parallel.data_mesh()

    def mse(params, model_state, batch):
        return {"mse": loss_fn(params, model_state, batch, None)[0]["mse"]}

    fn = parallel.data_parallel(mse, mesh, batch_argnums=(2,), donate_argnums=())
    got = parallel.batch_means(fn, {"image": images}, 8, args=(params, model_state), mesh=mesh)
    want = np.mean(np.asarray(mse(params, model_state, {"image": jnp.asarray(images)})["mse"]))
    np.testing.assert_allclose(got["mse"], want, rtol=1e-5)


def test_train_arrays_of_different_lengths(tmp_path):
    _, params, _, loss_fn = _setup()
    with pytest.raises(ValueError, match="shared leading example axis"):
        train.fit(
            _config(),
            tmp_path / "x",
            params=params,
            update=_update(loss_fn),
            train={"image": _images(96), "label": np.zeros(95, np.int32)},
            progress=False,
        )


def test_without_a_bar_one_line_per_epoch_is_printed(tmp_path, capsys):
    """progress=False (`--noprogress`): one flushed line per epoch, not minutes of silence;
    chunks cut within an epoch (steps_per_call) still give one line, its loss their mean."""
    config = _config(epochs=2, steps_per_call=2)  # 6 steps per epoch: 3 chunks each
    result = _fit(tmp_path, "quiet", config, eval_fn=lambda state: {"mse": 0.25})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("epoch 1/2  step 6/12  loss ")
    assert lines[1].startswith("epoch 2/2  step 12/12  loss ")
    assert "eval_mse 0.25" in lines[1] and lines[1].endswith("examples/s")
    second = [x for x in result.history if x["step"] > 6]
    loss = float(lines[1].split("loss ")[1].split()[0])
    np.testing.assert_allclose(loss, np.mean([x["loss"] for x in second]), rtol=1e-4)
