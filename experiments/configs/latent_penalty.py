"""The README's example of a new model: an MLP autoencoder with a code penalty (RAE-style).

Command:  python -m experiments.train --config experiments/configs/latent_penalty.py \
              --workdir runs/latent_penalty
Runtime here (2 CPU cores): about 5 s for 5 epochs after ~10 s of compiling and loading.
Expected: test MSE close to the plain autoencoder's (about 0.015 after 5 epochs), with a small
'code_penalty' term in metrics.jsonl and summary.json.
"""

import experiments.examples.latent_penalty  # noqa: F401  (registers the model kind)
from jaxae import config


def get_config(arg=None):
    del arg
    c = config.default()
    c.model.kind = "latent_penalty"
    return c
