"""FID on your own images (issue 25): `jaxae.evaluate` scores a run trained on a folder of RGB
PNGs against that folder's own test split, and caches the reference features by the images'
bytes, so a folder whose files change is embedded again; and a PAE whose autoencoder has a
Normal head (raw outputs: a mixture logit, the means, the scales), whose noise map, scores and
Laplace decoder read the head's mean. One tiny run shared by the file."""

import shutil
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import train as etrain
from jaxae import checkpoint, evaluate, inception, pae
from jaxae import config as jconfig
from jaxae import data as jdata

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402

N = 8  # test images: the folder's 10% test split of 80 (k-NN precision needs more than 3)
SHAPE = (32, 32, 3)
D = int(np.prod(SHAPE))


def write_folder(folder, n=80, seed=0):
    """n noisy 32 x 32 RGB PNGs, half reddish, half bluish."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colour = np.where(np.arange(n)[:, None] % 2, [200, 40, 40], [40, 40, 200])
    x = np.clip(colour[:, None, None] + rng.normal(0, 20, (n, *SHAPE)), 0, 255).astype(np.uint8)
    for i, image in enumerate(x):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def build_own(tmp: Path) -> None:
    """In tmp/run: a dense autoencoder with the normal_diag head trained 2 steps on the folder
    tmp/mine."""
    config = jconfig.make(
        data=dict(dataset=str(write_folder(tmp / "mine")), val_size=16),
        model=dict(kind="ae", arch="dense", width=8, head="normal_diag", latent_dim=2),
        training=dict(batch_size=16, epochs=1, max_steps=2),
    )
    etrain.train_and_evaluate(config, tmp / "run", progress=False)


# the run is trained in a child process, in the background while other tests go on
BACKGROUND = {"own": lambda: _child.build(__file__, "build_own")}


@pytest.fixture(scope="module")
def own():
    """The run folder of `build_own`."""
    return _child.result(__file__, "own", BACKGROUND) / "run"


def test_a_pae_on_a_normal_head_reads_the_heads_mean(own):
    """The PAE's stage 2 (`pae.fit_flow`) on this autoencoder: its noise map (which failed on
    the raw outputs [B, 1 + 2D]), the PAE built on it, its scores and Laplace decoder."""
    restored = checkpoint.restore_params(own)
    ae, config = restored.model, restored.config
    assert ae.head.name == "normal_diag" and ae.head.num_params == 1 + 2 * D
    ds = jdata.load_config(config.data, seed=config.training.seed)
    sigma = pae.noise_map(ae, ds.val.images)
    model = pae.build(ae, sigma, pae.encode(ae, ds.train.images), flow=dict(layers=2, hidden=8))
    x = ds.test.images
    xf = x.reshape(len(x), -1) / 255.0
    # the raw layout read by hand (one mixture logit, D means, D raw scales): the mean block
    z = model.encode(jnp.asarray(x / 255.0, jnp.float32))
    mean = np.asarray(model.decode(z))[:, 1 : 1 + D]
    want = np.maximum(np.sqrt(((mean - xf) ** 2).mean(0)), pae.SIGMA_FLOOR)
    np.testing.assert_allclose(pae.noise_map(model, x), want, rtol=1e-4)
    s = pae.score(model, x, laplace_scores=False)
    want = -0.5 * (((xf - mean) / sigma) ** 2).sum(1)
    np.testing.assert_allclose(s["reconstruction"], want, rtol=1e-4)
    decode, _, _ = pae.functions(model)  # jaxae.laplace's g(z) [N], one example
    np.testing.assert_allclose(decode(z[0]), mean[0], rtol=1e-5, atol=1e-6)


def test_evaluate_run_gives_the_fid_of_a_run_on_an_rgb_folder(own, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
    result = evaluate.evaluate_run(own, num_samples=N, quick=True, only_samplers=[],
                                   progress=False, out=tmp_path / "eval")  # fmt: skip
    rec = result["reconstruction"]
    assert rec["num_images"] == rec["num_reference"] == N
    assert np.isfinite(rec["fid"]) and rec["fid"] >= 0 and 0 <= rec["precision"] <= 1
    # the reference: the folder's own test split, cached under the folder's name and shape
    (cached,) = (tmp_path / "cache" / "fid").iterdir()
    assert cached.name.startswith(f"mine-test-{N}-32x32x3u1-")
    ds = jdata.load_config(evaluate.restore(own).config.data)
    with np.load(cached) as z:
        feats = z["features"]
    monkeypatch.setattr(inception, "features", lambda *a, **k: 1 / 0)  # read, not embedded
    np.testing.assert_array_equal(evaluate.image_features(ds.test.images[:N]), feats)
    # the protocol's count on a test split this small: the fix is named; without FID, every
    # test image is scored
    with pytest.raises(ValueError, match=rf"test has {N} images, fewer than the 10000 .* "
                                         rf"--quick --samples {N} .* or --no-fid"):  # fmt: skip
        evaluate.evaluate_run(own, progress=False, out=tmp_path / "eval2")
    plain = evaluate.evaluate_run(own, fid=False, progress=False, out=tmp_path / "eval3")
    assert plain["reconstruction"]["num_images"] == N


def _fake_features(calls):
    """A cheap stand-in for the Inception net: each image's channel means, repeated."""

    def features(images, **kwargs):
        x = inception.check_input(images).astype(np.float64)
        calls.append(x.shape)
        means = np.broadcast_to(x.mean((1, 2)), (len(x), 3))
        return np.tile(means, (1, -(-inception.FEATURES // 3)))[:, : inception.FEATURES].astype(
            np.float32
        )

    return features


def test_the_reference_cache_follows_the_folders_content(own, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(inception, "features", _fake_features(calls))
    folder = shutil.copytree(Path(evaluate.restore(own).config.data.dataset),
                             tmp_path / "mine")  # fmt: skip
    section = {**evaluate.restore(own).config.data.to_dict(), "dataset": str(folder)}
    first = evaluate.reference_features(section, "test", N)
    np.testing.assert_array_equal(evaluate.reference_features(section, "test", N), first)
    assert len(calls) == 1  # cached
    write_folder(folder, seed=1)  # the same files, other pixels
    changed = evaluate.reference_features(section, "test", N)
    assert len(calls) == 2 and not np.array_equal(changed, first)
    # the first images of a cached set are read from it; grey images are other images
    np.testing.assert_array_equal(evaluate.reference_features(section, "test", 5), changed[:5])
    grey = evaluate.reference_features({**section, "channels": 1}, "test", N)
    assert calls[2:] == [(N, 32, 32, 1)] and grey.shape == (N, inception.FEATURES)
    # a corrupt cache file is computed again, with a warning naming it
    for f in (tmp_path / "cache" / "fid").iterdir():
        f.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="ignoring unreadable reference features"):
        np.testing.assert_array_equal(evaluate.reference_features(section, "test", N), changed)
    assert len(calls) == 4


def test_reference_images_of_a_source_and_its_named_errors(own, tmp_path):
    section = evaluate.restore(own).config.data
    images = evaluate.reference_images(section, "test", N)
    assert images.shape == (N, *SHAPE) and images.dtype == np.uint8
    np.testing.assert_array_equal(evaluate.reference_images(section.dataset, "test", N), images)
    with pytest.raises(ValueError, match=r"mine test has 8 images, fewer than the 9 asked"):
        evaluate.reference_images(section, "test", N + 1)
    with pytest.raises(ValueError, match=r"pads by its own pad_to_32 field"):
        evaluate.reference_images(section, "test", N, pad_to_32=True)
    np.savez(tmp_path / "table.npz", images=np.random.default_rng(0).normal(size=(40, 3)))
    with pytest.raises(ValueError, match=r"table\.npz holds vectors \[N, D\], not images"):
        evaluate.reference_images(str(tmp_path / "table.npz"), "test", 2)
