"""Per-example training objectives. A loss function maps ``(params, batch, key)`` to a dict of
per-example terms ``{name: [B]}`` that must include ``'loss'``; it never reduces over the batch
(the trainer does that, in one place, `jaxae.train.reduce_terms`).

`vpae_nll` is the VPAE objective (Ciobanu 2021, Sec. 3.1): the negative log-likelihood of the
image under the head's distribution, -log p(x | f(x)); for the VAE head the negative ELBO,
-E_q[log p(x | z)] + KL(q(z | x) || N(0, I)) with one reparameterised sample.
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


def vpae_nll(graphdef: nnx.GraphDef):
    """Per-example loss of a `jaxae.models.VPAE`: {'loss', 'nll' (or 'mse'), 'kl' for the VAE}."""

    def loss_fn(params, batch, key):
        model = nnx.merge(graphdef, params)
        x, head = batch["image"], model.head
        raw, kl = model(x, key)
        if head.name == "mse":
            mse = squared_error(x.reshape(x.shape[0], -1), raw)
            return {"loss": mse, "mse": mse}
        nll = -model.likelihood(raw).log_prob(head.to_event(x))  # nats per image
        if head.name == "vae":
            return {"loss": nll + kl, "nll": nll, "kl": kl}
        return {"loss": nll, "nll": nll}

    return loss_fn
