"""The demo: the 784-32-784 MLP autoencoder on Fashion-MNIST, 10 epochs (what `make demo` runs).

Command:  python -m experiments.train --config experiments/configs/demo.py --workdir runs/demo
Runtime here (2 CPU cores): about 3-5 s for the 4,680 steps after ~10 s of compiling and loading.
Expected: test MSE about 0.013 (PSNR about 18.9 dB); the summary is in runs/demo/summary.json.
"""

from jaxae import config


def get_config(arg=None):
    del arg
    c = config.default()
    c.training.epochs = 10
    return c
