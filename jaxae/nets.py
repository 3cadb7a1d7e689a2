"""Encoder/decoder networks (Flax NNX). Decoders emit raw arrays; heads interpret them.

`ConvTranspose2x` is a stride-2, 4x4 transposed convolution computed as a 3x3 convolution to
4*C_out channels followed by depth-to-space (the sub-pixel / phase decomposition). It is the same
linear map with the kernel rearranged; its gradient is ~7x faster than `lax.conv_transpose`'s on
XLA:CPU (STYLE.md, "Performance facts"). `tests/test_nets.py` checks it against
`lax.conv_transpose`.

Every convolution is written as matmuls (`conv2d_same`): inside `lax.scan`, XLA:CPU runs a
convolution's kernel gradient as a naive loop (jax-ml/jax#12868), ~25x slower for the conv
autoencoder; as a matmul every gradient is fast. Which side the kernel taps go on follows the
smaller tensor: patches of the input @ kernel when C_in <= C_out, the input @ every tap of the
kernel then shifted and summed when C_in > C_out (stride 1): for the VPAE CNN's 320 -> 2 channel
convolution the patches would be 9x its 32 MB input. `conv_maxpool2` fuses a convolution with
few input channels and the 2x2 max-pool after it (the VPAE CNN's first layer). Together: the
VPAE CNN trains 4.3x faster than with patches and a reshape max-pool
(`python -m benchmarks.train_speed --cases vpae_cnn`). Tests check all of them against `lax`.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def _patches(x: jax.Array, kh: int, kw: int, stride: int = 1) -> jax.Array:
    """'SAME' patches of x [B, H, W, C]: [B, ceil(H/s), ceil(W/s), kh*kw*C], ordered (i, j, c)
    like a HWIO kernel."""
    _, h, w, _ = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    pad_h = max((oh - 1) * stride + kh - h, 0)
    pad_w = max((ow - 1) * stride + kw - w, 0)
    pads = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    x = jnp.pad(x, pads)
    span_h, span_w = (oh - 1) * stride + 1, (ow - 1) * stride + 1
    taps = [
        x[:, i : i + span_h : stride, j : j + span_w : stride] for i in range(kh) for j in range(kw)
    ]
    return jnp.concatenate(taps, axis=-1)


def conv2d_same(x: jax.Array, kernel: jax.Array, stride: int = 1, taps: str = "auto") -> jax.Array:
    """'SAME' cross-correlation NHWC x HWIO -> NHWC, as one matmul.

    The same linear map as ``lax.conv_general_dilated(x, kernel, (stride,)*2, 'SAME')``.
    taps: 'input' (patches of x @ kernel), 'output' (x @ every tap of the kernel, then shifted
    and summed; stride 1 only) or 'auto': 'output' when stride is 1 and C_in > C_out.
    """
    if taps not in ("auto", "input", "output"):
        raise ValueError(f"conv2d_same: taps must be 'auto', 'input' or 'output', got {taps!r}")
    b, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    if taps == "output" and stride != 1:
        raise ValueError(f"conv2d_same: taps='output' needs stride 1, got {stride}")
    if taps == "output" or (taps == "auto" and stride == 1 and ci > co):
        z = x.reshape(-1, ci) @ kernel.transpose(2, 0, 1, 3).reshape(ci, kh * kw * co)
        z = jnp.pad(z.reshape(b, h, w, kh * kw, co), (*_same_pads(kh, kw), (0, 0), (0, 0)))
        return sum(z[:, i : i + h, j : j + w, i * kw + j] for i in range(kh) for j in range(kw))
    patches = _patches(x, kh, kw, stride)  # [B, oh, ow, kh*kw*ci]
    oh, ow = patches.shape[1:3]
    return (patches.reshape(-1, kh * kw * ci) @ kernel.reshape(-1, co)).reshape(b, oh, ow, co)


def _same_pads(kh: int, kw: int):
    """Stride-1 'SAME' padding of an NHWC array for a kh x kw kernel."""
    return ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))


def _phase_patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """'SAME' patches of x [B, H, W, C] for the four 2x2 pool phases: [4, B*H/2*W/2, kh*kw*C].

    Phase (r, s) holds the patches centred on pixels (2a + r, 2b + s); features ordered (i, j, c)
    like a HWIO kernel.
    """
    b, h, w, c = x.shape
    p = _patches(x, kh, kw).reshape(b, h // 2, 2, w // 2, 2, kh * kw * c)
    p = p.transpose(2, 4, 0, 1, 3, 5)
    return p.reshape(4, b * (h // 2) * (w // 2), kh * kw * c)


def _phase_outputs(patches, k2d):
    """The convolution at each pool phase: 4 x [N, C_out]. Few taps: fused multiply-adds."""
    if k2d.shape[0] > 16:
        return [patches[p] @ k2d for p in range(4)]
    return [sum(patches[p, :, t, None] * k2d[t] for t in range(k2d.shape[0])) for p in range(4)]


def _max4(y):
    return jnp.maximum(jnp.maximum(y[0], y[1]), jnp.maximum(y[2], y[3]))


def _conv_max_fwd(patches, k2d):
    m = _max4(_phase_outputs(patches, k2d))
    return m, (patches, k2d, m)


@jax.custom_vjp
def _conv_max(patches, k2d):
    return _conv_max_fwd(patches, k2d)[0]


def _conv_max_bwd(res, g):
    """Route g to the first phase that attains the max (jnp.argmax's choice); recompute, no mask."""
    patches, k2d, m = res
    y = _phase_outputs(patches, k2d)
    taken = jnp.zeros(m.shape, bool)
    d_patches, d_k = [], 0
    for p in range(4):
        hit = (y[p] == m) & ~taken
        taken = taken | hit
        gp = jnp.where(hit, g, 0)
        d_k = d_k + patches[p].T @ gp
        d_patches.append(gp @ k2d.T)  # dropped by XLA when the input needs no gradient
    return jnp.stack(d_patches), d_k


_conv_max.defvjp(_conv_max_fwd, _conv_max_bwd)


def conv_maxpool2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """2x2 max-pool of the stride-1 'SAME' convolution of x [B, H, W, C_in] (H, W even).

    Equal to ``conv2d_same(x, kernel).reshape(B, H/2, 2, W/2, 2, C).max((2, 4))``, without the
    full-resolution output: the max over the four pool phases of their convolutions (fused
    multiply-adds when kh*kw*C_in <= 16), and a gradient that recomputes which phase won; the
    128 MB full-resolution output of the VPAE CNN's 1 -> 320 channel layer is never written.
    A bias and a monotone activation commute with the max: add them after.
    """
    b, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    if h % 2 or w % 2:
        raise ValueError(f"conv_maxpool2 needs an even height and width, got {(h, w)}")
    y = _conv_max(_phase_patches(x, kh, kw), kernel.reshape(kh * kw * ci, co))
    return y.reshape(b, h // 2, w // 2, co)


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

    def __init__(
        self, image_shape, latent_dim: int, *, out_features=None, code_features=None, rngs
    ):
        d = math.prod(image_shape)
        init = jax.nn.initializers.glorot_uniform()
        self.encoder = nnx.Linear(d, code_features or latent_dim, kernel_init=init, rngs=rngs)
        self.decoder = nnx.Linear(latent_dim, out_features or d, kernel_init=init, rngs=rngs)

    def encode(self, x):
        """Images [B, H, W, C] -> codes ReLU(Dense(x)) [B, K] (or [B, code_features])."""
        return jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))

    def decode(self, z):
        """Codes [B, K] -> raw outputs [B, out_features] (one linear layer)."""
        return self.decoder(z)


def _per_pixel_net(name: str, image_shape, out_features) -> tuple[int, int, int, int]:
    """(H, W, C, M) of a conv net that halves the image twice and emits M values per pixel."""
    h, w, c = image_shape
    if h % 4 or w % 4:
        raise ValueError(f"{name} needs H and W divisible by 4, got {image_shape}")
    n = h * w * c
    if out_features is not None and (out_features <= 0 or out_features % n):
        raise ValueError(
            f"{name} emits a whole number of values per pixel (a multiple of {n}), not "
            f"{out_features}: use a head with per-pixel parameters or the 'mlp' architecture"
        )
    return h, w, c, (out_features or n) // n


def _per_pixel_out(y, m: int):
    """[B, H, W, M C] -> [B, M H W C]: each of the M per-pixel parameters as one block, the
    layout of the heads' raw vectors (e.g. the `vae` head's loc, then scale)."""
    b, h, w, mc = y.shape
    y = y.reshape(b, h, w, m, mc // m)
    return jnp.moveaxis(y, 3, 1).reshape(b, -1)


class ConvAutoencoder(nnx.Module):
    """Small conv autoencoder: two stride-2 3x3 convs, a dense code, two `ConvTranspose2x`.

    Its decoder emits one value per pixel, so it serves heads with P = H W C (e.g. `mse`).
    """

    def __init__(
        self,
        image_shape,
        latent_dim: int,
        *,
        out_features=None,
        code_features=None,
        width=32,
        rngs,
    ):
        h, w, c, self.per_pixel = _per_pixel_net("ConvAutoencoder", image_shape, out_features)
        self.hidden = (h // 4, w // 4, 2 * width)
        n = math.prod(self.hidden)
        self.conv1 = Conv(c, width, 3, stride=2, rngs=rngs)
        self.conv2 = Conv(width, 2 * width, 3, stride=2, rngs=rngs)
        self.to_code = nnx.Linear(n, code_features or latent_dim, rngs=rngs)
        self.from_code = nnx.Linear(latent_dim, n, rngs=rngs)
        self.up1 = ConvTranspose2x(2 * width, width, rngs=rngs)
        self.up2 = ConvTranspose2x(width, self.per_pixel * c, rngs=rngs)

    def encode(self, x):
        """Images [B, H, W, C] -> codes [B, K] (two stride-2 convolutions, then a dense layer)."""
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return self.to_code(h.reshape(h.shape[0], -1))

    def decode(self, z):
        """Codes [B, K] -> raw outputs [B, M H W C]: each of the M per-pixel parameters as one
        block."""
        h = jax.nn.relu(self.from_code(z)).reshape(z.shape[0], *self.hidden)
        return _per_pixel_out(self.up2(jax.nn.relu(self.up1(h))), self.per_pixel)


class VPAECNN(nnx.Module):
    """The VPAE paper's CNN (Ciobanu 2021, Table 2): Conv 320 3x3 'same' ReLU, max-pool 2,
    Conv(ceil(P/(H W))) 3x3 'same', nearest upsampling x2, flatten, keep the first P values.

    It has no Dense layer, and its code (H/2 x W/2 x 320 = 62,720 values at 28 x 28) is
    over-complete, larger than the 784-pixel image: the paper does not say so, but it explains
    why this CNN reconstructs poorly.
    """

    def __init__(self, image_shape, out_features: int, *, filters: int = 320, rngs):
        h, w, c = image_shape
        self.out_features = out_features
        self.out_channels = math.ceil(out_features / (h * w))
        glorot = jax.nn.initializers.glorot_uniform()
        self.conv1 = Conv(c, filters, 3, rngs=rngs, init=glorot)
        self.conv2 = Conv(filters, self.out_channels, 3, rngs=rngs, init=glorot)

    def encode(self, x):
        """The over-complete code [B, H/2, W/2, filters]."""
        # max-pool(ReLU(conv + b)) = ReLU(max-pool(conv) + b): both are monotone per channel
        kernel, bias = self.conv1.kernel[...], self.conv1.bias[...]
        return jax.nn.relu(conv_maxpool2(x, kernel) + bias)

    def decode(self, z):
        """The code [B, H/2, W/2, filters] -> raw outputs [B, P]: a 3x3 convolution, nearest
        upsampling x2, flattened and cut to the first P values."""
        h = self.conv2(z)
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest upsampling x2
        return h.reshape(h.shape[0], -1)[:, : self.out_features]


class InfoGANAutoencoder(nnx.Module):
    """The PAE paper's autoencoder (Boehm & Seljak 2020, Sec. 4): infoGAN's MNIST networks
    (Chen et al. 2016, App. C.1), the discriminator as encoder and the generator as decoder.

    Encoder: conv 64 4x4 s2, leaky ReLU 0.2; conv 128 4x4 s2, BN, leaky ReLU; dense 1024, BN,
    leaky ReLU; dense K (linear code). Decoder (infoGAN's generator, so ReLU, not leaky):
    dense 1024, BN, ReLU; dense (H/4)(W/4)128, BN, ReLU; transposed conv 64 4x4 s2, BN, ReLU;
    transposed conv C 4x4 s2, linear (the data lie in [-0.5, 0.5]). 'SAME' padding:
    28 -> 14 -> 7 and back (32 -> 16 -> 8 also works). The decoder's dense-layer BatchNorm
    normalises each of its (H/4)(W/4)128 features before the reshape (as TF's infoGAN on the
    flat layer); the conv BatchNorms are per channel. BatchNorm: flax defaults, momentum 0.99,
    epsilon 1e-5; its running statistics are `nnx.BatchStat` model state (`objectives.split`).
    Initialisation: flax defaults (LeCun normal kernels, zero biases, BN scale 1, offset 0);
    layers before a BatchNorm keep their (redundant) bias, as PyTorch's defaults do.
    Its decoder emits M values per pixel (last conv: M C channels), for heads with
    P = M H W C (`mse`: M = 1; the VAE's `vae` head, loc and scale: M = 2); its encoder emits
    `code_features` values (default K; a VAE's posterior mean and scale: 2K).
    """

    def __init__(self, image_shape, latent_dim: int, *, out_features=None, code_features=None,
                 rngs):  # fmt: skip
        h, w, c, self.per_pixel = _per_pixel_net("InfoGANAutoencoder", image_shape, out_features)
        self.hidden = (h // 4, w // 4, 128)
        n = math.prod(self.hidden)
        bn = partial(nnx.BatchNorm, momentum=0.99, epsilon=1e-5, rngs=rngs)
        # encoder: infoGAN's discriminator body
        self.conv1 = Conv(c, 64, 4, stride=2, rngs=rngs)
        self.conv2 = Conv(64, 128, 4, stride=2, rngs=rngs)
        self.bn2 = bn(128)
        self.dense3 = nnx.Linear(n, 1024, rngs=rngs)
        self.bn3 = bn(1024)
        self.to_code = nnx.Linear(1024, code_features or latent_dim, rngs=rngs)
        # decoder: infoGAN's generator
        self.from_code = nnx.Linear(latent_dim, 1024, rngs=rngs)
        self.bn_d1 = bn(1024)
        self.dense_d2 = nnx.Linear(1024, n, rngs=rngs)
        self.bn_d2 = bn(n)
        self.up1 = ConvTranspose2x(128, 64, rngs=rngs)
        self.bn_u1 = bn(64)
        self.up2 = ConvTranspose2x(64, self.per_pixel * c, rngs=rngs)

    def encode(self, x):
        """Images [B, H, W, C] -> codes [B, K]."""
        act = partial(jax.nn.leaky_relu, negative_slope=0.2)
        h = act(self.conv1(x))
        h = act(self.bn2(self.conv2(h)))
        h = act(self.bn3(self.dense3(h.reshape(h.shape[0], -1))))
        return self.to_code(h)

    def decode(self, z):
        """Codes [B, K] -> raw [B, H W C]."""
        h = jax.nn.relu(self.bn_d1(self.from_code(z)))
        h = jax.nn.relu(self.bn_d2(self.dense_d2(h))).reshape(z.shape[0], *self.hidden)
        h = jax.nn.relu(self.bn_u1(self.up1(h)))
        return _per_pixel_out(self.up2(h), self.per_pixel)


# The one registry of architectures: name -> (image_shape, latent_dim, out_features, code_features,
# rngs) -> a network with encode(x) -> code [B, code_features or latent_dim] and
# decode(code [B, latent_dim]) -> raw [B, out_features].
ARCHS = {
    "mlp": lambda shape, latent, out, code, rngs: MLPAutoencoder(
        shape, latent, out_features=out, code_features=code, rngs=rngs
    ),
    "conv": lambda shape, latent, out, code, rngs: ConvAutoencoder(
        shape, latent, out_features=out, code_features=code, rngs=rngs
    ),
    "cnn": lambda shape, latent, out, code, rngs: VPAECNN(shape, out, rngs=rngs),
    "infogan": lambda shape, latent, out, code, rngs: InfoGANAutoencoder(
        shape, latent, out_features=out, code_features=code, rngs=rngs
    ),
}


def make(
    arch: str, image_shape, latent_dim: int, out_features: int, *, rngs, code_features=None
) -> nnx.Module:
    """The network `arch` of `ARCHS` for images of `image_shape`, emitting `out_features`
    (and, from its encoder, `code_features`: default `latent_dim`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {sorted(ARCHS)}")
    return ARCHS[arch](tuple(image_shape), latent_dim, out_features, code_features, rngs)
