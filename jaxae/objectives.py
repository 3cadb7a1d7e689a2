"""Per-example training objectives. A loss function maps ``(params, batch, key)`` to a dict of
per-example terms ``{name: [B]}`` that must include ``'loss'``; it never reduces over the batch
(the trainer does that, in one place, `jaxae.train.reduce_terms`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def squared_error(x: jax.Array, recon: jax.Array) -> jax.Array:
    """Mean squared error per example: [B, ...] x2 -> [B]."""
    b = x.shape[0]  # flatten first: element-wise loops over [B, 28, 28, 1] are slow on XLA:CPU
    return jnp.mean(jnp.square(recon.reshape(b, -1) - x.reshape(b, -1)), axis=1)


def autoencoder_mse(graphdef: nnx.GraphDef):
    """Deterministic autoencoder trained on the per-pixel mean squared error."""

    def loss_fn(params, batch, key):
        del key  # deterministic model
        model = nnx.merge(graphdef, params)
        out = model(batch["image"])
        mse = squared_error(batch["image"], out.recon)  # [B]
        return {"loss": mse, "mse": mse}

    return loss_fn
