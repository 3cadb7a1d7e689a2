"""GMM-DAE (Saseendran et al. 2021): a deterministic autoencoder whose codes match a
10-component Gaussian-mixture prior (one-hot means, unit std) through the weighted covariance and
Kolmogorov-Smirnov terms (`jaxae.regularized.GMMDAE`); latent 10, reconstruction weight 0.005
(appendix A.2.3).

Command:  python -m experiments.train --config experiments/configs/gmmdae.py:mnist,cpu \
              --workdir runs/gmmdae_mnist_cpu
The argument is DATASET[,cpu] (mnist or fashion_mnist): the family's shared protocol
(`family.py`: paper scale for a GPU, or the CPU profile). Sample it with any ex-post sampler:
`python -m jaxae.evaluate --run RUN --fit-sampler gmm --sampler gmm --sampler prior`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    return family.get("gmmdae", arg, name="gmmdae.py", latent_dim=10)
