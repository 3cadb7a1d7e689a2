"""FlexAE (the slides' generalized objective): a learnable prior generator matched to the codes
through a WGAN-GP critic (`jaxae.regularized.FlexAE`); its generator is the model's own
sampler ('prior').

Command:  python -m experiments.train --config experiments/configs/flexae.py:mnist,cpu \
              --workdir runs/flexae_mnist_cpu
The argument is DATASET[,cpu] (mnist or fashion_mnist): the family's shared protocol
(`family.py`: paper scale for a GPU, or the CPU profile). Sample it with any ex-post sampler:
`python -m jaxae.evaluate --run RUN --fit-sampler gmm --sampler gmm --sampler prior`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    return family.get("flexae", arg, name="flexae.py")
