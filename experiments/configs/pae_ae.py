"""The PAE's first stage (Boehm & Seljak 2020, Sec. 4): the infoGAN autoencoder, latent dim K.

Command:  python -m experiments.train --config experiments/configs/pae_ae.py:32 \
              --workdir runs/pae_ae_k32
with K (the argument, default 32) from {4, 8, 16, 32, 64, 128}. Paper settings: pixels
dequantized and scaled to [-0.5, 0.5]; 500 epochs; Adam 1e-3, reduced to 1e-4 after 400 epochs;
batch 128 (ours: the paper does not say). 5,000 training images are held out for validation (the
PAE's noise map, Eq. 8, and the flow's early stopping use them).
Loss: the paper's Eq. 2 is the squared norm ||x - g(f(x))||^2 per image; the `mse` head is its
per-pixel mean, 1/784 of it: the same minimiser, and Adam is invariant to a constant scale of
the loss but for its epsilon (1e-8 here, small against these gradients).
Runtime here (2 CPU cores, `--config.training.epochs=3 --noprogress`, K=32, 13,200,417
weights): 240 s for 3 epochs of 429 steps, 75 s/epoch (733 images/s; plain PyTorch: 56 s/epoch
on this machine, STYLE.md): 500 epochs would take ~10 h. Expected after 3 epochs (seed 0):
test MSE 0.0099 per pixel; the paper's full-run numbers are in its Table 1.
`pae.py` adds the PAE's second stage (the latent flow) to this config.
"""

from jaxae import config


def latent_dim(k: str, arg: str, config: str, form: str = "K") -> int:
    """K from a config file's argument.

    Args:
      k: the K part of the argument, e.g. '32'.
      arg: the whole argument, for the message.
      config: the config file's name, e.g. 'pae.py'.
      form: what the argument looks like, e.g. 'K[,cpu]'.

    Returns:
      K, a positive int.

    Raises:
      ValueError: K is not a positive integer, saying the form of the argument.
    """
    try:
        value = int(k)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{config}:{arg}: the argument is {form}, with K (the latent dimension) a positive "
            f"integer, got K = {k!r}; e.g. --config experiments/configs/{config}:32"
        )
    return value


def get_config(arg="32"):
    k = latent_dim(arg, arg, "pae_ae.py") if arg else 32
    c = config.default()
    c.data.scale = "centered"
    c.data.dequantize = True
    c.data.val_size = 5000
    c.model.kind, c.model.arch, c.model.head, c.model.latent_dim = "ae", "infogan", "mse", k
    c.optimizer.name, c.optimizer.learning_rate = "adam", 1e-3
    c.optimizer.decay_epochs, c.optimizer.decay_factor = (400,), 0.1
    c.training.epochs = 500
    c.training.batch_size = 128
    return config.validate(c)
