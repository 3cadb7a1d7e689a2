"""WAE-MMD (Tolstikhin et al. 2018): lambda MMD^2 between the codes and N(0, I) with the inverse
multiquadratic kernel (`jaxae.regularized.WAE`; lambda = 10).

Command:  python -m experiments.train --config experiments/configs/wae.py:mnist,cpu \
              --workdir runs/wae_mnist_cpu
The argument is DATASET[,cpu] (mnist or fashion_mnist): the family's shared protocol
(`family.py`: paper scale for a GPU, or the CPU profile). Sample it with any ex-post sampler:
`python -m jaxae.evaluate --run RUN --fit-sampler gmm --sampler gmm --sampler prior`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    return family.get("wae", arg, name="wae.py")
