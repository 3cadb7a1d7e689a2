"""Tests for jaxae.data: IDX reading, file resolution, real data sets, transforms, validation."""

import gzip
import re
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxae import data

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("JAXAE_NO_TFDS", "1")
    monkeypatch.delenv("JAXAE_DATA_DIR", raising=False)


def write_idx(path, array, magic=None):
    array = np.asarray(array, np.uint8)
    magic = 0x800 + array.ndim if magic is None else magic
    header = np.array([magic, *array.shape], ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_mnist_dir(folder, n_train=12, n_test=5, label=0, images=None):
    """Tiny IDX data set; all labels equal `label`, so tests can tell folders apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28)) if images is None else images
    write_idx(folder / TRAIN_IMAGES, train)
    write_idx(folder / TRAIN_LABELS, np.full(len(train), label))
    write_idx(folder / TEST_IMAGES, rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / TEST_LABELS, np.full(n_test, label))
    return folder


@pytest.fixture
def no_known_dirs(monkeypatch, tmp_path):
    dirs = [tmp_path / "known1", tmp_path / "known2"]
    monkeypatch.setattr(data, "known_dirs", lambda name: dirs)
    return dirs


# ---------------------------------------------------------------------------------------------
# IDX reader


def test_read_idx_roundtrip(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "img.gz", images)
    write_idx(tmp_path / "lab.gz", [7, 3])
    np.testing.assert_array_equal(data.read_idx(tmp_path / "img.gz", 3), images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "lab.gz", 1), [7, 3])


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / TRAIN_IMAGES
    write_idx(path, np.zeros((10, 28, 28)))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=f"{TRAIN_IMAGES}: corrupt or truncated"):
        data.read_idx(path, 3)


def test_read_idx_data_shorter_than_header_says(tmp_path):
    path = tmp_path / TRAIN_LABELS
    with gzip.open(path, "wb") as f:
        f.write(np.array([0x801, 10], ">u4").tobytes() + bytes(9))
    with pytest.raises(ValueError, match=rf"{TRAIN_LABELS}: corrupt or truncated IDX.*\(10,\)"):
        data.read_idx(path, 1)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / TRAIN_LABELS
    write_idx(path, np.zeros(4), magic=0x803)  # labels file claiming to hold images
    with pytest.raises(ValueError, match=f"{TRAIN_LABELS}: wrong IDX magic number 2051"):
        data.read_idx(path, 1)


def test_corrupt_file_found_on_search_path_raises(tmp_path, no_known_dirs):
    folder = write_mnist_dir(tmp_path / "d")
    (folder / TEST_LABELS).write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=f"{TEST_LABELS}: corrupt"):
        data.load("mnist", data_dir=folder)


# ---------------------------------------------------------------------------------------------
# Where the files are


def test_resolution_order(tmp_path, monkeypatch):
    explicit = write_mnist_dir(tmp_path / "explicit", label=1)
    env = write_mnist_dir(tmp_path / "env" / "mnist", label=2).parent  # in a sub-folder
    known = write_mnist_dir(tmp_path / "known", label=3)
    monkeypatch.setattr(data, "known_dirs", lambda name: [tmp_path / "missing", known])
    monkeypatch.setenv("JAXAE_DATA_DIR", str(env))
    assert data.load_raw("mnist", "train", explicit).labels[0] == 1
    assert data.load_raw("mnist", "train").labels[0] == 2
    monkeypatch.delenv("JAXAE_DATA_DIR")
    assert data.load_raw("mnist", "train").labels[0] == 3


@pytest.mark.parametrize("folder", ["fashion-mnist", "fashion_mnist", "."])
def test_fashion_subfolders(tmp_path, no_known_dirs, folder):
    write_mnist_dir(tmp_path / folder, label=4)
    ds = data.load("fashion_mnist", data_dir=tmp_path)
    assert ds.train.images.shape == (12, 28, 28, 1) and ds.test.labels.tolist() == [4] * 5


def test_not_found_lists_every_place_and_fix(no_known_dirs):
    no_known_dirs[1].mkdir()  # one known place exists but is empty
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_raw("fashion_mnist", "train")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "'fashion_mnist'" in msg
    assert f"{no_known_dirs[0]}: no such folder" in msg
    assert f"{no_known_dirs[1]}: missing {TRAIN_IMAGES}, {TRAIN_LABELS}" in msg
    assert "tensorflow-datasets: skipped" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg and "JAXAE_DATA_DIR" in msg


def test_missing_data_dir_argument_raises_without_fallback(tmp_path, monkeypatch):
    known = write_mnist_dir(tmp_path / "known")  # would be found if the error fell back
    monkeypatch.setattr(data, "known_dirs", lambda name: [known])
    missing = tmp_path / "typo"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("mnist", data_dir=missing)
    msg = str(info.value)
    assert f"{missing}, the folder given by the data_dir argument: no such folder" in msg
    assert str(known) not in msg  # not searched, so not listed
    # A file where a folder should be is named as such.
    (tmp_path / "a_file").write_text("")
    with pytest.raises(data.DatasetNotFoundError, match="data_dir argument: not a folder"):
        data.load_raw("mnist", "test", tmp_path / "a_file")


def test_missing_env_data_dir_raises_without_fallback(tmp_path, monkeypatch):
    known = write_mnist_dir(tmp_path / "known")
    monkeypatch.setattr(data, "known_dirs", lambda name: [known])
    monkeypatch.setenv("JAXAE_DATA_DIR", str(tmp_path / "unmounted"))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_raw("mnist", "train")
    msg = str(info.value)
    assert f"{tmp_path / 'unmounted'}, the folder given by the JAXAE_DATA_DIR environment" in msg
    assert "Fix: point the JAXAE_DATA_DIR environment variable to" in msg
    # Relative paths are also shown absolute, as the current directory decides what they mean.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXAE_DATA_DIR", "rel")
    with pytest.raises(data.DatasetNotFoundError, match=re.escape(f"rel (= {tmp_path / 'rel'})")):
        data.load_raw("mnist", "train")
    # An empty variable counts as unset: the known places are searched.
    monkeypatch.setenv("JAXAE_DATA_DIR", "")
    assert data.load_raw("mnist", "train").files[0] == str(known / TRAIN_IMAGES)


@pytest.mark.parametrize("from_env", [False, True])
def test_empty_explicit_dir_lists_files_looked_for(tmp_path, monkeypatch, from_env):
    known = write_mnist_dir(tmp_path / "known")
    monkeypatch.setattr(data, "known_dirs", lambda name: [known])
    empty = tmp_path / "empty"
    (empty / "fashion-mnist").mkdir(parents=True)
    (empty / "fashion-mnist" / TEST_IMAGES).write_bytes(b"")  # half a split is still missing
    if from_env:
        monkeypatch.setenv("JAXAE_DATA_DIR", str(empty))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion_mnist", data_dir=None if from_env else empty)
    msg = str(info.value)
    source = "JAXAE_DATA_DIR environment variable" if from_env else "data_dir argument"
    assert f"{empty}, the folder given by the {source}" in msg
    assert f"Looked for {TRAIN_IMAGES}, {TRAIN_LABELS} in:" in msg
    assert f"  - {empty}: missing {TRAIN_IMAGES}, {TRAIN_LABELS}\n" in msg
    assert f"  - {empty / 'fashion-mnist'}: missing {TRAIN_IMAGES}, {TRAIN_LABELS}\n" in msg
    assert f"  - {empty / 'fashion_mnist'}: no such folder\n" in msg
    assert str(known) not in msg and "tensorflow-datasets" not in msg
    # The train files alone do not do either: the test split is looked for in the same folder.
    write_mnist_dir(tmp_path / "train_only")
    (tmp_path / "train_only" / TEST_LABELS).unlink()
    with pytest.raises(data.DatasetNotFoundError, match=f"Looked for {TEST_IMAGES}, {TEST_LABELS}"):
        data.load("mnist", data_dir=tmp_path / "train_only")


def test_loaded_files_are_recorded(tmp_path, no_known_dirs, monkeypatch):
    folder = write_mnist_dir(tmp_path / "d" / "fashion-mnist")
    train_files = (str(folder / TRAIN_IMAGES), str(folder / TRAIN_LABELS))
    test_files = (str(folder / TEST_IMAGES), str(folder / TEST_LABELS))

    assert data.load_raw("fashion_mnist", "test", tmp_path / "d").files == test_files
    ds = data.load("fashion_mnist", data_dir=tmp_path / "d", val_size=3, pad_to_32=True)
    assert ds.train.files == ds.val.files == train_files and ds.test.files == test_files
    assert ds.files == train_files + test_files
    assert ds.train.images.shape == (9, 32, 32, 1)  # the files survive the val split and padding
    # A relative data_dir is recorded as absolute paths.
    monkeypatch.chdir(tmp_path)
    assert data.load("fashion_mnist", data_dir="d", transform="hflip").files == ds.files
    # User arrays were read from no file; positional construction still works.
    assert data.from_arrays(np.zeros((2, 4, 4), np.uint8)).files == ()
    assert data.Split(np.zeros((1, 4, 4, 1)), np.zeros(1)).files == ()


def test_not_found_records_tfds_failure(monkeypatch, no_known_dirs):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(
        data.DatasetNotFoundError, match="tensorflow-datasets: ModuleNotFoundError"
    ) as e:
        data.load_raw("omniglot", "test", allow_tfds=True)
    assert "images_background_small2.zip" in str(e.value)
    assert "Fix: set JAXAE_DATA_DIR (or pass data_dir=)" in str(e.value)


class _FakeTfds:
    """tensorflow_datasets' `load` / `as_numpy`: `prepared` data sets load without a download;
    every call is recorded."""

    def __init__(self, prepared=()):
        self.prepared, self.calls = set(prepared), []

    def load(self, name, *, split, download=True, **kwargs):
        self.calls.append((name, split, download))
        if name not in self.prepared and not download:
            raise AssertionError(f"Dataset {name}: could not find data in ~/tensorflow_datasets")
        if name not in self.prepared:
            raise AssertionError("the download was tried")
        return {"image": np.full((3, 28, 28, 1), 7, np.uint8), "label": np.arange(3)}

    def as_numpy(self, tree):
        return tree


def test_tfds_fallback_fails_fast_offline(monkeypatch, no_known_dirs):
    """Offline, tfds retried its download for 3.5 minutes (30 urllib3 lines) before failing."""
    fake, probed = _FakeTfds(), []
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(data, "_reachable", lambda host: probed.append(host) or False)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_raw("mnist", "train", allow_tfds=True)
    assert fake.calls == [("mnist", "train", False)]  # the download was never called
    assert probed == ["storage.googleapis.com"]
    msg = str(info.value)
    assert (
        "tensorflow-datasets: ConnectionError: not prepared in the tfds data folder, and "
        "storage.googleapis.com (where tfds downloads mnist from) cannot be reached" in msg
    )
    assert f"{no_known_dirs[0]}: no such folder" in msg  # every place tried is still listed
    assert "Set JAXAE_NO_TFDS=1 to skip the tensorflow-datasets fallback" in msg
    assert "it must hold each data set the run needs (fashion_mnist in 'fashion-mnist/'" in msg


def test_tfds_fallback_reads_prepared_data_and_downloads_when_online(monkeypatch, no_known_dirs):
    monkeypatch.setattr(data, "_reachable", lambda host: pytest.fail("no probe when prepared"))
    fake = _FakeTfds(prepared={"mnist"})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    split = data.load_raw("mnist", "test", allow_tfds=True)
    assert split.images.shape == (3, 28, 28, 1)
    assert split.files == ("tensorflow-datasets:mnist/test",)
    assert fake.calls == [("mnist", "test", False)]
    # Online and not prepared: the download is tried (here it fails, and is reported).
    fake = _FakeTfds()
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(data, "_reachable", lambda host: True)
    with pytest.raises(data.DatasetNotFoundError, match="AssertionError: the download was tried"):
        data.load_raw("fashion_mnist", "test", allow_tfds=True)
    assert fake.calls == [("fashion_mnist", "test", False), ("fashion_mnist", "test", True)]


def test_reachable_probes_a_port_with_a_timeout():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert data._reachable("127.0.0.1", port, timeout=1.0)
    assert not data._reachable("127.0.0.1", port, timeout=1.0)  # closed now: refused


def test_omniglot_zip_labels_and_inversion(tmp_path, no_known_dirs):
    black_on_white = Image.fromarray(np.full((105, 105), 255, np.uint8))
    with zipfile.ZipFile(tmp_path / "images_background_small1.zip", "w") as z:
        for path in [
            "top/B/character02/x.png",
            "top/A/character09/y.png",
            "top/B/character01/z.png",
        ]:
            with z.open(path, "w") as f:
                black_on_white.save(f, format="PNG")
    images, labels = data.read_omniglot_zip(tmp_path / "images_background_small1.zip")
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert images.max() == 0  # white background -> black
    # sorted paths: A/character09, B/character01, B/character02
    np.testing.assert_array_equal(labels, [0, 1, 2])


# ---------------------------------------------------------------------------------------------
# The real files (present on this machine; CI installs Fashion-MNIST, so a miss fails)


def test_real_mnist():
    ds = data.load("mnist")
    assert ds.train.images.shape == (60000, 28, 28, 1) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (10000, 28, 28, 1)
    assert ds.train.labels.dtype == np.int32
    assert ds.train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert ds.test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert len(ds.files) == 4 and all(f.startswith("/") and "mnist" in f for f in ds.files)


def test_real_fashion_mnist():
    ds = data.load("fashion_mnist")
    assert ds.train.images.shape == (60000, 28, 28, 1) and ds.test.images.shape == (
        10000,
        28,
        28,
        1,
    )
    assert ds.train.images.dtype == np.uint8 and ds.test.labels.dtype == np.int32
    assert sorted(np.unique(ds.train.labels)) == list(range(10))


def test_real_omniglot():
    ds = data.load("omniglot")
    for split, n, chars in [(ds.train, 2720, 136), (ds.test, 3120, 156)]:
        assert split.images.shape == (n, 28, 28, 1) and split.images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(split.labels), np.full(chars, 20))
        border = np.concatenate([split.images[:, :2].ravel(), split.images[:, -2:].ravel()])
        assert border.mean() < 5  # black background
        assert split.images.max() == 255 and split.images.mean() < 40  # white strokes


# ---------------------------------------------------------------------------------------------
# Transforms and preprocessing


def test_flips_match_numpy():
    x = np.arange(2 * 3 * 4 * 2).reshape(2, 3, 4, 2)
    np.testing.assert_array_equal(data.hflip(x), np.flip(x, 2))
    np.testing.assert_array_equal(data.vflip(x), np.flip(x, 1))
    np.testing.assert_array_equal(data.hflip(jnp.asarray(x)), np.flip(x, 2))
    np.testing.assert_array_equal(jax.jit(data.vflip)(jnp.asarray(x)), np.flip(x, 1))


def test_load_transform(tmp_path, no_known_dirs):
    folder = write_mnist_dir(tmp_path)
    plain = data.load("mnist", data_dir=folder)
    flipped = data.load("mnist", data_dir=folder, transform="vflip")
    np.testing.assert_array_equal(flipped.test.images, np.flip(plain.test.images, 1))
    with pytest.raises(ValueError, match="transform must be one of"):
        data.load("mnist", data_dir=folder, transform="rot90")


X_U8 = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)


@pytest.mark.parametrize("scale, lo, hi", [("unit", 0.0, 1.0), ("centered", -0.5, 0.5)])
def test_preprocess_scale(scale, lo, hi):
    y = jax.jit(data.Preprocess(scale))(X_U8)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, X_U8 / 255 + lo, atol=1e-6)
    assert float(y.min()) == lo and float(y.max()) == pytest.approx(hi)


def test_preprocess_dequantize_under_jit():
    unit, centered = data.Preprocess("unit", True), data.Preprocess("centered", True)
    both = jax.jit(lambda x, key: (unit(x, key), centered(x, key)))  # one compile: both scales
    y, y_centered = (np.asarray(a) for a in both(X_U8, jax.random.key(0)))
    x = X_U8.astype(np.float64)
    assert y.dtype == np.float32 and np.all(y >= x / 256) and np.all(y < (x + 1) / 256)
    np.testing.assert_allclose(y_centered, y - 0.5, atol=1e-6)


def test_preprocess_float_input():
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8, 1)
    np.testing.assert_array_equal(data.Preprocess()(x), x)
    y = np.asarray(jax.jit(data.Preprocess(dequantize=True))(x, jax.random.key(1)))
    assert np.all(y >= x) and np.all(y < x + 1 / 256)


def test_preprocess_errors():
    with pytest.raises(ValueError, match="needs a PRNG key"):
        data.Preprocess(dequantize=True)(X_U8)
    with pytest.raises(ValueError, match="Preprocess.scale"):
        data.Preprocess("minus_one_one")
    with pytest.raises(ValueError, match="Preprocess.dequantize"):
        data.Preprocess(dequantize="yes")
    assert hash(data.Preprocess()) == hash(data.Preprocess("unit", False))


def test_val_split(tmp_path, no_known_dirs):
    n = 300
    ids = np.arange(n)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
    folder = write_mnist_dir(tmp_path, images=images)
    decode = lambda split: split.images[:, 0, 0, 0] + 256 * split.images[:, 0, 1, 0].astype(int)

    ds = data.load("mnist", data_dir=folder, val_size=50, seed=1)
    assert len(ds.train.images) == 250 and len(ds.val.images) == 50 and len(ds.val.labels) == 50
    train_ids, val_ids = decode(ds.train), decode(ds.val)
    assert not set(train_ids) & set(val_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, val_ids])), ids)
    np.testing.assert_array_equal(
        decode(data.load("mnist", data_dir=folder, val_size=50, seed=1).val), val_ids
    )
    assert not np.array_equal(
        decode(data.load("mnist", data_dir=folder, val_size=50, seed=2).val), val_ids
    )
    assert data.load("mnist", data_dir=folder).val is None
    with pytest.raises(ValueError, match="val_size must be in"):
        data.load("mnist", data_dir=folder, val_size=n)


def test_pad_to_32(tmp_path, no_known_dirs):
    folder = write_mnist_dir(tmp_path)
    plain = data.load("mnist", data_dir=folder)
    padded = data.load("mnist", data_dir=folder, pad_to_32=True)
    assert padded.train.images.shape == (12, 32, 32, 1) and padded.train.images.dtype == np.uint8
    np.testing.assert_array_equal(padded.train.images[:, 2:30, 2:30], plain.train.images)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(padded.train.images[:, border] == 0)


# ---------------------------------------------------------------------------------------------
# Validation of user data


def test_from_arrays_accepts_good_input():
    split = data.from_arrays(np.zeros((3, 5, 6), np.int64), [0, 1, 2])
    assert split.images.shape == (3, 5, 6, 1) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    floats = data.from_arrays(np.full((2, 4, 4, 3), 0.5))
    assert floats.images.dtype == np.float32 and floats.labels.tolist() == [-1, -1]


@pytest.mark.parametrize("shape", [(28, 28), (2, 28, 28, 1, 1)])
def test_bad_rank(shape):
    with pytest.raises(ValueError, match=f"wrong rank {len(shape)}"):
        data.check_images(np.zeros(shape, np.uint8), "mine")


@pytest.mark.parametrize("dtype", [bool, np.complex64, np.str_, object])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError, match="mine: unsupported dtype"):
        data.check_images(np.zeros((2, 4, 4), dtype), "mine")


def test_integer_out_of_range():
    x = np.zeros((2, 4, 4), np.int32)
    x[0, 0, 0], x[1, 1, 1] = -1, 300
    with pytest.raises(
        ValueError, match=r"integer pixels out of range \[0, 255\]: min -1, max 300"
    ):
        data.check_images(x)


def test_nan_and_inf():
    x = np.zeros((2, 4, 4), np.float32)
    x[0, :2, 0], x[1, 0, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match="2 NaN and 1 inf pixels"):
        data.check_images(x)


def test_float_out_of_range():
    x = np.linspace(-0.25, 2.0, 32).reshape(2, 4, 4)
    with pytest.raises(ValueError, match=r"out of range \[0, 1\]: min -0.25, max 2.0"):
        data.check_images(x)


@pytest.mark.parametrize(
    "lo, hi, fix",
    [
        (-0.5, 0.5, "these look centred to \\[-0.5, 0.5\\]: add 0.5"),
        (0.0, 255.0, "these look like \\[0, 255\\] values: divide them by 255"),
        (-3.0, 7.0, ", so do not centre or normalise the images$"),
    ],
)
def test_float_out_of_range_says_what_to_do(lo, hi, fix):
    """A user pre-centred the images: the error said only that they were out of range."""
    x = np.linspace(lo, hi, 32).reshape(2, 4, 4)
    want = (
        rf"images: float pixels out of range \[0, 1\]: min {lo}, max {hi}\. Fix: jaxae takes "
        r"uint8 in \[0, 255\] or floats in \[0, 1\] and applies the model's own pixel scale "
        rf"itself.*{fix}"
    )
    with pytest.raises(ValueError, match=want):
        data.check_images(x)


def test_empty():
    with pytest.raises(ValueError, match=r"empty data set.*\(N == 0\)"):
        data.from_arrays(np.zeros((0, 28, 28), np.uint8))


def test_from_arrays_refuses_one_image_and_channels_first():
    with pytest.raises(ValueError, match=r"batch axis is missing: pass images\[None\]"):
        data.from_arrays(np.zeros((28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match=r"channels-first.*images\.transpose\(0, 2, 3, 1\)"):
        data.from_arrays(np.zeros((8, 3, 28, 28), np.uint8))
    assert data.from_arrays(np.zeros((2, 4, 4), np.uint8)).images.shape == (2, 4, 4, 1)


def test_labels_length_mismatch():
    with pytest.raises(ValueError, match="labels have shape \\(2,\\) but there are 3 images"):
        data.from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1])


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'cifar10'"):
        data.load("cifar10")


@pytest.mark.parametrize(
    "shape, message",
    [
        ((28, 28, 1), r"shape \[28, 28, 1\].*the batch axis is missing: pass images\[None\] "),
        ((28, 28), r"batch axis is missing: pass images\[None, \.\.\., None\]"),
        ((5, 1, 28, 28), r"channels-first.*channels-last \[B, H, W, C\]: pass "
                         r"images\.transpose\(0, 2, 3, 1\)"),
        ((5, 8, 8, 1), r"shape \[5, 8, 8, 1\], but the model takes \[B, H, W, C\] = "
                       r"\[B, 28, 28, 1\]: the images must be like the data the model was "
                       r"trained on \(28x28 pixels, 1 channel\): resize or convert them, or "
                       r"train a model on these images$"),
        ((4, 32, 32, 3), r"shape \[4, 32, 32, 3\], but .*\[B, 28, 28, 1\]: .*resize or convert"),
    ],
)  # fmt: skip
def test_images_of_another_shape_than_the_model_say_how_to_fix_them(shape, message):
    """A single [H, W, C] image is not read as 28 images of 28 x 1 pixels."""
    with pytest.raises(ValueError, match=message):
        data.check_images(np.zeros(shape, np.uint8), "mine", shape=(28, 28, 1))


def test_images_of_the_model_shape_pass():
    got = data.check_images(np.zeros((3, 28, 28), np.uint8), shape=(28, 28, 1))
    assert got.shape == (3, 28, 28, 1)
    assert data.check_image_shape(np.zeros((2, 4, 5, 3)), (4, 5, 3)).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match="channels-first"):  # 3 channels: no [B, H, W] shortcut
        data.check_image_shape(np.zeros((2, 3, 4, 5)), (4, 5, 3))
