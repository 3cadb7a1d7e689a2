"""The PAE paper's VAE and beta-VAE baselines (Boehm & Seljak 2020, Sec. 4 and Table 1).

Command:  python -m experiments.train --config experiments/configs/pae_vae.py:32 \
              --workdir runs/pae_vae_k32
          python -m experiments.train --config experiments/configs/pae_vae.py:32,100,15 \
              --workdir runs/pae_bvae_k32
The argument is K[,BETA,C]: the latent dimension, and Eq. 15's beta and capacity C in nats
(the paper's tuned beta-VAE: beta = 100, C = 15; default beta = 1, C = 0, the plain VAE).
"The same architecture and training procedure as for the AE" (`pae_ae.py`): the infoGAN
networks, the encoder emitting the posterior's mean and raw scale (2K values), pixels
dequantized and scaled to [-0.5, 0.5], Adam 1e-3 -> 1e-4 at epoch 400 of 500, batch 128.
"Gaussian likelihood, standard normal prior, mean-field posterior": the paper does not say how
the likelihood's variance is set; here the decoder emits a per-pixel mean and scale (the `vae`
head, a diagonal Normal, 2 values per pixel), as the VPAE paper's VAE does.
"""

from experiments.configs import pae_ae


def get_config(arg="32"):
    form = "K[,BETA,C]"
    parts = (arg or "32").split(",")
    if len(parts) not in (1, 3):
        raise ValueError(
            f"pae_vae.py:{arg}: the argument is {form} (K alone, or K, BETA and C), got "
            f"{len(parts)} values; e.g. --config experiments/configs/pae_vae.py:32,100,15"
        )
    k, beta, capacity = (parts + ["1", "0"])[:3]
    c = pae_ae.get_config(str(pae_ae.latent_dim(k, arg, "pae_vae.py", form)))
    try:
        c.model.beta, c.model.capacity = float(beta), float(capacity)
    except ValueError:
        raise ValueError(
            f"pae_vae.py:{arg}: the argument is {form}, with BETA and C numbers, got BETA = "
            f"{beta!r}, C = {capacity!r}; e.g. --config experiments/configs/pae_vae.py:32,100,15"
        ) from None
    c.model.kind, c.model.head = "vae", "vae"
    return c
