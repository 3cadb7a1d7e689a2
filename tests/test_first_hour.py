"""Issue 23, "a researcher's first hour": a misspelt config override on the command line, and
runs saved before models knew their pixel scale."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

from jaxae import checkpoint, models, objectives, pae, train
from jaxae import config as jconfig
from jaxae import data as jdata

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (8, 8, 1)


def test_a_misspelt_config_override_is_one_line_and_exit_status_2(tmp_path):
    """`python -m experiments.train` printed a 55-line ml_collections traceback."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/demo.py",
        "--config.trainig.epochs=1",
        "--workdir",
        str(tmp_path / "run"),
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: unknown config field 'trainig.epochs': did you mean 'training.epochs'? "
        "(all fields: jaxae.config.default())"
    ]
    assert not (tmp_path / "run").exists()


def test_the_unknown_override_and_its_closest_field():
    from experiments import train as main

    argv = [
        "train",
        "--config",
        "c.py",
        "--config.training.epochs=2",
        "--config.training.max_step=300",
        "--workdir",
        "w",
    ]
    assert main.unknown_override(argv) == "training.max_step"
    assert main.unknown_override(argv[:4]) is None
    assert main.unknown_override(["--noconfig.data.dequantiz"]) == "data.dequantiz"
    assert "did you mean 'training.max_steps'?" in jconfig.unknown_field("training.max_step")
    assert "did you mean" not in jconfig.unknown_field("zzz.qqq")


def _fit(workdir, spec: dict):
    """4 steps of a tiny MLP autoencoder, 'centered' in its config, saved with `spec`."""
    cfg = jconfig.make(
        data=dict(dataset="synthetic", scale="centered"),
        model=dict(latent_dim=4),
        training=dict(batch_size=16, epochs=1),
    )
    model = models.build({**spec, "seed": 0})
    graphdef, params, model_state = objectives.split(model)
    pre = jdata.Preprocess("centered")
    images = np.random.default_rng(0).integers(0, 256, (64, *SHAPE), dtype=np.uint8)
    train.fit(
        cfg,
        workdir,
        params=params,
        model_state=model_state,
        update=train.single(objectives.loss_fn(graphdef), optax.adam(1e-3)),
        train={"image": images},
        prepare=lambda b, k: {**b, "image": pre(b["image"])},
        progress=False,
        model=model.spec,
    )
    return images


@pytest.mark.parametrize("saved_scale", [False, True])
def test_a_run_restores_with_its_pixel_scale(tmp_path, saved_scale):
    """A description saved without "scale" (every run before models carried it) takes the
    run's config.data.scale; a new one carries its own. Either way no caller passes it."""
    spec = {
        "kind": "ae",
        "arch": "mlp",
        "head": "mse",
        "latent_dim": 4,
        "image_shape": list(SHAPE),
        **({"scale": "centered"} if saved_scale else {}),
    }
    images = _fit(tmp_path, spec)
    restored = checkpoint.restore_params(tmp_path)
    assert ("scale" in restored.meta["model"]) == saved_scale
    assert restored.model.scale == "centered" and restored.model.spec["scale"] == "centered"
    codes = pae.encode(restored.model, images[:4])
    np.testing.assert_array_equal(codes, pae.encode(restored.model, images[:4], scale="centered"))
    with pytest.raises(ValueError, match="trained on 'centered' pixels"):
        pae.encode(restored.model, images[:4], scale="unit")
