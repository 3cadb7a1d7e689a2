"""What streaming the training set from the host costs (`jaxae.stream`), against training on the
set held in device memory, for the infoGAN autoencoder at 32x32x3 (issue 25: at most 10%).

Command:    python -m benchmarks.streaming
Smoke run:  python -m benchmarks.streaming --steps 4 --epochs 2

One process trains the same model on the same random uint8 images through `jaxae.train.fit`
four times: ``in_memory`` (the set on the device, each epoch one `lax.scan`), ``streamed``
(``data.memory_budget_mb`` set below the set's size: batches read from host arrays by the
grain pipeline, one jitted step per batch), ``streamed_memmap`` (the same, reading rows of an
``np.load(..., mmap_mode='r')`` array on disk) and ``streamed_folder`` (the images as PNG files
in a folder, over the budget: `jaxae.data.LazyImages` decodes each batch's files as it comes;
its training split is the folder's 90%, the rest being its test split). Each prints images/s,
the median over the epochs after the first (which compiles), and ``ratio_to_in_memory``;
``matmul`` is this machine's float32 matmul rate in the same run, for scale. The machines are
shared: compare the ratios of one run, never numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import models, objectives, train

SHAPE = (32, 32, 3)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of float32 ``a @ b`` rate of this machine, GFLOP/s."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(images, workdir: Path, *, budget_mb: float, batch: int, epochs: int) -> dict:
    """Train `epochs` epochs; images/s of the epochs after the first (median)."""
    config = jconfig.make(
        data=dict(dataset="benchmark", memory_budget_mb=budget_mb),
        model=dict(kind="ae", arch="infogan", head="mse", latent_dim=32),
        training=dict(batch_size=batch, epochs=epochs, checkpoint_every=10**6),
    )
    spec = {**config.model.to_dict(), "image_shape": list(SHAPE), "seed": 0}
    model = models.build(spec)
    graphdef, params, model_state = objectives.split(model, train=True)
    steps_per_epoch = len(images) // batch
    update = train.model_update(model, graphdef, config.optimizer, steps_per_epoch)
    pre = jdata.Preprocess(scale="unit")
    result = train.fit(
        config, workdir, params=params, model_state=model_state, update=update,
        train={"image": images}, prepare=lambda b, k: {**b, "image": pre(b["image"], k)},
        progress=False,
    )  # fmt: skip
    rates = [line["examples_per_s"] for line in result.history[1:]]
    return {"images_per_s": statistics.median(rates), "epochs_timed": len(rates),
            "steps_per_epoch": steps_per_epoch}  # fmt: skip


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=16, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=4, help="the first compiles and is not timed")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch compiles and is not timed")
    n = args.batch * args.steps
    images = np.random.default_rng(0).integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    lines = [{"case": "matmul", "gflops": round(matmul_gflops(), 1)}]
    print(json.dumps(lines[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "images.npy", images)
        on_disk = np.load(tmp / "images.npy", mmap_mode="r")
        (tmp / "png").mkdir()
        for i, x in enumerate(images):
            Image.fromarray(x).save(tmp / "png" / f"{i:05d}.png")
        files = jdata.load(str(tmp / "png"), memory_budget=1).train.images
        tiny = 1e-3  # MiB: below the set's size, so `fit` streams
        cases = {"in_memory": (images, 0.0), "streamed": (images, tiny),
                 "streamed_memmap": (on_disk, tiny), "streamed_folder": (files, tiny)}  # fmt: skip
        base = None
        for name, (x, budget) in cases.items():
            out = run_case(x, tmp / name, budget_mb=budget, batch=args.batch, epochs=args.epochs)
            base = base or out["images_per_s"]
            line = {"case": name, **{k: round(v, 1) if isinstance(v, float) else v
                                     for k, v in out.items()},
                    "ratio_to_in_memory": round(out["images_per_s"] / base, 3),
                    "shape": list(SHAPE), "batch": args.batch, "images": len(x)}  # fmt: skip
            lines.append(line)
            print(json.dumps(line), flush=True)
    return lines


if __name__ == "__main__":
    main()
