"""Tabular data (issue 25): an .npz whose ``images`` is a float table [N, D], standardized by its
training split's statistics, trained through `experiments/train.py` with the MLP and a Normal or
Student-t head (or the plain autoencoder), resumed, and evaluated in the data's own units; and
the named errors of tables and of image options on them. All on tiny generated tables."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from experiments import train as etrain
from jaxae import config as jconfig
from jaxae import data, evaluate

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402


def table(n=200, d=7, seed=0):
    """Correlated features in very different units: feature j has scale ~10 j and offset 100."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * np.arange(1, d + 1) * 10 + 100


@pytest.fixture
def vectors(tmp_path):
    x = table()
    np.savez(tmp_path / "table.npz", images=x, labels=np.arange(len(x)) % 2)
    return tmp_path / "table.npz", x


def config(path, head, **data_fields):
    return jconfig.make(
        data=dict(dataset=str(path), **data_fields),
        model=dict(arch="mlp", head=head, latent_dim=2),
        training=dict(batch_size=32, epochs=1, max_steps=2),
    )


def build_normal_run(tmp: Path) -> None:
    """In tmp: table.npz of `table()`, and run/, the normal_diag head trained 2 steps on it."""
    x = table()
    np.savez(tmp / "table.npz", images=x, labels=np.arange(len(x)) % 2)
    etrain.train_and_evaluate(config(tmp / "table.npz", "normal_diag"), tmp / "run",
                              progress=False)  # fmt: skip


# the run is trained in a child process, in the background while other tests go on
BACKGROUND = {"normal_run": lambda: _child.build(__file__, "build_normal_run")}


@pytest.fixture(scope="module")
def normal_run():
    """(run, its table file, the table, its config, its summary) of `build_normal_run`, shared
    by the tests that read it."""
    tmp = _child.result(__file__, "normal_run", BACKGROUND)
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    c = config(tmp / "table.npz", "normal_diag")
    return tmp / "run", tmp / "table.npz", table(), c, summary


def test_a_table_is_standardized_by_its_training_split(vectors):
    path, x = vectors
    ds = data.load(str(path), val_size=20)
    s = ds.standardization
    assert ds.train.images.shape == (160, 7) and ds.test.images.shape == (20, 7)
    assert ds.train.images.dtype == np.float32 and (ds.train.labels >= 0).all()
    # the training split's own mean and (ddof 0) std; the validation and test rows are excluded
    np.testing.assert_allclose(ds.train.images.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.train.images.std(0), 1, atol=1e-5)
    train_rows = s.invert(ds.train.images)
    np.testing.assert_allclose(s.mean, train_rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.std, train_rows.std(0), rtol=1e-6)
    # every row comes back in its own units, each split standardized by the same statistics
    rows = np.concatenate([s.invert(getattr(ds, k).images) for k in ("train", "val", "test")])
    np.testing.assert_allclose(np.sort(rows, 0), np.sort(x, 0), rtol=1e-5)
    assert abs(ds.test.images.mean()) > 1e-3  # not standardized by its own statistics
    assert s.log_det == pytest.approx(np.log(train_rows.std(0)).sum(), rel=1e-6)


def test_train_normal_diag_resume_and_evaluate_in_the_data_units(normal_run):
    run, _, x, c, summary = normal_run
    assert summary["steps"] == 2 and summary["model"]["image_shape"] == [7]
    assert summary["reconstructions"] is None and "test_psnr_db" not in summary
    again = etrain.train_and_evaluate(c, run, progress=False)
    assert again["resumed_from"] == 2 and again["test"] == summary["test"]

    result = evaluate.evaluate_run(run, progress=False)  # FID asked for: skipped, with why
    assert "vectors, not images" in result["skipped"]["image metrics"]
    assert result["samples"] == {} and "psnr_db" not in result["reconstruction"]
    lik = result["likelihood"]
    ds = data.load_config(c.data, seed=c.training.seed)
    assert summary["standardization"]["log_det"] == pytest.approx(ds.standardization.log_det)
    assert lik["nats_per_example_standardized"] == pytest.approx(summary["test"]["nll"], rel=1e-5)
    # The NLL of the data in its own units, against SciPy: the head's N(mu, diag s^2) over the
    # standardized vectors is N(mean + std mu, diag (std s)^2) over the data.
    model, s = evaluate.restore(run).model, ds.standardization
    raw = s.invert(ds.test.images)
    dist = model.likelihood(model.decode(model.encode(ds.test.images)))
    loc = s.mean + s.std * np.asarray(dist.mean(), np.float64)
    scale = s.std * np.sqrt(np.asarray(dist.variance(), np.float64))
    want = stats.norm.logpdf(raw, loc, scale).sum(1)
    np.testing.assert_allclose(evaluate.log_prob(model, raw, standardization=s), want, rtol=1e-4)
    assert lik["nats_per_example"] == pytest.approx(-want.mean(), rel=1e-4)
    with pytest.raises(ValueError, match="needs the standardization of its training split"):
        evaluate.log_prob(model, raw)
    # Samples come back in the data's units (features about 100, not standardized ones near 0)
    drawn = evaluate.sample(run, "prior", jax.random.PRNGKey(0), 50)
    assert drawn.shape == (50, 7) and abs(drawn.mean() - x.mean()) < 0.5 * x.std()


def test_evaluating_after_the_table_was_replaced_is_refused(normal_run, tmp_path):
    """The training split's statistics are saved with the run; a table replaced by other values
    of the same shape gives others, which evaluation refuses instead of silently using them."""
    run, path, x, c, summary = normal_run
    saved = evaluate.restore(run).meta["standardization"]
    assert saved["mean"] == summary["standardization"]["mean"]
    original = path.read_bytes()
    try:
        np.savez(path, images=table(seed=1), labels=np.arange(len(x)) % 2)
        match = (r"\(data\.dataset='.*table\.npz'\): the training split's mean and std differ "
                 r"from those saved with the run \(feature \d+: mean .*; 7 of 7 features "
                 r"changed\): the data file was replaced .*Put back the file it was trained on, "
                 r"or train a new run on the new data")  # fmt: skip
        with pytest.raises(evaluate.StandardizationChangedError, match=match):
            evaluate.evaluate_run(run, progress=False, out=tmp_path / "eval")
        with pytest.raises(evaluate.StandardizationChangedError):
            evaluate.sample(run, "prior", jax.random.PRNGKey(0), 3)
        with pytest.raises(SystemExit) as e:  # the command line: one line, exit status 2
            evaluate.main(["--run", str(run), "--no-fid", "--out", str(tmp_path / "cli")])
        assert e.value.code == 2
    finally:
        path.write_bytes(original)
    assert not (tmp_path / "eval").exists()
    evaluate.evaluate_run(run, fid=False, progress=False, out=tmp_path / "eval")  # as trained


@pytest.mark.parametrize("head", ["t_diag", "mse"])
def test_train_t_diag_and_the_plain_autoencoder(tmp_path, vectors, head):
    summary = etrain.train_and_evaluate(config(vectors[0], head), tmp_path / head, progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["test"]["loss"])
    assert json.loads((tmp_path / head / "summary.json").read_text())["standardization"]


# ---------------------------------------------------------------------------------------------
# Named errors


def test_table_errors_name_what_is_wrong(tmp_path):
    def load(x, **kwargs):
        np.savez(tmp_path / "t.npz", images=x)
        return data.load(str(tmp_path / "t.npz"), **kwargs)

    x = table()
    bad = x.copy()
    bad[5, 2], bad[9, 0], bad[9, 1] = np.nan, np.inf, np.nan
    with pytest.raises(ValueError, match=r"2 NaN and 1 inf values in 2 of 200 rows, the first in "
                                         r"row 5 \(column 2\): drop or impute"):  # fmt: skip
        load(bad)
    with pytest.raises(ValueError, match=r"dtype int64, but vectors are a float array \[N, D\]"
                                         r".*astype\(np\.float32\).*flattened images"):  # fmt: skip
        load(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"shape \[200\], .*pass x\[:, None\]"):
        load(x[:, 0])
    const = x.copy()
    const[:, 3] = 1.5
    with pytest.raises(ValueError, match=r"1 of 7 columns are constant on the training split "
                                         r"\(columns 3\).*drop them"):  # fmt: skip
        load(const)
    for option in (dict(image_size=28), dict(pad_to_32=True), dict(channels=1),
                   dict(binarize=True)):  # fmt: skip
        ((key, value),) = option.items()
        with pytest.raises(ValueError, match=rf"holds vectors \[N, D\], not images: "
                                             rf"{key}={value!r} only apply to images"):  # fmt: skip
            load(x, **option)
    np.savez(tmp_path / "short.npz", images=x[:20, :6])
    with pytest.raises(ValueError, match=r"training vectors of length 7 but test vectors of "
                                         r"length 6"):  # fmt: skip
        load(x, test=str(tmp_path / "short.npz"))
    np.savez(tmp_path / "img.npz", images=np.zeros((20, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"training data are vectors but the test data are "
                                         r"images"):  # fmt: skip
        load(x, test=str(tmp_path / "img.npz"))


def test_settings_that_do_not_fit_vectors_are_refused(tmp_path, vectors):
    path = vectors[0]
    refused = [
        (config(path, "normal_diag", dequantize=True), r"dequantize=True: .*holds vectors"),
        (config(path, "normal_diag", scale="centered"), r"'centered' is a pixel scale"),
        (config(path, "bernoulli"), r"model\.head='bernoulli' models values in \[0, 1\]"),
        (config(path, "continuous_bernoulli"), r"'continuous_bernoulli' models values in"),
    ]
    for c, why in refused:
        with pytest.raises(ValueError, match=why):
            etrain.train_and_evaluate(c, tmp_path / "run", progress=False)
    c = config(path, "normal_diag")
    c.model.arch = "conv"
    with pytest.raises(ValueError, match=r"for vectors \(image_shape \[D\]\) use the 'mlp' or "
                                         r"'dense'"):  # fmt: skip
        etrain.train_and_evaluate(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
