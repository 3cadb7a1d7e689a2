"""Evaluate a trained run under one protocol: reconstruction, likelihood and sample metrics.

Command:
    python -m jaxae.evaluate --run runs/demo
    python -m jaxae.evaluate --run runs/vpae/fashion_mnist-mlp-normal_identity-k1-s0 --quick

It restores the newest readable checkpoint of the run (the model is rebuilt from the
description `train.fit(model=...)` saved with it), then measures on the test set of the run's
dataset, whatever source ``data.dataset`` names (a built-in name, ``tfds:NAME``, an .npz file
or a folder of images, read as the run read it: `jaxae.data.load_config`; a run trained on
arrays of your own, whose config names the default dataset, is refused: `TrainingDataError`),
and writes ``<run>/eval/metrics.json`` and ``metrics.md``:
- reconstruction: per-pixel MSE and PSNR of the clipped reconstructions, and their FID, KID and
  precision/recall against the test images ("reconstruction FID");
- likelihood, where the model has one: test NLL in nats per image and bits per dimension, with
  the convention it is in (`likelihood_convention`: a density over x / 255, or for the Bernoulli
  head on binarized images a probability mass, a discrete NLL);
- samples, for each sampler the model supports: FID, KID, precision/recall. Latent-code models
  (the MLP autoencoders, the VAE) have `prior` (decode z ~ N(0, I), the VAE's own sampler) and
  `gaussian` (decode codes from a full-covariance Gaussian fitted ex post to the training codes,
  the simplest of the regularized-AE family's ex-post densities); a PAE run (the last stage of
  its folder, `checkpoint.restore_params`) also has `flow`, its fitted latent flow (Eq. 6). The
  VPAE's CNN has no code, so it has no sampler.

A run on vectors (a table [N, D], `jaxae.data.Standardization`) is scored on its test rows (the
first `num_samples`): reconstruction MSE of the standardized features, and the NLL in nats per
example of the data in its own units (the model's NLL of the standardized vectors plus the
log-Jacobian); the image metrics (PSNR, FID, KID, precision/recall, samples) are skipped, saying
so in ``skipped``.

The protocol (`jaxae.metrics.PROTOCOL`): 10,000 generated samples against the 10,000 test
images, pixels in [0, 1] before the Inception transform. `--quick` (or other counts) is allowed
and the output then says so. Grey images are replicated to RGB, as pytorch-fid does. The test
images' Inception features are cached, keyed by the images' own bytes and the weights' hash
(`image_features`), so scoring a model embeds only its own images, and a changed data file is
never scored against the features of its old images.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxae import checkpoint, inception, metrics, objectives, parallel, priors
from jaxae import data as jdata

STANDARD_COUNT = 10_000
QUICK_COUNT = 1_000


# --- reference features, cached ----------------------------------------------------------------


def cache_dir() -> Path:
    """Where reference features are cached: $JAXAE_CACHE_DIR, else ~/.cache/jaxae."""
    return Path(os.environ.get("JAXAE_CACHE_DIR") or Path.home() / ".cache" / "jaxae")


def source_label(dataset) -> str:
    """A short name of a source for file names and messages: the built-in or tfds name, or the
    file's or folder's own name. `dataset`: what ``data.dataset`` names, or a data section."""
    name = dataset if isinstance(dataset, str) else dataset["dataset"]
    source = jdata.parse_source(name)
    return source.name if source.kind in ("builtin", "tfds") else Path(name).name


def reference_images(
    dataset,
    split: str = "test",
    count: int = STANDARD_COUNT,
    *,
    pad_to_32: bool = False,
    data_dir=None,
    seed: int = 0,
) -> np.ndarray:
    """The first `count` images of a split [N, H, W, C], uint8 (floats in [0, 1] from a float
    .npz), as a run of that data takes them.

    Args:
      dataset: a built-in name (its files' images, zero-padded to 32 x 32 with `pad_to_32`);
        any other source ``data.dataset`` names (``tfds:NAME``, an .npz file, a folder of
        images), read by `jaxae.data.load` with its defaults; or a config's ``data`` section
        (a run's: ``restored.config.data``), read as the run reads it (`jaxae.data.load_config`:
        its image_size, channels, test, test_fraction, pad_to_32, binarize).
      split: 'train' or 'test'.
      seed: ``training.seed``, which holds out a data section's validation images of 'train'.

    Raises:
      ValueError: fewer than `count` images; a source of vectors (FID is of images); a
        `pad_to_32` given with a data section (set its own field instead).
    """
    if split not in jdata.SPLITS:
        raise ValueError(f"split must be one of {jdata.SPLITS}, got {split!r}")
    label = source_label(dataset)
    if isinstance(dataset, str) and jdata.parse_source(dataset).kind == "builtin":
        images = jdata.load_raw(dataset, split, data_dir).images
    else:
        if isinstance(dataset, str):
            ds = jdata.load(dataset, data_dir=data_dir, pad_to_32=pad_to_32, seed=seed)
        elif pad_to_32 and not dataset["pad_to_32"]:
            raise ValueError("reference_images: a data section pads by its own pad_to_32 field; "
                             "set it there, not pad_to_32=True")  # fmt: skip
        else:
            ds = jdata.load_config(dataset, seed=seed, data_dir=data_dir)
        if ds.standardization is not None:
            raise ValueError(f"{label} holds vectors [N, D], not images: it has no Inception "
                             "features (FID, KID and precision/recall are of images)")  # fmt: skip
        images, pad_to_32 = getattr(ds, split).images, False  # padded already
    if count > len(images):
        raise _too_few(f"{label} {split}", len(images), count)
    images = np.asarray(images[:count])
    return jdata.pad32(images) if pad_to_32 else images


def _too_few(what: str, n: int, count: int) -> ValueError:
    """The error for `count` FID images asked of `what`, which has only `n`: what to pass."""
    return ValueError(f"{what} has {n} images, fewer than the {count} asked: FID compares as "
                      f"many samples as reference images; pass --quick --samples {n} (marked: "
                      "FIDs at other counts are not comparable), or --no-fid for the "
                      f"reconstruction error (and likelihood) of all {n} test images")  # fmt: skip


def reference_features(
    dataset,
    split: str = "test",
    count: int = STANDARD_COUNT,
    *,
    pad_to_32: bool = False,
    data_dir=None,
    seed: int = 0,
    weights=None,
    mesh=None,
    progress: bool = True,
) -> np.ndarray:
    """Inception features [count, 2048] of `reference_images` (the same arguments: a built-in
    name, any source, or a run's data section), computed once and cached (`image_features`)."""
    images = reference_images(dataset, split, count, pad_to_32=pad_to_32, data_dir=data_dir,
                              seed=seed)  # fmt: skip
    return image_features(images, label=f"{source_label(dataset)}-{split}", weights=weights,
                          mesh=mesh, progress=progress)  # fmt: skip


def _digests(images: np.ndarray) -> np.ndarray:
    """[N] uint64: an 8-byte BLAKE2b digest of each image's bytes."""
    return np.array([int.from_bytes(hashlib.blake2b(x.tobytes(), digest_size=8).digest(),
                                    "little") for x in images], np.uint64)  # fmt: skip


def image_features(images, *, label: str = "images", weights=None, mesh=None,
                   progress: bool = True) -> np.ndarray:  # fmt: skip
    """Inception features [N, 2048] of images [N, H, W, C] (`inception.features`: uint8, or
    floats in [0, 1]; grey or RGB), computed once and cached under `cache_dir()`/fid.

    The cache is keyed by the images themselves: a digest of each image's bytes, their shape
    and dtype, and the weights' sha256, so that other images (a file of a folder replaced,
    another image_size, channels or padding, another test split) never read another set's
    features. The features of the first N images are also read from the file of a larger set
    that starts with these images (each image's digest is stored beside its features). An
    unreadable cache file is recomputed. `label` only names the file for a reader
    ('fashion_mnist-test').
    """
    x = inception.check_input(images)
    path = inception.weights_path(weights)
    n, digests = len(x), _digests(x)
    shape = "x".join(map(str, x.shape[1:])) + f"{x.dtype.kind}{x.dtype.itemsize}"  # 28x28x1u1
    key = hashlib.sha256(shape.encode() + digests.tobytes()).hexdigest()[:16]
    weights_key = inception.weights_sha256(path)[:16]
    folder = cache_dir() / "fid"
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_-")[:48] or "images"
    file = folder / f"{tag}-{n}-{shape}-{key}-{weights_key}.npz"
    same = sorted(folder.glob(f"*-{n}-{shape}-{key}-{weights_key}.npz"))  # any label
    larger = sorted(
        (int(count), f)
        for f in folder.glob(f"*-{shape}-*-{weights_key}.npz")
        if (count := f.name.split("-")[-4]).isdigit() and int(count) > n
    )
    for f in same + [f for _, f in larger]:
        try:
            with np.load(f) as z:
                if not np.array_equal(z["digests"][:n], digests):
                    if f in same:
                        raise ValueError("it holds the features of other images")
                    continue  # a larger set that starts with other images
                feats = z["features"][:n]
            if feats.shape == (n, inception.FEATURES) and np.isfinite(feats).all():
                return feats
            raise ValueError(f"shape {feats.shape}")
        except Exception as e:  # a corrupt or foreign file: recompute it
            warnings.warn(f"ignoring unreadable reference features {f}: {e}", stacklevel=2)
    feats = inception.features(x, weights=path, mesh=mesh, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, features=feats, digests=digests)
    os.replace(tmp, file)  # atomic: a crash never leaves a half-written cache file
    return feats


def distribution_metrics(feats: np.ndarray, ref: np.ndarray, *, quick: bool) -> dict:
    """FID, KID (mean, std) and k-NN precision/recall of features [n, F] against reference
    features [m, F], with the counts n ('num_images') and m ('num_reference') behind them."""
    kid_mean, kid_std = metrics.kid(feats, ref)
    precision, recall = metrics.precision_recall(ref, feats)
    return {
        "fid": metrics.fid(feats, ref, quick=quick),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "num_images": len(feats),
        "num_reference": len(ref),
    }


# --- what a restored model can do ---------------------------------------------------------

restore = checkpoint.restore_params  # the model of a run folder, however it was trained


class Functions(NamedTuple):
    """Jitted functions of a restored model on images in [0, 1] (uint8 is divided by 255), or
    of a model of vectors on standardized vectors [B, D] (`is_vectors`; nothing clipped)."""

    reconstruct: callable  # x [B, H, W, C] -> recon in [0, 1]
    nll: callable | None  # x -> nats per image [B] (the VAE: negative ELBO); None: no density
    encode: callable | None  # x -> codes [B, d]; None: the code is not a vector (the VPAE CNN)
    decode: callable | None  # z [B, d] -> images in [0, 1]
    latent_dim: int | None


def is_vectors(model) -> bool:
    """Whether a model takes vectors [B, D] (image shape (D,)), not images."""
    return len(model.image_shape) == 1


def functions(restored: checkpoint.Restored) -> Functions:
    """The evaluation functions of any restored model, from the model interface alone."""
    model = restored.model
    offset = model.preprocess.offset  # model inputs are x - offset
    key = jax.random.PRNGKey(0)
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    log_prob = objectives.log_prob_fn(graphdef)
    lo, hi = (-jnp.inf, jnp.inf) if is_vectors(model) else (0.0, 1.0)  # pixels are clipped

    def decode(z):
        return jnp.clip(model.point(model.decode(z), key)[0] + offset, lo, hi)

    def encode(x):
        return model.encode(x - offset)

    code = jax.eval_shape(encode, jnp.zeros((1, *model.image_shape), jnp.float32))
    nll = None
    if model.has_density:
        nll = jax.jit(lambda x: -log_prob(params, state, {"image": x - offset})["log_prob"])
    has_code = code.ndim == 2
    return Functions(
        jax.jit(lambda x: decode(encode(x))),
        nll,
        jax.jit(encode) if has_code else None,
        jax.jit(decode) if has_code else None,
        code.shape[1] if has_code else None,
    )


def log_prob(model, images, *, scale: str | None = None, batch_size: int = 500, mesh=None,
             standardization: jdata.Standardization | None = None):  # fmt: skip
    """log p(x) in nats of every image under a model (the VAE: its ELBO): float64 [N].

    Jitted and batched over the devices (`parallel.map_batches`); the scoring call of research
    code and of likelihood baselines. `images`: uint8 [N, H, W, C] (divided by 255) or floats in
    [0, 1], shifted to the model's own pixel scale (`Model.scale`: 'centered' by -0.5);
    `scale`: None, or that same scale (`Model.check_scale`).

    A model of vectors takes float vectors [N, D] in the data's own units and the
    `standardization` of its training split (``jdata.load_config(config.data, ...)
    .standardization``): log p(x) of the data, the model's log-density of the standardized
    vectors minus `Standardization.log_det`.
    """
    offset = model.check_scale(scale).offset
    x = jdata.check_images(images, "images", shape=model.image_shape)
    if is_vectors(model):
        if standardization is None:
            raise ValueError("log_prob of a model of vectors needs the standardization of its "
                             "training split: pass standardization=jaxae.data.load_config("
                             "config.data, seed=config.training.seed).standardization")  # fmt: skip
        x = standardization.apply(x)
    x = _unit(x)
    if not model.has_density:
        raise ValueError(f"the {model.head.name!r} likelihood is not a density: no log p(x)")
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    fn = objectives.log_prob_fn(graphdef)
    out = _batched(lambda b: fn(params, state, {"image": b - offset})["log_prob"], x, batch_size,
                   mesh).astype(np.float64)  # fmt: skip
    return out if standardization is None else out - standardization.log_det


def _batched(fn, x: np.ndarray, batch: int = 500, mesh=None) -> np.ndarray:
    """fn over x in batches (`parallel.map_batches`: the last one padded, one compilation)."""
    mesh = mesh or parallel.data_mesh()
    step = parallel.data_parallel(fn, mesh, batch_argnums=(0,), donate_argnums=())
    batch = math.ceil(min(batch, len(x)) / mesh.devices.size) * mesh.devices.size
    return parallel.map_batches(step, x, batch, mesh=mesh)


def _unit(images: np.ndarray) -> np.ndarray:
    """Checked images as floats in [0, 1]: uint8 divided by 255, floats (and vectors) as they
    are."""
    if isinstance(images, jdata.LazyImages):  # a streamed training set: converted as read
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        return images.map(lambda x: x.astype(np.float32) / np.float32(scale), np.float32)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def samplers(
    fns: Functions, train_images, pad_to_32: bool = False, model=None, run_dir=None, restored=None
) -> dict:
    """name -> (key, n) -> codes [n, d], for the latent-code samplers the model supports:
    'prior' (the model's own prior, `prior_sample`: N(0, I) unless it has another, e.g. the
    GMM-DAE's mixture), 'gaussian' (a Gaussian fitted to the training codes), for a model with a
    fitted latent density (the PAE) 'flow' (its ``sample_codes``, Eq. 6), and every sampler
    fitted into the run folder (`fit_sampler`: ``<run>/samplers/<name>``, loaded when drawn
    from, so that a stale one is an error only where it is used: `check_samplers` names it)."""
    if fns.decode is None or train_images is None:
        return {}
    fitted = getattr(model, "fitted", None)
    latent = {}
    if hasattr(model, "sample_codes") and fitted is not None and int(fitted[...]):
        latent["flow"] = lambda key, n: np.asarray(model.sample_codes(key, n))
    if run_dir is not None:
        for name in fitted_samplers(run_dir):
            latent[name] = lambda key, n, name=name: np.asarray(
                load_sampler(run_dir, name, restored).sample(key, n), np.float32
            )
    if pad_to_32:
        train_images = jdata.pad32(train_images)
    codes = _batched(fns.encode, _unit(train_images)).astype(np.float64)
    mean, cov = codes.mean(0), np.cov(codes, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mean)) * max(np.trace(cov) / len(mean), 1))
    own = getattr(model, "prior_sample", None)

    def prior(key, n):
        if own is not None:
            return np.asarray(own(key, n), np.float32)
        return np.asarray(jax.random.normal(key, (n, fns.latent_dim)))

    def gaussian(key, n):
        eps = np.asarray(jax.random.normal(key, (n, len(mean))), np.float64)
        return (mean + eps @ chol.T).astype(np.float32)

    return {"prior": prior, "gaussian": gaussian, **latent}


# --- ex-post samplers fitted into a run folder -------------------------------------------------

SAMPLER_DIR = "samplers"  # <run>/samplers/<name>: a `jaxae.priors` sampler and fitted_on.json


class SamplerNotFittedError(ValueError):
    """A sampler asked of a run that has none of that name fitted (or one fitted on another
    checkpoint of the run)."""


class TrainingDataError(ValueError):
    """A run's config names a dataset whose training split is not what the run was trained on:
    `train.fit` on arrays of the user's own records the config's default dataset, so its codes or
    test set would silently be another data set's."""


class StandardizationChangedError(TrainingDataError):
    """A run on vectors whose data now give other standardization statistics (the training
    split's mean and std) than those saved with its checkpoints: the data file was replaced or
    changed since training, so the model would see other inputs than it was trained on."""


def check_standardization(saved: dict, now: jdata.Standardization, what: str) -> None:
    """Raise `StandardizationChangedError` unless the statistics recomputed from the data
    (`now`) are those saved with the run (`saved`: `Standardization.to_dict`), to within
    1e-9 of each feature's std (only rounding: the same rows give the same numbers)."""
    mean, std = np.asarray(saved["mean"], np.float64), np.asarray(saved["std"], np.float64)
    if mean.shape == now.mean.shape:
        off = np.maximum(np.abs(now.mean - mean), np.abs(now.std - std)) / std
        if off.max() <= 1e-9:
            return
        j = int(np.argmax(off))
        change = (
            f"feature {j}: mean {mean[j]:.6g} -> {now.mean[j]:.6g}, std {std[j]:.6g} -> "
            f"{now.std[j]:.6g}; {int((off > 1e-9).sum())} of {len(mean)} features changed"
        )
    else:
        change = f"{len(mean)} features when trained, {len(now.mean)} now"
    raise StandardizationChangedError(
        f"{what}: the training split's mean and std differ from those saved with the run "
        f"({change}): the data file was replaced or changed since the run was trained, so the "
        "model would be scored on other inputs than it was trained on. Put back the file it was "
        "trained on, or train a new run on the new data"
    )


def _run_data(restored, run_dir, data_dir=None, *, fix: str, check_size=True) -> jdata.Dataset:
    """The dataset of the run's config, split as the run's training split it (config.data:
    dataset, val_size, pad_to_32; training.seed), checked against the model's image shape and
    against the training data the checkpoint recorded (``meta['data']``): another number of
    images than that split is refused unless the run recorded files of this dataset (by name: a
    subset of its images, e.g. `experiments/vpae_table.py`'s runs), `check_size` is False, or
    the run was saved without these fields.

    Vectors: their standardization, recomputed from the data, is checked against the one saved
    with the run (``meta['standardization']``, where the run saved one).

    Raises:
      TrainingDataError: the sizes differ; the message ends with `fix`, what to do instead.
      StandardizationChangedError: the vectors' statistics are not those the run was trained on.
      ValueError: the images are not of the model's shape (`jaxae.data.check_image_shape`).
    """
    dc, tc = restored.config.data, restored.config.training
    ds = jdata.load_config(dc, seed=tc.seed, data_dir=data_dir)
    saved = restored.meta.get("standardization")
    if saved is not None and ds.standardization is not None:
        check_standardization(saved, ds.standardization, f"{run_dir} (data.dataset={dc.dataset!r})")
    data = restored.meta.get("data", {})
    recorded, files = data.get("num_examples"), {Path(f).name for f in data.get("files", [])}
    subset = files and files <= {Path(f).name for f in ds.files}
    if check_size and recorded not in (None, len(ds.train.images)) and not subset:
        raise TrainingDataError(
            f"{run_dir} was trained on {recorded:,} images, not on the {len(ds.train.images):,}-"
            f"image training split of {dc.dataset!r} that its config names (data.dataset, "
            f"data.val_size) nor on images read from its files (train.fit on arrays of your own "
            f"records the default dataset): {fix}"
        )
    shape = restored.model.image_shape
    for split in ("train", "test"):
        images, name = getattr(ds, split).images, f"the {dc.dataset} {split} images"
        if len(shape) == 1:
            jdata.check_vectors(images, name, dim=shape[0])
        else:
            jdata.check_image_shape(images, shape, name)
    return ds


def _encode(fns: Functions, images: np.ndarray) -> np.ndarray:
    """The codes [N, d] of checked images (`jaxae.data.check_images`: uint8, or floats in
    [0, 1])."""
    return _batched(fns.encode, _unit(images))


def fitted_samplers(run_dir) -> list[str]:
    """The names of the samplers fitted into a run folder (`fit_sampler`), sorted."""
    folder = Path(run_dir) / SAMPLER_DIR
    return sorted(p.name for p in folder.glob("*") if (p / priors.SPEC_FILE).is_file())


def _fit_hint(run_dir, name: str) -> str:
    return f"`python -m jaxae.evaluate --run {run_dir} --fit-sampler {name}`"


def _images_hint(run_dir, name: str) -> str:
    return (f"pass the images it was trained on, evaluate.fit_sampler({str(run_dir)!r}, "
            f"{name!r}, images=train_images), or fit jaxae.priors.fit on codes of your "
            "own")  # fmt: skip


def fit_sampler(
    run_dir, name: str, *, images=None, val_images=None, seed: int = 0, data_dir=None,
    restored=None, verbose: bool = False, **options,
) -> priors.Sampler:  # fmt: skip
    """Fit the ex-post sampler `name` (`jaxae.priors.SAMPLERS`: gaussian, gmm, flow, vae) to the
    codes of the run's training images, early-stopped (flow, vae) on its validation images'
    codes (else 10% of the training codes), and save it in ``<run>/samplers/<name>`` with the
    checkpoint it was fitted on (step and fingerprint); `load_sampler` and `samplers` read it.

    Without `images` the training split is the run's own (`config.data`: dataset, val_size,
    pad_to_32; `training.seed`), so the sampler never sees the run's validation or test images;
    a run whose checkpoint records another number of training images (`train.fit` on arrays of
    your own) is refused rather than fitted to another data set's codes. `images` (and
    `val_images`): the training (validation) images to encode instead, uint8 or floats in
    [0, 1] of the model's shape (`jaxae.data.check_images`); ``fitted_on.json`` then records
    ``"images": "given"`` and their count (a model of vectors: vectors in the data's own units,
    standardized as the run's training split, which is loaded for that). `options` go to
    `jaxae.priors.fit` (e.g. ``components=10`` for 'gmm'). `verbose`: print one line before the
    fit (what, on how many codes).

    Raises:
      TrainingDataError: no `images`, and the run was not trained on its config's dataset split.
      ValueError: an unknown sampler or option; images not of the model's shape; a model without
        vector codes (the VPAE CNN); a PAE asked for 'flow' (its own latent flow is that sampler
        already).
    """
    if name not in priors.SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: the samplers fitted to codes are "
                         f"{sorted(priors.SAMPLERS)} ('prior' is the model's own)")  # fmt: skip
    priors.check_options(name, options)  # before encoding a data set
    restored = restored or restore(run_dir)
    if name == "flow" and hasattr(restored.model, "sample_codes"):
        raise ValueError(f"{run_dir} is a PAE: its own latent flow is its 'flow' sampler")
    fns = functions(restored)
    if fns.encode is None:
        raise ValueError(f"{run_dir}: the model's code is not a vector: it has no sampler")
    shape = restored.model.image_shape
    if val_images is not None:
        val_images = jdata.check_images(val_images, "val_images", shape=shape)
    if images is not None:
        train = jdata.check_images(images, "images", shape=shape)
        source = {"images": "given"}
        if is_vectors(restored.model):
            standardize = _run_data(restored, run_dir, data_dir, fix=_images_hint(
                run_dir, name), check_size=False).standardization.apply  # fmt: skip
            train = standardize(train)
            val_images = None if val_images is None else standardize(val_images)
    else:
        ds = _run_data(restored, run_dir, data_dir, fix=_images_hint(run_dir, name))
        train = ds.train.images
        if val_images is None and ds.val is not None:
            val_images = ds.val.images
        source = {"images": "dataset", "dataset": restored.config.data.dataset}
    if verbose:
        what = "given" if images is not None else f"{restored.config.data.dataset} training"
        print(f"fitting the {name!r} sampler{f' {options}' if options else ''} to the codes of "
              f"{len(train):,} {what} images of {run_dir}", flush=True)  # fmt: skip
    codes = _encode(fns, train)
    val = None if val_images is None else _encode(fns, val_images)
    sampler = priors.fit(name, codes, key=jax.random.PRNGKey(seed), val_codes=val, **options)
    stages = checkpoint.stage_dirs(run_dir)
    fitted_on = checkpoint.stage_record(stages[-1], restored.step, stage=len(stages),
                                        name="model")  # fmt: skip
    folder = sampler.save(Path(run_dir) / SAMPLER_DIR / name)
    record = {**fitted_on, "seed": seed, "options": options, **source, "num_codes": len(codes)}
    (folder / "fitted_on.json").write_text(json.dumps(record, indent=2) + "\n")
    return sampler


def load_sampler(run_dir, name: str, restored=None) -> priors.Sampler:
    """The sampler `fit_sampler` saved in a run folder, checked against the run's checkpoint.

    Raises:
      SamplerNotFittedError: the run has no sampler `name`, or it was fitted on another
        checkpoint than the one `restored` (default: the newest) holds; the message says how to
        fit it.
    """
    folder = Path(run_dir) / SAMPLER_DIR / name
    if not (folder / priors.SPEC_FILE).is_file():
        have = fitted_samplers(run_dir)
        raise SamplerNotFittedError(
            f"{run_dir} has no fitted {name!r} sampler (fitted: {', '.join(have) or 'none'}; "
            f"always available: prior, gaussian): fit it with {_fit_hint(run_dir, name)}"
        )
    sampler = priors.load(folder)
    record = folder / "fitted_on.json"
    if restored is not None and record.is_file():
        on = json.loads(record.read_text())
        stages = checkpoint.stage_dirs(run_dir)
        with checkpoint.Checkpointer(stages[-1] / "checkpoints", save_every=1,
                                     read_only=True) as ckpt:  # fmt: skip
            now = ckpt.fingerprint(restored.step)
        if (on.get("step"), on.get("fingerprint")) != (restored.step, now):
            raise SamplerNotFittedError(
                f"{folder} was fitted on step {on.get('step')} of the run, which now restores "
                f"step {restored.step}: fit it again with {_fit_hint(run_dir, name)}"
            )
    return sampler


# --- the evaluation ---------------------------------------------------------------------------


def evaluate_run(
    run_dir,
    *,
    num_samples: int = STANDARD_COUNT,
    quick: bool = False,
    data_dir=None,
    weights=None,
    seed: int = 0,
    progress: bool = True,
    out=None,
    only_samplers=None,
    fid: bool = True,
    same_dataset: bool = False,
) -> dict:
    """Restore a run, measure it (see the module docstring), write JSON and markdown.

    `only_samplers`: names of the samplers to score (default: every one the model supports).
    `fid=False`: reconstruction error and likelihood only (no Inception features, no samples),
    on the first `num_samples` test images (any count: no FID protocol applies); the result
    then has no 'protocol' or 'num_samples'. Each figure records the number of images behind it
    ('num_images', and 'num_reference' for FID/KID/precision/recall).

    The test set is that of the run's config (`config.data.dataset`). A run whose checkpoint
    records another number of training images than that dataset's training split (`train.fit`
    on arrays of your own, which records the default dataset) is refused; `same_dataset=True`
    evaluates it anyway, for a run trained on a subset of that dataset's training images.

    Raises:
      TrainingDataError: the run was not trained on its config's dataset split (see above).
      SamplerNotFittedError: a sampler asked for (or a stale one fitted) is not usable.
      ValueError: other bad input, e.g. a count off the protocol without `quick`.
    """
    t0 = time.perf_counter()
    if fid and not quick and num_samples != STANDARD_COUNT:
        raise ValueError(
            f"the protocol uses {STANDARD_COUNT} samples; pass --quick to use {num_samples}"
        )
    restored = restore(run_dir)
    dc = restored.config.data
    fns = functions(restored)
    # Before any slow work: a missing or stale sampler is a usage error, named by itself.
    if only_samplers is not None or (fid and fitted_samplers(run_dir)):
        names = fitted_samplers(run_dir) if only_samplers is None else only_samplers
        check_samplers(run_dir, names, fns, restored)
    fix = ("its test set is not that dataset's; score it on images of your own in Python "
           "(evaluate.log_prob, evaluate.functions), or, trained on a subset of that dataset's "
           "training images, pass --same-dataset (evaluate_run(same_dataset=True))")  # fmt: skip
    ds = _run_data(restored, run_dir, data_dir, fix=fix, check_size=not same_dataset)
    vectors = is_vectors(restored.model)
    skipped = {}
    if vectors and fid:
        skipped["image metrics"] = ("the run's data are vectors, not images: no PSNR, FID, KID, "
                                    "precision/recall or samples, which are of images (Inception "
                                    "features)")  # fmt: skip
        fid = False
    n_test = len(ds.test.images)
    if num_samples > n_test and not vectors:
        if fid:
            raise _too_few(f"{dc.dataset} test", n_test, num_samples)
        num_samples = n_test  # without FID: every test image
    test = ds.test.images[:num_samples]  # the images the reference features are of
    mesh = parallel.data_mesh()

    def embed(images):
        return inception.features(images, weights=weights, mesh=mesh, progress=progress)

    x = _unit(test)
    recon = _batched(fns.reconstruct, x, mesh=mesh)
    mse = float(np.mean((recon - x) ** 2))
    result = {
        "run": str(run_dir),
        "step": restored.step,
        "stage_steps": list(restored.stage_steps),  # each stage's, e.g. [AE, flow] of a PAE
        "model": restored.spec,
        "dataset": dc.dataset,
    }
    if fid:  # the FID protocol only where an FID is computed: its counts, whether it is quick
        protocol = metrics.protocol_note(num_samples, num_samples, quick)
        result.update(protocol=protocol, num_samples=num_samples, quick=quick)
    if vectors:
        rec = {"mse": mse, "units": "standardized features", "num_examples": len(x)}
    else:
        rec = {"mse": mse, "psnr_db": metrics.psnr(mse), "num_images": len(x)}
    result.update(reconstruction=rec, samples={}, **({"skipped": skipped} if skipped else {}))
    if fid:  # the reference: the test images themselves, as the run reads its source
        ref = image_features(test, label=f"{source_label(dc.dataset)}-test", weights=weights,
                             mesh=mesh, progress=progress)  # fmt: skip
        result["weights_sha256"] = inception.weights_sha256(inception.weights_path(weights))
        result["reconstruction"].update(distribution_metrics(embed(recon), ref, quick=quick))
    if fns.nll is not None:
        nats = float(np.mean(_batched(fns.nll, x, mesh=mesh)))
        dims = math.prod(x.shape[1:])
        head = getattr(getattr(restored.model, "head", None), "name", None)
        convention = likelihood_convention(head, vectors, dc.binarize)
        if vectors:  # the data's NLL: the standardized one plus the log-Jacobian
            log_det = ds.standardization.log_det
            result["likelihood"] = {
                "nats_per_example": nats + log_det,
                "nats_per_example_standardized": nats,
                "log_det": log_det,
                "bits_per_dim": metrics.bits_per_dim(nats + log_det, dims),
                "num_examples": len(x),
                "convention": convention,
            }
        else:
            result["likelihood"] = {
                "nats_per_image": nats,
                "bits_per_dim": metrics.bits_per_dim(nats, dims),
                "num_images": len(x),
                "convention": convention,
            }
    train_images = ds.train.images if fid else None  # padded already, if the run's are
    for i, (name, draw) in enumerate(
        samplers(fns, train_images, False, restored.model, run_dir, restored).items()
    ):
        if only_samplers is not None and name not in only_samplers:
            continue
        codes = draw(jax.random.PRNGKey(seed * 1000 + i), num_samples)
        images = _batched(fns.decode, codes, mesh=mesh)
        result["samples"][name] = distribution_metrics(embed(images), ref, quick=quick)
    result["seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(out) if out else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "metrics.md").write_text(markdown(result))
    return result


def likelihood_convention(head: str | None, vectors: bool = False, binarize: bool = False) -> str:
    """What `evaluate_run`'s test NLL is, for a model of likelihood head `head` on vectors or
    images (binarized or not, config ``data.binarize``)."""
    if vectors:
        return ("in the data's own units: the model's NLL of the standardized vectors "
                "z = (x - mean) / std (the training split's statistics, "
                "nats_per_example_standardized) plus log_det = sum_j log std_j, the "
                "log-Jacobian of that map; for an autoencoder with a likelihood head it is "
                "-log p(x | f(x)), the decoder's density at the encoder's own code (the VPAE's "
                "number), not a marginal likelihood, so it can lie below the data's "
                "entropy")  # fmt: skip
    if head == "bernoulli" and binarize:
        return ("a probability mass over binary images {0, 1}^D (data.binarize: the test images "
                "binarized once by a seeded Bernoulli draw, jaxae.data.binarize_fixed): a "
                "discrete NLL in nats per image, as binarized-MNIST results are reported; bits "
                "per dimension is that NLL / (D ln 2), bits per binary pixel")  # fmt: skip
    if head == "bernoulli":
        return ("the Bernoulli cross-entropy of the grey test pixels x / 255: neither a "
                "probability mass (the pixels are not binary) nor a density over [0, 1]^D, so "
                "comparable only to other such cross-entropies (train with data.binarize=True "
                "for a likelihood of binary images)")  # fmt: skip
    return ("a density over x / 255 in [0, 1]^D at the test pixels (not dequantized): bits per "
            "dimension in those units, not a bound on a discrete likelihood "
            "(metrics.bits_per_dim)")  # fmt: skip


def sample(run_dir, sampler: str, key, n: int, *, restored=None, data_dir=None) -> np.ndarray:
    """n images [n, H, W, C] in [0, 1] (a model of vectors: vectors [n, D] in the data's own
    units, float64, undoing the standardization of the run's training split, which is loaded for
    it) decoded from codes drawn by `sampler`, the samplers of
    `samplers`: a sampler fitted into the run folder (`fit_sampler`: gaussian, gmm, flow, vae),
    'prior' (the model's own prior, `prior_sample`, else N(0, I)), 'flow' for a PAE run (its
    latent flow, Eq. 6), and 'gaussian' where none is fitted: a Gaussian fitted to the codes of
    the run's training split at each call (to keep one, `fit_sampler(run, 'gaussian')`).

    Raises:
      ValueError: `n` is not a positive integer; an unknown sampler.
      SamplerNotFittedError: `sampler` is not fitted into the run, or was fitted on another
        checkpoint (the message says how to fit it).
      TrainingDataError: 'gaussian' fitted now, of a run not trained on its config's dataset
        split: fit it with ``fit_sampler(run, 'gaussian', images=...)`` instead.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"sample: n is the number of images to draw, an integer >= 1; got {n!r}")
    restored = restored or restore(run_dir)
    fns, model = functions(restored), restored.model
    check_samplers(run_dir, [sampler], fns, restored)
    n = int(n)
    if sampler in fitted_samplers(run_dir):
        codes = load_sampler(run_dir, sampler, restored).sample(key, n)
    elif sampler == "prior":
        own = getattr(model, "prior_sample", None)
        codes = own(key, n) if own is not None else jax.random.normal(key, (n, fns.latent_dim))
    elif sampler == "flow":  # check_samplers let it through: the PAE's own
        codes = model.sample_codes(key, n)
    else:  # 'gaussian', fitted now as `samplers` (and so `evaluate_run`) fits it
        ds = _run_data(restored, run_dir, data_dir, fix=_images_hint(run_dir, sampler))
        codes = samplers(fns, ds.train.images, model=model)["gaussian"](key, n)
    out = np.asarray(_batched(fns.decode, np.asarray(codes, np.float32)))
    if not is_vectors(model):
        return out
    ds = _run_data(restored, run_dir, data_dir, fix=_images_hint(run_dir, sampler))
    return ds.standardization.invert(out)


def check_samplers(run_dir, names, fns: Functions, restored=None) -> None:
    """Raise a named error for a sampler the run cannot give (`SamplerNotFittedError` for one
    not fitted, or, given the `restored` checkpoint, fitted on another one; ValueError for an
    unknown name or a model without vector codes)."""
    if fns.decode is None:
        raise ValueError(f"{run_dir}: the model's code is not a vector: it has no sampler")
    fitted = fitted_samplers(run_dir)
    for name in names:
        if name in fitted:
            if restored is not None:
                load_sampler(run_dir, name, restored)  # raises if stale, naming `name`
            continue
        if name in ("prior", "gaussian"):
            continue
        if name == "flow" and (Path(run_dir) / "stage2").is_dir():
            continue  # the PAE's own latent flow
        if name in priors.SAMPLERS:
            load_sampler(run_dir, name)  # raises, saying how to fit it
        known = ["prior", *sorted(priors.SAMPLERS)]
        raise ValueError(f"unknown sampler {name!r}: the samplers are {', '.join(known)}")


STAGE_NAMES = ("autoencoder", "flow")  # the stages of a run with two, the PAE (`jaxae.pae`)


def _steps_note(result: dict) -> str:
    """'step 300', or each stage's: 'step 300 (autoencoder), 3210 (flow)'."""
    steps = result.get("stage_steps") or [result["step"]]
    if len(steps) == 1:
        return f"step {steps[0]}"
    names = STAGE_NAMES if len(steps) == 2 else [f"stage {i + 1}" for i in range(len(steps))]
    parts = [f"{'unknown' if s is None else s} ({n})" for s, n in zip(steps, names, strict=True)]
    return "step " + ", ".join(parts)


def markdown(result: dict) -> str:
    """The result as a markdown table, with the FID protocol under it when FIDs were computed."""
    cols = ["fid", "kid", "precision", "recall"]
    rec = result["reconstruction"]
    rows = [("reconstructions", rec)] if "fid" in rec else []
    rows += [(f"samples: {k}", v) for k, v in result["samples"].items()]
    lines = [f"# Evaluation of `{result['run']}` ({_steps_note(result)})", ""]
    if rows:
        lines += ["| images | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")

    def over(r):  # results written before the counts were recorded have none
        if "num_examples" in r:
            return f" over {r['num_examples']:,} test examples"
        return f" over {r['num_images']:,} test images" if "num_images" in r else ""

    lines += [""] if rows else []  # a blank line after the table
    psnr = f", PSNR {rec['psnr_db']:.2f} dB" if "psnr_db" in rec else f" ({rec.get('units')})"
    lines.append(f"Reconstruction MSE {rec['mse']:.5f}{psnr}{over(rec)}.")
    if "likelihood" in result:
        lik = result["likelihood"]
        per = "example" if "nats_per_example" in lik else "image"
        note = f": {lik['convention']}" if "convention" in lik else ""
        lines.append(f"Test NLL {lik[f'nats_per_{per}']:.2f} nats per {per}, "
                     f"{lik['bits_per_dim']:.3f} bits per dimension{over(lik)}{note}.")  # fmt: skip
    for what, why in result.get("skipped", {}).items():
        lines.append(f"Skipped {what}: {why}.")
    if "protocol" in result:  # absent when no FID was computed (--no-fid)
        lines += ["", f"Protocol: {result['protocol']}"]
    lines.append("")
    return "\n".join(lines)


def _fit_option(text: str) -> tuple[str, object]:
    """--fit-option NAME=VALUE: the value as a Python literal (5, 1e-3, (64, 64), None), else as
    the text itself (nsf)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. epochs=5), got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, TypeError, SyntaxError):
        return name.strip(), value.strip()


def main(argv=None) -> dict:
    """The command line, ``python -m jaxae.evaluate --run RUN [--quick] [--no-fid]``: `evaluate_run`
    on a run folder, after fitting the samplers of ``--fit-sampler`` (each with the options of
    ``--fit-option``); returns its result.

    Raises:
      SystemExit: 2, after one ``error: ...`` line on stderr, for bad arguments, a missing run,
        an unreadable checkpoint or bad input (no traceback: the message says what to fix).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (holds checkpoints/)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT} samples, marked as such")
    p.add_argument(
        "--samples", type=int, default=None, help="with --quick or --no-fid: how many images"
    )
    p.add_argument(
        "--no-fid", action="store_true",
        help="reconstruction error and likelihood only: no Inception features, no samples",
    )  # fmt: skip
    p.add_argument(
        "--sampler", action="append", default=None, metavar="NAME",
        help="score only this sampler (repeatable): prior, gaussian, or one fitted into the run",
    )  # fmt: skip
    p.add_argument(
        "--fit-sampler", action="append", default=[], metavar="NAME",
        help=f"first fit this ex-post sampler ({', '.join(sorted(priors.SAMPLERS))}) to the "
        "run's training codes and save it in <run>/samplers/NAME (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--fit-option", action="append", default=[], type=_fit_option, metavar="NAME=VALUE",
        help="an option of every --fit-sampler fit (repeatable; a Python literal, else text), "
        "e.g. epochs=5, hidden=(64, 64): jaxae.priors.fit_flow, fit_vae, fit_mixture, ...",
    )  # fmt: skip
    p.add_argument("--components", type=int, default=None,
                   help="components of a fitted gmm: --fit-option components=N")  # fmt: skip
    p.add_argument(
        "--same-dataset", action="store_true",
        help="the run was trained on a subset of its config's dataset's training images: "
        "evaluate on that dataset's test set although its training set size differs",
    )  # fmt: skip
    p.add_argument("--data-dir", default=None)
    p.add_argument("--weights", default=None, help="Inception npz (else $JAXAE_INCEPTION_WEIGHTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: <run>/eval")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.samples is not None and not (args.quick or args.no_fid):
        p.error(f"--samples needs --quick (or --no-fid): the standard protocol uses "
                f"{STANDARD_COUNT} samples")  # fmt: skip
    if args.samples is not None and args.samples < 2:
        p.error(f"--samples must be at least 2, got {args.samples}")
    options = dict(args.fit_option)
    if args.components is not None:
        if "components" in options:
            p.error("give the gmm's components once: --components or --fit-option components=")
        options["components"] = args.components
    if options and not args.fit_sampler:
        p.error("--fit-option and --components are options of --fit-sampler: name the sampler")
    if "JAX_NUM_CPU_DEVICES" not in os.environ:  # Inception on CPU: one device per core, 1.18x
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    n = args.samples or (QUICK_COUNT if args.quick else STANDARD_COUNT)
    try:
        for name in args.fit_sampler:  # every name and option, before the first (slow) fit
            priors.check_options(name, options)
        for name in args.fit_sampler:
            fit_sampler(args.run, name, seed=args.seed, data_dir=args.data_dir, verbose=True,
                        **options)  # fmt: skip
            print(f"fitted the {name!r} sampler: {Path(args.run) / SAMPLER_DIR / name}")
        result = evaluate_run(
            args.run,
            num_samples=n,
            quick=args.quick,
            data_dir=args.data_dir,
            weights=args.weights,
            seed=args.seed,
            progress=not args.no_progress,
            out=args.out,
            fid=not args.no_fid,
            only_samplers=args.sampler,
            same_dataset=args.same_dataset,
        )
    except (FileNotFoundError, ValueError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
