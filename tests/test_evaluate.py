"""`jaxae.evaluate`: restoring runs by their saved model description, the FID protocol end to
end on a tiny trained run, the reference-feature cache, and bad input."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from jaxae import data as jdata
from jaxae import evaluate, inception, models, nets, objectives, train
from jaxae.checkpoint import CheckpointError
from jaxae.config import TrainConfig
from jaxae.heads import Head

N = 16  # images per set: a --quick protocol


@pytest.fixture(scope="module")
def fmnist():
    return jdata.load("fashion_mnist")


def _train(workdir, model, loss_fn, images, *, spec, **config):
    config = TrainConfig(dataset="fashion_mnist", batch_size=64, epochs=1, max_steps=4, **config)
    pre = jdata.Preprocess(config.scale)
    graphdef, params = nnx.split(model, nnx.Param)
    return train.fit(
        config, workdir, params=params, loss_fn=loss_fn(graphdef), train={"image": images},
        prepare=lambda b, key: {**b, "image": pre(b["image"], key)}, progress=False, model=spec,
    ).state["params"]  # fmt: skip


@pytest.fixture(scope="module")
def vpae_run(tmp_path_factory, fmnist):
    workdir = tmp_path_factory.mktemp("runs") / "vpae"
    model = models.VPAE(Head("normal_diag"), "mlp", seed=0)
    params = _train(workdir, model, objectives.vpae_nll, fmnist.train.images[:512],
                    spec=model.spec, head="normal_diag")  # fmt: skip
    return workdir, params


def test_restore_rebuilds_the_model_from_its_description(vpae_run):
    workdir, params = vpae_run
    restored = evaluate.restore(workdir)
    assert restored.spec == {"kind": "vpae", "head": "normal_diag", "k": 1, "arch": "mlp",
                             "image_shape": [28, 28, 1]}  # fmt: skip
    assert restored.step == 4 and restored.config.head == "normal_diag"
    got = nnx.state(restored.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(got))


def test_restore_of_an_ae_run_without_a_saved_description(tmp_path, fmnist):
    # checkpoints written before fit saved the description: inferred from the config
    model = nets.make_model("mlp", (28, 28, 1), 8, seed=1)
    params = _train(tmp_path, model, objectives.autoencoder_mse, fmnist.train.images[:256],
                    spec=None, latent_dim=8)  # fmt: skip
    restored = evaluate.restore(tmp_path)
    assert restored.spec["kind"] == "ae" and restored.spec["latent_dim"] == 8
    got = nnx.state(restored.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(got))


def test_restore_bad_folders(tmp_path, vpae_run):
    with pytest.raises(FileNotFoundError, match="is .* a training run folder"):
        evaluate.restore(tmp_path / "nothing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        evaluate.restore(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(vpae_run[0], broken)
    for f in (broken / "checkpoints").glob("*/state/**/*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could be restored"):
        evaluate.restore(broken)


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
    cached = list((tmp_path / "cache" / "fid").glob("fashion_mnist-test-16-native-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(evaluate, "reference_images", lambda *a, **k: 1 / 0)
    again = evaluate.reference_features("fashion_mnist", "test", N, progress=False)
    assert again.shape == (N, inception.FEATURES)
    fewer = evaluate.reference_features("fashion_mnist", "test", 5, progress=False)
    np.testing.assert_array_equal(fewer, again[:5])  # the first images of a larger count


def test_a_corrupt_reference_cache_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path))
    digest = inception.weights_sha256()[:16]
    bad = tmp_path / "fid" / f"mnist-test-4-native-{digest}.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="ignoring unreadable reference features"):
        feats = evaluate.reference_features("mnist", "test", 4, progress=False)
    assert feats.shape == (4, inception.FEATURES) and np.all(feats >= 0)
    with np.load(bad) as z:  # rewritten whole
        np.testing.assert_array_equal(z["features"], feats)
    with pytest.raises(ValueError, match="fewer than 20000"):
        evaluate.reference_features("mnist", "test", 20000, progress=False)
