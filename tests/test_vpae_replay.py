"""experiments.vpae_replay: the step-by-step replay reproduces the run it restarts."""

import json
import shutil

import jax
import numpy as np
import optax
import pytest
from _legacy import save_legacy

from experiments import vpae_replay
from jaxae import checkpoint, models, objectives, train
from jaxae import config as jconfig
from jaxae import data as jdata

IMAGES = np.random.default_rng(0).integers(0, 256, (32, 6, 6, 1), dtype=np.uint8)


def fit(config, workdir, head):
    model = models.build(models.vpae_spec(head, 1, "mlp", (6, 6, 1)))
    graphdef, params, model_state = objectives.split(model, train=True)
    pre = jdata.Preprocess("unit")
    update = train.single(objectives.loss_fn(graphdef), optax.adam(1e-3))
    return train.fit(
        config, workdir, params=params, model_state=model_state, update=update,
        train={"image": IMAGES}, prepare=lambda b, key: {**b, "image": pre(b["image"], key)},
        progress=False, model=model.spec,
    )  # fmt: skip


def make_config(head, **training):
    training = {**dict(epochs=2, batch_size=8, steps_per_call=1, max_steps=4), **training}
    return jconfig.make(data=dict(dataset="mnist"), model=dict(head=head), training=training)


@pytest.mark.parametrize("head", ["normal_full", "matrix_normal_full"])
def test_replay_matches_the_run_it_restarts(tmp_path, head):
    fit(make_config(head), tmp_path / "a", head)  # stops at step 4, its checkpoint
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    fit(make_config(head, max_steps=0), tmp_path / "b", head)  # the run on to step 8
    logged = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]

    lines = list(vpae_replay.replay(tmp_path / "a", IMAGES))
    assert [x["step"] for x in lines] == [5, 6, 7, 8]
    # the log has one line per epoch of 4 steps: epoch 2's (step 8) is the mean of steps 5-8
    assert [x["step"] for x in logged] == [4, 8]
    for k, rtol in (("loss", 1e-5), ("grad_norm", 1e-4)):
        np.testing.assert_allclose(np.mean([x[k] for x in lines]), logged[1][k], rtol=rtol)
    for line in lines:
        assert line["max_nll"] >= line["loss"]  # the worst example bounds the mean
        assert 1e-6 < line["min_factor_diag"] < np.inf and 0 < line["max_abs_whitened"] < np.inf
    assert len(list(vpae_replay.replay(tmp_path / "a", IMAGES, steps=2))) == 2
    with pytest.raises(ValueError, match="trained on 32 images and the replay got 24"):
        next(vpae_replay.replay(tmp_path / "a", IMAGES[:24]))


def test_replay_of_a_checkpoint_of_the_earlier_format(tmp_path):
    """The same step 4, written as the earlier release did (one `state` item with the Adam
    state, a flat config, a `vpae` model description), replays the same steps."""
    head = "normal_diag"
    fit(make_config(head), tmp_path / "a", head)
    run = checkpoint.restore_params(tmp_path / "a")
    graphdef, params, model_state = objectives.split(run.model, train=True)
    update = train.single(objectives.loss_fn(graphdef), optax.adam(1e-3))
    template = jax.tree.map(np.asarray, train.init_state(params, update, 0, model_state))
    with checkpoint.Checkpointer(tmp_path / "a" / "checkpoints", save_every=1) as ckpt:
        state, meta = ckpt.restore(4, template)
    legacy = {k: v for k, v in state.items() if k != "model_state"}
    flat = {"dataset": "mnist", "model": "mlp", "head": head, "mixture_k": 1, "latent_dim": 32,
            "batch_size": 8, "epochs": 2, "learning_rate": 0.001, "seed": 0, "scale": "unit",
            "dequantize": False, "pad_to_32": False, "val_size": 0, "steps_per_call": 1,
            "checkpoint_every": 0, "keep_checkpoints": 3, "max_steps": 4}  # fmt: skip
    spec = {"kind": "vpae", "head": head, "k": 1, "arch": "mlp", "image_shape": [6, 6, 1]}
    save_legacy(tmp_path / "old", 4, legacy, {**meta, "config": flat, "model": spec})
    with checkpoint.Checkpointer(tmp_path / "old" / "checkpoints", save_every=1) as ckpt:
        assert ckpt.is_legacy(4)

    new = list(vpae_replay.replay(tmp_path / "a", IMAGES))
    old = list(vpae_replay.replay(tmp_path / "old", IMAGES))
    assert [x["step"] for x in old] == [5, 6, 7, 8]
    for a, b in zip(new, old, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, err_msg=k)


def test_replay_refuses_a_model_that_is_no_vpae(tmp_path, monkeypatch):
    head = "normal_identity"
    fit(make_config(head), tmp_path / "a", head)
    real = checkpoint.restore_params

    def other_kind(run_dir, step=None):
        restored = real(run_dir, step)
        return restored._replace(spec={**restored.spec, "kind": "wae"})

    monkeypatch.setattr(checkpoint, "restore_params", other_kind)
    with pytest.raises(ValueError, match="a 'wae' run; the replay knows VPAE runs only"):
        next(vpae_replay.replay(tmp_path / "a", IMAGES))
