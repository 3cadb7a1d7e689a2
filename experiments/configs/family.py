"""The shared protocol of the regularized-autoencoder family's configs (issue 24's comparison):
the GMM-DAE appendix's setup (Saseendran et al. 2021, A.2.2-A.2.3), used for every member "for
fair comparison", as the appendix does for its baselines.

Paper scale (a GPU): images zero-padded to 32 x 32, pixels in [0, 1], 50,000 training / 10,000
validation (held out of the training set, seeded) / 10,000 test images; the Table 1 network
(`nets` arch 'dcgan': 4x4 stride-2 convs 128-256-512-1024 with BatchNorm, mirrored with
transposed convs); latent 16 (the GMM-DAE's own 10); batch 100; Adam 2e-3 with betas
(0.5, 0.999); 100 epochs. The paper decays the rate "exponentially when the validation loss
plateaus": here it is multiplied by 0.1 at epochs 50 and 75 (a fixed schedule, so that a
resumed run follows the same trajectory).

`cpu`: width 16 instead of 128 (channels 16-32-64-128), 10 epochs, the decay at epochs 6 and 8;
everything else as above. On 2 shared cores (2026-12-07) one run trains in 2-6 minutes (MaskAAE
and FlexAE, with 5 critic steps, 17-20), and the comparison table's MNIST half took about two
hours with its evaluation: the whole table is two such halves, not two hours.
"""

from jaxae import config

DATASETS = ("mnist", "fashion_mnist")
LATENT = 16


def get(kind: str | None, arg: str | None, *, name: str, latent_dim: int = LATENT):
    """The family's config for model `kind` and the config argument ``DATASET[,cpu]``
    (`name`: the config file, for messages)."""
    dataset, *profile = (arg or "mnist").split(",")
    if dataset not in DATASETS or profile not in ([], ["cpu"]):
        raise ValueError(
            f"{name}:{arg}: the argument is DATASET[,cpu] with DATASET one of "
            f"{', '.join(DATASETS)}; e.g. --config experiments/configs/{name}:mnist,cpu"
        )
    c = config.default(kind)
    c.data.update(dataset=dataset, pad_to_32=True, val_size=10_000, scale="unit")
    c.model.update(arch="dcgan", head="mse", latent_dim=latent_dim)
    c.optimizer.update(learning_rate=2e-3, b1=0.5, b2=0.999, decay_epochs=(50, 75),
                       decay_factor=0.1)  # fmt: skip
    c.training.update(batch_size=100, epochs=100, keep_checkpoints=2)
    if profile:
        c.model.width = 16
        c.training.epochs = 10
        c.optimizer.decay_epochs = (6, 8)
    return c
