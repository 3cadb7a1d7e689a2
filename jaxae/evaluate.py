"""Evaluate a trained run under one protocol: reconstruction, likelihood and sample metrics.

Command:
    python -m jaxae.evaluate --run runs/demo
    python -m jaxae.evaluate --run runs/vpae/fashion_mnist-mlp-normal_identity-k1-s0 --quick

It restores the newest readable checkpoint of the run (the model is rebuilt from the
description `train.fit(model=...)` saved with it), then measures on the test set of the run's
dataset, and writes ``<run>/eval/metrics.json`` and ``metrics.md``:
- reconstruction: per-pixel MSE and PSNR of the clipped reconstructions, and their FID, KID and
  precision/recall against the test images ("reconstruction FID");
- likelihood, where the model has one: test NLL in nats per image and bits per dimension;
- samples, for each sampler the model supports: FID, KID, precision/recall. Latent-code models
  (the MLP autoencoders, the VAE) have `prior` (decode z ~ N(0, I), the VAE's own sampler) and
  `gaussian` (decode codes from a full-covariance Gaussian fitted ex post to the training codes,
  the simplest of the regularized-AE family's ex-post densities). The VPAE's CNN has no code, so
  it has no sampler.

The protocol (`jaxae.metrics.PROTOCOL`): 10,000 generated samples against the 10,000 test
images, pixels in [0, 1] before the Inception transform. `--quick` (or other counts) is allowed
and the output then says so. The test images' Inception features are cached per dataset, split,
count, resolution and weights hash (`reference_features`), so scoring a model embeds only its
own images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxae import data as jdata
from jaxae import inception, metrics, models, objectives, parallel, train
from jaxae.checkpoint import Checkpointer, CheckpointError
from jaxae.config import TrainConfig

STANDARD_COUNT = 10_000
QUICK_COUNT = 1_000


# --- reference features, cached ----------------------------------------------------------------


def cache_dir() -> Path:
    """Where reference features are cached: $JAXAE_CACHE_DIR, else ~/.cache/jaxae."""
    return Path(os.environ.get("JAXAE_CACHE_DIR") or Path.home() / ".cache" / "jaxae")


def reference_images(
    dataset: str,
    split: str = "test",
    count: int = STANDARD_COUNT,
    *,
    pad_to_32: bool = False,
    data_dir=None,
) -> np.ndarray:
    """The first `count` images of a split, uint8 [N, H, W, C] (zero-padded to 32 x 32 if asked)."""
    images = jdata.load_raw(dataset, split, data_dir).images
    if count > len(images):
        raise ValueError(f"{dataset} {split} has {len(images)} images, fewer than {count} asked")
    images = images[:count]
    return jdata.pad32(images) if pad_to_32 else images


def reference_features(
    dataset: str,
    split: str = "test",
    count: int = STANDARD_COUNT,
    *,
    pad_to_32: bool = False,
    data_dir=None,
    weights=None,
    mesh=None,
    progress: bool = True,
) -> np.ndarray:
    """Inception features [count, 2048] of a dataset split, computed once and cached.

    The cache file is keyed by dataset, split, count, resolution and the weights' sha256, so a
    change of any of them computes new features; the features of the first `count` images are
    also read from the file of a larger count. An unreadable cache file is recomputed.
    """
    path = inception.weights_path(weights)
    digest = inception.weights_sha256(path)[:16]
    res = "32" if pad_to_32 else "native"
    folder = cache_dir() / "fid"
    file = folder / f"{dataset}-{split}-{count}-{res}-{digest}.npz"
    larger = sorted(
        (int(f.name.split("-")[-3]), f)
        for f in folder.glob(f"{dataset}-{split}-*-{res}-{digest}.npz")
        if f.name.split("-")[-3].isdigit() and int(f.name.split("-")[-3]) > count
    )
    for f in [file] + [f for _, f in larger]:
        if not f.exists():
            continue
        try:
            with np.load(f) as z:
                feats = z["features"][:count]
            if feats.shape == (count, inception.FEATURES) and np.isfinite(feats).all():
                return feats
            raise ValueError(f"shape {feats.shape}")
        except Exception as e:  # a corrupt or foreign file: recompute it
            warnings.warn(f"ignoring unreadable reference features {f}: {e}", stacklevel=2)
    images = reference_images(dataset, split, count, pad_to_32=pad_to_32, data_dir=data_dir)
    feats = inception.features(images, weights=path, mesh=mesh, progress=progress)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, features=feats)
    os.replace(tmp, file)  # atomic: a crash never leaves a half-written cache file
    return feats


def distribution_metrics(feats: np.ndarray, ref: np.ndarray, *, quick: bool) -> dict:
    """FID, KID (mean, std) and k-NN precision/recall of features against reference features."""
    kid_mean, kid_std = metrics.kid(feats, ref)
    precision, recall = metrics.precision_recall(ref, feats)
    return {
        "fid": metrics.fid(feats, ref, quick=quick),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


# --- restoring a run ----------------------------------------------------------------------------


class Restored(NamedTuple):
    config: TrainConfig
    spec: dict  # the model description (`models.build`)
    model: nnx.Module  # with the checkpoint's weights
    step: int
    state: dict  # the whole train state (params, optimizer state, step, key), host arrays
    meta: dict  # the checkpoint's metadata (config, model, data: num_examples, ...)


def _infer_specs(config: TrainConfig, image_shape) -> list[dict]:
    """Candidate descriptions, for checkpoints written before `fit` saved the model's."""
    shape = list(image_shape)
    vpae = {"kind": "vpae", "head": config.head, "k": config.mixture_k, "arch": config.model}
    if config.head != "mse" or config.model == "cnn":
        return [{**vpae, "image_shape": shape}]
    ae = {"kind": "ae", "arch": config.model, "latent_dim": config.latent_dim}
    return [{**ae, "image_shape": shape}, {**vpae, "image_shape": shape}]  # or a VPAE's mse


def restore(run_dir) -> Restored:
    """The model of a run folder (``<run>/checkpoints``) at its newest readable step."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} does not exist: is {run_dir} a training run folder?")
    with Checkpointer(ckpt_dir, save_every=1) as ckpt:
        steps = ckpt.all_steps()[::-1]
        if not steps:
            raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint")
        errors = []
        for step in steps:
            try:
                meta = ckpt.read_meta(step)
                config = TrainConfig.from_dict(meta["config"])
                shape = (32, 32, 1) if config.pad_to_32 else (28, 28, 1)
                candidates = [meta["model"]] if "model" in meta else _infer_specs(config, shape)
                for spec in candidates:
                    model = models.build(spec)
                    graphdef, params = nnx.split(model, nnx.Param)
                    template = train.init_state(params, optax.adam(config.learning_rate), 0)
                    template = jax.tree.map(jnp.asarray, template)
                    try:
                        state, _ = ckpt.restore(step, template)
                    except CheckpointError as e:
                        errors.append(f"step {step} as {spec['kind']}: {e}")
                        continue
                    state = parallel.to_host(state)
                    model = nnx.merge(graphdef, state["params"])
                    return Restored(config, spec, model, step, state, meta)
            except (CheckpointError, KeyError, ValueError) as e:
                errors.append(f"step {step}: {e}")
        raise CheckpointError(f"no checkpoint of {run_dir} could be restored: " + "; ".join(errors))


# --- what each kind of model can do ---------------------------------------------------------


class Functions(NamedTuple):
    """Jitted functions of a restored model on images in [0, 1] (uint8 is divided by 255)."""

    reconstruct: callable  # x [B, H, W, C] -> recon in [0, 1]
    nll: callable | None  # x -> nats per image [B] (the VAE: negative ELBO)
    encode: callable | None  # x -> codes [B, d]
    decode: callable | None  # z [B, d] -> images in [0, 1]
    latent_dim: int | None


def functions(restored: Restored) -> Functions:
    """The evaluation functions of a restored model, by kind."""
    model, spec, config = restored.model, restored.spec, restored.config
    offset = 0.5 if config.scale == "centered" else 0.0  # model inputs are x - offset
    key = jax.random.PRNGKey(0)
    if spec["kind"] == "ae":

        def reconstruct(x):
            return jnp.clip(model(x - offset).recon + offset, 0.0, 1.0)

        def decode(z):
            return jnp.clip(model.decode(z) + offset, 0.0, 1.0)

        return Functions(
            jax.jit(reconstruct),
            None,
            jax.jit(lambda x: model.encode(x - offset)),
            jax.jit(decode),
            spec["latent_dim"],
        )

    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = objectives.vpae_nll(graphdef)
    nll = None
    if spec["head"] != "mse":
        nll = jax.jit(lambda x: loss_fn(params, {"image": x}, key)["loss"])
    has_code = spec["arch"] == "mlp"
    return Functions(
        jax.jit(lambda x: model.reconstruct(x, key)[0]),
        nll,
        jax.jit(model.code) if has_code else None,
        jax.jit(lambda z: model.decode_code(z, key)[0]) if has_code else None,
        models.CODE if has_code else None,
    )


def _batched(fn, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """fn over x in batches (the last one padded, so fn compiles once)."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(fn(chunk))[: batch - pad])
    return np.concatenate(out)


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def samplers(fns: Functions, train_images: np.ndarray) -> dict:
    """name -> (key, n) -> codes [n, d], for the latent-code samplers the model supports."""
    if fns.decode is None:
        return {}
    codes = _batched(fns.encode, _unit(train_images)).astype(np.float64)
    mean, cov = codes.mean(0), np.cov(codes, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mean)) * max(np.trace(cov) / len(mean), 1))

    def prior(key, n):
        return np.asarray(jax.random.normal(key, (n, fns.latent_dim)))

    def gaussian(key, n):
        eps = np.asarray(jax.random.normal(key, (n, len(mean))), np.float64)
        return (mean + eps @ chol.T).astype(np.float32)

    return {"prior": prior, "gaussian": gaussian}


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
) -> dict:
    """Restore a run, measure it (see the module docstring), write JSON and markdown.

    `only_samplers`: names of the samplers to score (default: every one the model supports).
    """
    t0 = time.perf_counter()
    restored = restore(run_dir)
    config = restored.config
    if not quick and num_samples != STANDARD_COUNT:
        raise ValueError(
            f"the protocol uses {STANDARD_COUNT} samples; pass --quick to use {num_samples}"
        )
    mesh = parallel.data_mesh()
    ds = jdata.load(config.dataset, data_dir=data_dir, pad_to_32=config.pad_to_32)
    test = reference_images(
        config.dataset, "test", num_samples, pad_to_32=config.pad_to_32, data_dir=data_dir
    )  # the images the reference features are of
    ref = reference_features(
        config.dataset,
        "test",
        num_samples,
        pad_to_32=config.pad_to_32,
        data_dir=data_dir,
        weights=weights,
        mesh=mesh,
        progress=progress,
    )

    def embed(images):
        return inception.features(images, weights=weights, mesh=mesh, progress=progress)

    fns = functions(restored)
    x = _unit(test)
    recon = _batched(fns.reconstruct, x)
    mse = float(np.mean((recon - x) ** 2))
    result = {
        "run": str(run_dir),
        "step": restored.step,
        "model": restored.spec,
        "dataset": config.dataset,
        "protocol": metrics.protocol_note(num_samples, num_samples, quick),
        "num_samples": num_samples,
        "quick": quick,
        "weights_sha256": inception.weights_sha256(inception.weights_path(weights)),
        "reconstruction": {
            "mse": mse,
            "psnr_db": metrics.psnr(mse),
            **distribution_metrics(embed(recon), ref, quick=quick),
        },
    }
    if fns.nll is not None:
        nats = float(np.mean(_batched(fns.nll, x)))
        dims = math.prod(x.shape[1:])
        result["likelihood"] = {
            "nats_per_image": nats,
            "bits_per_dim": metrics.bits_per_dim(nats, dims),
            "convention": "a density over x / 255 in [0, 1]^D at the test pixels (not "
            "dequantized): bits per dimension in those units, not a bound on a discrete "
            "likelihood (metrics.bits_per_dim)",
        }
    result["samples"] = {}
    for i, (name, draw) in enumerate(samplers(fns, ds.train.images).items()):
        if only_samplers is not None and name not in only_samplers:
            continue
        codes = draw(jax.random.PRNGKey(seed * 1000 + i), num_samples)
        images = _batched(fns.decode, codes)
        result["samples"][name] = distribution_metrics(embed(images), ref, quick=quick)
    result["seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(out) if out else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "metrics.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    """The result as a markdown table, with the protocol stated under it."""
    cols = ["fid", "kid", "precision", "recall"]
    lines = [
        f"# Evaluation of `{result['run']}` (step {result['step']})",
        "",
        "| images | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    rows = [("reconstructions", result["reconstruction"])]
    rows += [(f"samples: {k}", v) for k, v in result["samples"].items()]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")
    rec = result["reconstruction"]
    lines += ["", f"Reconstruction MSE {rec['mse']:.5f}, PSNR {rec['psnr_db']:.2f} dB."]
    if "likelihood" in result:
        lik = result["likelihood"]
        lines.append(
            f"Test NLL {lik['nats_per_image']:.1f} nats per image, {lik['bits_per_dim']:.3f} bits "
            "per dimension."
        )
    lines += ["", f"Protocol: {result['protocol']}", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (holds checkpoints/)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT} samples, marked as such")
    p.add_argument("--samples", type=int, default=None, help="with --quick: how many")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--weights", default=None, help="Inception npz (else $JAXAE_INCEPTION_WEIGHTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: <run>/eval")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if "JAX_NUM_CPU_DEVICES" not in os.environ:  # Inception on CPU: one device per core, 1.18x
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    n = args.samples or (QUICK_COUNT if args.quick else STANDARD_COUNT)
    result = evaluate_run(
        args.run,
        num_samples=n,
        quick=args.quick,
        data_dir=args.data_dir,
        weights=args.weights,
        seed=args.seed,
        progress=not args.no_progress,
        out=args.out,
    )
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
