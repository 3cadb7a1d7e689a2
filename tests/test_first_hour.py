"""Issue 23, "a researcher's first hour": a misspelt config override on the command line, and
runs saved before models knew their pixel scale."""

import sys
from pathlib import Path

import _child  # tests/: on the path under pytest
import numpy as np
import optax
import pytest

from jaxae import checkpoint, models, objectives, pae, train
from jaxae import config as jconfig
from jaxae import data as jdata

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (8, 8, 1)


BAD_CONFIGS = {  # id -> (the --config arguments, the one line expected)
    # a misspelt override: ml_collections printed a 55-line traceback
    "misspelt-override": (
        ["experiments/configs/demo.py", "--config.trainig.epochs=1"],
        "error: unknown config field 'trainig.epochs': did you mean 'training.epochs'? "
        "(all fields: jaxae.config.default())",
    ),
    # a config file refusing its argument: absl's "FATAL Flags parsing error" and a traceback
    "bad-argument": (
        ["experiments/configs/pae.py:eight"],
        "error: pae.py:eight: the argument is K[,cpu], with K (the latent dimension) a positive "
        "integer, got K = 'eight'; e.g. --config experiments/configs/pae.py:32",
    ),
}


def _train_with(config_args):
    """`python -m experiments.train --config ARGS` into a scratch folder: (the run folder it was
    given, the finished process)."""
    workdir = _child.scratch() / "run"
    cmd = [sys.executable, "-m", "experiments.train", "--config", *config_args, "--workdir",
           str(workdir)]  # fmt: skip
    return workdir, _child.run(cmd, 120, cwd=ROOT)


# the commands, started in the background when the tests are collected (tests/_child.py)
BACKGROUND = {
    f"test_a_bad_config_is_one_line_and_exit_status_2[{name}]": (
        lambda args=args: _train_with(args)
    )
    for name, (args, _) in BAD_CONFIGS.items()
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_a_bad_config_is_one_line_and_exit_status_2(request, name):
    """`python -m experiments.train` with a bad config: one line, exit status 2, no run folder."""
    workdir, out = _child.result(__file__, request.node.name, BACKGROUND)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [BAD_CONFIGS[name][1]]
    assert not workdir.exists()


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


def test_a_misspelt_pixel_scale_names_the_scales():
    """`check_scale('centred')` said only "does not match"."""
    m = models.build({"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": 4,
                      "image_shape": list(SHAPE), "scale": "centered"})  # fmt: skip
    with pytest.raises(ValueError, match="unknown pixel scale 'centred': the scales are 'unit', "
                       r"'centered' \(jaxae\.config\.SCALES\)"):  # fmt: skip
        m.check_scale("centred")
    assert jconfig.SCALES == ("unit", "centered")
    with pytest.raises(ValueError, match="scale='unit' does not match"):  # a known other scale
        m.check_scale("unit")
    assert m.check_scale("centered").offset == 0.5


@pytest.mark.parametrize("missing", ["run", "checkpoints"])
def test_evaluate_on_a_missing_run_is_one_line_and_exit_status_2(tmp_path, capsys, missing):
    """`python -m jaxae.evaluate --run runs/nope` ended in a FileNotFoundError traceback."""
    from jaxae import evaluate

    run = tmp_path / "nope"
    if missing == "checkpoints":
        run.mkdir()
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--run", str(run), "--no-fid", "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(run) in err[0], err


@pytest.mark.parametrize(
    "config, arg, form",
    [
        ("pae", "eight", r"K\[,cpu\]"),
        ("pae", "0,cpu", r"K\[,cpu\]"),
        ("pae_ae", "eight", "K"),
        ("pae_vae", "eight,100,15", r"K\[,BETA,C\]"),
    ],
)
def test_a_bad_config_argument_says_its_form(config, arg, form):
    """`--config experiments/configs/pae.py:eight` ended in "invalid literal for int()"."""
    import importlib

    get_config = importlib.import_module(f"experiments.configs.{config}").get_config
    with pytest.raises(ValueError, match=rf"{config}\.py:{arg}: the argument is {form}, with K "
                       r"\(the latent dimension\) a positive integer, got K = '"):  # fmt: skip
        get_config(arg)


def test_pae_vae_arguments():
    from experiments.configs import pae_vae

    c = pae_vae.get_config("16,100,15")
    assert (c.model.latent_dim, c.model.beta, c.model.capacity) == (16, 100.0, 15.0)
    c = pae_vae.get_config("16")
    assert (c.model.latent_dim, c.model.beta, c.model.capacity) == (16, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"K\[,BETA,C\] \(K alone, or K, BETA and C\), got 2"):
        pae_vae.get_config("16,100")  # read as C = 1 before
    with pytest.raises(ValueError, match="with BETA and C numbers, got BETA = 'x'"):
        pae_vae.get_config("16,x,15")
