"""Per-example training objectives: the likelihood term plus the model's named regularizers.

For any `jaxae.models.Model`, with (z, R) = model.latent(x, key):

    loss(x) = -log p(x | decode(z)) + sum_r R_r(x)          # [B], never reduced here

The VPAE (Ciobanu 2021, Sec. 3.1): the negative log-likelihood of the image under the head's
distribution; the plain autoencoder: its per-pixel mean squared error (`SquaredError`, term
``'mse'``); the VAE: the negative ELBO, -E_q[log p(x | z)] + KL(q(z | x) || N(0, I)), with one
reparameterised sample. The trainer reduces the terms over the batch, in one place
(`jaxae.train.reduce_terms`).
"""

from __future__ import annotations

import chex
import jax
from flax import nnx


def terms(model, x: jax.Array, key: jax.Array | None) -> dict[str, jax.Array]:
    """Per-example terms ``{'loss', <likelihood term>, <regularizers>...}``, each [B].

    The likelihood term is named by the distribution (``'mse'`` for `SquaredError`, else
    ``'nll'``, in nats per image).
    """
    chex.assert_rank(x, {2, 4})  # images [B, H, W, C] or vectors [B, D]
    z, regularizers = model.latent(x, key)
    raw = model.decode(z)
    chex.assert_shape(raw, (x.shape[0], None))  # decoders emit raw [B, P]
    dist = model.likelihood(raw)
    recon = -dist.log_prob(model.event(x))  # [B]
    loss = recon
    for value in regularizers.values():
        loss = loss + value
    return {"loss": loss, getattr(dist, "term", "nll"): recon, **regularizers}


def split(model: nnx.Module, *, train: bool = True):
    """``(graphdef, params, model_state)`` of a model in train or eval mode.

    The model state is every variable that is not a parameter (BatchNorm running statistics);
    an empty `nnx.State` for models without any. The mode (BatchNorm using batch or running
    statistics) is part of the graphdef.
    """
    model.train() if train else model.eval()
    return nnx.split(model, nnx.Param, ...)


def merge(graphdef: nnx.GraphDef, params, model_state):
    """The model of a `split`, with these parameters and this model state."""
    return nnx.merge(graphdef, params, model_state)


def loss_fn(graphdef: nnx.GraphDef, method: str = "terms"):
    """``(params, model_state, batch, key) -> (terms, model_state)`` for a split model: the loss
    function the trainer takes (`jaxae.train.single`, a `jaxae.train.Group`).

    Args:
      graphdef: the model's graphdef (`split`).
      method: "terms": `terms`, the likelihood term plus the model's regularizers; else the
        name of a model method ``method(x, key) -> {'loss': [B], ...}`` (a parameter group's
        loss, `jaxae.models.ParamGroup.loss`, e.g. a critic's), x the batch's images
        [B, H, W, C]. Either way the model state (BatchNorm statistics) it updates is returned.
    """
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be 'terms' or the name of a model method, got {method!r}")

    def fn(params, model_state, batch, key):
        # copy: a BatchNorm call mutates its statistics, which must be Variables of this trace
        model = nnx.merge(graphdef, params, model_state, copy=True)
        if method == "terms":
            out = terms(model, batch["image"], key)
        else:
            loss = getattr(model, method, None)
            if not callable(loss):
                raise ValueError(
                    f"model {type(model).__name__} has no method {method!r} (a parameter "
                    "group's loss: `ParamGroup.loss` names a method (x, key) -> {'loss': [B]})"
                )
            chex.assert_rank(batch["image"], {2, 4})  # images [B, H, W, C] or vectors [B, D]
            out = loss(batch["image"], key)
        return out, nnx.split(model, nnx.Param, ...)[2]

    return fn


def log_prob_fn(graphdef: nnx.GraphDef):
    """``(params, model_state, batch) -> {'log_prob': [B]}``: log p(x) of each image in nats
    under an eval-mode model (the VAE: the ELBO at one posterior sample of a fixed key)."""
    key = jax.random.PRNGKey(0)

    def fn(params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        return {"log_prob": -terms(model, batch["image"], key)["loss"]}

    return fn
