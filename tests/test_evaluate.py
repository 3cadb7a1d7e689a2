"""`jaxae.evaluate`: restoring runs by their saved model description, the FID protocol end to
end on a tiny trained run, a --no-fid evaluation without Inception, the reference-feature cache,
unreadable steps and bad input."""

import json
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import evaluate, inception, models, objectives, train
from jaxae.checkpoint import CheckpointError, CorruptCheckpointWarning

# Images per set: a --quick protocol (k-NN precision needs more than k = 3; 8 is also the count
# of tests/test_vpae_table.py's FID columns, so the Inception batch compiles once per session).
N = 8


@pytest.fixture(scope="module")
def fmnist():
    return jdata.load("fashion_mnist")


def _train(workdir, spec, images, data_files=(), **training):
    """4 steps of `train.fit` on the model of `spec`; returns its final parameters. `data_files`:
    the dataset's files the images come from (a run that records none is refused evaluation on
    a named dataset unless it trained on that dataset's whole training split)."""
    config = jconfig.make(
        model={k: v for k, v in spec.items() if k in ("kind", "arch", "head", "k", "latent_dim")},
        training=dict(batch_size=64, epochs=1, max_steps=4, **training),
    )
    model = models.build(spec)
    graphdef, params, model_state = objectives.split(model)
    update = train.single(objectives.loss_fn(graphdef), optax.adam(config.optimizer.learning_rate))
    pre = jdata.Preprocess(config.data.scale)
    return train.fit(
        config, workdir, params=params, model_state=model_state, update=update,
        train={"image": images}, prepare=lambda b, key: {**b, "image": pre(b["image"], key)},
        progress=False, model=model.spec, data_files=data_files,
    ).state["params"]  # fmt: skip


@pytest.fixture(scope="module")
def vpae_run(tmp_path_factory, fmnist):
    workdir = tmp_path_factory.mktemp("runs") / "vpae"
    spec = {**models.vpae_spec("normal_diag", 1, "mlp"), "seed": 0}
    params = _train(workdir, spec, fmnist.train.images[:512], fmnist.files, checkpoint_every=2)
    return workdir, params


def test_restore_rebuilds_the_model_from_its_description(vpae_run):
    workdir, params = vpae_run
    restored = evaluate.restore(workdir)
    assert restored.spec == {"kind": "ae", "arch": "mlp", "head": "normal_diag", "k": 1,
                             "latent_dim": 32, "image_shape": [28, 28, 1]}  # fmt: skip
    assert restored.step == 4 and restored.config.model.head == "normal_diag"
    assert isinstance(restored.model, models.Autoencoder)
    got = nnx.state(restored.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(got))


def test_restore_of_a_plain_autoencoder_run(tmp_path, fmnist):
    spec = {"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": 8,
            "image_shape": [28, 28, 1], "seed": 1}  # fmt: skip
    params = _train(tmp_path, spec, fmnist.train.images[:256])
    restored = evaluate.restore(tmp_path)
    assert restored.spec["kind"] == "ae" and restored.spec["latent_dim"] == 8
    assert restored.spec["head"] == "mse" and "seed" not in restored.spec
    got = nnx.state(restored.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(got))
    fns = evaluate.functions(restored)
    assert fns.nll is None and fns.latent_dim == 8  # squared error: no density


def test_restore_bad_folders(tmp_path, vpae_run):
    with pytest.raises(FileNotFoundError, match="is .* a training run folder"):
        evaluate.restore(tmp_path / "nothing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        evaluate.restore(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(vpae_run[0], broken)
    for f in (broken / "checkpoints").glob("*/model/**/*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could be restored"):
        evaluate.restore(broken)


def test_restore_warns_and_uses_an_older_step_when_the_newest_is_unreadable(tmp_path, vpae_run):
    run = tmp_path / "run"
    shutil.copytree(vpae_run[0], run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
    (run / "checkpoints" / "4" / "meta" / "metadata").write_text('{"config": {"model": ')
    with pytest.warns(CorruptCheckpointWarning, match="using step 2") as record:
        restored = evaluate.restore(run)
    assert restored.step == 2 and "step 4" in str(record[0].message)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]  # read only


def test_log_prob_uses_the_models_own_pixel_scale():
    """Without `scale=` a 'centered' model scores x / 255 - 0.5 (a wrong scale once gave
    silently other numbers); a wrong `scale=` is refused; the model's shape is checked first."""
    spec = {"kind": "ae", "arch": "mlp", "head": "normal_diag", "latent_dim": 4,
            "image_shape": [8, 8, 1], "scale": "centered"}  # fmt: skip
    model = models.build(spec)
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    xc = x.astype(np.float32) / 255 - 0.5
    want = objectives.log_prob_fn(graphdef)(params, state, {"image": xc})["log_prob"]
    got = evaluate.log_prob(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(evaluate.log_prob(model, x, scale="centered"), got)
    with pytest.raises(ValueError, match="trained on 'centered' pixels .*scale='unit'"):
        evaluate.log_prob(model, x, scale="unit")
    with pytest.raises(ValueError, match=r"batch axis is missing: pass images\[None\]"):
        evaluate.log_prob(model, x[0])


def test_samples_without_quick_is_a_usage_error(vpae_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--run", str(vpae_run[0]), "--samples", "10"])
    assert exit_info.value.code == 2
    assert "--samples needs --quick" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--run", str(vpae_run[0]), "--quick", "--samples", "1"])
    assert exit_info.value.code == 2


def test_evaluate_run_without_fid_needs_no_inception(vpae_run, tmp_path, monkeypatch):
    def no_inception(*args, **kwargs):
        raise AssertionError("fid=False must not embed images")

    monkeypatch.setattr(inception, "features", no_inception)
    monkeypatch.setattr(evaluate, "reference_features", no_inception)
    result = evaluate.evaluate_run(vpae_run[0], num_samples=N, quick=True, fid=False,
                                   progress=False, out=tmp_path / "eval")  # fmt: skip
    rec = result["reconstruction"]
    assert set(rec) == {"mse", "psnr_db", "num_images"} and 0 < rec["mse"] < 0.2
    assert result["samples"] == {} and "weights_sha256" not in result
    lik = result["likelihood"]
    assert np.isfinite(lik["nats_per_image"])
    assert lik["bits_per_dim"] == pytest.approx(lik["nats_per_image"] / (784 * np.log(2)))
    assert rec["num_images"] == lik["num_images"] == N  # what each figure is over
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "Reconstruction MSE" in md and "| reconstructions |" not in md
    assert f"dB over {N} test images" in md and f"per dimension over {N} test images" in md
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["step"] == 4
    # no FID computed: no FID protocol, no sample count in the record or the markdown
    assert not {"protocol", "num_samples", "quick"} & set(saved) and "Protocol:" not in md
    # the command line's --no-fid: the same numbers
    argv = ["--run", str(vpae_run[0]), "--quick", "--samples", str(N), "--no-fid",
            "--no-progress", "--out", str(tmp_path / "cli")]  # fmt: skip
    cli = evaluate.main(argv)
    assert cli["reconstruction"] == rec and cli["likelihood"] == lik and cli["samples"] == {}


def test_evaluate_run_quick_protocol_end_to_end(vpae_run, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
    workdir, _ = vpae_run
    with pytest.raises(ValueError, match="pass --quick"):
        evaluate.evaluate_run(workdir, num_samples=N)
    result = evaluate.evaluate_run(workdir, num_samples=N, quick=True, progress=False,
                                   out=tmp_path / "eval")  # fmt: skip
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["quick"] and saved["num_samples"] == N
    assert "not comparable" in saved["protocol"]
    rec = result["reconstruction"]
    assert 0 < rec["mse"] < 0.2 and rec["psnr_db"] > 0
    assert set(result["samples"]) == {"prior", "gaussian"}
    for r in [rec, *result["samples"].values()]:  # each FID's images and reference images
        assert r["num_images"] == r["num_reference"] == N
    for r in [rec, *result["samples"].values()]:
        assert r["fid"] >= 0 and np.isfinite(r["kid"]) and 0 <= r["precision"] <= 1
    # an untrained-for-4-steps model: its samples are far from the data, its NLL finite
    assert result["samples"]["gaussian"]["fid"] > 10
    lik = result["likelihood"]
    assert np.isfinite(lik["nats_per_image"])
    assert lik["bits_per_dim"] == pytest.approx(lik["nats_per_image"] / (784 * np.log(2)))
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| samples: gaussian |" in md and "Protocol:" in md

    # the reference features were cached: a second evaluation does not embed the test images
    cached = list((tmp_path / "cache" / "fid").glob(f"fashion_mnist-test-{N}-28x28x1u1-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(inception, "features", lambda *a, **k: 1 / 0)
    again = evaluate.reference_features("fashion_mnist", "test", N, progress=False)
    assert again.shape == (N, inception.FEATURES)
    fewer = evaluate.reference_features("fashion_mnist", "test", 5, progress=False)
    np.testing.assert_array_equal(fewer, again[:5])  # the first images of a larger count
    with pytest.raises(ZeroDivisionError):  # padded to 32 x 32: other images, embedded
        evaluate.reference_features("fashion_mnist", "test", N, pad_to_32=True, progress=False)


def test_a_corrupt_reference_cache_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path))
    feats = evaluate.reference_features("mnist", "test", 4, progress=False)
    assert feats.shape == (4, inception.FEATURES) and np.all(feats >= 0)
    (bad,) = (tmp_path / "fid").glob("mnist-test-4-28x28x1u1-*.npz")
    bad.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="ignoring unreadable reference features"):
        again = evaluate.reference_features("mnist", "test", 4, progress=False)
    np.testing.assert_array_equal(again, feats)
    with np.load(bad) as z:  # rewritten whole
        np.testing.assert_array_equal(z["features"], feats)
    with pytest.raises(ValueError, match="fewer than the 20000 asked: .* --quick --samples 10000"):
        evaluate.reference_features("mnist", "test", 20000, progress=False)
