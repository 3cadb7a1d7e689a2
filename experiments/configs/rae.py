"""RAE (Ghosh et al. 2020): beta |z|^2 / 2 and L2 decay of the decoder's weights
(`jaxae.regularized.RAE`; `--config.rae.regularizer=gp` for the gradient penalty, `sn` for
spectral normalisation), sampled ex
post with a 10-component GMM ("RAE + GMM": `python -m jaxae.evaluate --run RUN --fit-sampler
gmm --sampler gmm`).

Command:  python -m experiments.train --config experiments/configs/rae.py:mnist,cpu \
              --workdir runs/rae_mnist_cpu
The argument is DATASET[,cpu] (mnist or fashion_mnist): the family's shared protocol
(`family.py`: paper scale for a GPU, or the CPU profile). Sample it with any ex-post sampler:
`python -m jaxae.evaluate --run RUN --fit-sampler gmm --sampler gmm --sampler prior`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    return family.get("rae", arg, name="rae.py")
