"""MaskAAE (Mondal et al. 2020): a learnable latent mask alpha = 1 - exp(-m) and a WGAN-GP critic
on the masked codes against the masked prior, 5 critic steps per autoencoder step
(`jaxae.regularized.MaskAAE`).

Command:  python -m experiments.train --config experiments/configs/maskaae.py:mnist,cpu \
              --workdir runs/maskaae_mnist_cpu
The argument is DATASET[,cpu] (mnist or fashion_mnist): the family's shared protocol
(`family.py`: paper scale for a GPU, or the CPU profile). Sample it with any ex-post sampler:
`python -m jaxae.evaluate --run RUN --fit-sampler gmm --sampler gmm --sampler prior`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    return family.get("maskaae", arg, name="maskaae.py")
