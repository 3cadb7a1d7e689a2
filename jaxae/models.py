"""Autoencoder models behind one interface, rebuilt from a JSON description by `build`.

Every model is an `nnx.Module` with
- ``encode(x) -> z``: the code of images x [B, H, W, C] (the VAE: its posterior mean);
- ``decode(z) -> raw [B, P]``: the decoder's differentiable raw output;
- ``likelihood(raw) -> distrax.Distribution`` over the image's event (`event(x)`);
- ``latent(x, key) -> (z, {name: [B]})``: the code the training objective decodes and the
  model's named per-example regularizer terms (the VAE: a posterior sample and its KL);
- ``spec``: the JSON description that `build` rebuilds the model from;
- ``groups()``: the parameter groups it trains, each with its own loss, optimizer and steps
  (`ParamGroup`; one group owning everything for all but adversarial models);
- ``settings``: its own hyper-parameters and their defaults, which `jaxae.config.default(kind)`
  makes the config section named after its kind and `build` passes to its constructor;
- ``scale``: the pixel scale it was trained on ('unit': [0, 1]; 'centered': [-0.5, 0.5]), so
  that code using a restored model passes images and nothing else (`preprocess`, `check_scale`).
`jaxae.objectives` turns these into per-example loss terms; nothing outside this module asks
which kind a model is. Point images, variances and mixture components derive from the
interface (`point`, `reconstruct`, `decode_code`, `components`).

Models of the Vanilla Probabilistic Autoencoder (Ciobanu 2021, Sec. 3.1-3.2):
- `Autoencoder`: a network of `jaxae.nets.ARCHS` emitting the raw parameters of a likelihood
  head (`jaxae.heads`). With the `mse` head it is the plain autoencoder; with any other head, a
  VPAE. MLP: Dense(32, ReLU, Glorot) code, one linear Dense(P): 25,120 + 33 P weights.
- `MAFAutoencoder`: the `maf` row: the MLP emits the mean of a base N(f(x), I) that a MADE
  (784 -> 10 ReLU -> 2 x 784, 25,098 weights) turns into a masked autoregressive flow.
- `VAE`: encoder Dense(2 x 32, ReLU) -> q(z|x) = N(first 32, diag(1e-6 + softplus(last 32))),
  KL to N(0, I); decoder Dense(32 -> P) into a head (the paper's: `vae`, a diagonal Normal,
  101,984 weights in all).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import chex
import distrax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import flows, nets
from jaxae.heads import Head, positive

GLOROT = jax.nn.initializers.glorot_uniform()
# The kinds of value a model setting may take (`Model.settings`): JSON round-trips them, and
# they are hashable (static to `jit`), tuples included.
SETTING_TYPES = (bool, int, float, str, tuple)


class ParamGroup(NamedTuple):
    """A parameter group a model trains with its own loss, optimizer and steps."""

    # top-level attributes of the model it owns; None: every parameter no other group owns
    params: tuple[str, ...] | None = None
    # the model method giving per-example terms {'loss': [B], ...}; 'terms':
    # objectives.terms(model, x, key), the likelihood + regularizers
    loss: str = "terms"
    # optimizer steps per iteration (a critic 5 : 1 schedule: steps=5 on the critic)
    steps: int = 1
    # (field, value) overrides of config.optimizer for this group, e.g.
    # (("learning_rate", 5e-4), ("b1", 0.5)); a tuple so that it is hashable
    optimizer: tuple = ()


class Model(nnx.Module):
    """The shared interface; subclasses define `encode`, `decode`, `spec` (and `latent`)."""

    kind: str
    head: Head
    image_shape: tuple
    # The pixel scale of the model's inputs (`jaxae.config.SCALES`), set by `build` from the
    # description's "scale"; a plain string, so it is part of the graphdef, not of the state.
    scale: str = "unit"
    # The model's own settings and their defaults, e.g. a WAE's {"weight": 10.0,
    # "kernel_scale": 1.0}: numbers, bools, strings and tuples of those. `jaxae.config.default`
    # makes them the config section named after the kind; `from_spec` passes them to the
    # constructor as keywords; `build` records them (`options`) and `spec` describes them.
    settings: ClassVar[dict] = {}
    # The settings `build` gave this model, as hashable (name, value) items (static, in the
    # graphdef); () for a model built without them.
    _settings: tuple = ()
    # The module that registered the kind (`register`); None for jaxae's own kinds.
    defined_in: ClassVar[str | None] = None

    def groups(self) -> dict[str, ParamGroup]:
        """The parameter groups the trainer steps, in order (`jaxae.train.model_update`).

        The default, one group owning every parameter with the loss `objectives.terms`, is
        trained by `jaxae.train.single`; a model with a critic returns several (e.g. an
        "autoencoder" group with ``params=None`` and a "critic" group owning ``("critic",)``
        with its own loss method, steps and optimizer overrides), trained by
        `jaxae.train.grouped`. A group's loss method other than "terms" has the signature
        ``method(self, x, key) -> {'loss': [B], ...}`` (x: model inputs [B, H, W, C], key a PRNG
        key or None).
        """
        return {"model": ParamGroup()}

    @property
    def options(self) -> dict:
        """The model's settings (`settings`): the class defaults, updated by those `build` gave
        it."""
        return {**type(self).settings, **dict(self._settings)}

    @classmethod
    def resolve_settings(cls, given: dict | None = None) -> dict:
        """The class's settings: its defaults updated by `given` (a description's
        ``"settings"``; JSON lists read as tuples).

        Raises:
          ValueError: `given` names a setting the class does not declare.
        """
        given = dict(given or {})
        unknown = sorted(set(given) - set(cls.settings))
        if unknown:
            kind = getattr(cls, "kind", cls.__name__)
            known = ", ".join(cls.settings) if cls.settings else "none"
            raise ValueError(
                f"model kind {kind!r}: unknown setting(s) {unknown} in the description's "
                f'"settings" (its settings: {known}; jaxae.config.default({kind!r}) has them)'
            )

        def as_tuple(v):  # JSON (a checkpoint's description) turned the tuples into lists
            return tuple(map(as_tuple, v)) if isinstance(v, list | tuple) else v

        return {**cls.settings, **{k: as_tuple(v) for k, v in given.items()}}

    def _describe(self, spec: dict) -> dict:
        """`spec` plus what only some models carry: ``width`` (when not 0), ``settings`` (for
        classes with settings), ``module`` (for kinds registered outside jaxae), ``scale``
        (when not 'unit'). Descriptions of the models without them stay as they were."""
        spec = dict(spec)
        if getattr(self, "width", 0):
            spec["width"] = self.width
        if type(self).settings:
            spec["settings"] = self.options
        if self.defined_in is not None and not _in_jaxae(self.defined_in):
            spec["module"] = self.defined_in
        return self._with_scale(spec)

    def encode(self, x):
        """The codes of model inputs x [B, H, W, C] (`preprocess`d): [B, K]; the VPAE CNN, a feature
        map."""
        raise NotImplementedError

    def decode(self, z):
        """The decoder's raw output [B, P] for codes z (`likelihood` makes it a distribution)."""
        raise NotImplementedError

    @property
    def spec(self) -> dict:
        """The JSON description `build` rebuilds this model from (saved with every checkpoint)."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict, head: Head, seed: int) -> Model:
        """The model of a description `spec` (its head parsed by `build`), initialised by `seed`:
        ``cls(head, arch, latent_dim, seed=seed, **settings)``, with ``width=`` when the
        description's width is not 0 and the settings of `resolve_settings` (none for classes
        without settings)."""
        width = {"width": spec["width"]} if spec.get("width") else {}
        settings = cls.resolve_settings(spec.get("settings"))
        return cls(head, spec["arch"], spec.get("latent_dim", 32), seed=seed, **width, **settings)

    def latent(self, x, key=None):
        """(code to decode [B, ...], {regularizer name: [B]}) for the training objective."""
        return self.encode(x), {}

    # --- pixel scale ---------------------------------------------------------------------------

    @property
    def preprocess(self) -> jdata.Preprocess:
        """Pixels (uint8 [B, H, W, C], or floats in [0, 1]) -> this model's float32 inputs;
        ``preprocess.offset`` is what its inputs and point images are shifted by."""
        return jdata.Preprocess(self.scale)

    def check_scale(self, scale: str | None = None) -> jdata.Preprocess:
        """`preprocess`, after checking a caller's `scale` (None: the model's own) against it.

        Raises:
          ValueError: `scale` is not one of `jaxae.config.SCALES`, or is given and is not the
            scale the model was trained on.
        """
        if scale is not None and scale not in jconfig.SCALES:
            known = ", ".join(map(repr, jconfig.SCALES))
            raise ValueError(
                f"unknown pixel scale {scale!r}: the scales are {known} "
                f"(jaxae.config.SCALES); this model was trained on {self.scale!r}, so leave scale "
                "out (None: the model's own)"
            )
        if scale is not None and scale != self.scale:
            ranges = {"unit": "[0, 1]", "centered": "[-0.5, 0.5]"}
            raise ValueError(
                f"this model was trained on {self.scale!r} pixels "
                f"({ranges.get(self.scale, '?')}); scale={scale!r} does not match: leave scale "
                f"out (None: the model's own) or pass scale={self.scale!r}"
            )
        return self.preprocess

    def _with_scale(self, spec: dict) -> dict:
        # 'unit' is left out, so that descriptions (and checkpoints) of unit-scale models are
        # those written before models knew their scale.
        return spec if self.scale == "unit" else {**spec, "scale": self.scale}

    def likelihood(self, raw) -> distrax.Distribution:
        """The distribution over the image's event given raw decoder outputs [B, P]."""
        return self.head.distribution(raw)

    def event(self, x):
        """Images [B, H, W, C] -> values in the likelihood's event shape."""
        chex.assert_shape(x, (None, *self.image_shape))
        return self.head.to_event(x)

    # --- derived from the interface ------------------------------------------------------------

    @property
    def has_density(self) -> bool:
        """Whether `likelihood` is a normalised density (not `SquaredError`): whether the model
        has an NLL, and whether its draws differ from its point image."""
        x0 = jnp.zeros((1, *self.image_shape), jnp.float32)
        return bool(getattr(self.likelihood(self.decode(self.encode(x0))), "is_density", True))

    def point(self, raw, key=None, num_samples: int = 50):
        """Point image and per-pixel variance [B, H, W, C] of the likelihood (not clipped).

        Normal heads: the mean; t heads: the mode of the component whose mode has the highest
        mixture log-density; `mse`: the output itself (no variance: nan).
        """
        del key, num_samples
        dist = self.likelihood(raw)
        return self.head.to_image(self.head.point(dist)), self.head.to_image(
            self.head.variance(dist)
        )

    def reconstruct(self, x, key=None, num_samples: int = 50):
        """`point` of decode(encode(x)), clipped to [0, 1], and its variance."""
        return self.decode_code(self.encode(x), key, num_samples)

    def decode_code(self, z, key=None, num_samples: int = 50):
        """`point` decoded from codes z, clipped to [0, 1], and its variance."""
        point, var = self.point(self.decode(z), key, num_samples)
        return jnp.clip(point, 0.0, 1.0), var

    def components(self, x):
        """Each component's mean/mode [B, K, H, W, C] (clipped) and its mixture log-density
        log p(point_k) [B, K] (the VPAE paper's Figure 4)."""
        dist = self.likelihood(self.decode(self.encode(x)))
        points = self.head.component_points(dist)
        logp = self.head.mixture_log_density(dist, points)
        return jnp.clip(self.head.to_image(points), 0.0, 1.0), logp


class Autoencoder(Model):
    """A deterministic encoder/decoder network (`nets.ARCHS`) and a likelihood head."""

    kind = "ae"

    def __init__(self, head: Head, arch: str = "mlp", latent_dim: int = 32, *, width: int = 0,
                 seed: int = 0):  # fmt: skip
        self._init_net(head, arch, latent_dim, nnx.Rngs(params=seed), width)

    def _init_net(self, head, arch, latent_dim, rngs, width: int = 0):
        if arch == "cnn" and not head.is_matrix:
            raise ValueError(f"head {head.name!r}: the CNN architecture is for matrix heads only")
        self.head, self.arch, self.latent_dim = head, arch, latent_dim
        self.image_shape = head.image_shape
        self.width = _check_width(width)
        # width only when set: 0 is the architecture's own channel width
        options = {"width": width} if width else {}
        self.net = nets.make(arch, head.image_shape, latent_dim, head.num_params, rngs=rngs,
                             **options)  # fmt: skip

    @property
    def spec(self) -> dict:
        """kind, arch, head, k, latent_dim, image_shape; width unless 0, settings for classes
        with settings, module for kinds registered outside jaxae, scale unless 'unit'."""
        h = self.head
        return self._describe({"kind": self.kind, "arch": self.arch, "head": h.name, "k": h.k,
                               "latent_dim": self.latent_dim,
                               "image_shape": list(self.image_shape)})  # fmt: skip

    def encode(self, x):
        """Images [B, H, W, C] -> codes [B, K] (the network's encoder)."""
        return self.net.encode(x)

    def decode(self, z):
        """Codes [B, K] -> the head's raw parameters [B, P]."""
        return self.net.decode(z).reshape(z.shape[0], -1)


class MAFAutoencoder(Autoencoder):
    """The `maf` row: an MLP emitting the mean of N(f(x), I), pushed through a MADE flow."""

    kind = "maf"

    def __init__(self, head: Head, arch: str = "mlp", latent_dim: int = 32, *, width: int = 0,
                 seed: int = 0):  # fmt: skip
        rngs = nnx.Rngs(params=seed)  # one stream: the network's weights, then the MADE's
        self._init_net(head, arch, latent_dim, rngs, width)
        self.made = flows.MADE(head.dim, 10, rngs=rngs)

    def likelihood(self, raw) -> distrax.Distribution:
        """The base N(raw, I) pushed through the MADE's masked autoregressive flow."""
        return distrax.Transformed(
            self.head.distribution(raw), flows.MaskedAutoregressive(self.made)
        )

    def point(self, raw, key=None, num_samples: int = 50):
        """The mean and variance of `num_samples` samples (the paper's point for the MAF)."""
        samples = self.likelihood(raw).sample(seed=key, sample_shape=num_samples)  # [S, B, D]
        return self.head.to_image(samples.mean(0)), self.head.to_image(samples.var(0))


class VAE(Model):
    """A VAE: a diagonal-Normal posterior over the code, KL to N(0, I).

    With `arch` None or 'mlp', the VPAE paper's: encoder Dense(2 x 32, ReLU) -> q(z|x) =
    N(first 32, diag(1e-6 + softplus(last 32))), decoder Dense(32 -> P). With another `arch`, a
    network of
    `nets.ARCHS` whose encoder emits the 2K posterior values (mean, raw scale) and whose decoder
    emits the head's raw parameters (the PAE paper's VAEs: `infogan`).

    ``beta`` and ``capacity`` give the beta-VAE of Higgins et al. 2017 in the PAE paper's form,
    Eq. 15: the regularizer beta |KL(q(z|x) || N(0, I)) - C| per example (term ``'beta_kl'``);
    beta = 1, C = 0 is the plain VAE (term ``'kl'``).
    """

    kind = "vae"

    def __init__(self, head: Head, latent_dim: int = 32, *, arch: str | None = None,
                 beta: float = 1.0, capacity: float = 0.0, width: int = 0,
                 seed: int = 0):  # fmt: skip
        if beta <= 0 or capacity < 0:
            raise ValueError(f"beta-VAE needs beta > 0 and capacity C >= 0, got {beta}, {capacity}")
        self.head, self.latent_dim, self.image_shape = head, latent_dim, head.image_shape
        arch = None if arch == "mlp" else arch  # the MLP's layers, named as before `arch`
        self.arch, self.beta, self.capacity = arch, float(beta), float(capacity)
        self.width = _check_width(width)
        rngs = nnx.Rngs(params=seed)
        if arch is None:
            if width:
                raise ValueError(
                    f"width={width}: the VAE's MLP (arch 'mlp') has no channel width; leave "
                    "model.width at 0, or use a convolutional arch"
                )
            self.encoder = nnx.Linear(head.dim, 2 * latent_dim, kernel_init=GLOROT, rngs=rngs)
            self.decoder = nnx.Linear(latent_dim, head.num_params, kernel_init=GLOROT, rngs=rngs)
        else:
            options = {"width": width} if width else {}
            self.net = nets.make(arch, head.image_shape, latent_dim, head.num_params,
                                 code_features=2 * latent_dim, rngs=rngs, **options)  # fmt: skip

    @classmethod
    def from_spec(cls, spec: dict, head: Head, seed: int) -> Model:
        """A VAE from its description: latent_dim, arch, beta, capacity and width (defaults 32,
        the MLP, 1, 0, 0)."""
        return cls(
            head,
            spec.get("latent_dim", 32),
            arch=spec.get("arch"),
            beta=spec.get("beta", 1.0),
            capacity=spec.get("capacity", 0.0),
            width=spec.get("width", 0),
            seed=seed,
        )

    @property
    def spec(self) -> dict:
        """kind, head, k, latent_dim, image_shape; arch, beta, capacity where not the defaults
        (and what `Model._describe` adds)."""
        spec = {"kind": self.kind, "head": self.head.name, "k": self.head.k,
                "latent_dim": self.latent_dim, "image_shape": list(self.image_shape)}  # fmt: skip
        if self.arch is not None:
            spec["arch"] = self.arch
        if (self.beta, self.capacity) != (1.0, 0.0):
            spec.update(beta=self.beta, capacity=self.capacity)
        return self._describe(spec)

    def posterior(self, x) -> distrax.Distribution:
        """q(z | x), a diagonal Normal over the code."""
        if self.arch is None:
            h = jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))
        else:
            h = self.net.encode(x)
        d = self.latent_dim
        return distrax.MultivariateNormalDiag(h[:, :d], positive(h[:, d:]))

    def encode(self, x):
        """The posterior mean of q(z | x): [B, K]."""
        return self.posterior(x).mean()

    def decode(self, z):
        """Codes [B, K] -> the head's raw parameters [B, P]."""
        return self.decoder(z) if self.arch is None else self.net.decode(z).reshape(z.shape[0], -1)

    def latent(self, x, key=None):
        """A posterior sample drawn with `key` (the mean if None), and the KL term (Eq. 15)."""
        q = self.posterior(x)
        z = q.mean() if key is None else q.sample(seed=key)
        d = self.latent_dim
        kl = q.kl_divergence(distrax.MultivariateNormalDiag(jnp.zeros(d), jnp.ones(d)))
        if (self.beta, self.capacity) == (1.0, 0.0):
            return z, {"kl": kl}
        return z, {"beta_kl": self.beta * jnp.abs(kl - self.capacity)}


class NotFittedError(RuntimeError):
    """A PAE used for densities, scores or samples before its noise map and flow are fitted."""


# How a run gets its PAE second stage: said by every error about a missing or unfitted flow.
FIT_FLOW_HINT = (
    "train a PAE, both stages in one run folder: `python -m experiments.train --config "
    "experiments/configs/pae.py:K` with the run's own --config.data.* flags (config "
    "flow.epochs > 0 and data.val_size > 0), in a new --workdir or, for a run of that config, "
    "its own (it resumes the autoencoder and fits the flow); or fit a flow on the codes of this "
    "trained autoencoder from Python: `config = jaxae.checkpoint.restore_params(run).config`, "
    "set config.flow.epochs (and flow.batch_size, data.val_size), then `jaxae.pae.fit_flow("
    "config, run, dataset=jaxae.data.load_config(config.data, seed=config.training.seed))` and "
    "restore the run again (`jaxae.checkpoint.restore_params(run)` gives the PAE)"
)


class FittedState(nnx.Variable):
    """Values measured after training (the PAE's noise map, code standardisation): model
    state, saved with the checkpoint, never trained."""


class PAE(Autoencoder):
    """The Probabilistic Auto-Encoder (Boehm & Seljak 2020, Sec. 2): an autoencoder whose codes
    get a normalizing-flow density, fitted after the autoencoder (`jaxae.pae.fit_flow`).

    - Networks: any `nets.ARCHS` autoencoder (the paper's: `infogan`) with the `mse` head, so
      `objectives.terms` is the AE's loss, Eq. 2.
    - ``flow``: a `jaxae.flows` flow b over standardised codes (z - loc) / scale. The
      standardisation is a fixed affine bijector: ``latent_flow(z)`` = (u, log|det du/dz|) of
      the whole map z -> u, so ``latent_log_prob`` is the density of Eq. 5 over z itself.
    - Model state (`FittedState`): ``sigma`` [N], the per-pixel noise of the implicit Gaussian
      likelihood, Eq. 8; ``code_loc``, ``code_scale`` [K]; ``fitted``, 0 until the noise map and
      the flow have been fitted.
    """

    kind = "pae"

    def __init__(self, head: Head, arch: str = "infogan", latent_dim: int = 32, *,
                 flow: dict | None = None, width: int = 0, seed: int = 0):  # fmt: skip
        rngs = nnx.Rngs(params=seed)
        self._init_net(head, arch, latent_dim, rngs, width)
        self.flow_spec = flow_spec(latent_dim, flow)
        fs = self.flow_spec
        kw = {"n_layers": fs["layers"], "hidden": fs["hidden"], "n_blocks": fs["blocks"]}
        kw.update(num_bins=fs["bins"]) if fs["kind"] == "nsf" else kw.update(seed=seed)
        self.flow = flows.make(fs["kind"], latent_dim, rngs=rngs, **kw)
        self.sigma = FittedState(jnp.ones((head.dim,), jnp.float32))
        self.code_loc = FittedState(jnp.zeros((latent_dim,), jnp.float32))
        self.code_scale = FittedState(jnp.ones((latent_dim,), jnp.float32))
        self.fitted = FittedState(jnp.zeros((), jnp.int32))

    @classmethod
    def from_spec(cls, spec: dict, head: Head, seed: int) -> Model:
        """A PAE from its description: arch (default infogan), latent_dim, width and its flow
        (`flow_spec`)."""
        return cls(head, spec.get("arch", "infogan"), spec.get("latent_dim", 32),
                   flow=spec.get("flow"), width=spec.get("width", 0), seed=seed)  # fmt: skip

    @property
    def spec(self) -> dict:
        """The autoencoder's description plus the flow's (`flow_spec`, defaults filled in)."""
        return {**super().spec, "flow": dict(self.flow_spec)}

    def check_fitted(self, use: str = "this") -> None:
        """Raise `NotFittedError` unless the noise map and the flow have been fitted."""
        if not int(self.fitted[...]):
            raise NotFittedError(
                f"{use} needs a fitted PAE, but this one's noise map and latent flow have not "
                f"been fitted: {FIT_FLOW_HINT}"
            )

    def latent_flow(self, z):
        """(u, log|det du/dz|) of z [..., K] -> u = b((z - loc) / scale)."""
        loc, scale = self.code_loc[...], self.code_scale[...]
        u, log_det = self.flow.forward((z - loc) / scale)
        return u, log_det - jnp.sum(jnp.log(scale))

    def latent_log_prob(self, z):
        """log p(z) of codes z [..., K] under the flow (Eq. 5)."""
        u, log_det = self.latent_flow(z)
        return (
            -0.5 * jnp.sum(u**2, axis=-1) - 0.5 * self.latent_dim * math.log(2 * math.pi) + log_det
        )

    def sample_codes(self, key, n: int):
        """z = b^-1(u), u ~ N(0, I): the latent part of Eq. 6. Returns [n, K]."""
        return self.flow.sample(key, n) * self.code_scale[...] + self.code_loc[...]


def flow_spec(latent_dim: int, flow: dict | None = None) -> dict:
    """The PAE's flow description, defaults filled in (kind '': the paper's rule for K)."""
    spec = {"kind": "", "layers": 8, "hidden": 128, "blocks": 2, "bins": 8, **(flow or {})}
    spec["kind"] = spec["kind"] or flows.default_kind(latent_dim)
    return spec


KINDS: dict[str, type[Model]] = {"ae": Autoencoder, "maf": MAFAutoencoder, "vae": VAE, "pae": PAE}


def register(kind: str):
    """Class decorator: make a `Model` subclass buildable as ``{"kind": kind, ...}`` (and
    selectable by ``config.model.kind``). Its constructor takes ``(head, arch, latent_dim, *,
    seed, **settings)`` like `Autoencoder`'s (plus its `Model.settings` as keywords), or it
    overrides `from_spec`. Records the module defining the class (``defined_in``): the
    descriptions of kinds registered outside jaxae name it (``"module"``), so that an error can
    say what to import before a run of that kind is restored.

    Raises:
      ValueError: `kind` is registered to another class; a setting's default is not a number,
        bool, string or tuple of those; or a kind with settings is named like a config section.
    """

    def add(cls):
        if kind in KINDS and KINDS[kind] is not cls:
            raise ValueError(f"model kind {kind!r} is already registered as {KINDS[kind]}")
        _check_settings(kind, cls.settings)
        cls.kind = kind
        cls.defined_in = cls.__module__
        KINDS[kind] = cls
        return cls

    return add


def _check_settings(kind: str, settings: dict) -> None:
    def ok(v):
        return isinstance(v, SETTING_TYPES) and (not isinstance(v, tuple) or all(map(ok, v)))

    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ValueError(f"model kind {kind!r}: settings must be a dict {{name: default}}")
    for name, value in settings.items():
        if not ok(value):
            raise ValueError(
                f"model kind {kind!r}: setting {name}={value!r} is a {type(value).__name__}; "
                "settings are numbers, bools, strings or tuples of those (JSON, hashable)"
            )
    if settings and kind in jconfig.SECTIONS:
        raise ValueError(
            f"model kind {kind!r} has settings, whose config section would be named {kind!r} like "
            f"the config's own {jconfig.SECTIONS}: register the kind under another name"
        )


def _in_jaxae(module: str) -> bool:
    return module == "jaxae" or module.startswith("jaxae.")


def _check_width(width) -> int:
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(
            f"width={width!r}: the channel width must be an integer >= 0 (0: the architecture's "
            "default)"
        )
    return width


def not_registered(kind, module: str | None = None) -> str:
    """The message for a model kind that is not in `KINDS`: what to import first (`module`, as
    a description's ``"module"`` names it, when known). Never imports it: a checkpoint's
    description is data, not code."""
    if module:
        how = f"`import {module}`"
    else:
        how = f"the kinds registered now: {', '.join(KINDS)}"
    return (
        f"model kind {kind!r} is not registered: import the module that registers it first ({how})"
    )


def vpae_spec(head: str, k: int = 1, arch: str = "mlp", image_shape=(28, 28, 1)) -> dict:
    """The description of a row of the VPAE paper's tables: the `maf` and `vae` rows are their
    own kinds of model, every other head an `Autoencoder`."""
    kind = head if head in ("maf", "vae") else "ae"
    spec = {"kind": kind, "head": head, "k": k, "latent_dim": 32, "image_shape": list(image_shape)}
    return spec if kind == "vae" else {**spec, "arch": arch}


def build(spec: dict, *, force: bool = True) -> Model:
    """A model from its JSON description (`Model.spec`, saved with every checkpoint).

    Weights are initialised with ``spec.get('seed', 0)``, to be replaced by a checkpoint's.
    ``spec.get('scale', 'unit')`` is the pixel scale the model takes (`Model.scale`);
    ``spec.get('settings', {})`` updates the class's `Model.settings`, which the model records
    (`Model.options`). A kind that is not registered is an error naming the module to import
    (``spec['module']``, when the description has it), never imported here.
    Descriptions written before this interface (``kind: 'vpae'``; ``kind: 'ae'`` without a
    head) are read as the models they described.
    """
    spec = dict(spec)
    scale = spec.get("scale", "unit")
    if scale not in jconfig.SCALES:
        raise ValueError(
            f"model description: scale {scale!r} is not a pixel scale: use one of {jconfig.SCALES}"
            " (config data.scale)"
        )
    if spec.get("kind") == "vpae":  # the earlier single VPAE class, switched on its head
        spec["kind"] = spec["head"] if spec.get("head") in ("maf", "vae") else "ae"
    kind = spec.get("kind")
    if kind is None:
        raise ValueError(f"model description {spec} lacks 'kind' (one of {', '.join(KINDS)})")
    if kind not in KINDS:
        raise ValueError(not_registered(kind, spec.get("module")))
    cls = KINDS[kind]
    try:
        shape, seed = tuple(spec["image_shape"]), spec.get("seed", 0)
        head = Head(spec.get("head", "mse"), k=spec.get("k", 1), image_shape=shape, force=force)
        settings = cls.resolve_settings(spec.get("settings"))
        model = cls.from_spec(spec, head, seed)
    except KeyError as e:
        raise ValueError(f"model description {spec} lacks {e}") from None
    model.scale = scale
    if cls.settings:  # recorded, so that `spec` (and the checkpoints) describe them
        model._settings = tuple(settings.items())
    return model


def num_params(model: nnx.Module) -> int:
    """How many trainable weights `model` has."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# The regularized-autoencoder family registers its kinds here, so that every kind jaxae defines
# builds from `models` alone (`jaxae.regularized` imports this module: it comes last).
from jaxae import regularized  # noqa: E402, F401
