"""Replay a VPAE run step by step from its newest checkpoint: why did it go non-finite?

The trainer stops a run at its first non-finite loss or gradient (`train.NonFiniteLossError`)
and keeps the last checkpoint before it. This script restores that checkpoint with its Adam
state, trains on the same batches in the same order (the order is a pure function of the seed
and the epoch) and prints, per step, the batch's mean loss, the gradient norm and the worst
example's NLL; for a K=1 Normal or t head with a diagonal or full factor also the smallest
diagonal entry of the factor(s) and the largest entry of the whitened residual
``L^-1 (x - loc)`` (matrix heads: ``A^-1 (X - M) B^-T``). It stops at the first non-finite
loss or gradient norm, or after ``--steps`` steps. The replay runs one jitted step at a time,
not the trainer's scan of steps, so float rounding may make it drift from the original run.

    python -m experiments.vpae_replay runs/vpae/fashion_mnist-mlp-normal_full-k1-s0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxae import data as jdata
from jaxae import evaluate, objectives, parallel, train


def _factor_probe(model, x) -> dict:
    """Smallest factor diagonal and largest whitened residual of a K=1 Normal/t head."""
    dist = model.likelihood(model(x)[0])
    head = model.head
    if head.k != 1 or not head.mixable or head.scale == "identity":
        return {}
    factors = (
        (dist.scale_row_tril, dist.scale_column_tril) if head.is_matrix else (dist.scale_tril,)
    )
    diag = jnp.min(jnp.stack([jnp.diagonal(f, axis1=-2, axis2=-1).min() for f in factors]))
    z = dist.whiten(head.to_event(x))  # L^-1 (x - loc); matrix heads A^-1 (X - M) B^-T
    return {"min_factor_diag": diag, "max_abs_whitened": jnp.abs(z).max()}


def replay(
    run_dir, images: np.ndarray | None = None, *, steps: int | None = None, data_dir=None
) -> Iterator[dict]:
    """Yield one metrics dict per replayed step of the VPAE run in `run_dir`.

    Args:
      run_dir: a run folder of `experiments.vpae_table` (``<run>/checkpoints``).
      images: the run's training images, uint8 [N, H, W, C] with the run's N (default: the
        whole training split of the run's dataset, from `data_dir`).
      steps: stop after this many steps (default: at the end of the run's epochs).
    """
    restored = evaluate.restore(run_dir)
    config, spec = restored.config, restored.spec
    if spec["kind"] != "vpae":
        raise ValueError(f"{run_dir} is a {spec['kind']!r} run; the replay knows VPAE runs only")
    if images is None:
        images = jdata.load(config.dataset, data_dir=data_dir).train.images
    trained_on = restored.meta["data"]["num_examples"]
    if len(images) != trained_on:
        raise ValueError(
            f"{run_dir} trained on {trained_on} images and the replay got {len(images)}: "
            "the batches would differ (pass the run's own training images)"
        )
    graphdef, _ = nnx.split(restored.model, nnx.Param)
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images)} images are fewer than one batch of {config.batch_size}")
    pre = jdata.Preprocess(config.scale, config.dequantize)
    step_fn = train.make_train_step(
        objectives.vpae_nll(graphdef),
        optax.adam(config.learning_rate),
        prepare=lambda b, key: {**b, "image": pre(b["image"], key)},
    )
    mesh = parallel.data_mesh()

    @jax.jit
    def probe(params, raw_images):
        model = nnx.merge(graphdef, params)
        x = pre(raw_images, jax.random.PRNGKey(0))
        nll = objectives.vpae_nll(graphdef)(params, {"image": x}, jax.random.PRNGKey(0))["loss"]
        return {"max_nll": nll.max(), **_factor_probe(model, x)}

    state = parallel.replicate(restored.state, mesh)
    key = train.data_key(config.seed)
    total = config.epochs * steps_per_epoch
    step = int(restored.step)
    last = total if steps is None else min(total, step + steps)
    while step < last:
        epoch, offset = divmod(step, steps_per_epoch)
        perm = np.asarray(train.epoch_permutation(key, epoch, len(images)))
        idx = perm[offset * config.batch_size : (offset + 1) * config.batch_size]
        batch = images[idx]
        probed = probe(state["params"], jnp.asarray(batch))
        state, metrics = step_fn(state, parallel.shard_batch({"image": batch}, mesh))
        step += 1
        line = {"step": step, **{k: float(v) for k, v in {**metrics, **probed}.items()}}
        yield line
        if not (np.isfinite(line["loss"]) and np.isfinite(line["grad_norm"])):
            return


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder, e.g. runs/vpae/mnist-mlp-normal_full-k1-s0")
    p.add_argument("--steps", type=int, default=None, help="replay at most this many steps")
    p.add_argument("--data-dir", default=None, help="the data folder (see jaxae.data)")
    args = p.parse_args(argv)
    lines = []
    for line in replay(Path(args.run), steps=args.steps, data_dir=args.data_dir):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}))
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
