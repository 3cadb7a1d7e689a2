"""Encoder/decoder networks (Flax NNX). Decoders emit raw arrays; heads interpret them.

`ARCHS` is the registry of architectures (`register` adds one, `make` builds one by name):
'mlp' (the VPAE paper's 784-K-784, a ReLU code), 'conv', 'cnn' (the VPAE paper's CNN),
'infogan' (the PAE paper's), and with linear codes for the regularized autoencoders 'dense'
(an MLP), 'dcgan' (the GMM-DAE / RAE paper's 32 x 32 MNIST net) and 'pythae' (the net of the
speed comparison with pythae). Every network has encode(x [B, H, W, C]) -> [B, code_features],
decode(z [B, K]) -> [B, out_features] and `decoder_layers`, the names of its decoder's top-level
attributes, so a model can select the decoder's parameters (e.g. RAE's L2 decoder penalty).
`MLP` is a plain dense network for critics and prior generators.

Shapes: 'mlp' and 'dense' flatten their input, so they take any image shape and vectors
(image_shape (D,)). The conv nets take images (H, W, C) with any C and H, W divisible by 2^s for
their s stride-2 stages: 'conv', 'infogan' and 'pythae' 4 (28, 32, 64, ...), 'dcgan' 16 (32, 64,
...), 'cnn' 2. At sizes other than their paper's they keep their layers, and the flatten and
dense layers follow the image ((H/2^s)(W/2^s) x channels); each class says what that gives.
Any other shape is a ValueError when the net is built, naming the sizes it takes and the fix
(config `data.image_size` resizes, `data.pad_to_32` zero-pads up to 32 x 32).

`ConvTranspose2x` is a stride-2, 4x4 transposed convolution computed by output phase (the
sub-pixel / phase decomposition, Shi et al. 2016, "Is the deconvolution layer the same as a
convolutional layer?", arXiv:1609.07009): each of the four phases of the output is a 2x2
convolution of the input with its 2x2 sub-kernel, all four in one matmul, interleaved by
depth-to-space (`_conv_transpose2x`). It is the same linear map with the kernel rearranged; its
gradient is ~7x faster than `lax.conv_transpose`'s on XLA:CPU (STYLE.md, "Performance facts").
The 3x3 form (`subpixel_kernel`: one 3x3 convolution to 4*C_out channels) also multiplies the
5 zero taps of each phase's window: the 'pythae' AE's train step was 16.8 GFLOP by XLA's count
against 11.9 now (10.3 of multiply-adds), and ~1.2x slower. `tests/test_nets.py` and
`tests/test_convtranspose.py` check it against `lax.conv_transpose`.

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

import inspect
import math
import numbers
from collections.abc import Callable
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


def _phase_taps(kernel: jax.Array) -> jax.Array:
    """A 4x4 transposed-conv kernel [4, 4, Ci, Co] split by output phase: [u, r, v, s, Ci, Co].

    Output row 2a + r of the 'SAME' stride-2 transposed convolution reads input rows
    a + r + u - 1 (u = 0, 1) through kernel row r + 2u (`subpixel_kernel`'s 2t - r at t = r + u,
    its two taps in [0, 4)); columns likewise with (s, v). Kernel row r + 2u is index (u, r) of a
    2 x 2 reshape, so this is a free reshape, and so is its gradient.
    """
    ci, co = kernel.shape[2:]
    return kernel.reshape(2, 2, 2, 2, ci, co)


def _interleave(phases: list[jax.Array]) -> jax.Array:
    """The four output phases [(r, s) = (0, 0), (0, 1), (1, 0), (1, 1)] x [B, H, W, C] ->
    [B, 2H, 2W, C], phase (r, s) at pixels (2a + r, 2b + s)."""
    b, h, w, c = phases[0].shape
    return depth_to_space(jnp.stack(phases, axis=3).reshape(b, h, w, 4 * c))


def _conv_transpose2x(x: jax.Array, kernel: jax.Array, taps: str = "auto") -> jax.Array:
    """'SAME' stride-2 4x4 transposed convolution that computes only each output phase's 2x2
    taps, as one matmul.

    The same linear map as ``lax.conv_transpose(x, kernel, (2, 2), 'SAME')`` (HWIO kernel) and
    as ``depth_to_space(conv2d_same(x, subpixel_kernel(kernel)))``, whose 3x3 window computes
    9 taps per phase where 4 are non-zero (2.25x the multiply-adds). Every output phase (r, s)
    is a 2x2 convolution of the input padded by 1, at window offset (r, s) (`_phase_taps`).
    Only pads, slices, reshapes and matmuls, so the gradients are matmuls too (no convolution:
    jax-ml/jax#12868).

    Which side of the matmul the 2x2 taps go on (`taps`):
      'input': the 2x2 patches of the padded input at all (H+1)(W+1) window positions
        [., 4 Ci] @ the four phases' sub-kernels [4 Ci, 4 Co]; phase (r, s) reads its H x W
        positions from offset (r, s). (H+1)(W+1)/(HW) times the needed multiply-adds (1.3x at
        7 x 7), but small patches.
      'output': x [., Ci] @ all 16 taps [Ci, 16 Co], then each phase sums its 4 taps shifted
        into place. Exactly the needed multiply-adds, but 16 Co values per input pixel.
      'auto': 'output' when Ci > 4 Co (fewer values than the input's 2x2 patches) or when
        (H+1)(W+1) >= 1.5 HW (square maps up to 4 x 4, where 'input' does >= 1.5x the work),
        else 'input'. Measured on 2 shared XLA:CPU cores (forward + both gradients in a
        scanned step, batch 128, 2026-12-06): 'input' 1.45-2.3x faster than 'output' at
        7 x 7 x 128 -> 64 and 7 x 7 x 64 -> 32; 'output' 1.3-1.8x faster at 4 x 4 x 512 -> 256
        and 2 x 2 x 1024 -> 512, 3-5x at 14 x 14 x 64 -> 1 and 16 x 16 x 128 -> 1; a tie at
        8 x 8 x 256 -> 128. Against the 3x3 form, 'auto' is 1.4-2x faster at each of them.

    Args:
        x: inputs [B, H, W, Ci].
        kernel: the transposed convolution's kernel [4, 4, Ci, Co] (HWIO, as `lax.conv_transpose`
            and `nnx.ConvTranspose` hold it).
        taps: 'auto', 'input' or 'output' (above); all give the same values.

    Returns:
        The outputs [B, 2H, 2W, Co], no bias.
    """
    if taps not in ("auto", "input", "output"):
        raise ValueError(
            f"_conv_transpose2x: taps must be 'auto', 'input' or 'output', got {taps!r}"
        )
    b, h, w, ci = x.shape
    co = kernel.shape[-1]
    if kernel.shape != (4, 4, ci, co):
        raise ValueError(
            f"_conv_transpose2x: kernel must be [4, 4, {ci}, C_out] for x {x.shape}, "
            f"got {kernel.shape}"
        )
    k = _phase_taps(kernel)  # [u, r, v, s, Ci, Co]
    if taps == "auto":
        taps = "output" if ci > 4 * co or (h + 1) * (w + 1) >= 1.5 * h * w else "input"
    if taps == "input":
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate(
            [xp[:, u : u + h + 1, v : v + w + 1] for u in (0, 1) for v in (0, 1)], axis=-1
        )  # [B, H+1, W+1, (u, v, Ci)]
        k = k.transpose(0, 2, 4, 1, 3, 5).reshape(4 * ci, 4 * co)  # [(u, v, Ci), (r, s, Co)]
        z = (patches.reshape(-1, 4 * ci) @ k).reshape(b, h + 1, w + 1, 2, 2, co)
        return _interleave([z[:, r : r + h, s : s + w, r, s] for r in (0, 1) for s in (0, 1)])
    k = k.transpose(4, 0, 1, 2, 3, 5).reshape(ci, 16 * co)  # [Ci, (u, r, v, s, Co)]
    z = (x.reshape(-1, ci) @ k).reshape(b, h, w, 2, 2, 2, 2, co)
    z = jnp.pad(z, ((0, 0), (1, 1), (1, 1), *[(0, 0)] * 5))  # z[a + 1] is input row a's
    return _interleave(
        [
            sum(
                z[:, r + u : r + u + h, s + v : s + v + w, u, r, v, s]
                for u in (0, 1)
                for v in (0, 1)
            )
            for r in (0, 1)
            for s in (0, 1)
        ]
    )


class ConvTranspose2x(nnx.Module):
    """Stride-2 4x4 transposed convolution ('SAME'), parameterised exactly like one."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (4, 4, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Inputs [B, H, W, C_in] -> outputs [B, 2H, 2W, C_out] (`_conv_transpose2x`)."""
        return _conv_transpose2x(x, self.kernel[...]) + self.bias[...]


def _check_width(name: str, width, minimum: int = 1) -> None:
    """A network's `width` option: an int >= minimum, or a ValueError that says so."""
    if isinstance(width, bool) or not isinstance(width, int) or width < minimum:
        raise ValueError(f"{name}: width must be an integer >= {minimum}, got {width!r}")


class MLP(nnx.Module):
    """A plain dense network: Dense, activation, ..., Dense (linear output).

    For critics, discriminators and prior generators. Flax's default initialisation (LeCun
    normal kernels, zero biases).
    """

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        out_features: int,
        *,
        rngs: nnx.Rngs,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    ):
        """Args:
        in_features: D, the size of an input vector.
        hidden: the hidden layers' sizes, in order (may be empty: one linear layer).
        out_features: the size of an output vector.
        rngs: the parameters' random keys.
        activation: applied after every hidden layer, not after the last.
        """
        sizes = (in_features, *tuple(hidden), out_features)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(
                f"MLP: in_features, hidden and out_features must be positive integers, got "
                f"in_features={in_features!r}, hidden={hidden!r}, out_features={out_features!r}"
            )
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        """Inputs [B, in_features] -> outputs [B, out_features]."""
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class MLPAutoencoder(nnx.Module):
    """x -> ReLU(Dense(latent)) -> Dense(out): the 784-32-784 autoencoder of the VPAE paper.

    Its code is a ReLU (the paper's); the regularized autoencoders use 'dense' (a linear code).
    It flattens its input: any image shape, and vectors (image_shape (D,)).
    """

    decoder_layers: tuple[str, ...] = ("decoder",)

    def __init__(
        self, image_shape, latent_dim: int, *, out_features=None, code_features=None, rngs
    ):
        d = math.prod(image_shape)
        init = jax.nn.initializers.glorot_uniform()
        self.encoder = nnx.Linear(d, code_features or latent_dim, kernel_init=init, rngs=rngs)
        self.decoder = nnx.Linear(latent_dim, out_features or d, kernel_init=init, rngs=rngs)

    def encode(self, x):
        """Inputs [B, *image_shape] -> codes ReLU(Dense(x)) [B, K] (or [B, code_features])."""
        return jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))

    def decode(self, z):
        """Codes [B, K] -> raw outputs [B, out_features] (one linear layer)."""
        return self.decoder(z)


def _image_hwc(name: str, image_shape, halvings: int) -> tuple[int, int, int]:
    """(H, W, C) of a conv net's images, which it halves `halvings` times, or a ValueError, raised
    when the net is built, that says which shapes it takes and how to get one: vectors go to
    'mlp' or 'dense'; a size that does not divide is resized (`data.image_size`) or, up to 32,
    zero-padded (`data.pad_to_32`)."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(n, numbers.Integral) and n > 0 for n in shape):
        fix = "H, W and C must be positive integers"
        if len(shape) == 1:
            fix = "for vectors (image_shape [D]) use the 'mlp' or 'dense' architecture"
        elif len(shape) == 2:
            fix = f"give the channels too, image_shape [{shape[0]}, {shape[1]}, 1] for grey images"
        raise ValueError(f"{name} takes images of shape (H, W, C), got image_shape {shape}: {fix}")
    h, w, c = map(int, shape)
    d = 2**halvings
    if h % d or w % d:
        size = d * -(-max(h, w) // d)
        pad = " or zero-pad them to 32 x 32 (config data.pad_to_32)" if max(h, w) <= 32 else ""
        raise ValueError(
            f"{name} needs H and W divisible by {d}, got image_shape {shape}: resize the "
            f"images (config data.image_size={size}){pad}"
        )
    return h, w, c


def _per_pixel_net(name: str, image_shape, out_features, halvings: int = 2):
    """(H, W, C, M) of a conv net that halves the image `halvings` times (`_image_hwc`) and
    emits M values per pixel."""
    h, w, c = _image_hwc(name, image_shape, halvings)
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

    Any H, W divisible by 4 and any C: the dense layers to and from the code have (H/4)(W/4)2w
    features (w = 32 by default, option `width`). Its decoder emits M values per pixel (last
    conv: M C channels), for heads with P = M H W C (e.g. `mse`: M = 1).
    """

    decoder_layers: tuple[str, ...] = ("from_code", "up1", "up2")
    kernel_size: int = 3  # of the encoder's two convolutions

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
        name = type(self).__name__
        _check_width(name, width)
        h, w, c, self.per_pixel = _per_pixel_net(name, image_shape, out_features)
        self.hidden = (h // 4, w // 4, 2 * width)
        n = math.prod(self.hidden)
        self.conv1 = Conv(c, width, self.kernel_size, stride=2, rngs=rngs)
        self.conv2 = Conv(width, 2 * width, self.kernel_size, stride=2, rngs=rngs)
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


class PythaeAutoencoder(ConvAutoencoder):
    """The conv autoencoder of the side-by-side speed comparison with pythae (STYLE.md,
    "Performance facts": "1-64-128 4x4 s2, latent 16"): `ConvAutoencoder` with 4x4 kernels.

    Encoder: conv w 4x4 s2, ReLU; conv 2w 4x4 s2, ReLU; flatten; dense K (linear code).
    Decoder: dense (H/4)(W/4)2w, ReLU, reshape; transposed conv w 4x4 s2, ReLU; transposed conv
    M C 4x4 s2, linear. w = 64 by default (option `width`). 'SAME' padding is PyTorch's padding
    1 at kernel 4, stride 2 on even sizes: 28 -> 14 -> 7 and back. At other sizes (H, W divisible
    by 4, any C) the same layers, the dense ones (H/4)(W/4)2w wide.

    Not pythae's own MNIST benchmark net: `pythae.models.nn.benchmarks.mnist`'s
    `Encoder_Conv_AE_MNIST` is the 128-256-512-1024 BatchNorm net (the 'dcgan' encoder, run on
    unpadded 28 x 28 images: 28 -> 14 -> 7 -> 3 -> 1) and its `Decoder_Conv_AE_MNIST` uses 3x3
    transposed convolutions from 1024 x 4 x 4 and a sigmoid output. This is the smaller net that
    the comparison ran.
    """

    kernel_size: int = 4

    def __init__(self, image_shape, latent_dim: int, *, out_features=None, code_features=None,
                 width=64, rngs):  # fmt: skip
        super().__init__(
            image_shape,
            latent_dim,
            out_features=out_features,
            code_features=code_features,
            width=width,
            rngs=rngs,
        )


class VPAECNN(nnx.Module):
    """The VPAE paper's CNN (Ciobanu 2021, Table 2): Conv 320 3x3 'same' ReLU, max-pool 2,
    Conv(ceil(P/(H W))) 3x3 'same', nearest upsampling x2, flatten, keep the first P values.

    Any even H and W and any C: the same two convolutions (C -> 320 channels, and 320 ->
    ceil(P / (H W))).

    It has no Dense layer, and its code (H/2 x W/2 x 320 = 62,720 values at 28 x 28) is
    over-complete, larger than the 784-pixel image: the paper does not say so, but it explains
    why this CNN reconstructs poorly.
    """

    decoder_layers: tuple[str, ...] = ("conv2",)

    def __init__(self, image_shape, out_features: int, *, filters: int = 320, rngs):
        h, w, c = _image_hwc("VPAECNN", image_shape, halvings=1)
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
    28 -> 14 -> 7 and back. At other sizes (H, W divisible by 4, any C: 32 -> 16 -> 8,
    64 -> 32 -> 16) the same layers; the flatten and the decoder's second dense layer have
    (H/4)(W/4)128 features, so the two dense layers grow with the image: 13.2M weights in all
    at 28 x 28 x 1, 17.1M at 32 x 32, 67.5M at 64 x 64. The decoder's dense-layer BatchNorm
    normalises each of its (H/4)(W/4)128 features before the reshape (as TF's infoGAN on the
    flat layer); the conv BatchNorms are per channel. BatchNorm: flax defaults, momentum 0.99,
    epsilon 1e-5; its running statistics are `nnx.BatchStat` model state (`objectives.split`).
    Initialisation: flax defaults (LeCun normal kernels, zero biases, BN scale 1, offset 0);
    layers before a BatchNorm keep their (redundant) bias, as PyTorch's defaults do.
    Its decoder emits M values per pixel (last conv: M C channels), for heads with
    P = M H W C (`mse`: M = 1; the VAE's `vae` head, loc and scale: M = 2); its encoder emits
    `code_features` values (default K; a VAE's posterior mean and scale: 2K).
    """

    decoder_layers: tuple[str, ...] = (
        "from_code", "bn_d1", "dense_d2", "bn_d2", "up1", "bn_u1", "up2",
    )  # fmt: skip

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


class DenseAutoencoder(nnx.Module):
    """An MLP autoencoder with a linear code, for vector data and small tests.

    Encoder: flatten, dense w, ReLU, dense w/2, ReLU, dense `code_features` (linear code); any
    input shape (images, or vectors: image_shape (D,)).
    Decoder, mirrored: dense w/2, ReLU, dense w, ReLU, dense `out_features` (linear output).
    w = 512 by default (option `width`). Unlike 'mlp' (the VPAE paper's ReLU code), the code
    can take any sign, as the regularized autoencoders' priors assume.
    """

    decoder_layers: tuple[str, ...] = ("decoder",)

    def __init__(self, image_shape, latent_dim: int, *, out_features=None, code_features=None,
                 width=512, rngs):  # fmt: skip
        _check_width("DenseAutoencoder", width, minimum=2)
        d = math.prod(image_shape)
        hidden = (width, width // 2)
        self.encoder = MLP(d, hidden, code_features or latent_dim, rngs=rngs)
        self.decoder = MLP(latent_dim, hidden[::-1], out_features or d, rngs=rngs)

    def encode(self, x):
        """Inputs [B, *image_shape] -> codes [B, code_features]."""
        return self.encoder(x.reshape(x.shape[0], -1))

    def decode(self, z):
        """Codes [B, K] -> raw outputs [B, out_features]."""
        return self.decoder(z)


class DCGANAutoencoder(nnx.Module):
    """The DCGAN-style autoencoder of the GMM-DAE paper (Saseendran et al. 2021, App. A.2.3,
    Table 1) for 32 x 32 MNIST / Fashion-MNIST. Its encoder is also the RAE paper's (Ghosh et al.
    2020) and pythae's MNIST benchmark encoder (`Encoder_Conv_AE_MNIST`).

    Encoder: four 4x4 stride-2 convolutions to w, 2w, 4w, 8w channels, each followed by
    BatchNorm and ReLU (32 -> 16 -> 8 -> 4 -> 2); flatten; dense K (linear code).
    Decoder: dense (H/16)(W/16)8w reshaped to (H/16, W/16, 8w) (the table's "FC, Reshape
    1024 x 2 x 2": no activation); three 4x4 stride-2 transposed convolutions to 4w, 2w, w, each
    followed by BatchNorm and ReLU; a last 4x4 stride-2 transposed convolution to M C channels.
    w = 128 by default (option `width`), the table's 128-256-512-1024.

    The last layer is linear here: the table lists BN, ReLU on it too, but a ReLU output cannot
    be negative, so it could not fit centred data or emit a head's raw parameters (a scale's
    log, a logit). 'SAME' padding at kernel 4, stride 2 on even sizes is the paper's padding 1.
    H and W must be divisible by 16: zero-pad 28 x 28 images to 32 (`data.pad_to_32`). At
    other sizes (any C; 64 -> 32 -> 16 -> 8 -> 4) the same four stages, the dense layers
    (H/16)(W/16)8w wide: 22.2M weights at 32 x 32 x 1, 22.6M at 64 x 64 x 3.
    BatchNorm: flax defaults (momentum 0.99, epsilon 1e-5), per channel, as in
    `InfoGANAutoencoder`; its running statistics are `nnx.BatchStat` model state. Layers before
    a BatchNorm keep their (redundant) bias, as PyTorch's defaults do. Its decoder emits M
    values per pixel (P = M H W C) and its encoder `code_features` values (default K).
    """

    decoder_layers: tuple[str, ...] = (
        "from_code", "up1", "bn_u1", "up2", "bn_u2", "up3", "bn_u3", "up4",
    )  # fmt: skip

    def __init__(self, image_shape, latent_dim: int, *, out_features=None, code_features=None,
                 width=128, rngs):  # fmt: skip
        _check_width("DCGANAutoencoder", width)
        h, w, c, self.per_pixel = _per_pixel_net(
            "DCGANAutoencoder", image_shape, out_features, halvings=4
        )
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.hidden = (h // 16, w // 16, widths[-1])
        n = math.prod(self.hidden)
        bn = partial(nnx.BatchNorm, momentum=0.99, epsilon=1e-5, rngs=rngs)
        # encoder
        self.conv1 = Conv(c, widths[0], 4, stride=2, rngs=rngs)
        self.bn1 = bn(widths[0])
        self.conv2 = Conv(widths[0], widths[1], 4, stride=2, rngs=rngs)
        self.bn2 = bn(widths[1])
        self.conv3 = Conv(widths[1], widths[2], 4, stride=2, rngs=rngs)
        self.bn3 = bn(widths[2])
        self.conv4 = Conv(widths[2], widths[3], 4, stride=2, rngs=rngs)
        self.bn4 = bn(widths[3])
        self.to_code = nnx.Linear(n, code_features or latent_dim, rngs=rngs)
        # decoder
        self.from_code = nnx.Linear(latent_dim, n, rngs=rngs)
        self.up1 = ConvTranspose2x(widths[3], widths[2], rngs=rngs)
        self.bn_u1 = bn(widths[2])
        self.up2 = ConvTranspose2x(widths[2], widths[1], rngs=rngs)
        self.bn_u2 = bn(widths[1])
        self.up3 = ConvTranspose2x(widths[1], widths[0], rngs=rngs)
        self.bn_u3 = bn(widths[0])
        self.up4 = ConvTranspose2x(widths[0], self.per_pixel * c, rngs=rngs)

    def encode(self, x):
        """Images [B, H, W, C] -> codes [B, code_features]."""
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.bn2(self.conv2(h)))
        h = jax.nn.relu(self.bn3(self.conv3(h)))
        h = jax.nn.relu(self.bn4(self.conv4(h)))
        return self.to_code(h.reshape(h.shape[0], -1))

    def decode(self, z):
        """Codes [B, K] -> raw outputs [B, M H W C]: each of the M per-pixel parameters as one
        block."""
        h = self.from_code(z).reshape(z.shape[0], *self.hidden)
        h = jax.nn.relu(self.bn_u1(self.up1(h)))
        h = jax.nn.relu(self.bn_u2(self.up2(h)))
        h = jax.nn.relu(self.bn_u3(self.up3(h)))
        return _per_pixel_out(self.up4(h), self.per_pixel)


# The one registry of architectures, name -> factory. A factory is called as
# fn(image_shape, latent_dim, out_features, code_features, rngs, **options) and returns a network
# with encode(x [B, H, W, C]) -> code [B, code_features], decode(code [B, latent_dim]) ->
# raw [B, out_features] and `decoder_layers`, the names of its decoder's top-level attributes.
# `jaxae.config` validates `model.arch` against its keys; its order is the tables' row order.
ARCHS: dict[str, Callable[..., nnx.Module]] = {}

# The factory arguments that every factory takes; any other parameter is an option.
_FACTORY_ARGS = ("image_shape", "latent_dim", "out_features", "code_features", "rngs")


def register(name: str) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
    """Decorator: add a network factory to `ARCHS` under `name`.

    The factory is ``fn(image_shape, latent_dim, out_features, code_features, rngs, **options)``
    (`code_features` arrives as an int: `make` replaces None by latent_dim); its keyword
    parameters after those five are the options `make` accepts for it (all, if it takes
    ``**options``).

    Args:
        name: the architecture's name, `model.arch` in a config.

    Returns:
        The decorator, which returns the factory unchanged.

    Raises:
        ValueError: (from the decorator) `name` is already taken by another factory.
    """

    def add(fn: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
        if name in ARCHS and ARCHS[name] is not fn:
            raise ValueError(
                f"register: architecture name {name!r} is already taken by "
                f"{ARCHS[name].__qualname__}; choose another name"
            )
        ARCHS[name] = fn
        return fn

    return add


def _options(fn) -> set[str] | None:
    """The option names a factory accepts: its parameters after the five factory arguments;
    None when it takes any (``**options``)."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[len(_FACTORY_ARGS) :] if p.kind is not p.VAR_POSITIONAL}


@register("mlp")
def _mlp(image_shape, latent_dim, out_features, code_features, rngs):
    return MLPAutoencoder(
        image_shape, latent_dim, out_features=out_features, code_features=code_features, rngs=rngs
    )


@register("conv")
def _conv(image_shape, latent_dim, out_features, code_features, rngs, *, width=32):
    return ConvAutoencoder(image_shape, latent_dim, out_features=out_features,
                           code_features=code_features, width=width, rngs=rngs)  # fmt: skip


@register("cnn")
def _cnn(image_shape, latent_dim, out_features, code_features, rngs):
    return VPAECNN(image_shape, out_features, rngs=rngs)


@register("infogan")
def _infogan(image_shape, latent_dim, out_features, code_features, rngs):
    return InfoGANAutoencoder(
        image_shape, latent_dim, out_features=out_features, code_features=code_features, rngs=rngs
    )


@register("dense")
def _dense(image_shape, latent_dim, out_features, code_features, rngs, *, width=512):
    return DenseAutoencoder(image_shape, latent_dim, out_features=out_features,
                            code_features=code_features, width=width, rngs=rngs)  # fmt: skip


@register("dcgan")
def _dcgan(image_shape, latent_dim, out_features, code_features, rngs, *, width=128):
    return DCGANAutoencoder(image_shape, latent_dim, out_features=out_features,
                            code_features=code_features, width=width, rngs=rngs)  # fmt: skip


@register("pythae")
def _pythae(image_shape, latent_dim, out_features, code_features, rngs, *, width=64):
    return PythaeAutoencoder(image_shape, latent_dim, out_features=out_features,
                             code_features=code_features, width=width, rngs=rngs)  # fmt: skip


def make(
    arch: str,
    image_shape,
    latent_dim: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    code_features: int | None = None,
    **options,
) -> nnx.Module:
    """The network `arch` of `ARCHS`.

    Args:
        arch: a name in `ARCHS`.
        image_shape: (H, W, C) of the inputs; (D,) for vectors ('mlp', 'dense'). Which sizes
            each conv net takes: the module's docstring.
        latent_dim: K, the size of a code the decoder takes.
        out_features: P, the size of the decoder's raw output.
        rngs: the parameters' random keys.
        code_features: the size of the encoder's output (default `latent_dim`; a VAE's 2K).
        **options: the architecture's options, e.g. `width` for 'conv', 'dense', 'dcgan' and
            'pythae'.

    Returns:
        The network: encode [B, H, W, C] -> [B, code_features], decode [B, K] -> [B, P].

    Raises:
        ValueError: `arch` is unknown, an option is not one of `arch`'s, or `arch` does not
            take `image_shape` (the message says which shapes it takes and how to get one).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {sorted(ARCHS)}")
    fn = ARCHS[arch]
    accepted = _options(fn)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(
            f"architecture {arch!r} has no option {', '.join(map(repr, unknown))}: its options "
            f"are {sorted(accepted) or 'none'}"
        )
    code_features = latent_dim if code_features is None else code_features
    return fn(tuple(image_shape), latent_dim, out_features, code_features, rngs, **options)
