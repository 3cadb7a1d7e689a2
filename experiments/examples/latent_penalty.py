"""A new model in one module: an autoencoder whose code is penalised by beta |z|^2 / 2.

The regularized-AE family's simplest member (the RAE's code penalty, Ghosh et al. 2020). All it
adds to `jaxae.models.Autoencoder` is a named regularizer term from `latent`; the objective
(`jaxae.objectives.terms`: likelihood term + regularizers), the trainer, checkpoints and
`jaxae.evaluate` take it from there. Train it with its config:

    python -m experiments.train --config experiments/configs/latent_penalty.py --workdir runs/l2
"""

import jax.numpy as jnp

from jaxae import models

BETA = 1e-3  # weight of the code penalty, against the per-pixel MSE


@models.register("latent_penalty")
class LatentPenaltyAE(models.Autoencoder):
    """`Autoencoder` (any arch, any head) with the code penalty beta |z|^2 / 2 per example."""

    def latent(self, x, key=None):
        z = self.encode(x)
        return z, {"code_penalty": 0.5 * BETA * jnp.sum(jnp.square(z), axis=-1)}  # [B]
