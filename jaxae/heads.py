"""Likelihood heads of the Vanilla Probabilistic Autoencoder (Ciobanu 2021, Sec. 3.1).

A head turns the raw decoder output f(x) [B, P] into a distribution over the image,
``X_rec | x ~ Distribution(parameters = f(x))``; the training loss is its negative
log-likelihood. Heads are pure functions chosen by name from `ALL_HEADS`:

| name | distribution (per component) | P per component |
| --- | --- | --- |
| mse | squared error (mean over pixels): `distributions.SquaredError`, not a density | D |
| normal_identity / _diag / _full | N(mu, I), N(mu, diag(s^2)), N(mu, L L^T) | D, 2D, D + D(D+1)/2 |
| t_identity / _diag / _full | multivariate t(df, mu, Sigma), Sigma as above | 1 + the normal's |
| maf | MAF (one MADE layer, 10 ReLU units) on N(f(x), I) | D (+ the MADE's own weights) |
| matrix_normal_identity / _diag / _full | MN(M, U, V), U, V: I, diag, tril | D, D+H+W, D+2 tri |
| matrix_t_identity / _diag / _full | matrix t (TFP's MatrixTLinearOperator) | 1 + the MN's |
| vae | the VAE's diagonal-Normal decoder likelihood | 2D |
| bernoulli | Bernoulli(sigmoid(logits)) per pixel, `distrax.Bernoulli` | D |
| continuous_bernoulli | continuous Bernoulli per pixel, `distributions.ContinuousBernoulli` | D |

`HEADS` are the paper's 15 rows (the grid of `experiments/vpae_table.py`); `ALL_HEADS` adds the
Bernoulli heads, for binarized or [0, 1] images (pythae's BCE; Loaiza-Ganem & Cunningham 2019),
and is what a config's ``model.head`` may name.

Every head but mse, maf, vae and the Bernoulli heads is also a mixture of K components with
input-dependent weights (`distrax.MixtureSameFamily` over stacked parameters); its raw output
starts with K logits. As in the paper's code, K = 1 still emits its one (inert) logit, so
P = 25,120 + 33 P_head reproduces the paper's parameter counts. Constraints as in the paper: a
positive value is 1e-6 + softplus(raw); a positive-definite factor is a lower triangle filled
from raw values with a 1e-6 + softplus diagonal (TFP's FillScaleTriL), so the covariance is
L L^T.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import distributions as jd

FAMILIES = {"normal": False, "t": True, "matrix_normal": False, "matrix_t": True}  # has df
SCALES = ("identity", "diag", "full")
HEADS = (
    "mse",
    *(f"{f}_{s}" for f in ("normal", "t") for s in SCALES),
    "maf",
    *(f"{f}_{s}" for f in ("matrix_normal", "matrix_t") for s in SCALES),
    "vae",
)
BERNOULLI_HEADS = ("bernoulli", "continuous_bernoulli")  # one logit per pixel, x in [0, 1]
ALL_HEADS = (*HEADS, *BERNOULLI_HEADS)
EPS = 1e-6
# Above this many bytes of estimated training memory a head needs force=True (the paper marks
# K=10 with full covariance as out of memory).
MEMORY_LIMIT = 8 * 2**30


def positive(raw):
    """The paper's constraint for a strictly positive value: 1e-6 + softplus(raw)."""
    return EPS + jax.nn.softplus(raw)


def _square(raw, n: int):
    """TFP's layout (`tfp.math.fill_triangular`): the tail, then the reversed vector, as n x n.

    Its lower triangle holds every value of raw [..., n(n+1)/2] once. Only concat, reverse and
    reshape, whose gradients are cheap; a scatter's took seconds per step at n = 784 on XLA:CPU.
    Works on NumPy and JAX arrays alike.
    """
    lib = np if isinstance(raw, np.ndarray) else jnp
    x = lib.concatenate([raw[..., n:], raw[..., ::-1]], axis=-1)
    return x.reshape(*raw.shape[:-1], n, n)


def fill_triangular(raw, n: int):
    """[..., n(n+1)/2] -> lower-triangular [..., n, n], every value placed once."""
    return jnp.tril(_square(raw, n))


@functools.lru_cache(maxsize=8)
def _layout(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index tables of `_square`'s lower triangle (constants when traced).

    fill [n*n]: dense position -> raw index (n(n+1)/2 for the zero upper triangle);
    pack [n(n+1)/2]: raw index -> dense position; diag [n]: the raw indices on the diagonal.
    """
    t = n * (n + 1) // 2
    square = _square(np.arange(t), n)
    lower = np.tril(np.ones((n, n), bool))
    fill = np.where(lower, square, t).astype(np.int32).reshape(-1)
    pack = np.zeros(t, np.int32)
    pack[square[lower]] = np.flatnonzero(lower)
    return fill, pack, np.diagonal(square).astype(np.int32)


@jax.custom_vjp
def _fill_scale_tril(raw):
    n = math.isqrt(8 * raw.shape[-1] + 1) // 2
    fill, _, diag = _layout(n)
    padded = jnp.concatenate([raw, jnp.zeros((*raw.shape[:-1], 1), raw.dtype)], axis=-1)
    tril = jnp.take(padded, fill, axis=-1).reshape(*raw.shape[:-1], n, n)
    i = np.arange(n)
    return tril.at[..., i, i].set(positive(raw[..., diag]))


def _fill_scale_tril_fwd(raw):
    n = math.isqrt(8 * raw.shape[-1] + 1) // 2
    return _fill_scale_tril(raw), raw[..., _layout(n)[2]]


def _fill_scale_tril_bwd(raw_diag, g):
    n = g.shape[-1]
    _, pack, diag = _layout(n)
    g_raw = jnp.take(g.reshape(*g.shape[:-2], n * n), pack, axis=-1)
    return (g_raw.at[..., diag].multiply(jax.nn.sigmoid(raw_diag)),)  # d softplus = sigmoid


_fill_scale_tril.defvjp(_fill_scale_tril_fwd, _fill_scale_tril_bwd)


def fill_scale_tril(raw, n: int):
    """[..., n(n+1)/2] -> lower-triangular [..., n, n] with a 1e-6 + softplus diagonal.

    The layout of `fill_triangular` (TFP's). Built by one gather from constant index tables, its
    gradient by the inverse gather (jax's own would scatter-add): at n = 784 and batch 128, where
    each pass over the factors moves 315 MB, forward 0.47 -> 0.25 s and gradient 0.33 -> 0.14 s
    on one core, against concat/reverse/select.
    """
    if raw.shape[-1] != n * (n + 1) // 2:
        raise ValueError(f"a {n}x{n} triangle needs {n * (n + 1) // 2} raw values, got {raw.shape}")
    return _fill_scale_tril(raw)


@dataclasses.dataclass(frozen=True)
class Head:
    """A likelihood head: static config (hashable, so it can be closed over by `jax.jit`).

    Attributes:
      name: one of `ALL_HEADS`.
      k: number of mixture components (1: no mixture).
      image_shape: (H, W, C) of the data.
      force: build a head even when its estimated memory exceeds `MEMORY_LIMIT`.
      batch_size: used for the memory estimate only.
    """

    name: str
    k: int = 1
    image_shape: tuple = (28, 28, 1)
    force: bool = False
    batch_size: int = 128

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.name not in ALL_HEADS:
            raise ValueError(f"unknown head {self.name!r}; choose one of {', '.join(ALL_HEADS)}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"head {self.name!r}: K must be an integer >= 1, got {self.k!r}")
        if self.k > 1 and not self.mixable:
            raise ValueError(f"head {self.name!r} has no mixture version: use K=1")
        if self.is_matrix and (len(self.image_shape) != 3 or self.image_shape[2] != 1):
            raise ValueError(
                f"head {self.name!r} is a matrix head and needs 2-D grey images (H, W, 1), "
                f"got image shape {self.image_shape}"
            )
        need = self.memory_bytes()
        if need > MEMORY_LIMIT and not self.force:
            raise MemoryError(
                f"head {self.name!r} with K={self.k} needs about {need / 2**30:.1f} GiB to train "
                f"({self.num_params:,} outputs per image, a {32 * self.num_params:,}-weight "
                f"decoder layer, batch {self.batch_size}); the paper marks it out of memory. "
                "Pass force=True to build it anyway."
            )

    # --- static structure ----------------------------------------------------------------------

    @property
    def family(self) -> str:
        """The distribution family: the name without its scale suffix ('t' for 't_diag')."""
        return self.name.rsplit("_", 1)[0] if self.name.endswith(SCALES) else self.name

    @property
    def scale(self) -> str | None:
        """'identity', 'diag' or 'full' (None for mse, maf, vae and the Bernoulli heads)."""
        return self.name.rsplit("_", 1)[1] if self.name.endswith(SCALES) else None

    @property
    def mixable(self) -> bool:
        """Whether the head also comes as a mixture of K components (not mse, maf, vae and the
        Bernoulli heads)."""
        return self.family in FAMILIES

    @property
    def is_matrix(self) -> bool:
        """Whether the event is the image as an H x W matrix (matrix normal and matrix t heads)."""
        return self.family.startswith("matrix")

    @property
    def dim(self) -> int:
        """D = H W C, the number of pixels."""
        return math.prod(self.image_shape)

    @property
    def event_shape(self) -> tuple:
        """(H, W) for matrix heads, else (D,)."""
        return self.image_shape[:2] if self.is_matrix else (self.dim,)

    def _blocks(self) -> list[tuple[str, int]]:
        """Named raw blocks of one component, in order."""
        if self.name in BERNOULLI_HEADS:
            return [("logits", self.dim)]
        if not self.mixable:
            return [("loc", self.dim)] + ([("scale", self.dim)] if self.name == "vae" else [])
        blocks = [("df", 1)] if FAMILIES[self.family] else []
        blocks.append(("loc", self.dim))
        if self.is_matrix:
            h, w = self.image_shape[:2]
            if self.scale == "diag":
                blocks += [("row", h), ("col", w)]
            elif self.scale == "full":
                blocks += [("row", h * (h + 1) // 2), ("col", w * (w + 1) // 2)]
        elif self.scale == "diag":
            blocks.append(("scale", self.dim))
        elif self.scale == "full":
            blocks.append(("scale", self.dim * (self.dim + 1) // 2))
        return blocks

    @property
    def component_params(self) -> int:
        """How many raw values one mixture component takes (its df, loc and scale blocks)."""
        return sum(n for _, n in self._blocks())

    @property
    def num_params(self) -> int:
        """P: how many values the decoder emits per image."""
        return (self.k if self.mixable else 0) + self.k * self.component_params

    def memory_bytes(self) -> int:
        """Rough float32 training memory: decoder weights with Adam, outputs, scale matrices."""
        weights = 33 * self.num_params * 4 * 4  # value, grad, two Adam moments
        acts = self.batch_size * self.num_params * 4 * 3
        full = self.batch_size * self.k * self.dim**2 * 4 * 3 if self.scale == "full" else 0
        return weights + acts + (full if not self.is_matrix else 0)

    # --- raw outputs -> distribution -----------------------------------------------------------

    def check_raw(self, raw):
        """Raise ValueError unless raw has the shape [B, P] this head expects."""
        if raw.ndim != 2 or raw.shape[-1] != self.num_params:
            raise ValueError(
                f"head {self.name!r} (K={self.k}) expects raw outputs [B, {self.num_params}], "
                f"got {tuple(raw.shape)}"
            )

    def split(self, raw) -> tuple[jax.Array | None, dict]:
        """raw [B, P] -> (logits [B, K] or None, {block: [B, K, n]} or [B, n] when K=1)."""
        self.check_raw(raw)
        logits = None
        if self.mixable:
            logits, raw = raw[:, : self.k], raw[:, self.k :]
        raw = raw.reshape(raw.shape[0], self.k, self.component_params)
        blocks, start = {}, 0
        for name, n in self._blocks():
            blocks[name] = raw[..., start : start + n]
            start += n
        if self.k == 1:
            blocks = {name: v[:, 0] for name, v in blocks.items()}
        return logits, blocks

    def component(self, blocks: dict) -> distrax.Distribution:
        """The distribution of each component (batch [B] or [B, K])."""
        if self.name in BERNOULLI_HEADS:
            return self._bernoulli(blocks["logits"])
        loc = blocks["loc"]
        if self.is_matrix:
            loc = loc.reshape(*loc.shape[:-1], *self.event_shape)
            scales = {}
            if self.scale == "diag":
                scales = dict(
                    scale_row_diag=positive(blocks["row"]),
                    scale_column_diag=positive(blocks["col"]),
                )
            elif self.scale == "full":
                h, w = self.event_shape
                scales = dict(
                    scale_row_tril=fill_scale_tril(blocks["row"], h),
                    scale_column_tril=fill_scale_tril(blocks["col"], w),
                )
            if self.family == "matrix_normal":
                return jd.MatrixNormal(loc, **scales)
            return jd.MatrixStudentT(positive(blocks["df"][..., 0]), loc, **scales)
        if self.name == "mse":
            return jd.SquaredError(loc)
        if self.family in ("normal", "vae", "maf"):
            if self.scale == "full":
                return jd.MultivariateNormal(loc, fill_scale_tril(blocks["scale"], self.dim))
            if "scale" in blocks:
                return jd.MultivariateNormal(loc, scale_diag=positive(blocks["scale"]))
            return jd.MultivariateNormal(loc)
        df = positive(blocks["df"][..., 0])
        if self.scale == "full":
            return jd.MultivariateStudentT(
                df, loc, scale_tril=fill_scale_tril(blocks["scale"], self.dim)
            )
        if self.scale == "diag":
            return jd.MultivariateStudentT(df, loc, scale_diag=positive(blocks["scale"]))
        return jd.MultivariateStudentT(df, loc)

    def _bernoulli(self, logits) -> distrax.Distribution:
        """Independent pixels, logits [B, D]: event (D,), as the vector heads.

        `bernoulli`: log p(x) = sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)
        = sum_i x_i l_i - softplus(l_i), minus the binary cross-entropy with logits (pythae's BCE).
        A probability mass function for binary x in {0, 1}^D, where its NLL is the standard one
        of binarized MNIST; for grey x in [0, 1] the same formula is the cross-entropy, not a
        normalised density over [0, 1]^D (the continuous Bernoulli is). Its mean sigmoid(l) is
        the reconstruction; samples are 0/1 in the logits' float dtype.
        `continuous_bernoulli`: `distributions.ContinuousBernoulli`, a density on [0, 1]^D;
        its mean (not sigmoid(l)) is the reconstruction.
        """
        if self.name == "bernoulli":
            pixels = distrax.Bernoulli(logits=logits, dtype=logits.dtype)
        else:
            pixels = jd.ContinuousBernoulli(logits)
        return distrax.Independent(pixels, reinterpreted_batch_ndims=1)

    def distribution(self, raw) -> distrax.Distribution:
        """raw [B, P] -> distribution with batch [B] and event `event_shape`.

        For `maf` this is the base N(raw, I); `jaxae.models.MAFAutoencoder` adds the flow.
        """
        logits, blocks = self.split(raw)
        comp = self.component(blocks)
        if self.k == 1:
            return comp
        return distrax.MixtureSameFamily(distrax.Categorical(logits=logits), comp)

    # --- evaluation helpers --------------------------------------------------------------------

    def to_event(self, images):
        """Images [B, H, W, C] -> values of the event shape."""
        return images.reshape(images.shape[0], *self.event_shape)

    def to_image(self, values):
        """[B, ...event] (or [B, K, ...event]) -> [B, (K,) H, W, C]."""
        lead = values.shape[: values.ndim - len(self.event_shape)]
        return values.reshape(*lead, *self.image_shape)

    def component_points(self, dist) -> jax.Array:
        """Each component's mean (normal) or mode (t): [B, K, ...event]."""
        comp = dist.components_distribution if self.k > 1 else dist
        point = comp.mode() if FAMILIES.get(self.family) else comp.mean()
        return point if self.k > 1 else point[:, None]

    def point(self, dist, mixture_logp=None) -> jax.Array:
        """The point reconstruction (event shape), before clipping.

        Normal and Bernoulli heads: the (mixture) mean. t heads: the mode of the component whose
        mode has the highest mixture log-density (pass that [B, K] log-density if already
        computed).
        """
        if not FAMILIES.get(self.family, False):
            return dist.mean()
        points = self.component_points(dist)
        if self.k == 1:
            return points[:, 0]
        if mixture_logp is None:
            mixture_logp = self.mixture_log_density(dist, points)
        best = jnp.argmax(mixture_logp, axis=1)
        return jnp.take_along_axis(points, best.reshape(-1, *[1] * points[:, 0].ndim), 1)[:, 0]

    def mixture_log_density(self, dist, points) -> jax.Array:
        """log p_mixture(point_k) for each component's point: [B, K]."""
        return jax.vmap(dist.log_prob, in_axes=1, out_axes=1)(points)

    def variance(self, dist) -> jax.Array:
        """Per-pixel variance (event shape); nan where the distribution has none."""
        return dist.variance()
