"""Run configuration: nested `ml_collections.ConfigDict` sections, as in the flax examples.

Sections: ``data`` (which images and how they are preprocessed), ``model`` (the description
`jaxae.models.build` takes, less the image shape), ``optimizer`` and ``training`` (batch, budget,
checkpoints). `default()` gives every field; experiment files under `experiments/configs/`
override some (``get_config()``), and the command line overrides any (``--config.x.y=...``).
`validate` raises a ValueError naming the first bad field. Checkpoints save ``to_dict()``;
resuming compares every field but the budget and loop settings in `RESUMABLE`.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from jaxae import heads, nets

SCALES = ("unit", "centered")
OPTIMIZERS = ("adam",)
# Settings that may change between a run and its resumption: they set the budget and the loop,
# not the trajectory. Any other difference refuses to resume.
RESUMABLE = (
    "training.epochs",
    "training.max_steps",
    "training.steps_per_call",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    # the latent flow's stage runs after training and checks its own resume (`jaxae.pae`)
    *(
        f"flow.{k}"
        for k in (
            "epochs",
            "kind",
            "layers",
            "hidden",
            "blocks",
            "bins",
            "batch_size",
            "learning_rate",
            "patience",
        )
    ),  # fmt: skip
)


def default() -> ml_collections.ConfigDict:
    """Every field with its default: the 784-32-784 MLP autoencoder on Fashion-MNIST."""
    c = ml_collections.ConfigDict()
    c.data = dict(
        dataset="fashion_mnist",  # a name known to `jaxae.data`
        scale="unit",  # pixels in [0, 1] ('unit') or [-0.5, 0.5] ('centered')
        dequantize=False,  # (x + u) / 256 with u ~ U[0, 1), as for likelihood models
        pad_to_32=False,  # zero-pad 28 x 28 images to 32 x 32
        val_size=0,  # training images held out (seeded) for validation
    )
    c.model = dict(
        kind="ae",  # `jaxae.models.KINDS`
        arch="mlp",  # `jaxae.nets.ARCHS`
        head="mse",  # `jaxae.heads.HEADS`; 'mse' is the plain autoencoder
        k=1,  # mixture components of the head
        latent_dim=32,
        beta=1.0,  # the VAE's beta-VAE weight (PAE paper Eq. 15); 1 with capacity 0: plain VAE
        capacity=0.0,  # the beta-VAE's target KL C in nats (Eq. 15)
    )
    c.optimizer = dict(
        name="adam",
        learning_rate=1e-3,
        decay_epochs=(),  # epochs at which the rate is multiplied by decay_factor
        decay_factor=0.1,
    )
    c.training = dict(
        batch_size=128,  # global, split over all devices
        epochs=5,  # the last incomplete batch of each epoch is dropped
        seed=0,  # parameters, per-step keys and the data order
        steps_per_call=0,  # steps in one jitted lax.scan; 0: a whole epoch
        checkpoint_every=0,  # steps; 0: at the end of every epoch
        keep_checkpoints=3,
        max_steps=0,  # stop after this global step (0: all epochs); resuming continues
    )
    c.flow = dict(  # the PAE's second stage (Boehm & Seljak 2020, Sec. 2.1; `jaxae.pae`)
        epochs=0,  # > 0: after training, fit a normalizing flow to the codes (Eq. 5)
        kind="",  # 'realnvp' | 'nsf'; '': the paper's rule, RealNVP for K <= 32, else NSF
        layers=8,  # couplings
        hidden=128,  # units of each conditioner's residual blocks
        blocks=2,  # residual blocks per conditioner
        bins=8,  # spline bins (NSF)
        batch_size=256,
        learning_rate=1e-3,  # Adam
        patience=10,  # early stopping: epochs without a better validation NLL
    )
    return c


def make(**sections) -> ml_collections.ConfigDict:
    """`default()` with some fields replaced, validated: ``make(training=dict(epochs=2))``."""
    config = default()
    for name, fields in sections.items():
        if name not in config:
            raise ValueError(f"unknown config section {name!r}: expected one of {list(config)}")
        for key, value in fields.items():
            if key not in config[name]:
                raise ValueError(f"unknown config field {name}.{key}: see jaxae.config.default()")
            config[name][key] = value
    return validate(config)


def flatten(config) -> dict[str, Any]:
    """{'training.batch_size': 128, ...} from a ConfigDict or its ``to_dict()``."""
    d = config.to_dict() if hasattr(config, "to_dict") else config
    return {f"{s}.{k}": v for s, fields in d.items() for k, v in fields.items()}


def unknown_field(field: str) -> str:
    """One line for a misspelt config field ('trainig.epochs'), naming the closest valid field
    or section (`difflib.get_close_matches` over `flatten(default())`)."""
    known = [*flatten(default()), *default()]
    close = difflib.get_close_matches(field, known, n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return f"unknown config field {field!r}{hint} (all fields: jaxae.config.default())"


def validate(config) -> ml_collections.ConfigDict:
    """The config itself, or a ValueError naming the first field out of range."""
    flat = flatten(config)
    known = flatten(default())
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}: see jaxae.config.default()")

    def bad(field, why):
        raise ValueError(f"config {field}={flat[field]!r}: {why}")

    from jaxae import models  # here: models imports this module (SCALES)

    for field, choices in (
        ("data.scale", SCALES),
        ("model.kind", tuple(models.KINDS)),
        ("model.arch", tuple(nets.ARCHS)),
        ("model.head", heads.HEADS),
        ("optimizer.name", OPTIMIZERS),
    ):
        if flat[field] not in choices:
            bad(field, f"must be one of {', '.join(choices)}")
    from jaxae import flows

    if flat["flow.kind"] not in ("", *flows.FLOWS):
        bad("flow.kind", f"must be '' (the paper's rule) or one of {', '.join(flows.FLOWS)}")
    positive = ("model.k", "model.latent_dim", "training.batch_size", "training.epochs",
                *(f"flow.{k}" for k in ("layers", "hidden", "blocks", "bins", "batch_size",
                                        "patience")))  # fmt: skip
    for field in (*positive, "training.keep_checkpoints"):
        if not _is_int(flat[field]) or flat[field] < 1:
            bad(field, "must be a positive integer")
    counts = ("data.val_size", "training.seed", "training.steps_per_call", "flow.epochs")
    for field in (*counts, "training.checkpoint_every", "training.max_steps"):
        if not _is_int(flat[field]) or flat[field] < 0:
            bad(field, "must be a non-negative integer")
    for field in ("optimizer.learning_rate", "optimizer.decay_factor", "flow.learning_rate"):
        v = flat[field]
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < float("inf"):
            bad(field, "must be a finite number > 0")
    if not isinstance(flat["model.beta"], int | float) or not flat["model.beta"] > 0:
        bad("model.beta", "must be a number > 0")
    if not isinstance(flat["model.capacity"], int | float) or not flat["model.capacity"] >= 0:
        bad("model.capacity", "must be a number >= 0")
    if not all(_is_int(e) and e > 0 for e in flat["optimizer.decay_epochs"]):
        bad("optimizer.decay_epochs", "must be positive integers")
    return config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# The flat `TrainConfig` fields that checkpoints written before these sections saved.
_LEGACY = {
    "dataset": "data.dataset",
    "scale": "data.scale",
    "dequantize": "data.dequantize",
    "pad_to_32": "data.pad_to_32",
    "val_size": "data.val_size",
    "model": "model.arch",
    "head": "model.head",
    "mixture_k": "model.k",
    "latent_dim": "model.latent_dim",
    "learning_rate": "optimizer.learning_rate",
    **{k: f"training.{k}" for k in ("batch_size", "epochs", "seed", "steps_per_call")},
    **{k: f"training.{k}" for k in ("checkpoint_every", "keep_checkpoints", "max_steps")},
}


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """A config from ``to_dict()`` as saved in a checkpoint, or from an earlier flat one."""
    config = default()
    if "training" not in d:  # the flat TrainConfig of earlier releases
        unknown = sorted(set(d) - set(_LEGACY))
        if unknown:
            raise ValueError(f"unknown config fields {unknown} in a saved flat config")
        d = _legacy_sections(d)
    for section, fields in d.items():
        for key, value in fields.items():
            config[section][key] = tuple(value) if isinstance(value, list) else value
    return validate(config)


def _legacy_sections(flat: dict) -> dict:
    out: dict[str, dict] = {}
    for old, value in flat.items():
        section, key = _LEGACY[old].split(".")
        out.setdefault(section, {})[key] = value
    head = flat.get("head", "mse")
    out.setdefault("model", {})["kind"] = head if head in ("maf", "vae") else "ae"
    return out
