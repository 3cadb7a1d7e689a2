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
    return jnp.mean(jnp.square(recon - x).reshape(x.shape[0], -1), axis=1)


def autoencoder_mse(graphdef: nnx.GraphDef):
    """Deterministic autoencoder trained on the per-pixel mean squared error."""

    def loss_fn(params, batch, key):
        del key  # deterministic model
        model = nnx.merge(graphdef, params)
        out = model(batch["image"])
        mse = squared_error(batch["image"], out.recon)  # [B]
        return {"loss": mse, "mse": mse}

    return loss_fn
