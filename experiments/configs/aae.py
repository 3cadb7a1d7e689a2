"""WAE-GAN / the adversarial autoencoder (Tolstikhin et al. 2018; Makhzani et al. 2016): a latent
discriminator (3 x 512 ReLU MLP, its own Adam 5e-4, beta1 0.5) as a parameter group
(`jaxae.regularized.AAE`; lambda = 1).

Command:  python -m experiments.train --config experiments/configs/aae.py:mnist,cpu \
              --workdir runs/aae_mnist_cpu
The argument is DATASET[,cpu] (mnist or fashion_mnist): the family's shared protocol
(`family.py`: paper scale for a GPU, or the CPU profile). Sample it with any ex-post sampler:
`python -m jaxae.evaluate --run RUN --fit-sampler gmm --sampler gmm --sampler prior`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    return family.get("aae", arg, name="aae.py")
