"""Frozen, hashable run configuration, validated on construction.

Sizes live here so they are static to `jax.jit` (a Python int passed as a traced argument
forces retracing; see STYLE.md). Every out-of-range value raises a ValueError naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MODELS = ("mlp", "conv", "cnn")
SCALES = ("unit", "centered")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
      dataset: a name known to `jaxae.data` (fashion_mnist, mnist, omniglot).
      model: 'mlp' (784-latent-784, ReLU code, linear output), 'conv' (small conv AE), or
        'cnn' (the VPAE paper's CNN, matrix heads only).
      head: the likelihood head (`jaxae.heads.HEADS`); 'mse' is the plain autoencoder.
      mixture_k: number of mixture components of the head.
      latent_dim: size of the code.
      batch_size: global batch size, split over all devices.
      epochs: passes over the training set (the last incomplete batch of each is dropped).
      learning_rate: Adam step size.
      seed: seeds parameters, per-step keys and the data order.
      scale: pixels in [0,1] ('unit') or [-0.5,0.5] ('centered').
      dequantize: add uniform noise, (x + u) / 256, as for likelihood models.
      pad_to_32: zero-pad 28x28 images to 32x32.
      val_size: training images held out for validation.
      steps_per_call: steps run inside one jitted `lax.scan`; 0 means one whole epoch.
      checkpoint_every: save every this many steps; 0 means at the end of every epoch.
      keep_checkpoints: how many recent checkpoints to keep.
      max_steps: stop after this global step (0: train all epochs). Resuming continues.
    """

    dataset: str = "fashion_mnist"
    model: str = "mlp"
    head: str = "mse"
    mixture_k: int = 1
    latent_dim: int = 32
    batch_size: int = 128
    epochs: int = 5
    learning_rate: float = 1e-3
    seed: int = 0
    scale: str = "unit"
    dequantize: bool = False
    pad_to_32: bool = False
    val_size: int = 0
    steps_per_call: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    max_steps: int = 0

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r}: {why}")

        if self.model not in MODELS:
            bad("model", f"must be one of {MODELS}")
        if self.scale not in SCALES:
            bad("scale", f"must be one of {SCALES}")
        for field in ("latent_dim", "batch_size", "epochs", "keep_checkpoints", "mixture_k"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(field, "must be a positive integer")
        for field in ("seed", "val_size", "steps_per_call", "checkpoint_every", "max_steps"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                bad(field, "must be a non-negative integer")
        lr = self.learning_rate
        if not isinstance(lr, int | float) or not lr > 0 or lr != lr or lr == float("inf"):
            bad("learning_rate", "must be a finite number > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
