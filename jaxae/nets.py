"""Encoder/decoder networks (Flax NNX). Decoders emit raw arrays; heads interpret them.

`ConvTranspose2x` is a stride-2, 4x4 transposed convolution computed as a 3x3 convolution to
4*C_out channels followed by depth-to-space (the sub-pixel / phase decomposition). It is the same
linear map with the kernel rearranged; its gradient is ~7x faster than `lax.conv_transpose`'s on
XLA:CPU (STYLE.md, "Performance facts"). `tests/test_nets.py` checks it against
`lax.conv_transpose`.

Every convolution is written as patches @ kernel (`conv2d_same`): inside `lax.scan`, XLA:CPU
runs a convolution's kernel gradient as a naive loop (jax-ml/jax#12868), ~25x slower for the conv
autoencoder; as a matmul every gradient is fast. Tests check both against `lax`'s convolutions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


def conv2d_same(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """'SAME' cross-correlation NHWC x HWIO -> NHWC, as one matmul of the patches with the kernel.

    The same linear map as ``lax.conv_general_dilated(x, kernel, (stride,)*2, 'SAME')``.
    """
    b, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    oh, ow = -(-h // stride), -(-w // stride)
    pad_h = max((oh - 1) * stride + kh - h, 0)
    pad_w = max((ow - 1) * stride + kw - w, 0)
    pads = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    x = jnp.pad(x, pads)
    span_h, span_w = (oh - 1) * stride + 1, (ow - 1) * stride + 1
    taps = [
        x[:, i : i + span_h : stride, j : j + span_w : stride] for i in range(kh) for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1)  # [B, oh, ow, kh*kw*ci], ordered (i, j, ci) as HWIO
    return (patches.reshape(-1, kh * kw * ci) @ kernel.reshape(-1, co)).reshape(b, oh, ow, co)


class Conv(nnx.Module):
    """'SAME' convolution with stride, initialised like `nnx.Conv`, computed by `conv2d_same`."""

    def __init__(self, in_features, out_features, kernel_size=3, stride=1, *, rngs, init=None):
        init = init or jax.nn.initializers.lecun_normal()
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d_same(x, self.kernel[...], self.stride) + self.bias[...]


class AEOutput(NamedTuple):
    recon: jax.Array  # [B, H, W, C] raw decoder output
    code: jax.Array  # [B, latent_dim]


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
    """Rearrange a 4x4 transposed-conv kernel [4,4,Ci,Co] into a 3x3 conv kernel [3,3,Ci,4*Co].

    For output phase r (row or column parity) and tap t of the 3x3 window (input offset t-1),
    the transposed convolution with SAME padding uses kernel index 2t - r when it is in [0, 4).
    Output channels are ordered (row phase, column phase, channel), matching `depth_to_space`.
    """
    k = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)))  # index 2t - r + 1 into the padded one
    taps = jnp.arange(3)
    rows = jnp.stack([2 * taps - r + 1 for r in (0, 1)])  # [phase, tap]
    # k[rows[rh, th], rows[rw, tw]] -> [rh, th, rw, tw, Ci, Co]
    g = k[rows[:, :, None, None], rows[None, None, :, :]]
    g = jnp.transpose(g, (1, 3, 4, 0, 2, 5))  # [th, tw, Ci, rh, rw, Co]
    ci, co = kernel.shape[2:]
    return g.reshape(3, 3, ci, 4 * co)


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """[B, H, W, b*b*C] -> [B, b*H, b*W, C], channels ordered (row phase, col phase, C)."""
    b, h, w, c = x.shape
    co = c // (block * block)
    x = x.reshape(b, h, w, block, block, co).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * block, w * block, co)


class ConvTranspose2x(nnx.Module):
    """Stride-2 4x4 transposed convolution ('SAME'), parameterised exactly like one."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (4, 4, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d_same(x, subpixel_kernel(self.kernel[...]))
        return depth_to_space(y) + self.bias[...]


class MLPAutoencoder(nnx.Module):
    """x -> ReLU(Dense(latent)) -> Dense(out): the 784-32-784 autoencoder of the VPAE paper."""

    def __init__(self, image_shape, latent_dim: int, *, out_features: int | None = None, rngs):
        self.image_shape = tuple(image_shape)
        d = math.prod(self.image_shape)
        self.out_features = out_features or d
        init = jax.nn.initializers.glorot_uniform()
        self.encoder = nnx.Linear(d, latent_dim, kernel_init=init, rngs=rngs)
        self.decoder = nnx.Linear(latent_dim, self.out_features, kernel_init=init, rngs=rngs)

    def encode(self, x):
        return jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))

    def decode(self, z):
        y = self.decoder(z)
        if self.out_features == math.prod(self.image_shape):
            y = y.reshape(z.shape[0], *self.image_shape)
        return y

    def __call__(self, x) -> AEOutput:
        z = self.encode(x)
        return AEOutput(recon=self.decode(z), code=z)


class ConvAutoencoder(nnx.Module):
    """Small conv autoencoder: two stride-2 3x3 convs, a dense code, two `ConvTranspose2x`."""

    def __init__(self, image_shape, latent_dim: int, *, width: int = 32, rngs):
        h, w, c = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvAutoencoder needs H and W divisible by 4, got {image_shape}")
        self.image_shape = tuple(image_shape)
        self.hidden = (h // 4, w // 4, 2 * width)
        n = math.prod(self.hidden)
        self.conv1 = Conv(c, width, 3, stride=2, rngs=rngs)
        self.conv2 = Conv(width, 2 * width, 3, stride=2, rngs=rngs)
        self.to_code = nnx.Linear(n, latent_dim, rngs=rngs)
        self.from_code = nnx.Linear(latent_dim, n, rngs=rngs)
        self.up1 = ConvTranspose2x(2 * width, width, rngs=rngs)
        self.up2 = ConvTranspose2x(width, c, rngs=rngs)

    def encode(self, x):
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return self.to_code(h.reshape(h.shape[0], -1))

    def decode(self, z):
        h = jax.nn.relu(self.from_code(z)).reshape(z.shape[0], *self.hidden)
        return self.up2(jax.nn.relu(self.up1(h)))

    def __call__(self, x) -> AEOutput:
        z = self.encode(x)
        return AEOutput(recon=self.decode(z), code=z)


def make_model(name: str, image_shape, latent_dim: int, *, seed: int = 0) -> nnx.Module:
    """Build a registered autoencoder by name ('mlp' or 'conv')."""
    rngs = nnx.Rngs(params=seed)
    if name == "mlp":
        return MLPAutoencoder(image_shape, latent_dim, rngs=rngs)
    if name == "conv":
        return ConvAutoencoder(image_shape, latent_dim, rngs=rngs)
    raise ValueError(f"unknown model {name!r}: expected 'mlp' or 'conv'")
