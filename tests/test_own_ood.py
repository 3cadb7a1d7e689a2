"""The PAE on your own RGB images (issue 25): a tiny conv PAE trained by `experiments/train.py`
on a generated folder of 32 x 32 colour PNGs, its noise map, OoD scores (the Laplace terms too),
samples, figures and inpainting in colour, and `experiments/pae_ood.py --run` scoring its test
split against other folders, with the named errors of that mode."""

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import pae_ood
from experiments import train as etrain
from jaxae import checkpoint, inpaint, models, pae
from jaxae import config as jconfig
from jaxae import data as jdata

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402

SHAPE = (32, 32, 3)


def write_folder(folder, colour, n, size=32, seed=0):
    """n noisy PNGs of one colour, size x size RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 20, (n, size, size, 3))
    for i, x in enumerate(np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)):
        Image.fromarray(x).save(folder / f"{i:03d}.png")
    return folder


def build_own(tmp: Path) -> None:
    """In `tmp`: a conv PAE (K=2, width 4) trained for 2 steps, its flow for 2, on 64 images of
    two colour classes in mine/ (6 held out as the test split); other/, the outliers."""
    write_folder(tmp / "mine" / "red", (200, 40, 40), 32, seed=1)
    write_folder(tmp / "mine" / "blue", (40, 40, 200), 32, seed=2)
    write_folder(tmp / "other", (40, 200, 40), 12, size=40, seed=3)  # resized to 32
    config = jconfig.make(
        data=dict(dataset=str(tmp / "mine"), val_size=16, scale="centered"),
        model=dict(kind="ae", arch="conv", width=4, latent_dim=2),
        training=dict(batch_size=16, epochs=1, max_steps=2),
        flow=dict(epochs=1, layers=2, hidden=8, batch_size=16, patience=1),
    )
    etrain.train_and_evaluate(config, tmp / "run", progress=False)


# the run is trained in a child process, in the background while other tests go on
BACKGROUND = {"own": lambda: _child.build(__file__, "build_own")}


@pytest.fixture(scope="module")
def own():
    """(run folder, outlier folder) of `build_own`."""
    tmp = _child.result(__file__, "own", BACKGROUND)
    return tmp / "run", tmp / "other"


def test_trained_on_a_colour_folder_its_figures_noise_map_and_scores_are_rgb(own):
    run = own[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"]["image_shape"] == list(SHAPE)
    # 6 test images: 3 interpolation rows (a fixed 8 rows of 16 images failed here)
    assert summary["flow"]["figures"] == ["stage2/samples.png", "stage2/interpolations.png"]
    for name in summary["flow"]["figures"]:
        png = np.asarray(Image.open(run / name))
        assert png.ndim == 3 and png.shape[2] == 3
        assert (png[..., 0] != png[..., 2]).any()  # colour, not grey written as RGB
    # Eq. 8 and Eq. 12's first term per pixel and channel, flattened alike: against NumPy
    restored = checkpoint.restore_params(run)
    model = restored.model
    x = jdata.load_config(restored.config.data).test.images  # uint8 [6, 32, 32, 3]
    xc = x / 255.0 - 0.5
    recon = jax.jit(lambda m, v: m.decode(m.encode(v)))(model, jnp.asarray(xc, jnp.float32))
    err = np.asarray(recon).reshape(x.shape) - xc
    want = np.maximum(np.sqrt((err**2).mean(0)), pae.SIGMA_FLOOR)
    np.testing.assert_allclose(pae.noise_map(model, x), want.reshape(-1), rtol=1e-4)
    sigma = np.asarray(model.sigma[...]).reshape(SHAPE)  # the validation split's noise map
    s = pae.score(model, x, laplace_scores=False)
    np.testing.assert_allclose(s["reconstruction"], -0.5 * ((err / sigma) ** 2).sum((1, 2, 3)),
                               rtol=1e-4)  # fmt: skip


def test_rgb_corruptions_hide_every_channel_of_a_pixel():
    observed = np.ones(SHAPE[:2], bool)
    observed[:, :16] = False
    noise = np.full(SHAPE[:2], 0.05)
    c = inpaint.corruption(observed, SHAPE, noise=noise)
    assert c.mask.shape == c.noise.shape == SHAPE
    assert not c.mask[:, :16].any() and c.mask[:, 16:].all() and (c.noise == 0.05).all()
    missing = inpaint.corruption("missing95", SHAPE, seed=1).mask
    assert (missing == missing[..., :1]).all() and 0 < missing.mean() < 0.1
    grey = inpaint.corruption("missing95", (32, 32, 1), seed=1).mask  # as it was for grey
    np.testing.assert_array_equal(grey[..., 0], np.random.default_rng(1).random((32, 32)) >= 0.95)
    x = np.full((2, *SHAPE), 200, np.uint8)
    got = inpaint.observed_images(x, c, SHAPE)
    assert got.shape == (2, *SHAPE) and (got[:, :, :16] == 0).all()
    with pytest.raises(ValueError, match=r"mask of shape \(32, 31\) .*\[H, W\] = \[32, 32\]"):
        inpaint.corruption(np.ones((32, 31), bool), SHAPE)


def test_pae_ood_scores_the_runs_test_split_against_other_folders(own, tmp_path):
    run, other = own
    out = tmp_path / "out"
    grey = tmp_path / "grey.npz"  # another source: an .npz of grey 28 x 28 images
    np.savez(grey, images=np.random.default_rng(0).integers(0, 256, (5, 28, 28), np.uint8))
    argv = ["--cpu", "--run", str(run), "--outlier", f"green={other}", "--outlier", str(grey),
            "--laplace-n", "2", "--out", str(out)]  # fmt: skip
    pae_ood.main(argv)
    md = (out / "pae_ood_run.md").read_text()
    assert "| score | K | n | green | grey |" in md and "paper" not in md
    record = json.loads((out / "pae_ood_run.json").read_text())
    assert record["images"] == {"in_distribution": 6, "green": 12, "grey": 5}
    assert [r["score"] for r in record["rows"]] == list(pae_ood.PAE_SCORES)
    for row in record["rows"]:
        for auc, lo, hi in row["auroc"].values():
            assert 0 <= lo <= auc <= hi <= 1
    assert (out / "pae_ood_run_roc.png").is_file()
    assert sorted(p.name for p in (out / "scores" / "run").iterdir()) == [
        "green.npz", "grey.npz", "in_distribution.npz"]  # fmt: skip
    assert not (run / "scores").exists()


def test_outliers_are_made_the_runs_images_and_bad_ones_are_named(tmp_path):
    folder = write_folder(tmp_path / "big", (10, 200, 10), 3, size=40)
    name, images = pae_ood.load_outlier(f"g={folder}", (28, 28, 1))  # --extra: F-MNIST's shape
    assert name == "g" and images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    assert pae_ood.outlier_source("tfds:svhn_cropped") == ("svhn_cropped", "tfds:svhn_cropped")
    with pytest.raises(jdata.DatasetNotFoundError, match=r"--outlier x: .*no such file .*none"):
        pae_ood.load_outlier(f"x={tmp_path / 'none'}", SHAPE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(jdata.DatasetNotFoundError, match=r"--outlier empty: .*no image files"):
        pae_ood.load_outlier(str(tmp_path / "empty"), SHAPE)
    match = r"images of 40 x 40 x 3 from .* takes 32 x 32 x 3: .*pad_to_32.*at most 32"
    with pytest.raises(pae_ood.OutlierShapeError, match=match):
        pae_ood.load_outlier(str(folder), SHAPE, pad_to_32=True)
    with pytest.raises(ValueError, match=r"NAME=SOURCE"):
        pae_ood.outlier_source("a b=x")


def test_a_run_without_its_flow_and_bad_flags_are_refused(own, tmp_path):
    run = tmp_path / "ae"
    shutil.copytree(own[0], run, ignore=shutil.ignore_patterns("stage2"))
    with pytest.raises(models.NotFittedError, match=r"without a fitted latent flow .*stage2.*flow"):
        pae_ood.own_run(run)
    base = ["--run", str(own[0]), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"error: .*without a fitted latent flow"):
        pae_ood.main(["--run", str(run), "--outlier", str(own[1]), "--out", str(tmp_path / "o")])
    for argv in (base, [*base[:2], "--outlier", "x", "--out", str(own[0] / "r")]):
        with pytest.raises(SystemExit) as e:
            pae_ood.main(argv)
        assert e.value.code == 2  # a usage error, before anything is read
    assert not (tmp_path / "o").exists() and not (own[0] / "r").exists()
