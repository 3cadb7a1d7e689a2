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
