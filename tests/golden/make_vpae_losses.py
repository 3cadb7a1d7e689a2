"""Write tests/golden/vpae_losses.json: the VPAE losses of 20 Adam steps on real Fashion-MNIST.

Made once with the code before the model-interface reshape (commit e5e91c1); tests/test_golden.py
recomputes them with today's code and compares bit for bit. Settings: the first 32 training
images (uint8 / 255, no dequantization), seed 0, Adam 1e-3, one CPU device, 20 steps of the
jitted step on that same batch; recorded: the loss of every step and the loss after the last.

    JAX_NUM_CPU_DEVICES=1 python -m tests.golden.make_vpae_losses
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from jaxae import data, objectives, parallel, train
from jaxae.heads import HEADS, Head
from jaxae.models import VPAE

CASES = [("mlp", h, 1) for h in HEADS] + [("mlp", "normal_identity", 10)]
CASES += [("cnn", "matrix_normal_identity", 1)]
STEPS, BATCH = 20, 32


def losses(arch, name, k, images):
    model = VPAE(Head(name, k=k), arch, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = objectives.vpae_nll(graphdef)
    opt, mesh = optax.adam(1e-3), parallel.data_mesh(jax.devices()[:1])
    pre = data.Preprocess("unit")
    step = train.make_train_step(loss_fn, opt, mesh, prepare=lambda b, key: {"image": pre(b["image"])})
    state = parallel.replicate(train.init_state(params, opt, seed=0), mesh)
    batch = parallel.shard_batch({"image": images}, mesh)
    out = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        out.append(float(metrics["loss"]))
    key = jax.random.fold_in(state["key"], state["step"])
    _, loss_key = jax.random.split(key)
    x = pre(images)
    final = train.reduce_terms(loss_fn(state["params"], {"image": x}, loss_key))["loss"]
    out.append(float(final))
    return out


def main():
    images = data.load_raw("fashion_mnist", "train").images[:BATCH]
    result = {"steps": STEPS, "batch": BATCH, "seed": 0, "cases": {}}
    for arch, name, k in CASES:
        values = losses(arch, name, k, images)
        result["cases"][f"{arch}-{name}-k{k}"] = {"loss": values, "hex": [v.hex() for v in values]}
        print(arch, name, k, values[0], values[-1], file=sys.stderr, flush=True)
    Path(__file__).with_name("vpae_losses.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
