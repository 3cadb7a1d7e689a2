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

from jaxae import checkpoint, objectives, parallel, train
from jaxae import data as jdata

# The kinds of model of the VPAE paper's tables (`models.vpae_spec`); 'vpae': descriptions
# written by earlier releases.
VPAE_KINDS = ("ae", "maf", "vae", "vpae")


def _factor_probe(model, x) -> dict:
    """Smallest factor diagonal and largest whitened residual of a K=1 Normal/t head."""
    dist = model.likelihood(model.decode(model.encode(x)))
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
      run_dir: a run folder of `experiments.vpae_table` (``<run>/checkpoints``), in the
        checkpoint format of this release or an earlier one.
      images: the run's training images, uint8 [N, H, W, C] with the run's N (default: the
        whole training split of the run's dataset, from `data_dir`).
      steps: stop after this many steps (default: at the end of the run's epochs).
    """
    run_dir = Path(run_dir)
    restored = checkpoint.restore_params(run_dir)  # the model, its config and description
    config, spec = restored.config, restored.spec
    dc, tc = config.data, config.training
    if spec.get("kind") not in VPAE_KINDS:
        raise ValueError(
            f"{run_dir} is a {spec.get('kind')!r} run; the replay knows VPAE runs only"
        )
    if images is None:
        images = jdata.load_config(dc, seed=tc.seed, data_dir=data_dir).train.images
    trained_on = restored.meta["data"]["num_examples"]
    if len(images) != trained_on:
        raise ValueError(
            f"{run_dir} trained on {trained_on} images and the replay got {len(images)}: "
            "the batches would differ (pass the run's own training images)"
        )
    steps_per_epoch = len(images) // tc.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images)} images are fewer than one batch of {tc.batch_size}")
    graphdef, params, model_state = objectives.split(restored.model, train=True)
    pre = jdata.Preprocess(dc.scale, dc.dequantize)
    # The run's own update: its loss and its optimizer (Adam, with the run's schedule if any).
    optimizer = train.make_optimizer(config.optimizer, steps_per_epoch)
    update = train.single(objectives.loss_fn(graphdef), optimizer)

    # The last checkpoint with its Adam state (earlier releases' single `state` item as well).
    template = jax.tree.map(jnp.asarray, train.init_state(params, update, 0, model_state))
    with checkpoint.Checkpointer(run_dir / "checkpoints", save_every=1) as ckpt:
        state, _ = ckpt.restore(restored.step, template)

    mesh = parallel.data_mesh()
    step_fn = train.make_train_step(
        update, mesh, prepare=lambda b, key: {**b, "image": pre(b["image"], key)}
    )

    @jax.jit
    def probe(params, model_state, raw_images):
        model = objectives.merge(graphdef, params, model_state)
        x = pre(raw_images, jax.random.PRNGKey(0))
        nll = objectives.terms(model, x, jax.random.PRNGKey(0))["loss"]
        return {"max_nll": nll.max(), **_factor_probe(model, x)}

    state = parallel.replicate(state, mesh)
    key = train.data_key(tc.seed)
    total = tc.epochs * steps_per_epoch
    step = int(restored.step)
    last = total if steps is None else min(total, step + steps)
    while step < last:
        epoch, offset = divmod(step, steps_per_epoch)
        perm = np.asarray(train.epoch_permutation(key, epoch, len(images)))
        idx = perm[offset * tc.batch_size : (offset + 1) * tc.batch_size]
        batch = images[idx]
        probed = probe(state["params"], state["model_state"], jnp.asarray(batch))
        state, metrics = step_fn(state, parallel.shard_batch({"image": batch}, mesh))
        step += 1
        line = {"step": step, **{k: float(v) for k, v in {**metrics, **probed}.items()}}
        yield line
        if not (np.isfinite(line["loss"]) and np.isfinite(line["grad_norm"])):
            return


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
