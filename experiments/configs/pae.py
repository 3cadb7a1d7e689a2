"""The Probabilistic Auto-Encoder (Boehm & Seljak 2020, Sec. 4): the infoGAN autoencoder of
`pae_ae.py`, then its latent flow (`jaxae.pae.fit_flow`), in one run folder.

Command:  python -m experiments.train --config experiments/configs/pae.py:32 \
              --workdir runs/pae_k32
The argument is K[,cpu]. Paper scale (a GPU): the AE for 500 epochs (Adam 1e-3 -> 1e-4 at
epoch 400), then the flow (RealNVP for K <= 32, else a Neural Spline Flow; 8 couplings with
residual conditioners of 2 x 128 units, 8 spline bins) for up to 300 epochs of Adam 1e-3, batch
256, early-stopped after 20 epochs without a better validation NLL (the paper: "at least 100
epochs until convergence"). `cpu` scales the AE down to 3 epochs and the flow to at most 100
epochs with patience 10: what `experiments/pae_ood.py --cpu` trains (measured there).
The noise map of Eq. 8 and the flow's early stopping use the 5,000 held-out training images.
"""

from experiments.configs import pae_ae


def get_config(arg="32"):
    k, *profile = (arg or "32").split(",")
    c = pae_ae.get_config(str(pae_ae.latent_dim(k, arg, "pae.py", "K[,cpu]")))
    c.flow.epochs, c.flow.patience = 300, 20
    if profile == ["cpu"]:
        c.training.epochs, c.training.keep_checkpoints = 3, 1
        c.flow.epochs, c.flow.patience = 100, 10
    elif profile:
        raise ValueError(f"pae.py:{arg}: the profile after K must be 'cpu', got {profile}")
    return c
