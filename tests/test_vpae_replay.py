"""experiments.vpae_replay: the step-by-step replay reproduces the run it restarts."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from flax import nnx

from experiments import vpae_replay
from jaxae import data as jdata
from jaxae import objectives, train
from jaxae.config import TrainConfig
from jaxae.heads import Head
from jaxae.models import VPAE


@pytest.mark.parametrize("head", ["normal_full", "matrix_normal_full"])
def test_replay_matches_the_run_it_restarts(tmp_path, head):
    images = np.random.default_rng(0).integers(0, 256, (32, 6, 6, 1), dtype=np.uint8)
    model = VPAE(Head(head, image_shape=(6, 6, 1)), "mlp", seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    pre = jdata.Preprocess("unit")
    config = TrainConfig(
        dataset="mnist", head=head, epochs=2, batch_size=8, steps_per_call=1, max_steps=4
    )

    def fit(config, workdir):
        return train.fit(
            config, workdir, params=params, loss_fn=objectives.vpae_nll(graphdef),
            train={"image": images}, prepare=lambda b, key: {**b, "image": pre(b["image"], key)},
            progress=False, model=model.spec,
        )  # fmt: skip

    fit(config, tmp_path / "a")  # stops at step 4, its checkpoint
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    fit(dataclasses.replace(config, max_steps=0), tmp_path / "b")  # the run on to step 8
    logged = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]

    lines = list(vpae_replay.replay(tmp_path / "a", images))
    assert [x["step"] for x in lines] == [5, 6, 7, 8]
    want = {x["step"]: x for x in logged}
    for line in lines:
        np.testing.assert_allclose(line["loss"], want[line["step"]]["loss"], rtol=1e-5)
        np.testing.assert_allclose(line["grad_norm"], want[line["step"]]["grad_norm"], rtol=1e-4)
        assert line["max_nll"] >= line["loss"]  # the worst example bounds the mean
        assert 1e-6 < line["min_factor_diag"] < np.inf and 0 < line["max_abs_whitened"] < np.inf
    assert len(list(vpae_replay.replay(tmp_path / "a", images, steps=2))) == 2
    with pytest.raises(ValueError, match="trained on 32 images and the replay got 24"):
        next(vpae_replay.replay(tmp_path / "a", images[:24]))
