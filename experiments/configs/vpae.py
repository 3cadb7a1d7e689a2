"""One row of the VPAE paper's Tables 1-2 (Ciobanu 2021): a likelihood head on the MLP or CNN.

Command:  python -m experiments.train --config experiments/configs/vpae.py:HEAD[,K[,ARCH]] \
              --workdir runs/vpae-HEAD
e.g. `vpae.py:t_diag,10` (mixture of 10 diagonal t), `vpae.py:matrix_normal_identity,1,cnn`,
`vpae.py:vae`, `vpae.py:maf`. Paper settings: 20 epochs, batch 128, Adam 1e-3, pixels / 255.
Runtime here (one core): 2-8 s/epoch for the MLP's identity and diagonal heads, ~330 s/epoch for
normal_full and t_full, 60-160 s/epoch for the CNN (experiments/results/vpae_*.md lists each).
Expected: the L2 columns of experiments/results/vpae_fashion_mnist.md (e.g. normal_identity K=1:
test MSE 0.0145, L2 1.451 x 100, paper 1.525). `python -m experiments.vpae_table` runs the grid.
"""

from jaxae import config, models


def get_config(arg="normal_identity"):
    parts = (arg or "normal_identity").split(",")
    head, k, arch = (parts + ["1", "mlp"][len(parts) - 1 :])[:3]
    c = config.default()
    spec = models.vpae_spec(head, int(k), arch)
    c.model.kind, c.model.head, c.model.k = spec["kind"], head, int(k)
    c.model.arch = arch
    c.training.epochs = 20
    return c
