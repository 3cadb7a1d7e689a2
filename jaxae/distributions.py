"""Heavy-tailed and matrix-variate likelihoods for the Vanilla Probabilistic Autoencoder.

The VPAE (Ciobanu 2021, Sec. 3.1) replaces the reconstruction loss by the negative log-likelihood
of the input under ``Distribution(parameters = f(x))``. Distrax has the multivariate normals; this
module adds the other families of that list as `distrax.Distribution` subclasses:

- `MultivariateStudentT` -- t_{df,mu}, t_{df,mu,diag(Sigma)}, t_{df,mu,Sigma}; event ``[d]``.
- `MatrixNormal` -- MN_mu, MN_{mu,diag(U,V)}, MN_{mu,U,V}; event ``[n, p]``.
- `MatrixStudentT` -- T_{df,mu}, T_{df,mu,diag(U,V)}, T_{df,mu,U,V}: the matrix t *as the paper
  used it*, i.e. with the semantics of TFP's ``MatrixTLinearOperator`` (a multivariate t on the
  flattened matrix with a Kronecker scale).
- `MatrixVariateT` -- the textbook matrix-variate t of Gupta & Nagar (2000, Def. 4.2.1), which is
  a different distribution from `MatrixStudentT` whenever ``n > 1`` and ``p > 1``.
- `ContinuousBernoulli` -- the continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham 2019),
  by its logits, with a scalar event: the `continuous_bernoulli` head's per-pixel density.

Every scale is a lower-triangular factor (``scale_tril``: the scale matrix is ``L L^T``), given in
one of three forms: ``None`` (identity), ``*_diag`` (the diagonal of a diagonal ``L``; O(d) work
and memory) or ``*_tril`` (a full lower-triangular ``L``; entries above the diagonal are
ignored). Full factors are only ever used through triangular solves
(`jax.scipy.linalg.solve_triangular`) and ``log|det L| = sum(log|diag L|)``: no inverse or
determinant is formed. Densities (``E = X - M``, ``A``/``B`` the row/column factors):

Multivariate t, ``x in R^d``, ``Sigma = L L^T`` (Kotz & Nadarajah 2004, Ch. 1)::

    p(x) = Gamma((nu + d)/2) / (Gamma(nu/2) (nu pi)^(d/2) |det L|)
           * (1 + |L^-1 (x - mu)|^2 / nu)^(-(nu + d)/2)

Matrix normal, ``X in R^{n x p}``, ``vec(X) ~ N(vec(M), V (x) U)``, ``U = A A^T``, ``V = B B^T``
(Gupta & Nagar 2000, Ch. 2)::

    p(X) = (2 pi)^(-np/2) |det A|^(-p) |det B|^(-n) exp(-|A^-1 E B^-T|_F^2 / 2)

Matrix Student t, TFP semantics: ``vec(X) ~ t_{np}(nu, vec(M), V (x) U)`` (column-stacking vec;
TFP's code flattens row-major with the Kronecker factor ``A (x) B``, the same density)::

    p(X) = Gamma((nu + np)/2) / (Gamma(nu/2) (nu pi)^(np/2) |det A|^p |det B|^n)
           * (1 + |A^-1 E B^-T|_F^2 / nu)^(-(nu + np)/2)

Matrix-variate t, Gupta & Nagar (2000, Def. 4.2.1), ``Sigma = A A^T`` (n x n),
``Omega = B B^T`` (p x p)::

    p(X) = Gamma_n((nu + n + p - 1)/2) / (pi^(np/2) Gamma_n((nu + n - 1)/2))
           |Sigma|^(-p/2) |Omega|^(-n/2) |I_n + Sigma^-1 E Omega^-1 E^T|^(-(nu + n + p - 1)/2)

with ``Gamma_n`` the multivariate gamma function; ``|I_n + Sigma^-1 E Omega^-1 E^T|`` equals
``|I_n + Y Y^T| = |I_p + Y^T Y|`` for ``Y = A^-1 E B^-T`` (a similarity plus Sylvester's identity),
computed by a Cholesky factorisation of the smaller of the two.

All classes are pytrees (distrax's ``Jittable``): they can be built inside ``jit``, passed in and
out of it, vmapped, and stacked along a batch axis as the components of a
`distrax.MixtureSameFamily`. Parameters broadcast against each other in their batch dimensions
(e.g. ``loc [3, 1, d]`` with ``scale_tril [2, d, d]`` has batch shape ``[3, 2]``). ``df`` is
always stored as an array, so a new value never retraces. Parameter *values* are validated
eagerly (``ValueError``) when they are concrete and silently skipped under tracing; shapes are
always validated.

References:
  S. Ciobanu, "Vanilla Probabilistic Autoencoder", EPiC Series in Computing 79 (2021), Sec. 3.1.
  A. K. Gupta and D. K. Nagar, *Matrix Variate Distributions*, Chapman & Hall/CRC (2000),
  Ch. 2 and 4.
  S. Kotz and S. Nadarajah, *Multivariate t Distributions and Their Applications*, CUP (2004).
  G. Loaiza-Ganem and J. P. Cunningham, "The continuous Bernoulli: fixing a pervasive error in
  variational autoencoders", NeurIPS (2019).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import gammaln, multigammaln

Array = jax.Array

# Batched triangular solves and products.
#
# `L y = x` is solved as `(L^T)^T y = x` on the transposed view of `L`. On XLA:CPU the solve is a
# column-major LAPACK trsm: the transposed view of a row-major `L` is already column-major (a free
# bitcast), whereas `L` itself would first be copied into that layout, and that copy is most of
# the cost. Measured on 2 CPU cores at d = 784 with 128 per-example factors: the solve alone took
# 0.02 s this way against 0.25 s, and the gradient of log_prob 0.26 s against 0.35 s for TFP's
# MultivariateStudentTLinearOperator.
#
# The gradient is written by hand (one solve with L^T, one outer product) instead of left to
# autodiff, which emits two independent batched trsm calls for the cotangents of L and x. jaxlib
# 0.10's CPU trsm splits its batch over the same intra-op thread pool that runs it and blocks on
# the pieces; two such calls running side by side on a 2-thread pool deadlock (observed here as
# an intermittent hang of `value_and_grad` at batch 128, 28 x 28, with every pool thread waiting
# in `ParallelBatchMap`). With the hand-written rule all solves of a log_prob and its gradient lie
# on one dependency chain.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _trsm(tril: Array, x: Array, transpose: bool) -> Array:
    """L^-1 x (or L^-T x): L [*b, d, d] lower-triangular, x [*b, d, m], equal batch dims."""
    return solve_triangular(
        jnp.swapaxes(tril, -1, -2), x, lower=False, trans="N" if transpose else "T"
    )


def _trsm_fwd(tril, x, transpose):
    y = _trsm(tril, x, transpose)
    return y, (tril, y)


def _trsm_bwd(transpose, res, g):
    tril, y = res
    x_bar = _trsm(tril, g, not transpose)  # L^-T g (or L^-1 g)
    # y = L^-1 x: dL_bar = -x_bar y^T; y = L^-T x: dL_bar = -y x_bar^T; lower triangle only.
    outer = y @ jnp.swapaxes(x_bar, -1, -2) if transpose else x_bar @ jnp.swapaxes(y, -1, -2)
    return -jnp.tril(outer), x_bar


_trsm.defvjp(_trsm_fwd, _trsm_bwd)


def _solve(tril: Array, x: Array, transpose: bool = False) -> Array:
    """L^-1 X (or L^-T X) for L [*b_L, d, d] and X [*b_X, d, m], broadcasting batch dims.

    Batch dimensions of X in front of L's (sample axes, or every axis for a shared L) are folded
    into the columns of one solve instead of broadcasting L to them.
    """
    d, m = x.shape[-2:]
    k = tril.ndim - 2
    full = jnp.broadcast_shapes(tril.shape[:-2], x.shape[:-2])
    lead, tail = full[: len(full) - k], full[len(full) - k :]
    tril = jnp.broadcast_to(tril, tail + (d, d))
    x = jnp.broadcast_to(x, full + (d, m))
    n_lead = len(lead)
    cols = jnp.moveaxis(x, tuple(range(n_lead)), tuple(range(-n_lead, 0)))  # [*tail, d, m, *lead]
    y = _trsm(tril, cols.reshape(tail + (d, -1)), transpose)
    y = y.reshape(tail + (d, m) + lead)
    return jnp.moveaxis(y, tuple(range(-n_lead, 0)), tuple(range(n_lead)))


def _solve_vec(tril: Array, x: Array) -> Array:
    """L^-1 x for x [..., d]."""
    return _solve(tril, x[..., None])[..., 0]


def _solve_mat(tril: Array, x: Array) -> Array:
    """L^-1 X for X [..., d, m]."""
    return _solve(tril, x)


def _solve_mat_t(tril: Array, x: Array) -> Array:
    """L^-T X for X [..., d, m]."""
    return _solve(tril, x, transpose=True)


_matvec = jnp.vectorize(jnp.matmul, signature="(d,d),(d)->(d)")
_matmat = jnp.vectorize(jnp.matmul, signature="(d,d),(d,m)->(d,m)")


def _concrete(x) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known (eager code, or a constant under `jit`)."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _float_dtype(*params):
    # Arrays and Python scalars keep their (weak) types; lists and tuples go through NumPy.
    params = [
        p if hasattr(p, "dtype") or isinstance(p, (int, float)) else np.asarray(p)
        for p in params
        if p is not None
    ]
    dtype = jnp.result_type(*params)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _where_defined(cond, x, undefined):
    """`x` where `cond` holds, else the constant `undefined` (nan or inf) in `x`'s dtype."""
    return jnp.where(cond, x, jnp.asarray(undefined, x.dtype))


# ----------------------------------------------------------------------------------------------
# Scale factors
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass, data_fields=["value"], meta_fields=["kind"])
@dataclasses.dataclass(frozen=True)
class _Factor:
    """A lower-triangular factor ``L`` of a ``d x d`` scale matrix ``L L^T``.

    ``kind`` is static: ``'identity'`` (``value`` None), ``'diag'`` (``value`` [..., d], the
    diagonal of ``L``) or ``'tril'`` (``value`` [..., d, d]; the strict upper triangle is ignored).
    """

    kind: str
    value: Array | None

    @property
    def batch_shape(self) -> tuple[int, ...]:
        if self.kind == "identity":
            return ()
        return self.value.shape[:-1] if self.kind == "diag" else self.value.shape[:-2]

    @property
    def size(self) -> int | None:
        return None if self.kind == "identity" else self.value.shape[-1]

    def log_abs_det(self, dtype) -> Array:
        """log|det L|, [*batch]."""
        if self.kind == "identity":
            return jnp.zeros((), dtype)
        diag = self.value if self.kind == "diag" else jnp.diagonal(self.value, axis1=-2, axis2=-1)
        return jnp.sum(jnp.log(jnp.abs(diag)), axis=-1)

    def diag_of_cov(self, d: int, dtype) -> Array:
        """diag(L L^T), [*batch, d]."""
        if self.kind == "identity":
            return jnp.ones((d,), dtype)
        if self.kind == "diag":
            return jnp.square(self.value)
        return jnp.sum(jnp.square(jnp.tril(self.value)), axis=-1)

    def dense(self, d: int, dtype) -> Array:
        """L as a dense [*batch, d, d] matrix."""
        if self.kind == "identity":
            return jnp.eye(d, dtype=dtype)
        if self.kind == "diag":
            return self.value[..., :, None] * jnp.eye(d, dtype=dtype)
        return jnp.tril(self.value)

    def solve_vec(self, x: Array) -> Array:
        """L^-1 x for x [..., d]."""
        if self.kind == "identity":
            return x
        if self.kind == "diag":
            return x / self.value
        return _solve_vec(self.value, x)

    def matvec(self, x: Array) -> Array:
        """L x for x [..., d]."""
        if self.kind == "identity":
            return x
        if self.kind == "diag":
            return x * self.value
        return _matvec(jnp.tril(self.value), x)

    def solve_left(self, x: Array) -> Array:
        """L^-1 X for X [..., d, m]."""
        if self.kind == "identity":
            return x
        if self.kind == "diag":
            return x / self.value[..., :, None]
        return _solve_mat(self.value, x)

    def solve_right_t(self, x: Array) -> Array:
        """X L^-T for X [..., m, d]."""
        if self.kind == "identity":
            return x
        if self.kind == "diag":
            return x / self.value[..., None, :]
        return jnp.swapaxes(_solve_mat(self.value, jnp.swapaxes(x, -1, -2)), -1, -2)

    def matmul_left(self, x: Array) -> Array:
        """L X for X [..., d, m]."""
        if self.kind == "identity":
            return x
        if self.kind == "diag":
            return x * self.value[..., :, None]
        return _matmat(jnp.tril(self.value), x)

    def matmul_right_t(self, x: Array) -> Array:
        """X L^T for X [..., m, d]."""
        if self.kind == "identity":
            return x
        if self.kind == "diag":
            return x * self.value[..., None, :]
        return jnp.swapaxes(_matmat(jnp.tril(self.value), jnp.swapaxes(x, -1, -2)), -1, -2)

    def index(self, idx, batch_shape: tuple[int, ...]) -> _Factor:
        """The factor of the sub-batch `idx` of a distribution with `batch_shape`."""
        if self.kind == "identity":
            return self
        core = self.value.shape[-1:] if self.kind == "diag" else self.value.shape[-2:]
        return _Factor(self.kind, jnp.broadcast_to(self.value, batch_shape + core)[idx])


def _make_factor(tril, diag, tril_name: str, diag_name: str, dtype) -> _Factor:
    """Validates the (mutually exclusive) `tril`/`diag` arguments and wraps them in a `_Factor`."""
    if tril is not None and diag is not None:
        raise ValueError(f"Pass at most one of `{tril_name}` and `{diag_name}`, not both.")
    if tril is None and diag is None:
        return _Factor("identity", None)
    if tril is not None:
        value, name, kind = jnp.asarray(tril, dtype), tril_name, "tril"
        if value.ndim < 2 or value.shape[-1] != value.shape[-2]:
            raise ValueError(
                f"`{name}` must be a (batch of) square matrices, got shape {value.shape}."
            )
        raw = _concrete(tril)
        diagonal = None if raw is None else np.diagonal(raw, axis1=-2, axis2=-1)
    else:
        value, name, kind = jnp.asarray(diag, dtype), diag_name, "diag"
        if value.ndim < 1:
            raise ValueError(f"`{name}` must have at least one dimension, got shape {value.shape}.")
        diagonal = _concrete(diag)
    # Value checks use NumPy: under `jit` even constants become tracers in jnp code.
    if diagonal is not None and diagonal.size and not np.all(diagonal > 0):
        raise ValueError(
            f"`{name}` must have a strictly positive diagonal (the Cholesky factor of a "
            f"positive-definite scale matrix); its smallest diagonal entry is "
            f"{np.min(diagonal)}."
        )
    return _Factor(kind, value)


def _check_df(df) -> None:
    value = _concrete(df)
    if value is not None and value.size and not np.all(value > 0):
        raise ValueError(f"`df` must be positive, got a minimum of {np.min(value)}.")


def _broadcast_batch(**shapes) -> tuple[int, ...]:
    """Broadcasts the batch shapes of the parameters, naming them all if they do not match."""
    try:
        return tuple(jnp.broadcast_shapes(*shapes.values()))
    except ValueError:
        desc = ", ".join(f"`{k}` batch shape {v}" for k, v in shapes.items())
        raise ValueError(f"Parameter batch shapes do not broadcast: {desc}.") from None


def _batch_index(batch_shape: tuple[int, ...], index) -> tuple:
    """Turns an index into the batch into one that leaves the event dimensions alone."""
    try:
        return tuple(x[index] for x in np.indices(batch_shape))
    except IndexError as e:
        raise IndexError(f"Index {index} does not fit the batch shape {batch_shape}.") from e


def _t_moment_scale(df: Array, moment: Array, event_ndims: int) -> Array:
    """moment * df / (df - 2) for df > 2, inf for 1 < df <= 2, nan for df <= 1 (TFP's rule)."""
    df = df.reshape(df.shape + (1,) * event_ndims)
    safe = jnp.where(df > 2, df - 2, jnp.ones_like(df))  # no nan in the gradient of unused branch
    out = _where_defined(df > 2, moment * (df / safe), jnp.inf)
    return _where_defined(df > 1, out, jnp.nan)


# ----------------------------------------------------------------------------------------------
# Multivariate Student t
# ----------------------------------------------------------------------------------------------


class _Located:
    """``dtype`` and the broadcast location of every family here (``_loc``: [*b, *event])."""

    @property
    def dtype(self):
        return self._loc.dtype

    @property
    def loc(self) -> Array:
        """Location, [*batch, *event]."""
        return jnp.broadcast_to(self._loc, self.batch_shape + self.event_shape)


class _VectorLocScale(_Located):
    """The factor accessors shared by the vector families (``_loc``, ``_scale``)."""

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._loc.shape[-1:]

    @property
    def scale_kind(self) -> str:
        """``'identity'``, ``'diag'`` or ``'tril'``."""
        return self._scale.kind

    @property
    def scale_tril(self) -> Array:
        """L as a dense lower-triangular matrix, [*b_s, d, d] (O(d^2) even if diagonal)."""
        return self._scale.dense(self.event_shape[0], self.dtype)

    def whiten(self, value: Array) -> Array:
        """z = L^-1 (value - loc), [..., *batch, d]: a triangular solve, no inverse."""
        return self._scale.solve_vec(value - self._loc)


class MultivariateStudentT(_VectorLocScale, distrax.Distribution):
    """Multivariate Student t on ``R^d`` with scale matrix ``Sigma = L L^T``.

    Same density as TFP's ``MultivariateStudentTLinearOperator`` and SciPy's
    ``multivariate_t(loc, shape=Sigma, df=df)``::

        p(x) = Gamma((df + d)/2) / (Gamma(df/2) (df pi)^(d/2) |det L|)
               * (1 + |L^-1 (x - loc)|^2 / df)^(-(df + d)/2)

    Sampling: ``x = loc + L z / sqrt(g / df)`` with ``z ~ N(0, I_d)``, ``g ~ chi2(df)``.
    """

    def __init__(self, df, loc, scale_tril=None, *, scale_diag=None):
        """Builds the distribution (inside or outside `jit`).

        Args:
          df: degrees of freedom, [*b_df], positive.
          loc: location, [*b_loc, d].
          scale_tril: lower-triangular factor L, [*b_s, d, d] (upper triangle ignored, positive
            diagonal); or None.
          scale_diag: diagonal of a diagonal L, [*b_s, d], positive. Mutually exclusive with
            `scale_tril`; if both are None, L is the identity.
        """
        dtype = _float_dtype(df, loc, scale_tril, scale_diag)
        self._df = jnp.asarray(df, dtype)
        self._loc = jnp.asarray(loc, dtype)
        if self._loc.ndim < 1:
            raise ValueError(f"`loc` must have shape [..., d], got {self._loc.shape}.")
        _check_df(df)
        self._scale = _make_factor(scale_tril, scale_diag, "scale_tril", "scale_diag", dtype)
        shapes = {"df": self._df.shape, "loc": self._loc.shape[:-1]}
        if self._scale.kind != "identity":
            name = f"scale_{self._scale.kind}"
            if self._scale.size != self._loc.shape[-1]:
                raise ValueError(
                    f"`loc.shape = {self._loc.shape}` and `{name}.shape = "
                    f"{self._scale.value.shape}` disagree on the event size d."
                )
            shapes[name] = self._scale.batch_shape
        _broadcast_batch(**shapes)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The broadcast batch shape of df, loc and the scale factor."""
        return tuple(
            jnp.broadcast_shapes(self._df.shape, self._loc.shape[:-1], self._scale.batch_shape)
        )

    @property
    def df(self) -> Array:
        """Degrees of freedom, [*batch]."""
        return jnp.broadcast_to(self._df, self.batch_shape)

    def log_prob(self, value: Array) -> Array:
        """log p(value): [..., d] -> [..., *batch] (broadcasting)."""
        d = self.event_shape[0]
        df = self._df
        maha = jnp.sum(jnp.square(self.whiten(value)), axis=-1)
        log_norm = (
            gammaln(0.5 * (df + d))
            - gammaln(0.5 * df)
            - 0.5 * d * jnp.log(df * math.pi)
            - self._scale.log_abs_det(self.dtype)
        )
        return log_norm - 0.5 * (df + d) * jnp.log1p(maha / df)

    def _sample_n(self, key: Array, n: int) -> Array:
        key_z, key_g = jax.random.split(key)
        shape = (n,) + self.batch_shape
        z = jax.random.normal(key_z, shape + self.event_shape, self.dtype)
        df = jnp.broadcast_to(self._df, shape)
        g = 2.0 * jax.random.gamma(key_g, 0.5 * df, dtype=self.dtype)  # chi2(df)
        return self._loc + self._scale.matvec(z) * jnp.sqrt(df / g)[..., None]

    def mean(self) -> Array:
        """loc where df > 1, else nan; [*batch, d]."""
        return _where_defined(self.df[..., None] > 1, self.loc, jnp.nan)

    def mode(self) -> Array:
        """loc (the t density peaks at its location for every df); [*batch, d]."""
        return self.loc

    def median(self) -> Array:
        """loc (the distribution is symmetric about it); [*batch, d]."""
        return self.loc

    def variance(self) -> Array:
        """Marginal variances diag(L L^T) df / (df - 2) for df > 2; inf for 1 < df <= 2; nan for
        df <= 1. [*batch, d]."""
        d = self.event_shape[0]
        var = self._scale.diag_of_cov(d, self.dtype)
        var = jnp.broadcast_to(var, self.batch_shape + self.event_shape)
        return _t_moment_scale(self.df, var, 1)

    def __getitem__(self, index) -> MultivariateStudentT:
        idx = _batch_index(self.batch_shape, index)
        out = object.__new__(MultivariateStudentT)
        out._df, out._loc = self.df[idx], self.loc[idx]
        out._scale = self._scale.index(idx, self.batch_shape)
        return out


class MultivariateNormal(_VectorLocScale, distrax.Distribution):
    """Multivariate normal N(loc, L L^T) on ``R^d`` through the same factor code as
    `MultivariateStudentT`: O(d) for identity/diagonal L, triangular solves (with the
    deadlock-free VJP above) for a full L. Same density as distrax's MultivariateNormalTri::

        log p(x) = -d/2 log(2 pi) - log|det L| - |L^-1 (x - loc)|^2 / 2
    """

    def __init__(self, loc, scale_tril=None, *, scale_diag=None):
        """loc [*b, d]; scale_tril [*b, d, d] or scale_diag [*b, d] (positive), or neither (I)."""
        dtype = _float_dtype(loc, scale_tril, scale_diag)
        self._loc = jnp.asarray(loc, dtype)
        if self._loc.ndim < 1:
            raise ValueError(f"`loc` must have shape [..., d], got {self._loc.shape}.")
        self._scale = _make_factor(scale_tril, scale_diag, "scale_tril", "scale_diag", dtype)
        if self._scale.kind != "identity" and self._scale.size != self._loc.shape[-1]:
            raise ValueError(
                f"`loc.shape = {self._loc.shape}` and `scale_{self._scale.kind}.shape = "
                f"{self._scale.value.shape}` disagree on the event size d."
            )
        _broadcast_batch(loc=self._loc.shape[:-1], scale=self._scale.batch_shape)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The broadcast batch shape of loc and the scale factor."""
        return tuple(jnp.broadcast_shapes(self._loc.shape[:-1], self._scale.batch_shape))

    def log_prob(self, value: Array) -> Array:
        """log p(value): [..., d] -> [..., *batch] (broadcasting)."""
        d = self.event_shape[0]
        maha = jnp.sum(jnp.square(self.whiten(value)), axis=-1)
        return -0.5 * d * math.log(2 * math.pi) - self._scale.log_abs_det(self.dtype) - 0.5 * maha

    def _sample_n(self, key: Array, n: int) -> Array:
        z = jax.random.normal(key, (n,) + self.batch_shape + self.event_shape, self.dtype)
        return self._loc + self._scale.matvec(z)

    def mean(self) -> Array:
        """loc; [*batch, d]."""
        return self.loc

    def mode(self) -> Array:
        """loc; [*batch, d]."""
        return self.loc

    def variance(self) -> Array:
        """Marginal variances diag(L L^T); [*batch, d]."""
        var = self._scale.diag_of_cov(self.event_shape[0], self.dtype)
        return jnp.broadcast_to(var, self.batch_shape + self.event_shape)

    def __getitem__(self, index) -> MultivariateNormal:
        idx = _batch_index(self.batch_shape, index)
        out = object.__new__(MultivariateNormal)
        out._loc = self.mean()[idx]
        out._scale = self._scale.index(idx, self.batch_shape)
        return out


# ----------------------------------------------------------------------------------------------
# Matrix distributions
# ----------------------------------------------------------------------------------------------


class _MatrixDistribution(_Located, distrax.Distribution):
    """Shared parameters of the matrix families: loc [*b, n, p], row factor A, column factor B."""

    _has_df = True

    def __init__(
        self,
        df,
        loc,
        scale_row_tril=None,
        scale_column_tril=None,
        *,
        scale_row_diag=None,
        scale_column_diag=None,
    ):
        dtype = _float_dtype(
            df, loc, scale_row_tril, scale_column_tril, scale_row_diag, scale_column_diag
        )
        self._loc = jnp.asarray(loc, dtype)
        if self._loc.ndim < 2:
            raise ValueError(f"`loc` must have shape [..., n, p], got {self._loc.shape}.")
        shapes = {"loc": self._loc.shape[:-2]}
        if self._has_df:
            self._df = jnp.asarray(df, dtype)
            _check_df(df)
            shapes["df"] = self._df.shape
        self._row = _make_factor(
            scale_row_tril, scale_row_diag, "scale_row_tril", "scale_row_diag", dtype
        )
        self._column = _make_factor(
            scale_column_tril, scale_column_diag, "scale_column_tril", "scale_column_diag", dtype
        )
        for factor, axis, side in ((self._row, -2, "row"), (self._column, -1, "column")):
            name = f"scale_{side}_{factor.kind}"
            if factor.size not in (None, self._loc.shape[axis]):
                raise ValueError(
                    f"`loc.shape = {self._loc.shape}` and `{name}.shape = {factor.value.shape}` "
                    f"disagree on the number of {side}s."
                )
            if factor.kind != "identity":
                shapes[name] = factor.batch_shape
        _broadcast_batch(**shapes)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._loc.shape[-2:]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        shapes = [self._loc.shape[:-2], self._row.batch_shape, self._column.batch_shape]
        if self._has_df:
            shapes.append(self._df.shape)
        return tuple(jnp.broadcast_shapes(*shapes))

    @property
    def scale_kind(self) -> tuple[str, str]:
        """(row, column) kinds, each ``'identity'``, ``'diag'`` or ``'tril'``."""
        return self._row.kind, self._column.kind

    @property
    def scale_row_tril(self) -> Array:
        """A as a dense lower-triangular matrix, [*b_A, n, n]."""
        return self._row.dense(self.event_shape[0], self.dtype)

    @property
    def scale_column_tril(self) -> Array:
        """B as a dense lower-triangular matrix, [*b_B, p, p]."""
        return self._column.dense(self.event_shape[1], self.dtype)

    def whiten(self, value: Array) -> Array:
        """Y = A^-1 (X - M) B^-T, [..., *batch, n, p]."""
        return self._column.solve_right_t(self._row.solve_left(value - self._loc))

    def _colour(self, z: Array) -> Array:
        """A Z B^T, [..., n, p]."""
        return self._row.matmul_left(self._column.matmul_right_t(z))

    def _log_det(self) -> Array:
        """log|det(A (x) B)| = p log|det A| + n log|det B|, [*batch]."""
        n, p = self.event_shape
        return p * self._row.log_abs_det(self.dtype) + n * self._column.log_abs_det(self.dtype)

    def _kron_diag(self) -> Array:
        """diag(U)_i diag(V)_j, the per-element variance of the matrix normal, [*batch, n, p]."""
        n, p = self.event_shape
        u = self._row.diag_of_cov(n, self.dtype)[..., :, None]
        v = self._column.diag_of_cov(p, self.dtype)[..., None, :]
        return jnp.broadcast_to(u * v, self.batch_shape + self.event_shape)

    def mode(self) -> Array:
        return self.loc

    def median(self) -> Array:
        return self.loc

    def __getitem__(self, index):
        idx = _batch_index(self.batch_shape, index)
        out = object.__new__(type(self))
        out._loc = self.loc[idx]
        if self._has_df:
            out._df = self.df[idx]
        out._row = self._row.index(idx, self.batch_shape)
        out._column = self._column.index(idx, self.batch_shape)
        return out


class MatrixNormal(_MatrixDistribution):
    """Matrix normal on ``n x p`` matrices: ``vec(X) ~ N(vec(M), V (x) U)``.

    ``U = A A^T`` (n x n, among-row covariance), ``V = B B^T`` (p x p, among-column covariance),
    ``vec`` stacks columns; same density as TFP's ``MatrixNormalLinearOperator(loc, A, B)`` and
    SciPy's ``matrix_normal(M, rowcov=U, colcov=V)``::

        p(X) = (2 pi)^(-np/2) |det A|^(-p) |det B|^(-n) exp(-|A^-1 (X - M) B^-T|_F^2 / 2)

    Sampling: ``X = M + A Z B^T`` with ``Z`` standard normal.
    """

    _has_df = False

    def __init__(
        self,
        loc,
        scale_row_tril=None,
        scale_column_tril=None,
        *,
        scale_row_diag=None,
        scale_column_diag=None,
    ):
        """Builds the distribution (inside or outside `jit`).

        A factor left as None is the identity.

        Args:
          loc: mean M, [*b_M, n, p].
          scale_row_tril: lower-triangular A, [*b_A, n, n], positive diagonal; or None.
          scale_column_tril: lower-triangular B, [*b_B, p, p], positive diagonal; or None.
          scale_row_diag: diagonal of a diagonal A, [*b_A, n]; excludes `scale_row_tril`.
          scale_column_diag: diagonal of a diagonal B, [*b_B, p]; excludes `scale_column_tril`.
        """
        super().__init__(
            None,
            loc,
            scale_row_tril,
            scale_column_tril,
            scale_row_diag=scale_row_diag,
            scale_column_diag=scale_column_diag,
        )

    def log_prob(self, value: Array) -> Array:
        """log p(value): [..., n, p] -> [..., *batch]."""
        n, p = self.event_shape
        sq = jnp.sum(jnp.square(self.whiten(value)), axis=(-2, -1))
        return -0.5 * n * p * math.log(2 * math.pi) - self._log_det() - 0.5 * sq

    def _sample_n(self, key: Array, n: int) -> Array:
        z = jax.random.normal(key, (n,) + self.batch_shape + self.event_shape, self.dtype)
        return self._loc + self._colour(z)

    def mean(self) -> Array:
        """M; [*batch, n, p]."""
        return self.loc

    def variance(self) -> Array:
        """Var(X_ij) = U_ii V_jj, [*batch, n, p]."""
        return self._kron_diag()


class _MatrixT(_MatrixDistribution):
    """The matrix families with degrees of freedom."""

    @property
    def df(self) -> Array:
        """Degrees of freedom, [*batch]."""
        return jnp.broadcast_to(self._df, self.batch_shape)

    def mean(self) -> Array:
        """M where df > 1, else nan; [*batch, n, p]."""
        return _where_defined(self.df[..., None, None] > 1, self.loc, jnp.nan)


class MatrixStudentT(_MatrixT):
    """Matrix Student t with the semantics of TFP's ``MatrixTLinearOperator`` (used in the paper).

    TFP defines ``pdf(X) = mvt_pdf(vec(X); df, vec(M), scale_column (x) scale_row)``: a single
    multivariate t on the ``np`` entries with the Kronecker scale of the matrix normal, so that
    ``df -> inf`` recovers `MatrixNormal` (TFP's code flattens rows, ``reshape(X, [..., n*p])``,
    with the factor ``A (x) B``; that is the same density). With ``Y = A^-1 (X - M) B^-T``::

        p(X) = Gamma((df + np)/2) / (Gamma(df/2) (df pi)^(np/2) |det A|^p |det B|^n)
               * (1 + |Y|_F^2 / df)^(-(df + np)/2)

    This is *not* the matrix-variate t of Gupta & Nagar (see `MatrixVariateT`); the two agree only
    for n = 1 or p = 1, with the mapping given there. Sampling: ``X = M + A Z B^T / sqrt(g / df)``
    with ``Z`` standard normal and ``g ~ chi2(df)`` shared by all entries.
    """

    def __init__(
        self,
        df,
        loc,
        scale_row_tril=None,
        scale_column_tril=None,
        *,
        scale_row_diag=None,
        scale_column_diag=None,
    ):
        """Builds the distribution (inside or outside `jit`).

        A factor left as None is the identity.

        Args:
          df: degrees of freedom, [*b_df], positive.
          loc: location M, [*b_M, n, p].
          scale_row_tril: lower-triangular A, [*b_A, n, n], positive diagonal; or None.
          scale_column_tril: lower-triangular B, [*b_B, p, p], positive diagonal; or None.
          scale_row_diag: diagonal of a diagonal A, [*b_A, n]; excludes `scale_row_tril`.
          scale_column_diag: diagonal of a diagonal B, [*b_B, p]; excludes `scale_column_tril`.
        """
        super().__init__(
            df,
            loc,
            scale_row_tril,
            scale_column_tril,
            scale_row_diag=scale_row_diag,
            scale_column_diag=scale_column_diag,
        )

    def log_prob(self, value: Array) -> Array:
        """log p(value): [..., n, p] -> [..., *batch]."""
        n, p = self.event_shape
        k = n * p
        df = self._df
        sq = jnp.sum(jnp.square(self.whiten(value)), axis=(-2, -1))
        log_norm = (
            gammaln(0.5 * (df + k))
            - gammaln(0.5 * df)
            - 0.5 * k * jnp.log(df * math.pi)
            - self._log_det()
        )
        return log_norm - 0.5 * (df + k) * jnp.log1p(sq / df)

    def _sample_n(self, key: Array, n: int) -> Array:
        key_z, key_g = jax.random.split(key)
        shape = (n,) + self.batch_shape
        z = jax.random.normal(key_z, shape + self.event_shape, self.dtype)
        df = jnp.broadcast_to(self._df, shape)
        g = 2.0 * jax.random.gamma(key_g, 0.5 * df, dtype=self.dtype)  # chi2(df)
        return self._loc + self._colour(z) * jnp.sqrt(df / g)[..., None, None]

    def variance(self) -> Array:
        """Var(X_ij) = U_ii V_jj df / (df - 2) for df > 2; inf for 1 < df <= 2; nan for df <= 1."""
        return _t_moment_scale(self.df, self._kron_diag(), 2)


class MatrixVariateT(_MatrixT):
    """Matrix-variate t of Gupta & Nagar (2000, Def. 4.2.1), ``X ~ T_{n,p}(df, M, Sigma, Omega)``.

    ``Sigma = A A^T`` (n x n), ``Omega = B B^T`` (p x p), ``E = X - M``, ``nu = df > 0``::

        p(X) = Gamma_n((nu + n + p - 1)/2) / (pi^(np/2) Gamma_n((nu + n - 1)/2))
               |Sigma|^(-p/2) |Omega|^(-n/2) |I_n + Sigma^-1 E Omega^-1 E^T|^(-(nu + n + p - 1)/2)

    The determinant is ``|I_n + Y Y^T| = |I_p + Y^T Y|`` with ``Y = A^-1 E B^-T``, taken by a
    Cholesky factorisation of the smaller side (``log1p`` when n or p is 1).

    Stochastic representation (Gupta & Nagar, Sec. 4.2): the row covariance is inverse-Wishart,
    ``X | R ~ MN(M, R^-1, Omega)`` with ``R ~ W_n(nu + n - 1, Sigma^-1)``; integrating ``R`` out,
    ``|R|^(p/2) exp(-tr(R E Omega^-1 E^T)/2) |R|^((nu-2)/2) exp(-tr(Sigma R)/2)`` gives
    ``|Sigma + E Omega^-1 E^T|^(-(nu + n + p - 1)/2)``, the density above. We sample
    ``X = M + A L0^-T Z B^T`` with ``Z`` standard normal and ``L0`` the Bartlett factor of
    ``W0 ~ W_n(nu + n - 1, I)`` (``L0_ii^2 ~ chi2(nu + n - 1 - i)``, ``L0_ij ~ N(0, 1)`` for
    ``i > j``), since ``R = A^-T W0 A^-1`` and ``(A L0^-T)(A L0^-T)^T = R^-1``.

    Moments (Gupta & Nagar, Sec. 4.3): ``E[X] = M`` for ``nu > 1``;
    ``Cov(vec(X^T)) = Sigma (x) Omega / (nu - 2)`` for ``nu > 2``, so
    ``Var(X_ij) = Sigma_ii Omega_jj / (nu - 2)`` (inf for 1 < nu <= 2, nan for nu <= 1).

    Relation to the other classes: for p = 1 the single column is multivariate t,
    ``t_n(df = nu, loc = M, scale matrix = (omega / nu) Sigma)`` with the scalar ``omega = B_11^2``
    (for n = 1 likewise ``t_p(nu, M, (Sigma_11 / nu) Omega)``): ``Gamma_n((nu + n)/2) /
    Gamma_n((nu + n - 1)/2)`` telescopes to ``Gamma((nu + n)/2) / Gamma(nu/2)``. Hence
    ``MatrixVariateT(nu, M, A, B) == MatrixStudentT(nu, M, A / sqrt(nu), B)`` when n or p is 1.
    With the same mapping and n, p > 1 the two have equal means and covariances but different
    densities: with ``s_k`` the singular values of ``Y``, this one is proportional to
    ``prod_k (1 + s_k^2)^(-(nu + n + p - 1)/2)``, TFP's to ``(1 + sum_k s_k^2)^(-(nu + np)/2)``.
    """

    def __init__(
        self,
        df,
        loc,
        scale_row_tril=None,
        scale_column_tril=None,
        *,
        scale_row_diag=None,
        scale_column_diag=None,
    ):
        """Builds the distribution (inside or outside `jit`).

        A factor left as None is the identity.

        Args:
          df: degrees of freedom nu, [*b_df], positive.
          loc: location M, [*b_M, n, p].
          scale_row_tril: lower-triangular A (Sigma = A A^T), [*b_A, n, n], positive diagonal.
          scale_column_tril: lower-triangular B (Omega = B B^T), [*b_B, p, p], positive diagonal.
          scale_row_diag: diagonal of a diagonal A, [*b_A, n]; excludes `scale_row_tril`.
          scale_column_diag: diagonal of a diagonal B, [*b_B, p]; excludes `scale_column_tril`.
        """
        super().__init__(
            df,
            loc,
            scale_row_tril,
            scale_column_tril,
            scale_row_diag=scale_row_diag,
            scale_column_diag=scale_column_diag,
        )

    def log_prob(self, value: Array) -> Array:
        """log p(value): [..., n, p] -> [..., *batch]."""
        n, p = self.event_shape
        df = self._df
        y = self.whiten(value)
        if min(n, p) == 1:
            log_det_g = jnp.log1p(jnp.sum(jnp.square(y), axis=(-2, -1)))
        else:
            yt = jnp.swapaxes(y, -1, -2)
            gram = y @ yt if n <= p else yt @ y
            gram = gram + jnp.eye(min(n, p), dtype=self.dtype)
            chol = jnp.linalg.cholesky(gram)
            log_det_g = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_norm = (
            multigammaln(0.5 * (df + n + p - 1), n)
            - multigammaln(0.5 * (df + n - 1), n)
            - 0.5 * n * p * math.log(math.pi)
            - self._log_det()
        )
        return log_norm - 0.5 * (df + n + p - 1) * log_det_g

    def _sample_n(self, key: Array, num: int) -> Array:
        n, p = self.event_shape
        key_chi, key_tri, key_z = jax.random.split(key, 3)
        shape = (num,) + self.batch_shape
        dof = jnp.broadcast_to(self._df, shape)[..., None] + (
            n - 1 - jnp.arange(n, dtype=self.dtype)
        )
        chi2 = 2.0 * jax.random.gamma(key_chi, 0.5 * dof, dtype=self.dtype)  # [*shape, n]
        below = jnp.tril(jax.random.normal(key_tri, shape + (n, n), self.dtype), -1)
        l0 = below + jnp.sqrt(chi2)[..., None] * jnp.eye(n, dtype=self.dtype)
        z = jax.random.normal(key_z, shape + (n, p), self.dtype)
        return self._loc + self._colour(_solve_mat_t(l0, z))

    def variance(self) -> Array:
        """Var(X_ij) = Sigma_ii Omega_jj / (df - 2) for df > 2; inf for 1 < df <= 2; nan for
        df <= 1. [*batch, n, p]."""
        return _t_moment_scale(self.df, self._kron_diag() / self.df[..., None, None], 2)


class SquaredError(distrax.Distribution):
    """The plain autoencoder's objective in the shape of a likelihood: a point mass at `loc`
    whose ``log_prob(x) = -mean_i (loc_i - x_i)^2`` (minus the per-pixel mean squared error).

    It is a Gaussian log-density up to a scale and a constant, not a normalised density, so it
    says so (`is_density = False`) and names its loss term ``'mse'`` (`term`): evaluation reports
    no NLL for it. Batch ``[B]``, event ``[D]``.
    """

    is_density = False
    term = "mse"

    def __init__(self, loc):
        super().__init__()
        self._loc = jnp.asarray(loc)

    @property
    def event_shape(self) -> tuple:
        """(D,): one image, flattened."""
        return self._loc.shape[-1:]

    @property
    def batch_shape(self) -> tuple:
        """The leading shape of loc, e.g. (B,)."""
        return self._loc.shape[:-1]

    def log_prob(self, value):
        """Minus the per-pixel mean squared error: value [..., D] -> [..., *batch]."""
        return -jnp.mean(jnp.square(self._loc - value), axis=-1)

    def _sample_n(self, key, n):
        del key
        return jnp.broadcast_to(self._loc, (n, *self._loc.shape))

    def mean(self):
        """loc, the point reconstruction; [*batch, D]."""
        return self._loc

    def mode(self):
        """loc, the point reconstruction; [*batch, D]."""
        return self._loc

    def variance(self):
        """NaN everywhere: a squared error has no variance; [*batch, D]."""
        return jnp.full_like(self._loc, jnp.nan)


# ----------------------------------------------------------------------------------------------
# Continuous Bernoulli
# ----------------------------------------------------------------------------------------------


def _series_cutoff(dtype, coefficient: float, power: int) -> float:
    """Where the first omitted term ``coefficient x^power`` of a Taylor series drops to eps."""
    return float((np.finfo(dtype).eps / coefficient) ** (1.0 / power))


def _small_or_safe(x: Array, cutoff: float) -> tuple[Array, Array]:
    """(|x| < cutoff, x with those entries replaced by 1): the closed form is then evaluated only
    where it is accurate, and no NaN from its 0/0 at x = 0 reaches a gradient through `where`."""
    small = jnp.abs(x) < cutoff
    return small, jnp.where(small, jnp.ones_like(x), x)


def _cb_log_partition(eta: Array) -> Array:
    """A(eta) = log((e^eta - 1) / eta) = eta/2 + log(sinh(eta/2) / (eta/2)); 0 at eta = 0.

    The even part is a/2 + log((1 - e^-a) / a) with a = |eta|: no overflow. Near 0 that closed
    form cancels (its gradient 1/2 + 1/expm1(a) - 1/a has error eps / a), so there its Taylor
    series a^2/24 - a^4/2880 + a^6/181440 - a^8/9676800 is used (smooth through 0), cut where the
    first omitted term, a^10/479001600, is below eps (a ~ 1.5 in float32).
    """
    a = jnp.abs(eta)
    small, safe = _small_or_safe(a, _series_cutoff(eta.dtype, 1 / 479001600, 10))
    a2 = jnp.square(eta)
    series = a2 * (1 / 24 + a2 * (-1 / 2880 + a2 * (1 / 181440 - a2 / 9676800)))
    closed = safe / 2 + jnp.log(-jnp.expm1(-safe) / safe)
    return eta / 2 + jnp.where(small, series, closed)


class ContinuousBernoulli(distrax.Distribution):
    """The continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham 2019), by its logits.

    With ``lambda = sigmoid(eta)`` (``eta`` the logits)::

        p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),   x in [0, 1]
        C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)  (2 at lambda = 1/2)

    which is the exponential family ``p(x) = exp(eta x - A(eta))`` with log-partition
    ``A(eta) = log((e^eta - 1) / eta)``: ``log C = softplus(eta) - A(eta)``. Written in ``eta``,
    every quantity is evaluated stably, with Taylor series at ``eta ~ 0`` (``lambda ~ 1/2``,
    where the closed forms are 0/0):

    - mean ``A'(eta) = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda))
      = 1/2 + coth(eta/2)/2 - 1/eta`` (1/2 at eta = 0); variance ``A''(eta)
      = 1/eta^2 - 1 / (4 sinh^2(eta/2))`` (1/12 at eta = 0);
    - samples by the inverse CDF: ``F(x) = expm1(eta x) / expm1(eta)``, so
      ``x = log1p(u expm1(eta)) / eta`` for ``u ~ U[0, 1)``, drawn for ``-|eta|`` (where
      ``u expm1(-|eta|)`` lies in (-1, 0]: no overflow) and reflected, ``X(eta) = 1 - X(-eta)``;
    - mode: 1 where eta > 0, else 0.

    The same density as TFP's ``ContinuousBernoulli`` (tested against it). ``log_prob`` is -inf
    outside [0, 1]. Scalar event (batch = the logits' shape), like `distrax.Bernoulli`: the
    likelihood head wraps it in `distrax.Independent` over the pixels.
    """

    def __init__(self, logits):
        """Args: logits: eta = log(lambda / (1 - lambda)), any shape (the batch shape)."""
        super().__init__()
        self._logits = jnp.asarray(logits, _float_dtype(logits))

    @property
    def logits(self) -> Array:
        """eta, [*batch]."""
        return self._logits

    @property
    def probs(self) -> Array:
        """lambda = sigmoid(eta), [*batch]: the shape parameter (not the mean)."""
        return jax.nn.sigmoid(self._logits)

    @property
    def event_shape(self) -> tuple:
        """(): one value in [0, 1]."""
        return ()

    @property
    def batch_shape(self) -> tuple:
        """The logits' shape."""
        return self._logits.shape

    @property
    def dtype(self):
        """The logits' float dtype: samples are values in [0, 1]."""
        return self._logits.dtype

    def log_normalizer(self) -> Array:
        """log C(lambda) = softplus(eta) - A(eta); log 2 at eta = 0. [*batch]."""
        return jax.nn.softplus(self._logits) - _cb_log_partition(self._logits)

    def log_prob(self, value: Array) -> Array:
        """eta x - A(eta) for x in [0, 1], -inf outside; broadcasts against the batch."""
        eta = self._logits
        value = jnp.asarray(value, eta.dtype)
        logp = eta * value - _cb_log_partition(eta)
        return jnp.where((value < 0) | (value > 1), -jnp.inf, logp)

    def mean(self) -> Array:
        """E[x] = 1/2 + coth(eta/2)/2 - 1/eta, [*batch]; near 0 its series 1/2 + eta/12 -
        eta^3/720 + eta^5/30240 - eta^7/1209600 (cut where the next term, eta^9/47900160, is
        below eps)."""
        eta = self._logits
        small, safe = _small_or_safe(eta, _series_cutoff(eta.dtype, 1 / 47900160, 9))
        e2 = jnp.square(eta)
        series = eta * (1 / 12 + e2 * (-1 / 720 + e2 * (1 / 30240 - e2 / 1209600)))
        closed = 0.5 / jnp.tanh(safe / 2) - 1 / safe
        return 0.5 + jnp.where(small, series, closed)

    def variance(self) -> Array:
        """Var[x] = 1/eta^2 - 1/(4 sinh^2(eta/2)), [*batch]; near 0 its series 1/12 - eta^2/240
        + eta^4/6048 - eta^6/172800 + eta^8/5322240."""
        eta = self._logits
        small, safe = _small_or_safe(eta, _series_cutoff(eta.dtype, 1 / 5322240, 8))
        e2 = jnp.square(eta)
        series = 1 / 12 + e2 * (-1 / 240 + e2 * (1 / 6048 + e2 * (-1 / 172800 + e2 / 5322240)))
        closed = 1 / jnp.square(safe) - 0.25 / jnp.square(jnp.sinh(safe / 2))
        return jnp.where(small, series, closed)

    def mode(self) -> Array:
        """1 where eta > 0, else 0 (the density is proportional to e^(eta x)). [*batch]."""
        return (self._logits > 0).astype(self.dtype)

    def _sample_n(self, key: Array, n: int) -> Array:
        eta = self._logits
        u = jax.random.uniform(key, (n, *eta.shape), eta.dtype)
        a = jnp.abs(eta)
        tiny, safe = _small_or_safe(a, np.finfo(eta.dtype).tiny)
        x = jnp.where(tiny, u, jnp.log1p(u * jnp.expm1(-safe)) / -safe)  # X(-|eta|)
        return jnp.where(eta > 0, 1 - x, x)
