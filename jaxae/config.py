"""Run configuration: nested `ml_collections.ConfigDict` sections, as in the flax examples.

Sections: ``data`` (which images and how they are preprocessed), ``model`` (the description
`jaxae.models.build` takes, less the image shape), ``optimizer`` and ``training`` (batch, budget,
checkpoints), ``flow`` (the PAE's second stage), and for a model kind with settings of its own
(`jaxae.models.Model.settings`) a section named after the kind: ``default('wae')`` has
``wae.weight``... `default(kind)` gives every field; experiment files under
`experiments/configs/` override some (``get_config()``), and the command line overrides any
(``--config.x.y=...``). `validate` raises a ValueError naming the first bad field, and
`check_data` the first that does not fit the data loaded (a table of vectors). Checkpoints
save ``to_dict()``; resuming compares every field, the kind's section included, but the budget
and loop settings in `RESUMABLE`.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from jaxae import heads, nets

SCALES = ("unit", "centered")
OPTIMIZERS = ("adam",)
# The sections every config has; a model kind with settings adds one named after the kind.
SECTIONS = ("data", "model", "optimizer", "training", "flow")
# Settings that may change between a run and its resumption: they set the budget and the loop,
# not the trajectory. Any other difference refuses to resume.
RESUMABLE = (
    "data.memory_budget_mb",  # streamed or in-memory, the batches are the same
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

# Config files of experiments/configs/ named like a model kind but building another one (the
# regularized family's list names them beside the kinds): the kind each builds.
CONFIG_FILES = {"betavae": "vae", "twostage_vae": "vae", "pae_ae": "ae", "pae_vae": "vae"}


def default(kind: str | None = None) -> ml_collections.ConfigDict:
    """Every field with its default: the 784-32-784 MLP autoencoder on Fashion-MNIST.

    With a `kind` (`jaxae.models.KINDS`), ``model.kind`` is `kind`, and a kind whose class
    declares settings (`jaxae.models.Model.settings`) gets them in a section named after it:
    ``default('wae').wae`` is ``{weight: 10.0, kernel_scale: 1.0}``, overridden on the command
    line as ``--config.wae.weight=5``.

    Raises:
      ValueError: `kind` is not a registered model kind (naming what to import, or for a
        config file's name, `CONFIG_FILES`, the kind that file builds).
    """
    c = ml_collections.ConfigDict()
    c.data = dict(
        # a built-in name (`jaxae.data.DATASETS`), tfds:NAME[/CONFIG] (prepared by
        # tensorflow-datasets, never downloaded), or a path to an .npz file or a folder of
        # PNG/JPEG images (one subfolder per class, or flat): `jaxae.data.parse_source`
        dataset="fashion_mnist",
        test="",  # the test set: an .npz / folder like `dataset`, or a tfds split; '': its own
        test_fraction=0.1,  # without a test set: the part of the images split off (seeded)
        image_size=0,  # resize every image to S x S (PIL bilinear); 0: keep (one size for all)
        channels=0,  # 1 (grey) or 3 (RGB); 0: grey if every image is, else RGB
        scale="unit",  # pixels in [0, 1] ('unit') or [-0.5, 0.5] ('centered')
        dequantize=False,  # (x + u) / 256 with u ~ U[0, 1), as for likelihood models
        # binary pixels for the Bernoulli head: 1 with probability the grey level, drawn afresh
        # at every training step; validation and test images drawn once, seeded
        # (`jaxae.data.Preprocess`, `jaxae.data.binarize_fixed`)
        binarize=False,
        pad_to_32=False,  # zero-pad 28 x 28 images to 32 x 32
        val_size=0,  # training images held out (seeded) for validation
        # MiB of device memory the training set may take; above it, batches stream from the
        # host (`jaxae.stream`); 0: automatic (a quarter of the smallest device's memory)
        memory_budget_mb=0.0,
    )
    c.model = dict(
        kind="ae",  # `jaxae.models.KINDS`
        arch="mlp",  # `jaxae.nets.ARCHS`
        head="mse",  # `jaxae.heads.ALL_HEADS`; 'mse' is the plain autoencoder
        k=1,  # mixture components of the head
        latent_dim=32,
        beta=1.0,  # the VAE's beta-VAE weight (PAE paper Eq. 15); 1 with capacity 0: plain VAE
        capacity=0.0,  # the beta-VAE's target KL C in nats (Eq. 15)
        width=0,  # channel width of the convolutional archs; 0: the architecture's default
    )
    c.optimizer = dict(
        name="adam",
        learning_rate=1e-3,
        decay_epochs=(),  # epochs at which the rate is multiplied by decay_factor
        decay_factor=0.1,
        b1=0.9,  # Adam's beta_1 (decay of the first moment); GMM-DAE: 0.5
        b2=0.999,  # Adam's beta_2 (decay of the second moment)
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
    if kind is not None:
        from jaxae import models  # here: models imports this module (SCALES)

        if kind not in models.KINDS:
            raise ValueError(f"config.default({kind!r}): {_not_a_kind(kind)}")
        c.model.kind = kind
        if models.KINDS[kind].settings:
            c[kind] = dict(models.KINDS[kind].settings)
    return c


def make(**sections) -> ml_collections.ConfigDict:
    """`default()` with some fields replaced, validated: ``make(training=dict(epochs=2))``; with
    ``model=dict(kind=...)``, `default(kind)`'s, so that the kind's section may be given too."""
    kind = sections.get("model", {}).get("kind")
    if kind is not None and kind not in _kinds():
        raise ValueError(_unregistered(kind))
    config = default(kind)
    for name, fields in sections.items():
        if name not in config:
            if name in _kinds():
                raise ValueError(_other_kind_section(name, config.model.kind))
            raise ValueError(f"unknown config section {name!r}: expected one of {list(config)}")
        for key, value in fields.items():
            if key not in config[name]:
                raise ValueError(
                    f"unknown config field {name}.{key}{_closest(f'{name}.{key}')}: see "
                    f"jaxae.config.default({'' if kind is None else repr(kind)})"
                )
            config[name][key] = value
    return validate(config)


def flatten(config) -> dict[str, Any]:
    """{'training.batch_size': 128, ...} from a ConfigDict or its ``to_dict()``: every section,
    the model kind's own included (``'wae.weight'``)."""
    d = config.to_dict() if hasattr(config, "to_dict") else config
    return {f"{s}.{k}": v for s, fields in d.items() for k, v in fields.items()}


def _kinds() -> dict:
    from jaxae import models  # here: models imports this module (SCALES)

    return models.KINDS


def _not_a_kind(kind, module: str | None = None) -> str:
    """Why `kind` is no model kind: a config file's name (`CONFIG_FILES`), or not registered."""
    from jaxae import models

    if isinstance(kind, str) and kind in CONFIG_FILES:
        return (
            f"{kind!r} is not a model kind: experiments/configs/{kind}.py is a config of kind "
            f"{CONFIG_FILES[kind]!r} (its get_config(), or jaxae.config.default("
            f"{CONFIG_FILES[kind]!r}))"
        )
    return models.not_registered(kind, module)


def _unregistered(kind, module: str | None = None) -> str:
    return f"config model.kind={kind!r}: {_not_a_kind(kind, module)}"


def known_fields() -> list[str]:
    """Every config section and field: `default()`'s, and the section and fields of every
    registered model kind with settings (``'wae'``, ``'wae.weight'``...)."""
    known = [*flatten(default()), *default()]
    for kind, cls in _kinds().items():
        if cls.settings:
            known += [kind, *(f"{kind}.{k}" for k in cls.settings)]
    return known


def _closest(field: str) -> str:
    close = difflib.get_close_matches(field, known_fields(), n=1)
    return f": did you mean {close[0]!r}?" if close else ""


def unknown_field(field: str) -> str:
    """One line for a misspelt config field ('trainig.epochs'), naming the closest valid field
    or section (`difflib.get_close_matches` over `known_fields`: every registered model kind's
    settings included)."""
    return f"unknown config field {field!r}{_closest(field)} (all fields: jaxae.config.default())"


def _other_kind_section(section: str, kind) -> str:
    return (
        f"config section {section!r} holds the settings of model kind {section!r}, but "
        f"model.kind={kind!r}: remove the section, or build the config with "
        f"jaxae.config.default({section!r})"
    )


def check_optimizer(opt, where: str = "config optimizer") -> None:
    """Raise a ValueError naming the first bad field of an ``optimizer`` section (a mapping;
    `where` names the section in the message, e.g. a parameter group's overrides)."""

    def bad(key, why):
        raise ValueError(f"{where}.{key}={opt[key]!r}: {why}")

    if opt["name"] not in OPTIMIZERS:
        bad("name", f"must be one of {', '.join(OPTIMIZERS)}")
    for key in ("learning_rate", "decay_factor"):
        v = opt[key]
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < float("inf"):
            bad(key, "must be a finite number > 0")
    for key in ("b1", "b2"):  # Adam's decay rates: 0 or 1 would stop averaging or never forget
        v = opt[key]
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < 1:
            bad(key, "must be a number in (0, 1) (Adam's beta)")
    if not all(_is_int(e) and e > 0 for e in opt["decay_epochs"]):
        bad("decay_epochs", "must be positive integers")


def _same_type(value, default) -> bool:
    """Whether a setting's `value` has the type of its `default` (a float accepts an int)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, tuple):  # of scalars, or of rows of scalars (a GMM's means)
        scalar = (bool, int, float, str)

        def ok(v):
            return isinstance(v, scalar) or (
                isinstance(v, tuple | list) and all(isinstance(u, scalar) for u in v)
            )

        return isinstance(value, tuple | list) and all(ok(v) for v in value)
    return isinstance(value, type(default))


def _check_kind_section(d: dict, kind: str, settings: dict) -> None:
    """The section of the model kind `kind` holds exactly its settings, each of its type."""
    for section in d:
        if section in SECTIONS or (section == kind and settings):
            continue
        if section in _kinds():
            raise ValueError(_other_kind_section(section, kind))
        raise ValueError(unknown_field(section))
    if not settings:
        return
    if kind not in d:
        raise ValueError(
            f"config: model.kind={kind!r} has settings {list(settings)}, but the config has no "
            f"section {kind!r}: build the config with jaxae.config.default({kind!r})"
        )
    fields = d[kind]
    unknown = sorted(set(fields) - set(settings))
    if unknown:
        raise ValueError(unknown_field(f"{kind}.{unknown[0]}"))
    missing = [k for k in settings if k not in fields]
    if missing:
        raise ValueError(
            f"config section {kind!r} lacks {missing}: build the config with "
            f"jaxae.config.default({kind!r}), which has every setting of model kind {kind!r}"
        )
    for key, default_value in settings.items():
        if not _same_type(fields[key], default_value):
            raise ValueError(
                f"config {kind}.{key}={fields[key]!r}: must be a {type(default_value).__name__} "
                f"like its default {default_value!r} (model kind {kind!r})"
            )


def validate(config, *, module: str | None = None) -> ml_collections.ConfigDict:
    """The config itself, or a ValueError naming the first field out of range.

    `module`: the module that registers the config's model kind, when known (a checkpoint's
    model description names it), for the message about an unregistered kind; never imported.
    """
    d = config.to_dict() if hasattr(config, "to_dict") else config
    kinds = _kinds()
    kind = d.get("model", {}).get("kind")
    if kind not in kinds:
        raise ValueError(_unregistered(kind, module))
    settings = kinds[kind].settings
    _check_kind_section(d, kind, settings)
    flat = flatten(d)
    known = flatten(default(kind))
    unknown = sorted(set(flat) - set(known))
    if unknown:
        others = f" (and {unknown[1:]})" if len(unknown) > 1 else ""
        raise ValueError(unknown_field(unknown[0]) + others)
    missing = [k for k in known if k not in flat]
    if missing:
        raise ValueError(f"config lacks fields {missing}: start from jaxae.config.default()")

    def bad(field, why):
        raise ValueError(f"config {field}={flat[field]!r}: {why}")

    for field, choices in (
        ("data.scale", SCALES),
        ("model.arch", tuple(nets.ARCHS)),
        ("model.head", heads.ALL_HEADS),
    ):
        if flat[field] not in choices:
            bad(field, f"must be one of {', '.join(choices)}")
    if flat["model.head"] in heads.BERNOULLI_HEADS and (
        flat["data.scale"] != "unit" or flat["data.dequantize"]
    ):  # their densities live on pixels in [0, 1]
        bad("model.head", "a density of pixels in [0, 1]: needs data.scale='unit' and "
            "data.dequantize=False")  # fmt: skip
    if not isinstance(flat["data.binarize"], bool):
        bad("data.binarize", "must be True or False")
    if flat["data.binarize"] and flat["data.dequantize"]:
        bad("data.binarize", "binary pixels cannot also be dequantized: set data.dequantize=False")
    if flat["data.binarize"] and flat["model.head"] not in BINARY_HEADS:
        bad("model.head", _NOT_BINARY.get(flat["model.head"], _NOT_BINARY[None]))
    from jaxae import flows

    if flat["flow.kind"] not in ("", *flows.FLOWS):
        bad("flow.kind", f"must be '' (the paper's rule) or one of {', '.join(flows.FLOWS)}")
    positive = ("model.k", "model.latent_dim", "training.batch_size", "training.epochs",
                *(f"flow.{k}" for k in ("layers", "hidden", "blocks", "bins", "batch_size",
                                        "patience")))  # fmt: skip
    for field in (*positive, "training.keep_checkpoints"):
        if not _is_int(flat[field]) or flat[field] < 1:
            bad(field, "must be a positive integer")
    counts = ("data.val_size", "data.image_size", "training.seed", "training.steps_per_call",
              "flow.epochs", "model.width")  # fmt: skip
    for field in (*counts, "training.checkpoint_every", "training.max_steps"):
        if not _is_int(flat[field]) or flat[field] < 0:
            bad(field, "must be a non-negative integer")
    for field in ("data.dataset", "data.test"):
        if not isinstance(flat[field], str):
            bad(field, "must be a string")
    if not flat["data.dataset"]:
        bad("data.dataset", "must name a data set, a tfds:NAME, an .npz file or an image folder")
    v = flat["data.memory_budget_mb"]
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < float("inf"):
        bad("data.memory_budget_mb", "must be a number of MiB >= 0 (0: automatic)")
    v = flat["data.test_fraction"]
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < 1:
        bad("data.test_fraction", "must be a number in (0, 1)")
    if flat["data.channels"] not in (0, 1, 3) or isinstance(flat["data.channels"], bool):
        bad("data.channels", "must be 1 (grey), 3 (RGB) or 0 (grey if every image is, else RGB)")
    check_optimizer(d["optimizer"])
    v = flat["flow.learning_rate"]
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < float("inf"):
        bad("flow.learning_rate", "must be a finite number > 0")
    if not isinstance(flat["model.beta"], int | float) or not flat["model.beta"] > 0:
        bad("model.beta", "must be a number > 0")
    if not isinstance(flat["model.capacity"], int | float) or not flat["model.capacity"] >= 0:
        bad("model.capacity", "must be a number >= 0")
    return config


# The heads data.binarize allows: a probability mass over binary images, or no likelihood.
BINARY_HEADS = ("bernoulli", "mse")
_NOT_BINARY = {
    "continuous_bernoulli": (
        "a density on [0, 1]: on binary pixels it is unbounded (its density at 0 and 1 grows "
        "without limit as a logit goes to -inf or +inf); with data.binarize use 'bernoulli'"
    ),
    None: (
        "a density of continuous values: on binary pixels it is no likelihood of binary images "
        "(and with a learned scale it is unbounded); with data.binarize use 'bernoulli' (a "
        "probability mass over binary images) or 'mse'"
    ),
}


def check_data(config, dataset) -> None:
    """Raise a ValueError naming the first setting of a config that does not fit the data it
    loaded (`jaxae.data.load_config`; `load` itself refuses its own image options on vectors).

    Vectors (a table [N, D], standardized: ``dataset.standardization``) are not pixels: no
    data.dequantize or data.scale='centered', and no Bernoulli head (its values lie in [0, 1]).
    """
    if dataset.standardization is None:
        return
    d = config.to_dict() if hasattr(config, "to_dict") else config
    data, head = d["data"], d["model"]["head"]
    where = f"data.dataset={data['dataset']!r} holds vectors [N, D], standardized per feature"
    if data["dequantize"]:
        raise ValueError(f"config data.dequantize=True: {where}, not 8-bit pixels: set it False")
    if data["scale"] != "unit":
        raise ValueError(f"config data.scale={data['scale']!r} is a pixel scale: {where}; leave "
                         "it 'unit'")  # fmt: skip
    if head in heads.BERNOULLI_HEADS:
        raise ValueError(f"config model.head={head!r} models values in [0, 1]: {where}; use a "
                         "normal_* or t_* head, or 'mse'")  # fmt: skip


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


def from_dict(d: dict, *, module: str | None = None) -> ml_collections.ConfigDict:
    """A config from ``to_dict()`` as saved in a checkpoint, or from an earlier flat one.

    Built on `default(kind)` of the saved ``model.kind``, so a checkpoint saved before its
    kind had settings (no section) loads with the kind's defaults. `module`: the module that
    registers the kind (a checkpoint's model description's ``"module"``), named, never
    imported, when the kind is not registered.
    """
    if "training" not in d:  # the flat TrainConfig of earlier releases
        unknown = sorted(set(d) - set(_LEGACY))
        if unknown:
            raise ValueError(f"unknown config fields {unknown} in a saved flat config")
        d = _legacy_sections(d)
    kind = d.get("model", {}).get("kind", "ae")
    if kind not in _kinds():
        raise ValueError(_unregistered(kind, module))
    config = default(kind)

    def as_tuple(v):  # JSON saved the tuples as lists
        return tuple(map(as_tuple, v)) if isinstance(v, list | tuple) else v

    for section, fields in d.items():
        if section not in config:
            config[section] = {}  # `validate` names it: another kind's section, or unknown
        for key, value in fields.items():
            try:
                config[section][key] = as_tuple(value)
            except TypeError as e:  # ConfigDict refuses a value of another type than the default
                raise ValueError(f"config {section}.{key}={value!r}: {e}") from None
    return validate(config, module=module)


def _legacy_sections(flat: dict) -> dict:
    out: dict[str, dict] = {}
    for old, value in flat.items():
        section, key = _LEGACY[old].split(".")
        out.setdefault(section, {})[key] = value
    head = flat.get("head", "mse")
    out.setdefault("model", {})["kind"] = head if head in ("maf", "vae") else "ae"
    return out
