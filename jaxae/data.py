"""Named image data sets as host NumPy arrays, and the preprocessing the papers use.

Data sets (uint8 NHWC images ``[N, H, W, 1]`` and int32 labels ``[N]``):

- ``fashion_mnist`` (Xiao et al. 2017) and ``mnist`` (LeCun et al. 1998): the four gzipped IDX
  files (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a big-endian header of a magic
  number ``0x0000080D`` (``0x08`` = unsigned byte, ``D`` = number of dimensions) and ``D``
  uint32 sizes, then the raw bytes.
- ``omniglot`` (Lake et al. 2015), subsets ``images_background_small1`` (split 'train') and
  ``images_background_small2`` (split 'test'), resized to 28x28 and inverted to white-on-black,
  the out-of-distribution set of the PAE paper (Böhm & Seljak 2020, "Probabilistic
  Auto-Encoder", Sec. 5), together with Fashion-MNIST flipped left-right / upside-down.

The user's own data (`load`, `parse_source`): ``tfds:NAME[/CONFIG]``, a data set that
tensorflow-datasets has prepared in its data folder (read, never downloaded); an ``.npz`` file of
``images`` [N, H, W(, C)] and optional ``labels`` (read without pickle); a folder of PNG/JPEG
files, flat or one subfolder per class. Each is brought to one size and channel count
(`conform`: PIL's BILINEAR resizing, antialiased when shrinking), with a test split of its own
or a seeded fraction of its images.

Tabular data: an ``.npz`` whose ``images`` is a float array [N, D] (the one rule: rank 2 means
vectors, one example a row; `check_vectors`). Vectors are not pixels: no division by 255 and no
dequantization; every split is standardized per feature with the training split's mean and
standard deviation (`Standardization`, recomputed from that split wherever the run's data are
loaded), and a density fitted to the standardized vectors is turned into one of the data by
its log-Jacobian (`Standardization.log_det`).

Preprocessing: pixels scaled to [0, 1] (or centred to [-0.5, 0.5]) and, for likelihood models,
uniform dequantization ``(x + u) / 256``, ``u ~ U[0, 1)`` (Theis et al. 2016, Sec. 3.1; Dinh
et al. 2017 "Real NVP", Sec. 4.1), or for Bernoulli likelihoods binarization: each pixel 1 with
probability its grey level, drawn afresh at every training step (dynamic binarization,
Salakhutdinov & Murray 2008; Burda et al. 2016), the validation and test images drawn once with
a fixed seed (`binarize_fixed`); zero padding of 28x28 images to 32x32; a seeded held-out
validation split of the training set.

Where the files are is resolved by ``load_raw``: ``data_dir`` or ``$JAXAE_DATA_DIR`` if given (and
then nowhere else), otherwise known local folders (``known_dirs``), then tensorflow-datasets (off
with ``JAXAE_NO_TFDS=1``). Every ``Split`` and ``Dataset`` records where it came from in ``files``.
Everything here is NumPy on the host, except ``Preprocess``, which runs inside jitted steps.
"""

import dataclasses
import difflib
import gzip
import io
import os
import socket
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

DATASETS = ("fashion_mnist", "mnist", "omniglot")
SPLITS = ("train", "test")
TRANSFORMS = (None, "hflip", "vflip")

# Sub-folders accepted inside a data directory, per data set.
_FOLDERS = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "mnist": ("mnist",),
    "omniglot": ("omniglot",),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_OMNIGLOT_ZIPS = {"train": "images_background_small1.zip", "test": "images_background_small2.zip"}
_OMNIGLOT_TFDS_SPLITS = {"train": "small1", "test": "small2"}
# The host each tensorflow-datasets builder downloads its files from (its _URL), checked before a
# download: offline, tfds would retry each URL for minutes before it fails.
_TFDS_HOSTS = {
    "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "mnist": "storage.googleapis.com",
    "omniglot": "github.com",
}
_REPO_ROOT = Path(__file__).resolve().parents[1]


class DatasetNotFoundError(FileNotFoundError):
    """No place holds the data set; the message lists every place tried and the fix."""


class Split(NamedTuple):
    """One split of a data set: `images` [N, H, W, C], `labels` [N] and the `files` read."""

    # [N, H, W, C] uint8 (float32 in [0, 1] only for user data); vectors: [N, D] float32,
    # standardized (`Dataset.standardization`)
    images: np.ndarray
    labels: np.ndarray  # [N] int32
    # Where the arrays came from, so that a run can record it: the absolute paths of the files
    # read (of an image folder: the folder's), or ("tensorflow-datasets:<name>/<split>",) when
    # a built-in name fell back on tfds; () for arrays handed in by the user.
    files: tuple[str, ...] = ()


class Dataset(NamedTuple):
    """A named data set: its `train`, `val` (None when val_size == 0) and `test` splits."""

    name: str
    train: Split
    val: Split | None  # None when val_size == 0
    test: Split
    # The class names of a folder of class subfolders: label i is classes[i]; () otherwise.
    classes: tuple[str, ...] = ()
    # Vectors [N, D]: the map from the data to the splits' values; None for images.
    standardization: "Standardization | None" = None

    @property
    def files(self) -> tuple[str, ...]:
        """Every file read for this data set (train, then test), without repeats."""
        splits = (self.train, self.val, self.test)
        return tuple(dict.fromkeys(f for s in splits if s is not None for f in s.files))


# ----------------------------------------------------------------------------------------------
# Validation


def check_image_shape(images, shape, name: str = "images", taker: str = "the model") -> np.ndarray:
    """Checks that an array is a batch of images of one model's shape, saying how to fix it.

    The values are not looked at (see `check_images`).

    Args:
      images: [B, H, W, C] array, or [B, H, W] when C is 1.
      shape: (H, W, C), the images a model takes (`Model.image_shape`).
      name: what the images are, used in error messages.
      taker: what takes `shape`, named in error messages.

    Returns:
      the array as [B, H, W, C].

    Raises:
      ValueError: another shape: one image without its batch axis ("pass images[None]"),
        channels-first [B, C, H, W] (with the transpose to use), or else naming both shapes.
    """
    x, shape = np.asarray(images), tuple(int(d) for d in shape)
    h, w, c = shape
    if x.shape[1:] == shape or (c == 1 and x.ndim == 3 and x.shape[1:] == (h, w)):
        return x if x.ndim == 4 else x[..., None]
    want = f"[B, H, W, C] = [B, {h}, {w}, {c}]"
    fix = None
    if x.shape == shape or (c == 1 and x.shape == (h, w)):
        add = "images[None]" if x.ndim == 3 else "images[None, ..., None]"
        fix = f"the batch axis is missing: pass {add} for this one image"
    elif x.ndim == 4 and x.shape[1:] == (c, h, w):
        fix = ("channels-first [B, C, H, W] input; jaxae takes channels-last [B, H, W, C]: pass "
               "images.transpose(0, 2, 3, 1)")  # fmt: skip
    elif x.shape == (c, h, w):
        fix = ("one channels-first [C, H, W] image; jaxae takes channels-last batches "
               "[B, H, W, C]: pass images.transpose(1, 2, 0)[None]")  # fmt: skip
    if fix is None and x.ndim == 4:
        fix = (f"the images must be like the data the model was trained on ({h}x{w} pixels, "
               f"{c} channel{'s' if c > 1 else ''}): resize or convert them, or train a model "
               "on these images")  # fmt: skip
    message = f"{name}: an array of shape {list(x.shape)}, but {taker} takes {want}"
    raise ValueError(message if fix is None else f"{message}: {fix}")


def check_images(images, name: str = "images", shape=None) -> np.ndarray:
    """Validates an image array and brings it to NHWC.

    Args:
      images: [N, H, W] or [N, H, W, C] array; uint8, floating with values in [0, 1], or another
        integer type with values in [0, 255].
      name: what the images are, used in error messages.
      shape: (H, W, C), the shape a model takes (`Model.image_shape`), checked first by
        `check_image_shape`; None: any. A model of vectors, shape (D,), takes float vectors
        [N, D] of any values instead (`check_vectors`).

    Returns:
      [N, H, W, C] array: uint8 for integer input, float32 for floating input (vectors: float32
      [N, D]).

    Raises:
      TypeError: for bool, complex, string, object or other non-numeric dtypes.
      ValueError: wrong rank or shape, empty data set, NaN/inf pixels or pixels out of range.
    """
    if shape is not None and len(shape) == 1:
        return check_vectors(images, name, dim=shape[0]).astype(np.float32, copy=False)
    x = np.asarray(images)
    if x.dtype.kind not in "uif":
        raise TypeError(
            f"{name}: unsupported dtype {x.dtype}; use uint8 in [0, 255] or floating in [0, 1]"
        )
    x = check_image_shape(x, shape, name) if shape is not None else _check_layout(x, name)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{name}: wrong rank {x.ndim} (shape {x.shape}); expected [N, H, W] or [N, H, W, C]"
        )
    if x.size == 0:
        raise ValueError(f"{name}: empty data set, images have shape {x.shape} (N == 0)")
    if x.dtype.kind == "f":
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        if n_nan or n_inf:
            raise ValueError(f"{name}: {n_nan} NaN and {n_inf} inf pixels")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            fix = ("jaxae takes uint8 in [0, 255] or floats in [0, 1] and applies the model's "
                   "own pixel scale itself, so do not centre or normalise the images")  # fmt: skip
            if lo >= 0 and hi <= 255:
                fix += "; these look like [0, 255] values: divide them by 255"
            elif lo >= -0.5 and hi <= 0.5:
                fix += "; these look centred to [-0.5, 0.5]: add 0.5"
            raise ValueError(
                f"{name}: float pixels out of range [0, 1]: min {lo}, max {hi}. Fix: {fix}"
            )
        return x.astype(np.float32, copy=False)
    if x.dtype != np.uint8:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}: integer pixels out of range [0, 255]: min {lo}, max {hi} "
                f"(dtype {x.dtype})"
            )
    return x.astype(np.uint8, copy=False)


def _check_layout(x: np.ndarray, name: str) -> np.ndarray:
    """Refuses the two layouts that would be misread as other images (channel counts are 1, 3
    or 4, fewer than the pixels of a side): one image [H, W, C] without its batch axis (else H
    images of W x C) and channels-first [N, C, H, W] (else N images of C x H with W channels).
    """
    if x.ndim == 3 and x.shape[2] in (1, 3, 4) and x.shape[2] < min(x.shape[:2]):
        try:
            check_image_shape(x, x.shape, name, taker="jaxae")
        except ValueError as e:
            n, h, w = x.shape
            raise ValueError(f"{e}; or, for {n} single-channel images of {h}x{w} pixels, pass "
                             "images[..., None]") from None  # fmt: skip
    if x.ndim == 4 and x.shape[3] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
        if x.shape[1] < min(x.shape[2:]):
            check_image_shape(x, (*x.shape[2:], x.shape[1]), name, taker="jaxae")
    return x


VECTORS_RULE = "vectors are a float array [N, D], one example a row"


def check_vectors(x, name: str = "vectors", dim: int | None = None) -> np.ndarray:
    """Validates a table of vectors (tabular data).

    Args:
      x: [N, D] floating array.
      name: what the vectors are, used in error messages.
      dim: D, the length a model takes; None: any.

    Returns:
      the array, unchanged (the caller casts, after standardizing in its own precision).

    Raises:
      ValueError: not 2-D (a 1-D array: how to make it one feature), not floating (integers and
        bools: cast them; flattened images: reshape them), another D, no rows or columns, NaN or
        inf values (their counts, the rows holding them and the first of those).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        fix = ("; for N examples of one feature pass x[:, None]" if x.ndim == 1 else
               "; images are [N, H, W(, C)]" if x.ndim > 2 else "")  # fmt: skip
        raise ValueError(f"{name}: an array of shape {list(x.shape)}, but {VECTORS_RULE}{fix}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name}: dtype {x.dtype}, but {VECTORS_RULE}: cast the table with "
                         "x.astype(np.float32); if these are flattened images, reshape them to "
                         "[N, H, W, C] instead")  # fmt: skip
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: vectors of length {x.shape[1]}, but the model takes length "
                         f"{dim}")  # fmt: skip
    if 0 in x.shape:
        raise ValueError(f"{name}: an empty table of shape {list(x.shape)}")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        first, col = rows[0], np.flatnonzero(bad[rows[0]])[0]
        n_nan = int(np.isnan(x).sum())
        raise ValueError(
            f"{name}: {n_nan} NaN and {int(bad.sum()) - n_nan} inf values in {len(rows)} of "
            f"{len(x)} rows, the first in row {first} (column {col}): drop or impute those rows"
        )
    return x


class Standardization(NamedTuple):
    """Per-feature standardization of vectors, z = (x - mean) / std, with the mean and standard
    deviation (ddof 0) of the training split.

    Tabular features come in any units and ranges; a net and a Normal or Student-t head fit them
    at zero mean and unit variance. A density p_z of z is one of the data x by the change of
    variables p_x(x) = p_z(z) / prod_j std_j, so -log p_x(x) = -log p_z(z) + `log_det`.
    """

    mean: np.ndarray  # [D] float64
    std: np.ndarray  # [D] float64

    @classmethod
    def fit(cls, x, name: str = "vectors") -> "Standardization":
        """The statistics of a training split x [N, D].

        Raises:
          ValueError: a column that is constant on the split (no scale to divide by, and no
            density of the data along it), naming the columns.
        """
        x = np.asarray(x, np.float64)
        constant = np.flatnonzero(x.max(axis=0) == x.min(axis=0))
        if len(constant):
            shown = ", ".join(map(str, constant[:10])) + (", ..." if len(constant) > 10 else "")
            raise ValueError(
                f"{name}: {len(constant)} of {x.shape[1]} columns are constant on the training "
                f"split (columns {shown}), so they cannot be standardized and have no density: "
                "drop them"
            )
        return cls(x.mean(axis=0), x.std(axis=0))

    def apply(self, x) -> np.ndarray:
        """Data [N, D] -> standardized float32 [N, D] (computed in float64)."""
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)

    def invert(self, z) -> np.ndarray:
        """Standardized values [N, D] -> the data's units, float64 [N, D]."""
        return np.asarray(z, np.float64) * self.std + self.mean

    @property
    def log_det(self) -> float:
        """sum_j log std_j: the nats per example that turn an NLL of the standardized vectors
        into one of the data."""
        return float(np.sum(np.log(self.std)))

    def to_dict(self) -> dict:
        """The statistics, as a run's summary records them."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "log_det": self.log_det,
                "note": "the model sees z = (x - mean) / std; an NLL of z in nats plus log_det "
                        "is the NLL of x"}  # fmt: skip


def _labels(labels, n: int, name: str, unit: str = "images") -> np.ndarray:
    """[N] int32 labels of n `unit` (-1 for unlabelled data: `labels` None)."""
    if labels is None:
        return np.full((n,), -1, np.int32)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name}: labels have shape {labels.shape} but there are {n} {unit}: "
                         f"give one label per {unit[:-1]}, or none")  # fmt: skip
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int32)


def from_arrays(images, labels=None, name: str = "custom") -> Split:
    """Wraps user data as a ``Split`` after ``check_images``.

    Args:
      images: [N, H, W] or [N, H, W, C], see ``check_images``.
      labels: [N] integers, or None for unlabelled data (stored as -1).
      name: used in error messages.

    Returns:
      Split with images [N, H, W, C] (uint8, or float32 for float input) and labels [N] int32.
    """
    images = check_images(images, name)
    return Split(images, _labels(labels, images.shape[0], name))


# ----------------------------------------------------------------------------------------------
# File formats


def read_idx(path, ndim: int) -> np.ndarray:
    """Reads a (gzipped) IDX file of unsigned bytes.

    Args:
      path: the file; gunzipped on the fly when its name ends in ``.gz``.
      ndim: expected number of dimensions (3 for images, 1 for labels); the magic number must
        be ``0x00000800 + ndim`` (2051 for images, 2049 for labels).

    Returns:
      uint8 array of the shape in the header, e.g. [N, 28, 28] or [N].

    Raises:
      ValueError: naming the file, when it is truncated, not gzip, or has a wrong magic number or
        a data size that disagrees with its header.
    """
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated file ({type(e).__name__}: {e})") from e
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX file, {len(raw)} bytes < {header}-byte header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + ndim:
        raise ValueError(
            f"{path}: wrong IDX magic number {magic} (expected {0x800 + ndim}: "
            f"unsigned bytes, {ndim} dims)"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path}: corrupt or truncated IDX file, header says shape {shape} "
            f"({int(np.prod(shape))} bytes) but {len(raw) - header} bytes follow it"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _omniglot_28(grey: Image.Image) -> np.ndarray:
    """105x105 black-on-white greyscale -> [28, 28] uint8 white-on-black (Lanczos resampling)."""
    return 255 - np.asarray(grey.convert("L").resize((28, 28), Image.Resampling.LANCZOS))


def read_omniglot_zip(path) -> tuple[np.ndarray, np.ndarray]:
    """Reads an Omniglot zip of ``[top/]alphabet/character/*.png``.

    Args:
      path: e.g. ``images_background_small1.zip``.

    Returns:
      images [N, 28, 28] uint8, white strokes on black, resized with PIL Lanczos; labels [N]
      int32, the index of the (alphabet, character) pair in sorted order within the zip.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith(".png"))
            images = [_omniglot_28(Image.open(io.BytesIO(z.read(n)))) for n in names]
    except (zipfile.BadZipFile, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt Omniglot zip ({type(e).__name__}: {e})") from e
    if not names:
        raise ValueError(f"{path}: no PNG images in the zip")
    chars = [tuple(n.split("/")[-3:-1]) for n in names]
    _, labels = np.unique(np.array(chars), axis=0, return_inverse=True)
    return np.stack(images), labels.reshape(-1).astype(np.int32)


_PICKLE_REFUSED = (
    "such files are refused: user files are data, never code (reading a pickle can run any "
    "code). Save plain numeric arrays instead, e.g. np.savez(path, images=uint8_array)"
)


def read_npz(path, what: str) -> dict[str, np.ndarray]:
    """The arrays of a user's ``.npz`` file, read without pickle (``allow_pickle=False``).

    Args:
      path: the file.
      what: what the file is for, named in error messages (e.g. ``'--extra kmnist'``).

    Returns:
      ``{name: array}``, every array read into memory.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an .npz archive (a lone .npy array, a pickle, a damaged file), or one
        holding object arrays (pickled Python objects): each names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file {path}")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK"):  # every .npz is a zip archive
        kind = ("it holds one NumPy array, .npy" if head.startswith(b"\x93NUMPY") else
                "it is a Python pickle" if head[:1] == b"\x80" else "not a zip file")  # fmt: skip
        why = f"{what}: {path} is not an .npz archive ({kind})"
        if head[:1] == b"\x80":
            raise ValueError(f"{why}; {_PICKLE_REFUSED}")
        raise ValueError(f"{why}; write it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for name in npz.files:
                try:
                    out[name] = npz[name]
                except ValueError as e:  # numpy refuses object arrays without allow_pickle
                    if "pickle" not in str(e):
                        raise ValueError(f"{what}: {path}: array {name!r}: {e}") from e
                    raise ValueError(
                        f"{what}: {path} holds an object array {name!r} (pickled Python "
                        f"objects); {_PICKLE_REFUSED}"
                    ) from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{what}: {path} cannot be read as an .npz archive: {e}") from e
    return out


# ----------------------------------------------------------------------------------------------
# Finding the files


def known_dirs(name: str) -> list[Path]:
    """Local folders searched after ``data_dir`` / ``$JAXAE_DATA_DIR``, in order."""
    system = [Path("/usr/share/datasets/fashion-mnist")] if name == "fashion_mnist" else []
    roots = [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    shared = [root / folder for root in roots for folder in _FOLDERS[name]]
    return list(dict.fromkeys(system + shared))


def _files(name: str, split: str) -> tuple[str, ...]:
    return (_OMNIGLOT_ZIPS[split],) if name == "omniglot" else _IDX_FILES[split]


def _read_dir(name: str, split: str, folder: Path, where: str) -> Split:
    """Reads one split from ``folder``, which holds all of ``_files(name, split)``."""
    paths = [folder / f for f in _files(name, split)]
    if name == "omniglot":
        arrays = read_omniglot_zip(paths[0])
    else:
        arrays = read_idx(paths[0], 3), read_idx(paths[1], 1)
    # abspath, not resolve: record the path that was opened, even when it is a symlink.
    return from_arrays(*arrays, name=where)._replace(files=tuple(os.path.abspath(p) for p in paths))


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within about ``timeout`` seconds.

    The name lookup has no timeout of its own (a dead resolver can block for long), so the probe
    runs in a daemon thread that is abandoned after ``2 * timeout``.
    """
    opened = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(2 * timeout)
    return bool(opened)


def _read_tfds(name: str, split: str, where: str) -> Split:
    """Reads one split through tensorflow-datasets; ``files`` names the tfds data set.

    Reads what tfds has prepared (``download=False``) first; downloads only when the host of the
    files answers, so that an offline machine fails in seconds, not after minutes of retries.

    Raises:
      ConnectionError: tfds has not prepared the data set and its download host is unreachable.
      ImportError, and whatever tfds raises: the caller reports it with the other places tried.
    """
    import tensorflow_datasets as tfds  # optional, and slow to import

    tfds_split = _OMNIGLOT_TFDS_SPLITS[split] if name == "omniglot" else split
    kwargs = dict(split=tfds_split, batch_size=-1, as_supervised=False)
    try:
        loaded = tfds.load(name, download=False, **kwargs)
    except Exception:  # not prepared in the tfds data folder (tfds raises AssertionError)
        host = _TFDS_HOSTS[name]
        if not _reachable(host):
            raise ConnectionError(
                f"not prepared in the tfds data folder, and {host} (where tfds downloads "
                f"{name} from) cannot be reached: no network, so no download was tried"
            ) from None
        loaded = tfds.load(name, download=True, **kwargs)
    data = tfds.as_numpy(loaded)
    images, labels = np.asarray(data["image"]), np.asarray(data["label"])
    if name == "omniglot":  # RGB 105x105 black-on-white; labels renumbered 0..C-1 in order
        images = np.stack([_omniglot_28(Image.fromarray(im)) for im in images])
        labels = np.unique(labels, return_inverse=True)[1]
    source = f"tensorflow-datasets:{name}/{tfds_split}"
    return from_arrays(images, labels, name=where)._replace(files=(source,))


def _good_folder(name: str) -> str:
    files = sorted({f for split in SPLITS for f in _files(name, split)})
    folders = " or ".join(f"'{f}/'" for f in _FOLDERS[name])
    return f"a folder holding {', '.join(files)} (directly or in a sub-folder {folders})"


def _fix_hint(name: str) -> str:
    hint = f"set JAXAE_DATA_DIR (or pass data_dir=) to {_good_folder(name)}"
    if name == "fashion_mnist":
        hint = f"sudo apt-get install dataset-fashion-mnist, or {hint}"
    return (
        f"{hint}. A folder given so is the only place searched, for every data set: it must hold "
        "each data set the run needs (fashion_mnist in 'fashion-mnist/', mnist in 'mnist/', "
        "omniglot in 'omniglot/'). Set JAXAE_NO_TFDS=1 to skip the tensorflow-datasets fallback"
    )


def _load_from_user_dir(name: str, split: str, user_dir, source: str) -> Split:
    """Loads from the folder the user named, or raises; never looks anywhere else.

    An explicit folder that is wrong (a typo, an unmounted disk) must not quietly give data from
    another place, which may be another version of the data set.

    Args:
      name: one of ``DATASETS``.
      split: 'train' or 'test'.
      user_dir: the folder, as given.
      source: where ``user_dir`` came from, for the message: the argument or the env var.

    Returns:
      Split read from ``user_dir`` or its sub-folder for the data set (``_FOLDERS``).

    Raises:
      DatasetNotFoundError: naming the folder and its source; when the folder exists, listing
        the files looked for in it and in its sub-folders.
    """
    base = Path(user_dir).expanduser()
    shown = f"{user_dir}" if base.is_absolute() else f"{user_dir} (= {os.path.abspath(base)})"
    head = f"data set {name!r} (split {split!r}) not found in {shown}, the folder given by {source}"
    tail = (
        "Other places are not searched when a folder is given. "
        f"Fix: point {source} to {_good_folder(name)}, or leave it unset to search the usual "
        "places"
    )
    if not base.is_dir():
        why = "no such folder" if not base.exists() else "not a folder"
        raise DatasetNotFoundError(f"{head}: {why}.\n{tail}")
    tried = []
    for folder in [base, *(base / f for f in _FOLDERS[name])]:
        missing = [f for f in _files(name, split) if not (folder / f).is_file()]
        if not missing:
            return _read_dir(name, split, folder, f"{name}/{split}")
        why = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}"
        tried.append(f"  - {folder}: {why}")
    looked_for = ", ".join(_files(name, split))
    raise DatasetNotFoundError(
        f"{head}. Looked for {looked_for} in:\n" + "\n".join(tried) + f"\n{tail}"
    )


def load_raw(name: str, split: str, data_dir=None, *, allow_tfds: bool | None = None) -> Split:
    """Loads one split of a named data set, unprocessed.

    With ``data_dir`` (else ``$JAXAE_DATA_DIR``, when set and not empty), looks only there and in
    its sub-folder for the data set, and raises if the files are not there. Otherwise tries, in
    order, the folders of ``known_dirs(name)`` and tensorflow-datasets (what it has prepared;
    else a download, tried only when the download host answers within seconds).

    Args:
      name: one of ``DATASETS``.
      split: 'train' or 'test'.
      data_dir: folder holding the files, directly or in a sub-folder named after the data set.
      allow_tfds: whether to fall back on tensorflow-datasets; None means yes unless the env var
        ``JAXAE_NO_TFDS`` is set (to anything but '' or '0').

    Returns:
      Split with images [N, 28, 28, 1] uint8, labels [N] int32, and ``files``: the absolute
      paths of the files read, or ``("tensorflow-datasets:<name>/<split>",)``.

    Raises:
      DatasetNotFoundError: for a given folder, naming it, where it came from and the files
        looked for; else listing every place tried, why it failed, and the fix.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    where = f"{name}/{split}"
    if data_dir is not None:
        return _load_from_user_dir(name, split, data_dir, "the data_dir argument")
    if os.environ.get("JAXAE_DATA_DIR"):
        env_dir = os.environ["JAXAE_DATA_DIR"]
        return _load_from_user_dir(name, split, env_dir, "the JAXAE_DATA_DIR environment variable")

    tried = []
    for folder in known_dirs(name):
        missing = [f for f in _files(name, split) if not (folder / f).is_file()]
        if not missing:
            return _read_dir(name, split, folder, where)
        why = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}"
        tried.append(f"known place {folder}: {why}")

    if allow_tfds is None:
        allow_tfds = os.environ.get("JAXAE_NO_TFDS", "") in ("", "0")
    if not allow_tfds:
        tried.append("tensorflow-datasets: skipped (JAXAE_NO_TFDS is set or allow_tfds=False)")
    else:
        print(
            f"jaxae.data: {name} not found locally; trying tensorflow-datasets, which downloads "
            "(set JAXAE_NO_TFDS=1 to skip)",
            file=sys.stderr,
        )
        try:
            return _read_tfds(name, split, where)
        except Exception as e:  # no tensorflow, no network, ...: report it with the rest
            tried.append(f"tensorflow-datasets: {type(e).__name__}: {e}")
    places = "\n".join(f"  - {t}" for t in tried)
    raise DatasetNotFoundError(
        f"data set {name!r} (split {split!r}) not found. Places tried:\n{places}\n"
        f"Fix: {_fix_hint(name)}"
    )


# ----------------------------------------------------------------------------------------------
# The user's own data: an .npz file, a folder of images, a data set tfds has prepared

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # of the files read from an image folder
# PIL modes read as single-channel; any other mode is converted to RGB (alpha dropped).
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# The test part split off a source without a test set: seeded, but not by `training.seed`, so
# that runs with other seeds are scored on the same images.
TEST_SPLIT_SEED = 0


class Source(NamedTuple):
    """Where a data set comes from, as ``data.dataset`` names it (`parse_source`).

    kind: 'builtin' (one of `DATASETS`), 'tfds' (a data set tensorflow-datasets has prepared),
      'npz' (a file of arrays) or 'folder' (PNG/JPEG files).
    name: the built-in or tfds name (``NAME`` or ``NAME/CONFIG``), or the path as given.
    """

    kind: str
    name: str


def parse_source(text: str) -> Source:
    """The source ``data.dataset`` names: a built-in name, ``tfds:NAME[/CONFIG]``, or a path to an
    ``.npz`` file or a folder of images. Only looks at the disk for a bare word that is no
    built-in name (a folder in the working directory); whether the path exists is `load`'s check.

    Raises:
      ValueError: an empty ``tfds:``, or a word that is neither a built-in name nor a path.
    """
    if text in DATASETS:
        return Source("builtin", text)
    if text.startswith("tfds:"):
        if not text[5:].strip("/"):
            raise ValueError(f"data set {text!r}: name the tfds data set, tfds:NAME[/CONFIG]")
        return Source("tfds", text[5:])
    path = Path(text).expanduser()
    if path.suffix.lower() == ".npz":
        return Source("npz", text)
    if os.sep in text or "/" in text or text.startswith((".", "~")) or path.exists():
        return Source("folder", text)
    close = difflib.get_close_matches(text, DATASETS, n=1)
    raise ValueError(
        f"unknown data set {text!r}: neither a built-in name ({', '.join(DATASETS)}) nor a path "
        "to an .npz file or a folder of images; "
        + (f"did you mean {close[0]!r}? " if close else "")
        + f"for a data set of tensorflow-datasets write tfds:{text}"
    )


class _Lazy:
    """The raw images of a source, read one at a time (a folder's files, a tfds split's
    records): `_Images.images` of a source too large to read at once (`load`'s budget)."""

    def __init__(self, read: Callable[[Any], np.ndarray], keys, shapes: list[tuple]):
        self.read, self.keys, self.shapes = read, list(keys), shapes  # shapes: (H, W, C) each

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(self.keys[i])

    def take(self, idx) -> "_Lazy":
        return _Lazy(self.read, [self.keys[i] for i in idx], [self.shapes[i] for i in idx])


class LazyImages:
    """Images [N, S, S, C] (uint8) read from their source when indexed, for a training set over
    ``data.memory_budget_mb`` (`load`): ``x[i]`` is one image, ``x[a:b]`` and ``x[idx]`` stack
    theirs, ``np.asarray(x)`` reads them all. `jaxae.stream` reads each batch's rows; nothing
    else is kept in memory. A file that cannot be read when its batch comes raises a ValueError
    naming it."""

    ndim = 4

    def __init__(self, raw: _Lazy, names: list[str], one: Callable, shape: tuple,
                 dtype=np.uint8):  # fmt: skip
        self._raw, self._names, self._one = raw, names, one
        self.shape, self.dtype = (len(raw), *shape), np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        """The bytes the images would take in memory."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def map(self, fn: Callable[[np.ndarray], np.ndarray], dtype) -> "LazyImages":
        """These images with `fn` applied to each as it is read (same shape, `dtype`): e.g.
        ``x.map(lambda a: a / np.float32(255), np.float32)``, still unread."""
        one = self._one
        return LazyImages(self._raw, self._names, lambda x, name: fn(one(x, name)),
                          self.shape[1:], dtype)  # fmt: skip

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, i: int) -> np.ndarray:
        try:
            x = self._one(self._raw[i], self._names[i])
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {self._names[i]} (read when its batch came): "
                             f"{e}. Fix or remove the file") from e  # fmt: skip
        if x.shape != self.shape[1:]:
            raise ValueError(f"{self._names[i]} became {x.shape}, not {self.shape[1:]} like the "
                             "others: set data.image_size to resize them all")  # fmt: skip
        return x

    def __getitem__(self, key):
        if isinstance(key, int | np.integer):
            return self._read(int(range(len(self))[key]))
        idx = np.arange(len(self))[key]
        if not len(idx):
            return np.zeros((0, *self.shape[1:]), self.dtype)
        return np.stack([self._read(int(i)) for i in idx])

    def __array__(self, dtype=None, copy=None):
        x = self[:]
        return x if dtype is None else x.astype(dtype)

    def take(self, idx) -> "LazyImages":
        """The images `idx`, still unread."""
        return LazyImages(self._raw.take(idx), [self._names[i] for i in idx], self._one,
                          self.shape[1:], self.dtype)  # fmt: skip


class _Images(NamedTuple):
    """Images as read from one source, before `conform` brings them to one shape; or a table of
    vectors (`is_vectors`), which is never conformed."""

    # [H, W, C] arrays, uint8 (float32 in [0, 1] from a float .npz); vectors: one [N, D] array
    images: list | np.ndarray
    labels: np.ndarray  # [N] int32, -1 for unlabelled
    files: tuple[str, ...]  # absolute paths read (`Split.files`)
    names: list[str]  # each image's file, or file[index], for messages; [] for vectors
    classes: tuple[str, ...] = ()  # a folder's class names: label i is classes[i]

    @property
    def is_vectors(self) -> bool:
        return isinstance(self.images, np.ndarray) and self.images.ndim == 2

    def take(self, idx) -> "_Images":
        if self.is_vectors:
            images = self.images[idx]
        elif isinstance(self.images, _Lazy):
            images = self.images.take(idx)
        else:
            images = [self.images[i] for i in idx]
        return self._replace(images=images, labels=self.labels[idx],
                             names=[self.names[i] for i in idx] if self.names else [])  # fmt: skip


def _as_images(split: Split, where: str) -> _Images:
    names = [f"{where}[{i}]" for i in range(len(split.labels))]
    return _Images(list(split.images), split.labels, split.files, names)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetNotFoundError(f"{what}: no such file or folder {os.path.abspath(path)}")
    return path


def _read_npz_images(path: Path, what: str) -> _Images:
    """``images`` [N, H, W(, C)] (or float vectors [N, D], `check_vectors`: an array of rank 2
    or less is read as vectors) and optional ``labels`` [N] of an .npz file (`read_npz`)."""
    arrays = read_npz(_existing(path, what), what)
    if "images" not in arrays:
        raise ValueError(f"{what}: {path} has no array 'images' (it has {sorted(arrays)}); save "
                         "it as np.savez(path, images=uint8_nhwc, labels=ints), or for tabular "
                         "data np.savez(path, images=float_vectors_nd)")  # fmt: skip
    where, x = f"{what} ({path})", arrays["images"]
    if x.ndim <= 2:
        x = check_vectors(x, f"{where}: 'images'")
        labels = _labels(arrays.get("labels"), len(x), where, "rows")
        return _Images(x, labels, (os.path.abspath(path),), [])
    split = from_arrays(x, arrays.get("labels"), name=where)
    return _as_images(split._replace(files=(os.path.abspath(path),)), str(path))


def _read_image(path: Path) -> np.ndarray:
    """One PNG/JPEG file as [H, W, 1] (greyscale modes, `_GREY_MODES`) or [H, W, 3] uint8."""
    with Image.open(path) as im:
        im = im.convert("L" if im.mode in _GREY_MODES else "RGB")
        x = np.asarray(im)
    return x[..., None] if x.ndim == 2 else x


def _header(path: Path) -> tuple[int, int, int]:
    """(H, W, C) of an image file from its header alone (C: 1 for greyscale modes, else 3)."""
    with Image.open(path) as im:
        return im.height, im.width, 1 if im.mode in _GREY_MODES else 3


def _read_folder(folder: Path, what: str, classes: tuple[str, ...] | None = None,
                 fits: Callable[[list], bool] | None = None) -> _Images:  # fmt: skip
    """The PNG/JPEG files of a folder: flat (labels -1), or one subfolder per class (labels: the
    index of the subfolder among those holding images, sorted by name; images of a subfolder's
    own subfolders count). `classes`: those of the training folder, for its test folder.
    `fits`: given the files' (H, W, C) from their headers, whether to read them now; if not,
    they are read when used (`_Lazy`).

    Raises:
      DatasetNotFoundError: no such folder, or no PNG/JPEG file in it.
      ValueError: images beside class subfolders, a class the training folder lacks, or files
        that cannot be read (the first named, with the count of good ones).
    """
    folder = _existing(folder, what)
    if not folder.is_dir():
        raise ValueError(f"{what}: {folder} is a file; give a folder of images or an .npz file")

    def images_in(d, deep):
        files = d.rglob("*") if deep else d.iterdir()
        return sorted(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())

    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    by_class = {d.name: found for d in subdirs if (found := images_in(d, deep=True))}
    top = images_in(folder, deep=False)
    if by_class and top:
        raise ValueError(f"{what}: {folder} holds both images ({top[0].name}...) and class "
                         "subfolders; move the images into a subfolder of their class")  # fmt: skip
    if not by_class and not top:
        raise DatasetNotFoundError(f"{what}: no image files in {os.path.abspath(folder)} nor in "
                                   f"its subfolders (looked for {', '.join(IMAGE_SUFFIXES)}, "
                                   "any case)")  # fmt: skip
    if classes is None:
        classes = tuple(by_class)  # sorted, as the subfolders were
    elif set(by_class) - set(classes):
        raise ValueError(f"{what}: class folders {sorted(set(by_class) - set(classes))} of "
                         f"{folder} are not classes of the training folder "
                         f"({', '.join(classes)})")  # fmt: skip
    if by_class:
        paths = [(f, classes.index(c)) for c, files in by_class.items() for f in files]
    else:
        paths = [(f, -1) for f in top]
    read = _read_image
    if fits is not None:
        read = _header  # the sizes first: whether the images fit in memory
    images, bad = [], []
    for f, _ in paths:
        try:
            images.append(read(f))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            bad.append((f, e))
    if not bad and fits is not None:
        images = _read_folder(folder, what, classes).images if fits(images) else _Lazy(
            _read_image, [f for f, _ in paths], images)  # fmt: skip
    if bad:
        f, e = bad[0]
        raise ValueError(f"{what}: cannot read {len(bad)} of {len(paths)} image files ("
                         f"{len(images)} good), first {os.path.abspath(f)}: {e}. Fix or remove "
                         "the file")  # fmt: skip
    labels = np.array([label for _, label in paths], np.int32)
    names = [os.path.abspath(f) for f, _ in paths]
    return _Images(images, labels, (os.path.abspath(folder),), names,
                   classes if by_class else ())  # fmt: skip


def _tfds_builder(name: str, data_dir):
    """The builder of a data set tensorflow-datasets has prepared in `data_dir` (None: tfds'
    default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); never downloads.

    Raises:
      DatasetNotFoundError: not prepared there (saying where tfds looked and how to prepare it).
    """
    import tensorflow_datasets as tfds  # optional, and slow to import

    where = os.path.abspath(data_dir or tfds.core.constants.get_default_data_dir())
    try:
        builder = tfds.builder(name, data_dir=where)
        why = "" if builder.is_prepared() else f" (nothing in {builder.data_path})"
    except Exception as e:  # an unknown name or config: tfds' own message, first line
        builder, why = None, f" (tensorflow-datasets: {str(e).splitlines()[0]})"
        base = name.split("/")[0].split(":")[0]
        known = tfds.list_builders(with_community_datasets=False)
        if base not in known:  # no such data set at all: no point in building it
            close = difflib.get_close_matches(base, known, n=3)
            hint = f"; did you mean {', '.join(f'tfds:{c}' for c in close)}?" if close else ""
            raise DatasetNotFoundError(
                f"tfds:{name}: tensorflow-datasets has no data set named {base!r}, and none is "
                f"prepared in {where}{hint} (its catalog: "
                "https://www.tensorflow.org/datasets/catalog)"
            ) from None
    if why:
        raise DatasetNotFoundError(
            f"tfds:{name} is not prepared in {where}, the folder tensorflow-datasets looked in"
            f"{why}; jaxae never downloads. Fix: on a machine with internet, `tfds build {name} "
            f"--data_dir DIR --file_format array_record`, then copy DIR/{name.split('/')[0]} into "
            f"{where} (or pass --data_dir DIR where it is)"
        )
    return builder


def _hwc(x) -> np.ndarray:
    x = np.asarray(x)
    return x[..., None] if x.ndim == 2 else x


def _read_tfds_split(builder, name: str, split: str, fits=None) -> _Images:
    """One split of a prepared tfds data set: its features ``image`` and ``label`` (if any).
    array_record files are read without TensorFlow; tfrecord files need it. `fits` (array_record
    only): given the images' (H, W, C), whether to read them now; if not, each record's image
    is read when used (`_Lazy`), and only the labels now."""
    if split not in builder.info.splits:
        raise ValueError(f"tfds:{name} has no split {split!r}: it has {list(builder.info.splits)}")
    if builder.info.file_format.value == "array_record":
        source = builder.as_data_source(split)
        examples = (source[i] for i in range(len(source)))
    else:
        import tensorflow_datasets as tfds

        try:
            import tensorflow  # noqa: F401  (tfds reads its tfrecord files with it)
        except ImportError:
            raise ValueError(
                f"tfds:{name} is prepared as {builder.info.file_format.value} files, which only "
                "TensorFlow reads: pip install tensorflow, or prepare it again with `tfds build "
                f"{name} --file_format array_record`"
            ) from None
        examples = tfds.as_numpy(builder.as_dataset(split=split))
    features = builder.info.features
    if "image" not in features:
        raise ValueError(f"tfds:{name}: no feature 'image' (it has {list(features)})")
    files = tuple(str(f) for f in builder.info.splits[split].filepaths)
    if fits is not None and builder.info.file_format.value == "array_record":
        first = _hwc(source[0]["image"]) if len(source) else np.zeros((0, 0, 1))
        shapes = [tuple(s or d for s, d in zip(features["image"].shape, first.shape,
                                               strict=False))] * len(source)  # fmt: skip
        if not fits(shapes):
            import tensorflow_datasets as tfds

            labels = ([int(r["label"]) for r in builder.as_data_source(
                split, decoders={"image": tfds.decode.SkipDecoding()})]
                if "label" in features else [-1] * len(source))  # fmt: skip
            names = [f"tfds:{name}/{split}[{i}]" for i in range(len(source))]
            lazy = _Lazy(lambda i: _hwc(source[i]["image"]), range(len(source)), shapes)
            return _Images(lazy, np.asarray(labels, np.int32), files, names)
    images, labels = [], []
    for ex in examples:
        images.append(_hwc(ex["image"]))
        labels.append(ex.get("label", -1))
    names = [f"tfds:{name}/{split}[{i}]" for i in range(len(images))]
    return _Images(images, np.asarray(labels, np.int32), files, names)


def _split_test(train: _Images, fraction: float) -> tuple[_Images, _Images]:
    """Splits off a seeded `fraction` of the images (`TEST_SPLIT_SEED`); both parts keep the
    images' order."""
    n = len(train.images)
    n_test = round(fraction * n)
    if not 0 < n_test < n:
        raise ValueError(f"data.test_fraction={fraction} of {n} images leaves {n_test} test "
                         "images: choose one that leaves some of both, or set "
                         "data.test")  # fmt: skip
    perm = np.random.default_rng(TEST_SPLIT_SEED).permutation(n)
    return train.take(np.sort(perm[n_test:])), train.take(np.sort(perm[:n_test]))


def _read_source(source: Source, test: str, test_fraction: float, data_dir, fits=None):
    """The training and test images of a user's source (not a built-in one); a folder's or a
    tfds split's training images are read when used (`_Lazy`) unless `fits` their (H, W, C).

    The test images: the .npz file or folder `test` names (the source's own kind), or for tfds
    the split `test` names ('' : 'test' if the data set has one); else a seeded
    `test_fraction` of the training images (`_split_test`).
    """
    what = f"data.dataset={source.name!r}"
    if source.kind == "tfds":
        builder = _tfds_builder(source.name, data_dir)
        train = _read_tfds_split(builder, source.name, "train", fits)
        split = test or ("test" if "test" in builder.info.splits else "")
        held = _read_tfds_split(builder, source.name, split) if split else None
    else:
        read = _read_npz_images if source.kind == "npz" else _read_folder
        kwargs = {"fits": fits} if source.kind == "folder" else {}
        train = read(Path(source.name).expanduser(), what, **kwargs)
        held = None
        if test:
            if parse_source(test).kind != source.kind:
                kind = "an .npz file" if source.kind == "npz" else "a folder of images"
                raise ValueError(f"data.test={test!r}: must be {kind}, like "
                                 f"data.dataset={source.name!r}")  # fmt: skip
            kwargs = {"classes": train.classes} if source.kind == "folder" else {}
            held = read(Path(test).expanduser(), f"data.test={test!r}", **kwargs)
    return _split_test(train, test_fraction) if held is None else (train, held)


def _to_channels(x: np.ndarray, channels: int, name: str) -> np.ndarray:
    """[..., C] pixels with C of 1 (grey), 3 (RGB) or 4 (RGBA: alpha dropped) -> `channels` (1
    or 3): grey is replicated, RGB made grey with PIL's ITU-R 601-2 luma weights."""
    c = x.shape[-1]
    if c not in (1, 3, 4):
        raise ValueError(f"{name}: {c} channels; jaxae reads 1 (grey), 3 (RGB) or 4 (RGBA)")
    x = x[..., :3] if c == 4 else x
    if x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    return (np.round(grey).astype(np.uint8) if x.dtype == np.uint8 else grey)[..., None]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] -> [size, size, C] with PIL's BILINEAR filter, each channel on its own (uint8 or
    float32 alike); PIL widens the filter when shrinking, so it antialiases."""
    planes = [Image.fromarray(x[..., k]).resize((size, size), Image.Resampling.BILINEAR)
              for k in range(x.shape[-1])]  # fmt: skip
    return np.stack([np.asarray(p) for p in planes], axis=-1).astype(x.dtype, copy=False)


def _conformer(image_size: int, c: int) -> Callable[[np.ndarray, str], np.ndarray]:
    """`conform`'s step for one image [H, W, C] (named in errors) with `c` channels."""

    def one(x, name):  # resized with the fewer channels: the two steps commute
        x = _to_channels(x, c, name) if c < x.shape[-1] else x
        if image_size and x.shape[:2] != (image_size, image_size):
            x = _resize(x, image_size)
        return _to_channels(x, c, name)

    return one


def conform(images, names, image_size: int = 0, channels: int = 0) -> np.ndarray:
    """Images of any sizes and channel counts as one [N, S, S, C] array.

    Args:
      images: [H, W, C] arrays (or one [N, H, W, C] array), C of 1, 3 or 4 (RGBA).
      names: each image's file, named in errors.
      image_size: S: every image not S x S is resized to it (`_resize`: PIL's BILINEAR, which
        antialiases when shrinking; the aspect ratio is not kept); 0: the images' own size,
        which must be the same for all.
      channels: 1 (grey) or 3 (RGB) (`_to_channels`); 0: 1 if every image has one channel,
        else 3.

    Raises:
      ValueError: images of different sizes with `image_size` 0, naming two of them.
    """
    one = _conformer(image_size, _channels(channels, [x.shape for x in images]))
    out = [one(x, name) for x, name in zip(images, names, strict=True)]
    if not image_size:
        _check_one_size([x.shape for x in out], names)
    return np.stack(out)


def _channels(channels: int, shapes) -> int:
    """`channels`, or (0) 1 if every image of `shapes` [(H, W, C), ...] is grey, else 3."""
    return channels or (1 if all(sh[-1] == 1 for sh in shapes) else 3)


def _check_one_size(shapes, names) -> None:
    """A ValueError naming two images of `shapes` [(H, W, ...), ...] of different sizes."""
    i = next((i for i, sh in enumerate(shapes) if sh[:2] != shapes[0][:2]), None)
    if i is not None:
        (h0, w0), (h, w) = shapes[0][:2], shapes[i][:2]
        raise ValueError(f"images of different sizes: {names[0]} is {h0}x{w0}, {names[i]} is "
                         f"{h}x{w} (height x width). Set data.image_size to resize them all to "
                         "one size")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Transforms and preprocessing


def hflip(images):
    """Flips left-right. Args: images [..., H, W, C] (NumPy or JAX). Returns: same shape."""
    return images[..., ::-1, :]


def vflip(images):
    """Flips upside-down. Args: images [..., H, W, C] (NumPy or JAX). Returns: same shape."""
    return images[..., ::-1, :, :]


def pad32(images: np.ndarray) -> np.ndarray:
    """Zero-pads images to 32x32 (2 pixels each side for 28x28).

    Args:
      images: [N, H, W, C] with H, W <= 32.

    Returns:
      [N, 32, 32, C], same dtype, the input centred.
    """
    _, h, w, _ = images.shape
    if h > 32 or w > 32:
        raise ValueError(f"cannot pad {h}x{w} images to 32x32 (pad_to_32 only enlarges): set "
                         "data.pad_to_32=False, or data.image_size=32 to resize them")  # fmt: skip
    pad = [(0, 0), ((32 - h) // 2, (33 - h) // 2), ((32 - w) // 2, (33 - w) // 2), (0, 0)]
    return np.pad(images, pad)


# Seeds the one binarization of validation and test images (`binarize_fixed`); not
# `training.seed`, so that every run is scored on the same binary images.
BINARIZE_SEED = 0


def binarize_fixed(images: np.ndarray, seed: int = BINARIZE_SEED) -> np.ndarray:
    """Binary images, each pixel 1 with probability its grey level (x / 255 for uint8): one seeded
    Bernoulli draw, the evaluation counterpart of `Preprocess(binarize=True)`'s fresh draw per
    training step.

    Args:
      images: [N, H, W, C] uint8, or floats in [0, 1].
      seed: seeds the draw.

    Returns:
      the same shape and dtype: uint8 in {0, 255} (so that `Preprocess` makes them {0, 1}), or
      floats in {0, 1}.
    """
    unit = images / 255.0 if images.dtype == np.uint8 else images
    on = np.random.default_rng(seed).random(images.shape) < unit
    return (on * 255).astype(np.uint8) if images.dtype == np.uint8 else on.astype(images.dtype)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Pixels -> float32 model inputs; pure and jittable, hashable so it can be static to jit.

    Float vectors (standardized tables, `Standardization`) pass as they are with the defaults.

    Attributes:
      scale: 'unit' for [0, 1], 'centered' for [-0.5, 0.5] (the unit range minus 0.5).
      dequantize: add uniform noise: uint8 ``x`` becomes ``(x + u) / 256``, ``u ~ U[0, 1)``, and
        float ``x`` (already in [0, 1]) becomes ``x + u / 256``. Without it uint8 is ``x / 255``.
      binarize: each pixel becomes 1 with probability its grey level in [0, 1], else 0, drawn
        afresh at every call with `key` (dynamic binarization: Salakhutdinov & Murray 2008; Burda
        et al. 2016); binary images stay as they are. Not with `dequantize`.
    """

    scale: str = "unit"
    dequantize: bool = False
    binarize: bool = False

    def __post_init__(self):
        if self.scale not in ("unit", "centered"):
            raise ValueError(f"Preprocess.scale must be 'unit' or 'centered', got {self.scale!r}")
        for name in ("dequantize", "binarize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Preprocess.{name} must be a bool, got {getattr(self, name)!r}")
        if self.dequantize and self.binarize:
            raise ValueError("Preprocess: dequantize and binarize exclude each other (noise in "
                             "each 1/256 bin, or binary pixels): choose one")  # fmt: skip

    def __call__(self, images, key=None) -> jax.Array:
        """Args: images [B, H, W, C] uint8 or float in [0, 1]; key, needed to dequantize or
        binarize.

        Returns: [B, H, W, C] float32.
        """
        for name in ("dequantize", "binarize"):
            if getattr(self, name) and key is None:
                raise ValueError(f"Preprocess({name}=True) needs a PRNG key")
        images = jnp.asarray(images)
        x = images.astype(jnp.float32)
        if self.dequantize:
            u = jax.random.uniform(key, x.shape, jnp.float32)
            x = (x + u) / 256 if images.dtype == jnp.uint8 else x + u / 256
        elif images.dtype == jnp.uint8:
            x = x / 255
        if self.binarize:  # u < x has probability x, for u ~ U[0, 1)
            x = (jax.random.uniform(key, x.shape, jnp.float32) < x).astype(jnp.float32)
        return x - self.offset if self.offset else x

    @property
    def offset(self) -> float:
        """What is subtracted from [0, 1] pixels: 0.5 for 'centered', else 0."""
        return 0.5 if self.scale == "centered" else 0.0


# ----------------------------------------------------------------------------------------------
# Loading


def _split_val(train: Split, val_size: int, seed: int) -> tuple[Split, Split | None]:
    n = train.images.shape[0]
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) (the training set size), got {val_size}")
    if val_size == 0:
        return train, None
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted so that both parts keep the original order of the training set.
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])

    def part(idx):  # both parts keep the files the training set was read from
        images = train.images
        images = images.take(idx) if isinstance(images, LazyImages) else images[idx]
        return Split(images, train.labels[idx], train.files)

    return part(train_idx), part(val_idx)


def load(
    name: str,
    *,
    data_dir=None,
    val_size: int = 0,
    pad_to_32: bool = False,
    transform: str | None = None,
    seed: int = 0,
    allow_tfds: bool | None = None,
    test: str = "",
    test_fraction: float = 0.1,
    image_size: int = 0,
    channels: int = 0,
    binarize: bool = False,
    memory_budget: int | None = None,
) -> Dataset:
    """Loads a data set with labels, as host NumPy arrays.

    Args:
      name: what ``data.dataset`` names (`parse_source`): 'fashion_mnist', 'mnist' or
        'omniglot'; ``tfds:NAME[/CONFIG]``, a data set tensorflow-datasets has prepared (read
        without downloading); a path to an ``.npz`` file of ``images`` [N, H, W(, C)] (uint8, or
        floats in [0, 1]) or float vectors [N, D] (tabular data, `check_vectors`), and optional
        ``labels`` [N] (read without pickle, `read_npz`); or a path to a folder of PNG/JPEG
        files, flat (unlabelled: -1) or with one subfolder per class (label: the subfolder's
        index in sorted order; `Dataset.classes`).
      data_dir: for a built-in name, where the files are (see ``load_raw`` for the search
        order; a folder given here or in ``$JAXAE_DATA_DIR`` must hold them); for ``tfds:``,
        the data folder of tensorflow-datasets (None: its default). Other sources ignore it.
      val_size: number of training images held out as the validation split, chosen by a NumPy
        permutation seeded with ``seed``; 0 for none.
      pad_to_32: zero-pad the images to 32x32 (after any resizing).
      transform: None, 'hflip' or 'vflip', applied to every split (out-of-distribution sets).
      seed: seed of the validation permutation.
      allow_tfds: fall back on tensorflow-datasets for a built-in name; see ``load_raw``.
      test: for an .npz file or a folder, another one holding the test images; for tfds, the
        test split's name. '': the built-ins' and tfds' 'test' split, else `test_fraction`.
      test_fraction: the part of the training images split off as the test set when there is
        no test set, seeded with `TEST_SPLIT_SEED` (not `seed`: every run scores the same).
      image_size: resize every image to this square size (PIL's BILINEAR, antialiased when
        shrinking, `conform`); 0: keep the images' size, which must then be the same for all.
      channels: 1 (grey) or 3 (RGB); 0: grey if every image has one channel, else RGB.
      binarize: the validation and test images binarized once (`binarize_fixed`); the
        training images stay grey, for `Preprocess(binarize=True)` to draw at every step.
      memory_budget: bytes the training images may take in memory (`jaxae.stream.budget_bytes`
        of ``data.memory_budget_mb``); a folder's or a tfds split's training images above it
        are read when used (`LazyImages`: `jaxae.train.fit` streams them). None: no limit. The
        validation and test images are always read whole.

    Returns:
      Dataset(name, train, val, test, classes, standardization); each Split has images
      [N, H, W, C] (uint8, or float32 from a float .npz), labels [N] int32 and the ``files`` it
      was read from (val: those of train; a folder records its own path); val is None when
      val_size is 0. ``Dataset.files`` lists all of them, to record in the run. Vectors: each
      split's images are [N, D] float32, standardized with the training split's statistics
      (after the validation split is held out), which ``standardization`` holds.

    Raises:
      ValueError: for vectors, an image option (image_size, channels, pad_to_32, transform,
        binarize), a test set of images (or of vectors of another length) or a constant column.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    source = parse_source(name)
    if source.kind == "builtin":
        raw = [_as_images(load_raw(name, s, data_dir, allow_tfds=allow_tfds), f"{name}/{s}")
               for s in SPLITS]  # fmt: skip
    else:

        def fits(shapes) -> bool:  # the bytes of the training images as `conform` makes them
            c = _channels(channels, shapes)
            pixels = sum(image_size**2 if image_size else h * w for h, w, _ in shapes)
            return memory_budget is None or pixels * c <= memory_budget

        raw = _read_source(source, test, test_fraction, data_dir, fits)
    raw_train, raw_test = raw
    if isinstance(raw_train.images, _Lazy):
        return _lazy_dataset(name, raw_train, raw_test, image_size, channels, val_size, seed,
                             pad_to_32, transform, binarize)  # fmt: skip
    if raw_train.is_vectors or raw_test.is_vectors:
        options = dict(image_size=image_size, channels=channels, pad_to_32=pad_to_32,
                       transform=transform, binarize=binarize)  # fmt: skip
        return _vector_dataset(name, raw_train, raw_test, val_size, seed, options)
    # One size and channel count for both splits: the model takes the test images too.
    n = len(raw_train.images)
    both = conform(raw_train.images + raw_test.images, raw_train.names + raw_test.names,
                   image_size, channels)  # fmt: skip
    train = Split(both[:n], raw_train.labels, raw_train.files)
    test_split = Split(both[n:], raw_test.labels, raw_test.files)
    train, val = _split_val(train, val_size, seed)

    def finish(split, held=True):  # held: a validation or test split, binarized once
        if split is None:
            return None
        images = split.images
        if transform is not None:
            images = np.ascontiguousarray({"hflip": hflip, "vflip": vflip}[transform](images))
        images = pad32(images) if pad_to_32 else images
        return split._replace(images=binarize_fixed(images) if binarize and held else images)

    return Dataset(name, finish(train, held=False), finish(val), finish(test_split),
                   raw_train.classes)  # fmt: skip


def _lazy_dataset(name, raw_train: _Images, raw_test: _Images, image_size, channels, val_size,
                  seed, pad_to_32, transform, binarize) -> Dataset:  # fmt: skip
    """`load`'s splits when the training images are read when used (`LazyImages`): each image
    conformed, flipped and padded as `load` does the whole set; validation and test read now."""
    lazy = raw_train.images
    held = raw_test.images
    shapes = lazy.shapes + (held.shapes if isinstance(held, _Lazy) else [x.shape for x in held])
    if not image_size:
        _check_one_size(shapes, raw_train.names + raw_test.names)
    conformed = _conformer(image_size, _channels(channels, shapes))
    flip = {None: None, "hflip": hflip, "vflip": vflip}[transform]

    def one(x, name):
        x = conformed(x, name)
        x = np.ascontiguousarray(flip(x)) if flip else x
        return pad32(x[None])[0] if pad_to_32 else x

    shape = one(lazy[0], raw_train.names[0]).shape
    images = LazyImages(lazy, raw_train.names, one, shape)
    train, val = _split_val(Split(images, raw_train.labels, raw_train.files), val_size, seed)
    test_images = np.stack([one(raw_test.images[i], n) for i, n in enumerate(raw_test.names)])
    test = Split(test_images, raw_test.labels, raw_test.files)

    def held(split):  # read whole, binarized once
        if split is None:
            return None
        x = np.asarray(split.images)
        return split._replace(images=binarize_fixed(x) if binarize else x)

    return Dataset(name, train, held(val), held(test), raw_train.classes)


def _vector_dataset(name, raw_train: _Images, raw_test: _Images, val_size: int, seed: int,
                    options: dict) -> Dataset:  # fmt: skip
    """`load`'s splits of a table of vectors: standardized by the training split's statistics.
    `options`: `load`'s image options, refused unless at their defaults."""
    given = [f"{k}={v!r}" for k, v in options.items() if v]
    if given:
        raise ValueError(f"data.dataset={name!r} holds vectors [N, D], not images: "
                         f"{', '.join(given)} only apply to images; leave "
                         f"{'it' if len(given) == 1 else 'them'} at the default")  # fmt: skip
    if not raw_test.is_vectors or not raw_train.is_vectors:
        kinds = ["vectors" if r.is_vectors else "images" for r in (raw_train, raw_test)]
        raise ValueError(f"data.dataset={name!r}: the training data are {kinds[0]} but the test "
                         f"data are {kinds[1]}: both must be vectors [N, D] of one length, or "
                         "both images")  # fmt: skip
    d_train, d_test = raw_train.images.shape[1], raw_test.images.shape[1]
    if d_train != d_test:
        raise ValueError(f"data.dataset={name!r}: training vectors of length {d_train} but test "
                         f"vectors of length {d_test} ({raw_test.files[0]})")  # fmt: skip
    train = Split(raw_train.images, raw_train.labels, raw_train.files)
    train, val = _split_val(train, val_size, seed)
    standardization = Standardization.fit(train.images, f"data.dataset={name!r}")

    def finish(split):
        return None if split is None else split._replace(
            images=standardization.apply(split.images))  # fmt: skip

    test = Split(raw_test.images, raw_test.labels, raw_test.files)
    return Dataset(name, finish(train), finish(val), finish(test),
                   standardization=standardization)  # fmt: skip


def read_all(name: str, *, image_size: int = 0, channels: int = 0, data_dir=None,
             what: str | None = None) -> np.ndarray:  # fmt: skip
    """Every image of a folder or an .npz file (nothing split off), or the test split of a
    built-in or tfds data set, as one [N, S, S, C] array (`conform`): a set to score as it is,
    e.g. out-of-distribution images. `what` names the source in errors (default: its name).

    Raises:
      DatasetNotFoundError: no such file, folder or prepared data set; no image in it.
      ValueError: vectors, unreadable files, or sizes `conform` refuses.
    """
    source = parse_source(name)
    what = what or name
    if source.kind not in ("folder", "npz"):
        return load(name, data_dir=data_dir, image_size=image_size, channels=channels).test.images
    read = _read_npz_images if source.kind == "npz" else _read_folder
    raw = read(Path(name).expanduser(), what)
    if raw.is_vectors:
        raise ValueError(f"{what}: {name} holds vectors [N, D], not images")
    return conform(raw.images, raw.names, image_size, channels)


def load_config(data, *, seed: int = 0, data_dir=None) -> Dataset:
    """The data set a config's ``data`` section names (`jaxae.config`), split and shaped as the
    run trains on it: its one mapping onto `load`'s arguments, for training and evaluation.

    Args:
      data: the ``data`` section (a ConfigDict or a dict).
      seed: ``training.seed``, which seeds the validation split.
      data_dir: where the data are, per machine (so not in the config); see `load`.
    """
    from jaxae import stream  # grain: imported only where a config is loaded

    return load(data["dataset"], data_dir=data_dir, val_size=data["val_size"],
                pad_to_32=data["pad_to_32"], seed=seed, test=data["test"],
                test_fraction=data["test_fraction"], image_size=data["image_size"],
                channels=data["channels"], binarize=data.get("binarize", False),
                memory_budget=stream.budget_bytes(data.get("memory_budget_mb", 0)))  # fmt: skip
