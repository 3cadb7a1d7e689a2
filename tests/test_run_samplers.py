"""Issue 24: ex-post samplers fitted into a run folder, restored with the model, and named when
missing or stale (`jaxae.evaluate.fit_sampler`, `load_sampler`, `sample`, `--sampler`).

A tiny GMM-DAE run (8 x 8 images, the `dense` network) is trained by `experiments.train` on
synthetic images handed in through `jaxae.data.load`.
"""

import contextlib
import io
import json
import shutil

import jax
import numpy as np
import pytest

from experiments import train as etrain
from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import evaluate, priors

SHAPE = (8, 8, 1)


def _dataset(*args, **kwargs):
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)  # noqa: E731
    return jdata.Dataset("synthetic", jdata.from_arrays(images(96)), jdata.from_arrays(images(32)),
                         jdata.from_arrays(images(32)))  # fmt: skip


def _config(steps=4):
    c = jconfig.default("gmmdae")
    c.model.update(arch="dense", width=16, latent_dim=4)
    c.gmmdae.update(components=4, weight_batch=16, weight_batches=4)
    c.data.val_size = 32
    c.training.update(batch_size=16, epochs=1, max_steps=steps)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained run (4 steps), copied afresh for every test."""
    mp = pytest.MonkeyPatch()
    mp.setattr(etrain.jdata, "load", _dataset)
    workdir = tmp_path_factory.mktemp("samplers") / "gmmdae"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            etrain.train_and_evaluate(_config(), workdir, progress=False)
    finally:
        mp.undo()
    return workdir


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(etrain.jdata, "load", _dataset)
    monkeypatch.setattr(evaluate.jdata, "load", _dataset)
    return shutil.copytree(trained, tmp_path / "gmmdae")


def test_a_fitted_sampler_is_saved_restored_and_sampled(run):
    sampler = evaluate.fit_sampler(run, "gmm", components=2)
    assert evaluate.fitted_samplers(run) == ["gmm"]
    record = json.loads((run / "samplers" / "gmm" / "fitted_on.json").read_text())
    assert record["step"] == 4 and record["options"] == {"components": 2}
    assert record["num_codes"] == 96  # the run's training split, not its 32 val images
    restored = evaluate.restore(run)
    loaded = evaluate.load_sampler(run, "gmm", restored)
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(loaded.sample(key, 5), sampler.sample(key, 5))
    x = evaluate.sample(run, "gmm", key, 6, restored=restored)
    assert x.shape == (6, *SHAPE) and 0 <= x.min() and x.max() <= 1
    # 'prior' is the model's own: the GMM-DAE's mixture, decoded
    codes = restored.model.prior_sample(key, 6)
    want = np.asarray(evaluate.functions(restored).decode(codes))
    np.testing.assert_allclose(evaluate.sample(run, "prior", key, 6), want, atol=1e-6)


def test_a_missing_or_unknown_sampler_is_named(run):
    with pytest.raises(evaluate.SamplerNotFittedError, match=r"no fitted 'vae' sampler.*"
                       r"--fit-sampler vae"):  # fmt: skip
        evaluate.sample(run, "vae", jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match=r"unknown sampler 'nope': the samplers are prior, "):
        evaluate.sample(run, "nope", jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'"):
        evaluate.fit_sampler(run, "nope")
    with pytest.raises(ValueError, match="components"):
        evaluate.fit_sampler(run, "gmm", components=0)
    assert evaluate.fitted_samplers(run) == []  # nothing half-written


def test_a_sampler_fitted_on_an_older_checkpoint_is_stale(run):
    evaluate.fit_sampler(run, "gaussian")
    with contextlib.redirect_stdout(io.StringIO()):
        etrain.train_and_evaluate(_config(steps=6), run, progress=False)
    restored = evaluate.restore(run)
    assert restored.step == 6
    with pytest.raises(evaluate.SamplerNotFittedError, match=r"fitted on step 4 .* step 6: fit"):
        evaluate.load_sampler(run, "gaussian", restored)


def test_the_command_line_names_a_missing_sampler_in_one_line(run, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--run", str(run), "--sampler", "flow", "--no-fid", "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no fitted 'flow' sampler" in err[0]


def test_nan_codes_are_refused_by_every_fit():
    codes = np.zeros((20, 3))
    codes[4, 1] = np.nan
    for name in priors.SAMPLERS:
        with pytest.raises(ValueError, match="NaN"):
            priors.fit(name, codes, key=jax.random.PRNGKey(0))


def test_a_copied_run_keeps_its_samplers(run, tmp_path):
    evaluate.fit_sampler(run, "gaussian")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert evaluate.fitted_samplers(copy) == ["gaussian"]
    evaluate.load_sampler(copy, "gaussian", evaluate.restore(copy))


def _images(n, shape=SHAPE, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _config_dataset(n_train, shape=SHAPE, files=()):
    """A stand-in for the dataset a run's config names, with `n_train` training images."""
    split = lambda n: jdata.from_arrays(_images(n, shape))._replace(files=files)  # noqa: E731
    return lambda *a, **k: jdata.Dataset("synthetic", split(n_train), split(32), split(32))


def test_a_run_trained_on_other_images_is_refused_without_them(run, monkeypatch, capsys):
    """A run of 96 images whose config's dataset splits otherwise (`train.fit` on arrays of your
    own records the default dataset): its codes and test set would be another data set's."""
    monkeypatch.setattr(evaluate.jdata, "load", _config_dataset(128))
    with pytest.raises(evaluate.TrainingDataError,
                       match=r"trained on 96 images, not on the 128-image training split of "
                       r"'fashion_mnist'.*images=train_images"):  # fmt: skip
        evaluate.fit_sampler(run, "gmm", components=2)
    with pytest.raises(evaluate.TrainingDataError, match="images=train_images"):
        evaluate.sample(run, "gaussian", jax.random.PRNGKey(0), 2)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--run", str(run), "--no-fid", "--samples", "8", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "trained on 96 images" in err[0] and "--same-dataset" in err[0]
    # a run that recorded this dataset's files (wherever they were) trained on a subset of it
    names = ["/data/train-images-idx3-ubyte.gz", "/data/train-labels-idx1-ubyte.gz"]
    monkeypatch.setattr(evaluate.jdata, "load", _config_dataset(128, files=tuple(names)))
    subset = evaluate.restore(run)
    subset.meta["data"]["files"] = ["/elsewhere/train-images-idx3-ubyte.gz"]
    evaluate.fit_sampler(run, "gaussian", restored=subset)
    assert (
        json.loads((run / "samplers" / "gaussian" / "fitted_on.json").read_text())["num_codes"]
        == 128
    )
    monkeypatch.setattr(evaluate.jdata, "load", _config_dataset(128))
    # the images it was trained on, given: uint8, or floats in [0, 1] (the same codes)
    images = _dataset().train.images
    fitted = evaluate.fit_sampler(run, "gaussian", images=images / 255.0)
    record = json.loads((run / "samplers" / "gaussian" / "fitted_on.json").read_text())
    assert record["images"] == "given" and record["num_codes"] == 96
    again = evaluate.fit_sampler(run, "gaussian", images=images)
    np.testing.assert_allclose(again.gmm.means, fitted.gmm.means, rtol=1e-5, atol=1e-6)
    assert evaluate.sample(run, "gaussian", jax.random.PRNGKey(0), 2).shape == (2, *SHAPE)
    # a run trained on a subset of the dataset: evaluated on its test set when asked
    result = evaluate.main(["--run", str(run), "--no-fid", "--samples", "8", "--no-progress",
                            "--same-dataset", "--out", str(run / "eval")])  # fmt: skip
    assert result["reconstruction"]["num_images"] == 8


def test_images_of_another_shape_are_named(run, monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"images: an array of shape \[96, 16, 16, 1\], but the "
                       r"model takes \[B, H, W, C\] = \[B, 8, 8, 1\]"):  # fmt: skip
        evaluate.fit_sampler(run, "gaussian", images=_images(96, (16, 16, 1)))
    # the config's dataset of another resolution (the same count: the size check passes)
    monkeypatch.setattr(evaluate.jdata, "load", _config_dataset(96, (16, 16, 1)))
    with pytest.raises(ValueError, match=r"the fashion_mnist train images: an array of shape "
                       r"\[96, 16, 16, 1\]"):  # fmt: skip
        evaluate.fit_sampler(run, "gaussian")
    with pytest.raises(SystemExit):
        evaluate.main(["--run", str(run), "--no-fid", "--samples", "8", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the fashion_mnist train images")


def test_sample_gaussian_is_the_samplers_gaussian(run):
    """'gaussian' without a fitted one: fitted to the run's training codes, as `samplers` (and so
    `evaluate_run`) does (it was refused as not fitted, while named always available)."""
    key = jax.random.PRNGKey(2)
    restored = evaluate.restore(run)
    fns = evaluate.functions(restored)
    draw = evaluate.samplers(fns, _dataset().train.images, model=restored.model)["gaussian"]
    want = np.asarray(fns.decode(draw(key, 5)))
    got = evaluate.sample(run, "gaussian", key, 5, restored=restored)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_sample_needs_a_positive_count(run, n):
    with pytest.raises(ValueError, match=rf"n is the number of images to draw, an integer >= 1; "
                       rf"got {n!r}"):  # fmt: skip
        evaluate.sample(run, "prior", jax.random.PRNGKey(0), n)


def test_a_stale_sampler_is_named_by_itself(run, capsys):
    evaluate.fit_sampler(run, "gaussian")
    evaluate.fit_sampler(run, "gmm", components=2, restarts=1)
    with contextlib.redirect_stdout(io.StringIO()):
        etrain.train_and_evaluate(_config(steps=6), run, progress=False)
    restored = evaluate.restore(run)
    # the samplers of a run load a fitted one where it is drawn from, not every one up front
    fns = evaluate.functions(restored)
    draw = evaluate.samplers(fns, _dataset().train.images, model=restored.model, run_dir=run,
                             restored=restored)  # fmt: skip
    with pytest.raises(evaluate.SamplerNotFittedError, match=r"samplers/gmm was fitted on step 4"):
        draw["gmm"](jax.random.PRNGKey(0), 2)
    with pytest.raises(SystemExit):
        evaluate.main(["--run", str(run), "--sampler", "gmm", "--no-fid", "--samples", "8",
                       "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "samplers/gmm was fitted on step 4" in err[0]
    assert "--fit-sampler gmm" in err[0] and "gaussian" not in err[0]


def test_the_command_line_refuses_an_option_the_sampler_does_not_take(run, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--run", str(run), "--fit-sampler", "gaussian", "--components", "3",
                       "--no-fid", "--samples", "8", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "fit('gaussian'): unknown options ['components']; it takes ['jitter']" in err[0]
    assert evaluate.fitted_samplers(run) == []


def test_the_command_line_passes_fit_options_and_says_what_it_fits(run, capsys):
    assert evaluate._fit_option("hidden=(8, 8)") == ("hidden", (8, 8))
    assert evaluate._fit_option("kind=nsf") == ("kind", "nsf")
    assert evaluate._fit_option("learning_rate = 1e-3") == ("learning_rate", 1e-3)
    with pytest.raises(SystemExit):
        evaluate.main(["--run", str(run), "--fit-sampler", "gmm", "--fit-option", "restarts"])
    capsys.readouterr()
    result = evaluate.main(["--run", str(run), "--fit-sampler", "gmm", "--fit-option",
                            "restarts=1", "--components", "2", "--no-fid", "--samples", "8",
                            "--no-progress", "--out", str(run / "eval")])  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "fitting the 'gmm' sampler {'restarts': 1, 'components': 2} to the codes of 96 "
        "fashion_mnist training images" in out.splitlines()[0]
    )
    record = json.loads((run / "samplers" / "gmm" / "fitted_on.json").read_text())
    assert record["options"] == {"restarts": 1, "components": 2}
    # --samples with --no-fid: the first 8 test images, as evaluate_run(fid=False) takes them
    assert result["reconstruction"]["num_images"] == 8 and "num_samples" not in result
