"""Demo: train the 784-32-784 MLP autoencoder on Fashion-MNIST for a few epochs.

Command (what `make demo` runs):  python -m experiments.demo
Writes runs/<name>/: metrics.jsonl, summary.json, reconstructions.png, checkpoints/.
Runtime: well under 5 minutes on 2 CPU cores (most of it is installing and loading data).
Running it again with the same --name resumes from the last checkpoint; pass --epochs to extend.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxae import data as jdata
from jaxae import nets, objectives, parallel, plots, train
from jaxae.config import TrainConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    d = TrainConfig()
    p.add_argument("--name", default="demo", help="run folder name under --runs")
    p.add_argument("--runs", default="runs")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--model", default=d.model, choices=("mlp", "conv"))
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps-per-call", type=int, default=d.steps_per_call)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    parallel.initialize_distributed()
    config = TrainConfig(
        dataset=args.dataset,
        model=args.model,
        latent_dim=args.latent_dim,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        seed=args.seed,
        steps_per_call=args.steps_per_call,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
    )
    workdir = Path(args.runs) / args.name
    mesh = parallel.data_mesh()
    print(
        f"jaxae demo: {config.model} autoencoder on {config.dataset}, {mesh.devices.size} device(s)"
    )

    ds = jdata.load(config.dataset, data_dir=args.data_dir, pad_to_32=config.pad_to_32)
    pre = jdata.Preprocess(scale=config.scale, dequantize=config.dequantize)
    eval_pre = jdata.Preprocess(scale=config.scale)

    model = nets.make_model(
        config.model, ds.train.images.shape[1:], config.latent_dim, seed=config.seed
    )
    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = objectives.autoencoder_mse(graphdef)

    def prepare(batch, key):
        return {**batch, "image": pre(batch["image"], key)}

    def test_terms(params, batch):
        terms = loss_fn(params, {"image": eval_pre(batch["image"])}, None)
        return {"mse": terms["mse"]}

    def eval_fn(params):
        return train.evaluate(test_terms, params, {"image": ds.test.images}, 500, mesh)

    t0 = time.perf_counter()
    result = train.fit(
        config,
        workdir,
        params=params,
        loss_fn=loss_fn,
        train={"image": ds.train.images},
        prepare=prepare,
        mesh=mesh,
        eval_fn=eval_fn,
        progress=not args.no_progress,
        model={
            "kind": "ae",
            "arch": config.model,
            "latent_dim": config.latent_dim,
            "image_shape": list(ds.train.images.shape[1:]),
        },
    )
    seconds = time.perf_counter() - t0

    # Reconstructions of the first 16 test images, clipped to the pixel range.
    test = eval_fn(result.state["params"])
    if jax.process_index() != 0:
        return test
    params = parallel.to_host(result.state["params"])
    x = eval_pre(jnp.asarray(ds.test.images[:16]))
    recon = nnx.merge(graphdef, params)(x).recon
    offset = 0.5 if config.scale == "centered" else 0.0
    png = plots.image_grid(
        [x + offset, np.clip(recon + offset, 0, 1)], workdir / "reconstructions.png"
    )

    mse = test["mse"]
    summary = {
        "config": config.to_dict(),
        "steps": int(result.state["step"]),
        "resumed_from": result.resumed_from,
        "devices": mesh.devices.size,
        "backend": jax.default_backend(),
        "train_loss_last_epoch": result.history[-1]["loss"] if result.history else None,
        "test_mse": mse,
        "test_psnr_db": float(10 * np.log10(1.0 / mse)),
        "fit_seconds": seconds,
        "examples_per_s_last": result.history[-1]["examples_per_s"] if result.history else None,
        "reconstructions": png.name,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"wrote {workdir}/metrics.jsonl, summary.json, {png.name}, checkpoints/")
    return summary


if __name__ == "__main__":
    main()
