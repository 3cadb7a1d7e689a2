"""Autoencoder models behind one interface, rebuilt from a JSON description by `build`.

Every model is an `nnx.Module` with
- ``encode(x) -> z``: the code of images x [B, H, W, C] (the VAE: its posterior mean);
- ``decode(z) -> raw [B, P]``: the decoder's differentiable raw output;
- ``likelihood(raw) -> distrax.Distribution`` over the image's event (`event(x)`);
- ``latent(x, key) -> (z, {name: [B]})``: the code the training objective decodes and the
  model's named per-example regularizer terms (the VAE: a posterior sample and its KL);
- ``spec``: the JSON description that `build` rebuilds the model from.
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

import chex
import distrax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxae import flows, nets
from jaxae.heads import Head, positive

GLOROT = jax.nn.initializers.glorot_uniform()


class Model(nnx.Module):
    """The shared interface; subclasses define `encode`, `decode`, `spec` (and `latent`)."""

    kind: str
    head: Head
    image_shape: tuple

    def encode(self, x):
        raise NotImplementedError

    def decode(self, z):
        raise NotImplementedError

    @property
    def spec(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict, head: Head, seed: int) -> Model:
        return cls(head, spec["arch"], spec.get("latent_dim", 32), seed=seed)

    def latent(self, x, key=None):
        """(code to decode [B, ...], {regularizer name: [B]}) for the training objective."""
        return self.encode(x), {}

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

    def __init__(self, head: Head, arch: str = "mlp", latent_dim: int = 32, *, seed: int = 0):
        self._init_net(head, arch, latent_dim, nnx.Rngs(params=seed))

    def _init_net(self, head, arch, latent_dim, rngs):
        if arch == "cnn" and not head.is_matrix:
            raise ValueError(f"head {head.name!r}: the CNN architecture is for matrix heads only")
        self.head, self.arch, self.latent_dim = head, arch, latent_dim
        self.image_shape = head.image_shape
        self.net = nets.make(arch, head.image_shape, latent_dim, head.num_params, rngs=rngs)

    @property
    def spec(self) -> dict:
        h = self.head
        return {"kind": self.kind, "arch": self.arch, "head": h.name, "k": h.k,
                "latent_dim": self.latent_dim, "image_shape": list(self.image_shape)}  # fmt: skip

    def encode(self, x):
        return self.net.encode(x)

    def decode(self, z):
        return self.net.decode(z).reshape(z.shape[0], -1)


class MAFAutoencoder(Autoencoder):
    """The `maf` row: an MLP emitting the mean of N(f(x), I), pushed through a MADE flow."""

    kind = "maf"

    def __init__(self, head: Head, arch: str = "mlp", latent_dim: int = 32, *, seed: int = 0):
        rngs = nnx.Rngs(params=seed)  # one stream: the network's weights, then the MADE's
        self._init_net(head, arch, latent_dim, rngs)
        self.made = flows.MADE(head.dim, 10, rngs=rngs)

    def likelihood(self, raw) -> distrax.Distribution:
        return distrax.Transformed(
            self.head.distribution(raw), flows.MaskedAutoregressive(self.made)
        )

    def point(self, raw, key=None, num_samples: int = 50):
        """The mean and variance of `num_samples` samples (the paper's point for the MAF)."""
        samples = self.likelihood(raw).sample(seed=key, sample_shape=num_samples)  # [S, B, D]
        return self.head.to_image(samples.mean(0)), self.head.to_image(samples.var(0))


class VAE(Model):
    """The VPAE paper's VAE: a diagonal-Normal posterior over the code, KL to N(0, I)."""

    kind = "vae"

    def __init__(self, head: Head, latent_dim: int = 32, *, seed: int = 0):
        self.head, self.latent_dim, self.image_shape = head, latent_dim, head.image_shape
        rngs = nnx.Rngs(params=seed)
        self.encoder = nnx.Linear(head.dim, 2 * latent_dim, kernel_init=GLOROT, rngs=rngs)
        self.decoder = nnx.Linear(latent_dim, head.num_params, kernel_init=GLOROT, rngs=rngs)

    @classmethod
    def from_spec(cls, spec: dict, head: Head, seed: int) -> Model:
        return cls(head, spec.get("latent_dim", 32), seed=seed)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "head": self.head.name, "k": self.head.k,
                "latent_dim": self.latent_dim, "image_shape": list(self.image_shape)}  # fmt: skip

    def posterior(self, x) -> distrax.Distribution:
        """q(z | x), a diagonal Normal over the code."""
        h = jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))
        d = self.latent_dim
        return distrax.MultivariateNormalDiag(h[:, :d], positive(h[:, d:]))

    def encode(self, x):
        return self.posterior(x).mean()

    def decode(self, z):
        return self.decoder(z)

    def latent(self, x, key=None):
        """A posterior sample drawn with `key` (the mean if None), and its KL to N(0, I)."""
        q = self.posterior(x)
        z = q.mean() if key is None else q.sample(seed=key)
        d = self.latent_dim
        prior = distrax.MultivariateNormalDiag(jnp.zeros(d), jnp.ones(d))
        return z, {"kl": q.kl_divergence(prior)}


KINDS: dict[str, type[Model]] = {"ae": Autoencoder, "maf": MAFAutoencoder, "vae": VAE}


def register(kind: str):
    """Class decorator: make a `Model` subclass buildable as ``{"kind": kind, ...}`` (and
    selectable by ``config.model.kind``). Its constructor takes ``(head, arch, latent_dim, *,
    seed)`` like `Autoencoder`'s, or it overrides `from_spec`."""

    def add(cls):
        if kind in KINDS and KINDS[kind] is not cls:
            raise ValueError(f"model kind {kind!r} is already registered as {KINDS[kind]}")
        cls.kind = kind
        KINDS[kind] = cls
        return cls

    return add


def vpae_spec(head: str, k: int = 1, arch: str = "mlp", image_shape=(28, 28, 1)) -> dict:
    """The description of a row of the VPAE paper's tables: the `maf` and `vae` rows are their
    own kinds of model, every other head an `Autoencoder`."""
    kind = head if head in ("maf", "vae") else "ae"
    spec = {"kind": kind, "head": head, "k": k, "latent_dim": 32, "image_shape": list(image_shape)}
    return spec if kind == "vae" else {**spec, "arch": arch}


def build(spec: dict, *, force: bool = True) -> Model:
    """A model from its JSON description (`Model.spec`, saved with every checkpoint).

    Weights are initialised with ``spec.get('seed', 0)``, to be replaced by a checkpoint's.
    Descriptions written before this interface (``kind: 'vpae'``; ``kind: 'ae'`` without a
    head) are read as the models they described.
    """
    spec = dict(spec)
    if spec.get("kind") == "vpae":  # the earlier single VPAE class, switched on its head
        spec["kind"] = spec["head"] if spec.get("head") in ("maf", "vae") else "ae"
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} in {spec}: expected one of {list(KINDS)}")
    try:
        shape, seed = tuple(spec["image_shape"]), spec.get("seed", 0)
        head = Head(spec.get("head", "mse"), k=spec.get("k", 1), image_shape=shape, force=force)
        return KINDS[kind].from_spec(spec, head, seed)
    except KeyError as e:
        raise ValueError(f"model description {spec} lacks {e}") from None


def num_params(model: nnx.Module) -> int:
    """How many trainable weights `model` has."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
