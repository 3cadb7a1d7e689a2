"""The demo: the 784-32-784 MLP autoencoder on Fashion-MNIST, 10 epochs (what `make demo` runs).

Command:  python -m experiments.train --config experiments/configs/demo.py --workdir runs/demo
Runtime here (2 CPU cores, 2026-12-02): 7.7 s for `make demo` with the venv in place, 4.4 s of
it training the 4,680 steps (~200,000 images/s). Expected (seed 0): test MSE 0.0168, PSNR
17.7 dB, in runs/demo/summary.json; `python -m jaxae.evaluate --run runs/demo --quick` then gave
reconstruction MSE 0.0160 on the first 1,000 test images and quick FIDs 133 (reconstructions),
243 (prior samples) and 194 (Gaussian samples) in 3.7 minutes.
"""

from jaxae import config


def get_config(arg=None):
    del arg
    c = config.default()
    c.training.epochs = 10
    return c
