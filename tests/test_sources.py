"""The user's own data sources of `jaxae.data.load` (``data.dataset``): a folder of PNG/JPEG
images (class subfolders or flat), an .npz file, a data set tensorflow-datasets prepared locally;
their test splits, sizes and channels, their named errors; and one run of `experiments/train.py`
on a folder, resumed. All on tiny generated data."""

import json
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from experiments import train as etrain
from jaxae import config as jconfig
from jaxae import data, evaluate


def rgb(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def write_pngs(folder, images, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(x.squeeze(-1) if x.shape[-1] == 1 else x).save(folder / f"{i:03d}{suffix}")
    return folder


@pytest.fixture
def class_folder(tmp_path):
    """40 RGB 32x32 images: 20 PNG in cat/, 20 JPEG in dog/."""
    write_pngs(tmp_path / "pets" / "cat", rgb(20, seed=1))
    write_pngs(tmp_path / "pets" / "dog", rgb(20, seed=2), ".JPG")
    return tmp_path / "pets"


def test_class_folder_labels_classes_and_a_seeded_test_fraction(class_folder):
    ds = data.load(str(class_folder), seed=5)
    assert ds.classes == ("cat", "dog")
    assert ds.train.images.shape == (36, 32, 32, 3) and ds.test.images.shape == (4, 32, 32, 3)
    assert ds.train.images.dtype == np.uint8
    labels = np.concatenate([ds.train.labels, ds.test.labels])
    np.testing.assert_array_equal(np.bincount(labels), [20, 20])
    assert ds.files == (str(class_folder),)  # the absolute path read
    # The PNGs are read as written; the test split does not move with training.seed.
    cat0 = np.asarray(Image.open(class_folder / "cat" / "000.png"))
    assert any((x == cat0).all() for x in (ds.train.images[0], ds.test.images[0]))
    again = data.load(str(class_folder), seed=6, test_fraction=0.1)
    np.testing.assert_array_equal(again.test.images, ds.test.images)


def test_flat_grey_folder_with_a_test_folder(tmp_path):
    grey = rgb(30, 16)[..., :1]
    train = write_pngs(tmp_path / "train", grey[:24])
    test = write_pngs(tmp_path / "test", grey[24:])
    ds = data.load(str(train), test=str(test))
    assert ds.classes == ()
    np.testing.assert_array_equal(ds.train.images, grey[:24])
    np.testing.assert_array_equal(ds.test.images, grey[24:])
    assert (ds.train.labels == -1).all() and (ds.test.labels == -1).all()
    assert ds.files == (str(train), str(test))


def test_npz_with_a_test_file_and_by_fraction(tmp_path):
    images, labels = rgb(40, 16), np.arange(40) % 3
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    np.savez(tmp_path / "test.npz", images=images[:8, ..., :1])  # grey, unlabelled
    ds = data.load(str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz"))
    np.testing.assert_array_equal(ds.train.images, images)
    np.testing.assert_array_equal(ds.train.labels, labels)
    # channels 0: RGB, since not every image is grey; grey ones are replicated
    np.testing.assert_array_equal(ds.test.images, np.repeat(images[:8, ..., :1], 3, -1))
    assert (ds.test.labels == -1).all()
    split = data.load(str(tmp_path / "train.npz"), test_fraction=0.25)
    assert len(split.train.images) == 30 and len(split.test.images) == 10
    together = np.concatenate([split.train.labels, split.test.labels])
    np.testing.assert_array_equal(np.sort(together), np.sort(labels))
    assert split.files == (str(tmp_path / "train.npz"),)


def test_image_size_resizes_with_pil_bilinear_and_channels_convert(tmp_path):
    images = rgb(10, 32)
    folder = write_pngs(tmp_path / "mixed", images[:6])
    write_pngs(tmp_path / "other", [rgb(1, 20)[0]])
    (tmp_path / "other" / "000.png").rename(folder / "big.png")
    sizes = r"different sizes: .*000\.png is 32x32, .*big\.png is 20x20 \(height x width\)\. Set"
    with pytest.raises(ValueError, match=sizes):
        data.load(str(folder))
    test = write_pngs(tmp_path / "test", images[6:])
    ds = data.load(str(folder), test=str(test), image_size=16, channels=1)
    assert ds.train.images.shape == (7, 16, 16, 1) and ds.test.images.shape == (4, 16, 16, 1)
    want = Image.fromarray(images[0]).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    # grey first (601-2 luma, as PIL's 'L'), then resized: within rounding of PIL's own
    assert np.abs(ds.train.images[0, ..., 0].astype(int) - np.asarray(want)).max() <= 1
    ds = data.load(str(test), test=str(test), channels=3, image_size=32)  # already RGB 32x32
    np.testing.assert_array_equal(ds.train.images, images[6:])


# ---------------------------------------------------------------------------------------------
# Named errors


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"no such file or folder .*nowhere"):
        data.load(str(tmp_path / "nowhere"))
    with pytest.raises(data.DatasetNotFoundError, match=r"no such file or folder .*none\.npz"):
        data.load(str(tmp_path / "none.npz"))
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10': .*write tfds:cifar10"):
        data.load("cifar10")


def test_folder_over_the_memory_budget_is_read_when_used(tmp_path, class_folder):
    kw = dict(image_size=8, channels=1, val_size=5, transform="hflip", pad_to_32=True, seed=3)
    eager = data.load(str(class_folder), **kw)
    lazy = data.load(str(class_folder), **kw, memory_budget=39 * 64)  # the 40 8x8x1 images
    images = lazy.train.images
    assert isinstance(images, data.LazyImages) and images.shape == (31, 32, 32, 1)
    assert images.nbytes == 31 * 32 * 32
    np.testing.assert_array_equal(np.asarray(images), eager.train.images)
    np.testing.assert_array_equal(images[np.array([4, 0, 4])], eager.train.images[[4, 0, 4]])
    np.testing.assert_array_equal(images[-1], eager.train.images[-1])
    for split in ("val", "test"):  # held-out images are read whole, as without a budget
        assert isinstance(getattr(lazy, split).images, np.ndarray)
        np.testing.assert_array_equal(getattr(lazy, split).images, getattr(eager, split).images)
    fits = data.load(str(class_folder), **kw, memory_budget=40 * 64)
    assert isinstance(fits.train.images, np.ndarray)
    # a file that breaks after the listing is named when its batch reads it
    name = sorted((class_folder / "cat").iterdir())[0]
    name.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"cannot read image .*{name.name}.*Fix or remove"):
        np.asarray(images)
    # mixed sizes without data.image_size are refused from the files' headers
    write_pngs(class_folder / "cat", rgb(1, 16), suffix="_small.png")
    name.unlink()
    with pytest.raises(ValueError, match="images of different sizes: .* Set data.image_size"):
        data.load(str(class_folder), memory_budget=1)


def test_empty_folder_names_it_and_the_extensions(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(data.DatasetNotFoundError,
                       match=r"no image files in .*empty .*\.png, \.jpg, \.jpeg"):  # fmt: skip
        data.load(str(tmp_path / "empty"))


def test_corrupt_image_is_named_with_the_count_of_good_ones(tmp_path):
    folder = write_pngs(tmp_path / "imgs", rgb(5, 16))
    (folder / "002.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read 1 of 5 image files \(4 good\), first "
                                         r".*imgs/002\.png"):  # fmt: skip
        data.load(str(folder))


def test_npz_labels_channels_first_and_pickle_are_refused(tmp_path):
    np.savez(tmp_path / "short.npz", images=rgb(10, 8), labels=np.arange(9))
    with pytest.raises(ValueError, match=r"labels have shape \(9,\) but there are 10 images"):
        data.load(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "chw.npz", images=rgb(10, 8).transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"channels-first.*transpose\(0, 2, 3, 1\)"):
        data.load(str(tmp_path / "chw.npz"))
    np.savez(tmp_path / "obj.npz", images=np.array([rgb(1, 8)[0], None], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz.*never code"):
        data.load(str(tmp_path / "obj.npz"))
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"images": rgb(2, 8)}))
    with pytest.raises(ValueError, match=r"p\.npz is not an \.npz archive \(it is a Python pickle"):
        data.load(str(tmp_path / "p.npz"))


def test_bad_split_settings(tmp_path, class_folder):
    with pytest.raises(ValueError, match=r"data\.test_fraction=0\.01 of 40 images leaves 0"):
        data.load(str(class_folder), test_fraction=0.01)
    np.savez(tmp_path / "t.npz", images=rgb(2, 32))
    with pytest.raises(
        ValueError, match=r"data\.test='.*t\.npz': must be a folder of images, like"
    ):
        data.load(str(class_folder), test=str(tmp_path / "t.npz"))
    write_pngs(tmp_path / "test" / "bird", rgb(2, 32))
    with pytest.raises(ValueError, match=r"class folders \['bird'\] .*not classes of the "
                                         r"training folder \(cat, dog\)"):  # fmt: skip
        data.load(str(class_folder), test=str(tmp_path / "test"))


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets, prepared locally: a tiny builder, no download


def _tiny_tfds(data_dir, splits):
    """Prepares `tiny_images` (16x16 RGB, labels 0/1) in `data_dir` as array_record files, which
    tfds writes and reads without TensorFlow (an ``Image`` feature would need it to encode)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")

    class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Tensor(shape=(16, 16, 3), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(num_classes=2)}  # fmt: skip
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(n) for split, n in splits.items()}

        def _generate_examples(self, n):
            for i, x in enumerate(rgb(n, 16, seed=n)):
                yield i, {"image": x, "label": i % 2}

    before = set(Path(tempfile.gettempdir()).glob("tmp*tfds"))
    TinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    for left in set(Path(tempfile.gettempdir()).glob("tmp*tfds")) - before:
        shutil.rmtree(left, ignore_errors=True)  # tfds' DatasetInfo leaves its temporary folder


def test_tfds_prepared_locally_with_and_without_a_test_split(tmp_path):
    _tiny_tfds(tmp_path / "a", {"train": 20, "test": 6})
    ds = data.load("tfds:tiny_images", data_dir=tmp_path / "a")
    assert ds.train.images.shape == (20, 16, 16, 3) and ds.test.images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(np.sort(ds.train.images.reshape(20, -1), 0),
                                  np.sort(rgb(20, 16, seed=20).reshape(20, -1), 0))  # fmt: skip
    assert set(ds.train.labels) == {0, 1}
    assert all(f.startswith(str(tmp_path / "a")) and "train" in f for f in ds.train.files)
    _tiny_tfds(tmp_path / "b", {"train": 20})
    ds = data.load("tfds:tiny_images", data_dir=tmp_path / "b", test_fraction=0.2)
    assert len(ds.train.images) == 16 and len(ds.test.images) == 4
    # over the memory budget, the training records are read when used: the same images
    lazy = data.load("tfds:tiny_images", data_dir=tmp_path / "b", test_fraction=0.2,
                     val_size=3, memory_budget=100)  # fmt: skip
    assert isinstance(lazy.train.images, data.LazyImages) and lazy.train.images.shape[0] == 13
    eager = data.load("tfds:tiny_images", data_dir=tmp_path / "b", test_fraction=0.2, val_size=3)
    for a, b in zip(lazy, eager, strict=True):
        if isinstance(a, data.Split):
            np.testing.assert_array_equal(np.asarray(a.images), b.images)
            np.testing.assert_array_equal(a.labels, b.labels)


def test_tfds_not_prepared_says_where_it_looked_and_how_to_prepare(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    message = (rf"tfds:mnist is not prepared in {tmp_path}, the folder .*never downloads"
               rf".*tfds build mnist --data_dir DIR")  # fmt: skip
    with pytest.raises(data.DatasetNotFoundError, match=message):
        data.load("tfds:mnist", data_dir=tmp_path)
    # a name tfds does not know: no build command, the close names
    message = (rf"tfds:fashion_mnst: tensorflow-datasets has no data set named 'fashion_mnst', "
               rf"and none is prepared in {tmp_path}; did you mean tfds:fashion_mnist")  # fmt: skip
    with pytest.raises(data.DatasetNotFoundError, match=message):
        data.load("tfds:fashion_mnst", data_dir=tmp_path)


def test_tfds_tfrecord_files_without_tensorflow_say_how_to_read_them(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails, as where it is missing
    info = SimpleNamespace(splits={"train": None}, file_format=SimpleNamespace(value="tfrecord"))
    with pytest.raises(ValueError, match=r"tfds:x is prepared as tfrecord files, which only "
                                         r"TensorFlow reads: pip install tensorflow, or .*"
                                         r"--file_format array_record"):  # fmt: skip
        data._read_tfds_split(SimpleNamespace(info=info), "x", "train")


# ---------------------------------------------------------------------------------------------
# Config and experiments/train.py


def test_config_takes_the_data_fields():
    c = jconfig.make(data=dict(dataset="imgs/", test="t/", image_size=32, channels=3))
    assert c.data.test_fraction == 0.1
    bad = [("channels", 2, "must be 1"), ("image_size", -1, "non-negative"),
           ("test_fraction", 1.0, r"in \(0, 1\)"), ("dataset", "", "must name")]  # fmt: skip
    for field, value, why in bad:
        with pytest.raises(ValueError, match=rf"config data\.{field}=.*{why}"):
            jconfig.make(data={field: value})


@pytest.fixture(scope="module")
def folder_2000(tmp_path_factory):
    """2,000 RGB 32x32 PNG images in two class subfolders."""
    root = tmp_path_factory.mktemp("folder2000") / "images"
    write_pngs(root / "a", rgb(1000, seed=5))
    write_pngs(root / "b", rgb(1000, seed=6))
    return root


def test_train_on_a_folder_resume_and_refuse_another_image_size(tmp_path, folder_2000):
    class_folder = folder_2000
    # a memory budget under the folder's size: its images are read when used, batches streamed
    config = jconfig.make(
        data=dict(dataset=str(class_folder), memory_budget_mb=1.0),
        model=dict(arch="dense", width=8, latent_dim=2),
        training=dict(batch_size=8, epochs=1, max_steps=2),
    )
    workdir = tmp_path / "run"
    summary = etrain.train_and_evaluate(config, workdir, progress=False)
    assert summary["steps"] == 2 and summary["model"]["image_shape"] == [32, 32, 3]
    assert summary["data_files"] == [str(class_folder)]
    again = etrain.train_and_evaluate(config, workdir, progress=False)
    assert again["steps"] == 2 and again["resumed_from"] == 2
    meta = json.loads((workdir / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["data"]["streamed"] and meta["data"]["pipeline"] == {"next_index": 2}
    # its samplers are fitted to the codes of the folder's own training split, not a dataset's
    evaluate.fit_sampler(workdir, "gaussian")
    fitted = json.loads((workdir / "samplers" / "gaussian" / "fitted_on.json").read_text())
    assert fitted["num_codes"] == len(data.load_config(config.data).train.images)
    config.data.image_size = 32  # the images' own size: the same model, another config
    with pytest.raises(ValueError, match=r"cannot resume.*data\.image_size: 0 -> 32"):
        etrain.train_and_evaluate(config, workdir, progress=False)


@pytest.mark.parametrize("kind", ["npz", "tfds"])
def test_train_on_an_npz_and_a_tfds_data_set_and_resume(tmp_path, kind):
    if kind == "npz":
        np.savez(tmp_path / "x.npz", images=rgb(40, 16, seed=7), labels=np.arange(40) % 3)
        dataset = str(tmp_path / "x.npz")
    else:
        _tiny_tfds(tmp_path / "tfds", {"train": 40, "test": 8})
        dataset = "tfds:tiny_images"
    config = jconfig.make(data=dict(dataset=dataset), model=dict(arch="mlp", latent_dim=2),
                          training=dict(batch_size=8, epochs=1, max_steps=2))  # fmt: skip
    first = etrain.train_and_evaluate(config, tmp_path / "run", data_dir=tmp_path / "tfds",
                                      progress=False)  # fmt: skip
    assert first["steps"] == 2 and first["model"]["image_shape"] == [16, 16, 3]
    config.training.max_steps = 3
    again = etrain.train_and_evaluate(config, tmp_path / "run", data_dir=tmp_path / "tfds",
                                      progress=False)  # fmt: skip
    assert again["resumed_from"] == 2 and again["steps"] == 3


# ---------------------------------------------------------------------------------------------
# data.binarize: Bernoulli pixels for the Bernoulli head


def test_preprocess_binarize_draws_each_pixel_with_its_grey_level():
    grey = np.full((8, 25, 25, 1), 77, np.uint8)  # p = 77 / 255 ~ 0.302
    pre = data.Preprocess(binarize=True)
    a, b = (np.asarray(pre(grey, jax.random.PRNGKey(k))) for k in (0, 1))
    assert set(np.unique(a)) == {0.0, 1.0} and (a != b).any()  # a fresh draw per key
    assert stats.binomtest(int(a.sum()), a.size, 77 / 255).pvalue > 1e-3
    floats = np.linspace(0, 1, 5000, dtype=np.float32).reshape(1, 50, 100, 1)
    c = np.asarray(pre(floats, jax.random.PRNGKey(2)))
    assert stats.binomtest(int(c.sum()), c.size, float(floats.mean())).pvalue > 1e-3
    assert c[0, 0, 0, 0] == 0 and c[0, -1, -1, 0] == 1  # grey levels 0 and 1 stay
    with pytest.raises(ValueError, match=r"binarize=True\) needs a PRNG key"):
        pre(grey)
    with pytest.raises(ValueError, match="dequantize and binarize exclude each other"):
        data.Preprocess(dequantize=True, binarize=True)


def test_binarize_fixed_is_seeded_and_keeps_the_dtype():
    grey = rgb(40, 8)[..., :1]
    once = data.binarize_fixed(grey)
    assert once.dtype == np.uint8 and set(np.unique(once)) == {0, 255}
    np.testing.assert_array_equal(once, data.binarize_fixed(grey))
    assert stats.binomtest(int((once > 0).sum()), once.size, grey.mean() / 255).pvalue > 1e-3
    floats = data.binarize_fixed(grey / np.float32(255))
    assert floats.dtype == np.float32 and set(np.unique(floats)) == {0.0, 1.0}


def test_config_binarize_needs_a_head_of_binary_images():
    assert jconfig.make(data=dict(binarize=True), model=dict(head="bernoulli")).data.binarize
    jconfig.make(data=dict(binarize=True))  # the plain autoencoder: no likelihood to break
    refused = [(dict(dequantize=True), "bernoulli", r"data\.dequantize=False"),
               ({}, "continuous_bernoulli", r"unbounded \(its density at 0 and 1"),
               ({}, "normal_diag", r"no likelihood of binary images")]  # fmt: skip
    for fields, head, why in refused:
        with pytest.raises(ValueError, match=why):
            jconfig.make(data={"binarize": True, **fields}, model=dict(head=head))


def test_train_and_evaluate_binarized_images_with_the_bernoulli_head(tmp_path):
    grey = (rgb(60, 8, seed=3)[..., :1] / np.float32(255)).astype(np.float32)  # floats in [0, 1]
    np.savez(tmp_path / "grey.npz", images=grey)
    config = jconfig.make(
        data=dict(dataset=str(tmp_path / "grey.npz"), binarize=True),
        model=dict(head="bernoulli", latent_dim=2),
        training=dict(batch_size=8, epochs=1, max_steps=2),
    )
    summary = etrain.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 2
    # the training images stay grey (drawn at every step); the test images are drawn once
    ds = data.load_config(config.data)
    grey_test = data.load(str(tmp_path / "grey.npz")).test.images
    np.testing.assert_array_equal(ds.test.images, data.binarize_fixed(grey_test))
    assert len(np.unique(ds.train.images)) > 2
    result = evaluate.evaluate_run(tmp_path / "run", fid=False, num_samples=6, progress=False)
    lik = result["likelihood"]
    assert "probability mass over binary images" in lik["convention"]
    assert "discrete NLL in nats per image" in lik["convention"]
    # the NLL of the binary test images, against SciPy's Bernoulli pmf
    model = evaluate.restore(tmp_path / "run").model
    logits = np.asarray(model.decode(model.encode(ds.test.images)), np.float64)
    pmf = stats.bernoulli.logpmf(ds.test.images.reshape(6, -1), 1 / (1 + np.exp(-logits)))
    assert lik["nats_per_image"] == pytest.approx(-pmf.sum(1).mean(), rel=1e-4)


def test_a_flow_batch_larger_than_the_folder_is_refused_before_training(tmp_path, class_folder):
    config = jconfig.make(data=dict(dataset=str(class_folder), val_size=4),
                          model=dict(arch="mlp", latent_dim=2),
                          flow=dict(epochs=1, batch_size=256))  # fmt: skip
    with pytest.raises(ValueError, match=r"32 training codes, fewer than one batch of config "
                                         r"flow\.batch_size=256"):  # fmt: skip
        etrain.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
