"""Vanilla Probabilistic Autoencoder models (Ciobanu 2021, Sec. 3.1-3.2).

Architectures, as in the paper and its code:
- MLP: Dense(32, ReLU, Glorot-uniform) as the code, then one linear Dense(P) (Glorot-uniform)
  that emits every head parameter: 25,120 + 33 P weights.
- CNN (matrix heads only): Conv 320 3x3 'same' ReLU, max-pool 2, Conv(ceil(P/784)) 3x3 'same',
  nearest upsampling x2, flatten, keep the first P values. There is no Dense layer, and the
  "code" (14 x 14 x 320 = 62,720 values) is over-complete, larger than the 784-pixel image:
  the paper does not say so, but it explains why this CNN reconstructs poorly.
- `maf`: the MLP above emits the base mean; a MADE (784 -> 10 ReLU -> 2 x 784) adds 25,098.
- `vae`: encoder Dense(64, ReLU) -> q(z|x) = N(first 32, diag(1e-6 + softplus(last 32))),
  KL to N(0, I); decoder Dense(32 -> 2 x 784) -> a diagonal Normal: 101,984 weights.
"""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxae import flows, nets
from jaxae.heads import Head, positive

ARCHS = ("mlp", "cnn")
CODE = 32  # the paper's hidden (code) size
GLOROT = jax.nn.initializers.glorot_uniform()


class CNNDecoder(nnx.Module):
    """The paper's CNN: x [B, 28, 28, 1] -> raw [B, P] (Conv, max-pool, Conv, upsample)."""

    def __init__(self, image_shape, num_params: int, *, filters: int = 320, rngs):
        h, w, c = image_shape
        self.num_params = num_params
        self.out_channels = math.ceil(num_params / (h * w))
        self.conv1 = nets.Conv(c, filters, 3, rngs=rngs, init=GLOROT)
        self.conv2 = nets.Conv(filters, self.out_channels, 3, rngs=rngs, init=GLOROT)

    def encode(self, x):
        """The over-complete code: [B, H/2, W/2, filters] flattened."""
        # max-pool(ReLU(conv + b)) = ReLU(max-pool(conv) + b): both are monotone per channel
        return jax.nn.relu(nets.conv_maxpool2(x, self.conv1.kernel[...]) + self.conv1.bias[...])

    def __call__(self, x):
        h = self.conv2(self.encode(x))
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest upsampling x2
        return h.reshape(h.shape[0], -1)[:, : self.num_params]


class VPAE(nnx.Module):
    """Encoder-decoder emitting the raw parameters of `head`; `__call__(x, key) -> raw [B, P]`."""

    def __init__(self, head: Head, arch: str = "mlp", *, seed: int = 0):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}: choose one of {ARCHS}")
        if arch == "cnn" and not head.is_matrix:
            raise ValueError(f"head {head.name!r}: the CNN architecture is for matrix heads only")
        rngs = nnx.Rngs(params=seed)
        self.head, self.arch = head, arch
        d = head.dim
        if head.name == "vae":
            self.encoder = nnx.Linear(d, 2 * CODE, kernel_init=GLOROT, rngs=rngs)
            self.decoder = nnx.Linear(CODE, head.num_params, kernel_init=GLOROT, rngs=rngs)
        elif arch == "mlp":
            self.net = nets.MLPAutoencoder(
                head.image_shape, CODE, out_features=head.num_params, rngs=rngs
            )
        else:
            self.net = CNNDecoder(head.image_shape, head.num_params, rngs=rngs)
        if head.name == "maf":
            self.made = flows.MADE(d, 10, rngs=rngs)

    @property
    def spec(self) -> dict:
        """The JSON description `build` rebuilds this model from."""
        h = self.head
        return {"kind": "vpae", "head": h.name, "k": h.k, "arch": self.arch,
                "image_shape": list(h.image_shape)}  # fmt: skip

    def posterior(self, x) -> distrax.Distribution:
        """VAE only: q(z | x), a diagonal Normal over the 32-d code."""
        h = jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))
        return distrax.MultivariateNormalDiag(h[:, :CODE], positive(h[:, CODE:]))

    def __call__(self, x, key=None):
        """(raw decoder output [B, P], KL(q(z|x) || N(0, I)) [B]; zero but for the VAE).

        The VAE decodes a posterior sample drawn with `key` (the posterior mean if key is None).
        """
        if self.head.name != "vae":
            raw = self.net(x) if self.arch == "cnn" else self.net(x).recon.reshape(x.shape[0], -1)
            return raw, jnp.zeros(x.shape[0])
        q = self.posterior(x)
        z = q.mean() if key is None else q.sample(seed=key)
        prior = distrax.MultivariateNormalDiag(jnp.zeros(CODE), jnp.ones(CODE))
        return self.decoder(z), q.kl_divergence(prior)

    def likelihood(self, raw) -> distrax.Distribution:
        """The head's distribution over the image for raw outputs (the flow included)."""
        dist = self.head.distribution(raw)
        if self.head.name == "maf":
            dist = distrax.Transformed(dist, flows.MaskedAutoregressive(self.made))
        return dist

    def code(self, x):
        """The code of x: [B, 32] (MLP; the VAE: posterior mean) or [B, 62720] (CNN)."""
        if self.head.name == "vae":
            return self.posterior(x).mean()
        return self.net.encode(x).reshape(x.shape[0], -1)

    def point(self, raw, key, num_samples: int = 50):
        """Point image and per-pixel variance [B, H, W, C] of the head's distribution.

        Normal heads: the mean; t heads: the mode of the component whose mode has the highest
        mixture log-density; `maf`: the mean (and variance) of `num_samples` samples (the paper);
        `mse`: the output itself. The image is clipped to [0, 1]; the variance is nan where the
        distribution has none.
        """
        head = self.head
        if head.name == "mse":
            point, var = raw, jnp.full_like(raw, jnp.nan)
        elif head.name == "maf":
            samples = self.likelihood(raw).sample(seed=key, sample_shape=num_samples)  # [S, B, D]
            point, var = samples.mean(0), samples.var(0)
        else:
            dist = self.likelihood(raw)
            point, var = head.point(dist), head.variance(dist)
        return jnp.clip(head.to_image(point), 0.0, 1.0), head.to_image(var)

    def reconstruct(self, x, key, num_samples: int = 50):
        """`point` of x's own output (the VAE: decoded at the posterior mean)."""
        return self.point(self(x)[0], key, num_samples)

    def decode_code(self, z, key):
        """`point` decoded from codes z [B, 32] (MLP or VAE), e.g. z ~ N(0, I) (Figure 3)."""
        if self.arch != "mlp":
            raise ValueError("decoding a code needs the MLP architecture (the CNN has no code)")
        if self.head.name == "vae":
            return self.point(self.decoder(z), key)
        return self.point(self.net.decode(z).reshape(z.shape[0], -1), key)

    def components(self, x):
        """Each component's mean/mode [B, K, H, W, C] (clipped) and its mixture log-density
        log p(point_k) [B, K] (the paper's Figure 4)."""
        dist = self.likelihood(self(x)[0])
        points = self.head.component_points(dist)
        logp = self.head.mixture_log_density(dist, points)
        return jnp.clip(self.head.to_image(points), 0.0, 1.0), logp


def build(spec: dict) -> nnx.Module:
    """A model from its JSON description (saved in checkpoints by `train.fit(model=...)`).

    ``{"kind": "vpae", "head", "k", "arch", "image_shape"}`` or
    ``{"kind": "ae", "arch" ('mlp' | 'conv'), "image_shape", "latent_dim"}``. The weights are
    initialized with `seed` (default 0), to be replaced by a checkpoint's.
    """
    kind = spec.get("kind")
    try:
        shape, seed = tuple(spec["image_shape"]), spec.get("seed", 0)
        if kind == "vpae":
            head = Head(spec["head"], k=spec["k"], image_shape=shape, force=True)
            return VPAE(head, spec["arch"], seed=seed)
        if kind == "ae":
            return nets.make_model(spec["arch"], shape, spec["latent_dim"], seed=seed)
    except KeyError as e:
        raise ValueError(f"model description {spec} lacks {e}") from None
    raise ValueError(f"unknown model kind {kind!r} in {spec}: expected 'vpae' or 'ae'")
