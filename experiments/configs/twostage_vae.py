"""The 2-stage VAE (Dai & Wipf 2019): a VAE (`betavae.py` with beta 1), then a second VAE fitted
on its codes (the 'vae' ex-post sampler of `jaxae.priors`), whose samples the first decodes.

Command:  python -m experiments.train --config experiments/configs/twostage_vae.py:mnist,cpu \
              --workdir runs/twostage_mnist_cpu
          python -m jaxae.evaluate --run runs/twostage_mnist_cpu --fit-sampler vae --sampler vae
The argument is DATASET[,cpu].
"""

from experiments.configs import betavae


def get_config(arg="mnist"):
    return betavae.get_config(arg)
