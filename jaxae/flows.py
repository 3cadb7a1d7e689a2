"""Normalizing flows: MADE/MAF, and the PAE's latent flows RealNVP and Neural Spline Flow.

MAF (Papamakarios et al. 2017) with a MADE conditioner (Germain et al. 2015):
``x_i = u_i * exp(a_i(x_<i)) + m_i(x_<i)``, so ``u = (x - m(x)) * exp(-a(x))`` in one pass and
``log p(x) = log p_u(u) - sum_i a_i(x)``. Sampling needs D sequential passes. The VPAE's `maf`
head (Ciobanu 2021, Sec. 3.1) is this flow on a base N(decoder output, I), with one MADE layer of
10 ReLU units.

PAE latent flows (Boehm & Seljak 2020, Secs. 2 and 4): after the autoencoder is trained, a flow
``b: z -> u`` (Eq. 4) is fitted on the encoded training set by maximum likelihood,
``-log p(z) = -log N(b(z); 0, I) - log|det db/dz|`` (Eq. 5), and samples are
``x = g(b^-1(u))``, ``u ~ N(0, I)`` (Eq. 6). `RealNVP` (affine couplings, fixed random
permutations) is the paper's choice for K <= 32, `NeuralSplineFlow` (rational-quadratic spline
couplings, trainable LU linear layers) above; `default_kind` and `make` encode that rule. Both are
distrax bijector Chains built from the NNX parameters, start as the identity map, and share
`forward` / `inverse` / `log_prob` / `sample` / `distribution`.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def made_masks(dim: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks [dim, hidden] and [hidden, dim] of a one-hidden-layer MADE (natural input order).

    Input i has degree i+1; hidden unit j has degree in 1..dim-1 (cycled); output i may see
    hidden units of degree < i+1, so output i depends on x_<i only (output 0 is constant).
    """
    d_in = np.arange(1, dim + 1)
    d_hidden = np.arange(hidden) % max(dim - 1, 1) + 1
    m1 = (d_hidden[None, :] >= d_in[:, None]).astype(np.float32)
    m2 = (d_in[None, :] > d_hidden[:, None]).astype(np.float32)
    return m1, m2


class MADE(nnx.Module):
    """x [..., D] -> (shift [..., D], log_scale [..., D]), autoregressive in the input order."""

    def __init__(self, dim: int, hidden: int = 10, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.glorot_uniform()
        self.dim, self.hidden = dim, hidden  # masks are rebuilt as constants when traced
        self.w1 = nnx.Param(init(rngs.params(), (dim, hidden)))
        self.b1 = nnx.Param(jnp.zeros((hidden,)))
        self.w2 = nnx.Param(init(rngs.params(), (hidden, 2 * dim)))
        self.b2 = nnx.Param(jnp.zeros((2 * dim,)))

    def __call__(self, x):
        m1, m2 = made_masks(self.dim, self.hidden)
        h = jax.nn.relu(x @ (self.w1[...] * m1) + self.b1[...])
        out = h @ (self.w2[...] * np.concatenate([m2, m2], axis=1)) + self.b2[...]
        return out[..., : self.dim], out[..., self.dim :]


class MaskedAutoregressive(distrax.Bijector):
    """The MAF bijector u -> x for a conditioner ``fn(x) -> (shift, log_scale)``."""

    def __init__(self, conditioner):
        super().__init__(event_ndims_in=1)
        self._conditioner = conditioner

    def inverse_and_log_det(self, y):
        """u = (x - m(x)) exp(-a(x)) in one pass, and log|det du/dx| = -sum_i a_i(x).

        x [..., D] -> (u [..., D], log_det [...]).
        """
        shift, log_scale = self._conditioner(y)
        return (y - shift) * jnp.exp(-log_scale), -jnp.sum(log_scale, axis=-1)

    def forward_and_log_det(self, x):
        """x from u by D sequential passes, and log|det dx/du| = sum_i a_i(x).

        u [..., D] -> (x [..., D], log_det [...]).
        """

        # x_i is right after pass i+1: D passes fix every coordinate in order.
        def body(_, y):
            shift, log_scale = self._conditioner(y)
            return x * jnp.exp(log_scale) + shift

        y = jax.lax.fori_loop(0, x.shape[-1], body, jnp.zeros_like(x))
        _, log_scale = self._conditioner(y)
        return y, jnp.sum(log_scale, axis=-1)


# ---------------------------------------------------------------------------------------------
# PAE latent flows: RealNVP and Neural Spline Flow over K-dim codes (PAE Eqs. 4-6).
# ---------------------------------------------------------------------------------------------

_LOG_2PI = float(np.log(2.0 * np.pi))


class ResidualBlock(nnx.Module):
    """Pre-activation residual block ``h + W2 relu(W1 relu(h))`` (nflows' ResidualNet block)."""

    def __init__(self, hidden: int, *, param_dtype, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(hidden, hidden, param_dtype=param_dtype, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, h):
        return h + self.l2(jax.nn.relu(self.l1(jax.nn.relu(h))))


class ResidualConditioner(nnx.Module):
    """x [..., K] -> raw coupling parameters [..., K, P]; the last layer starts at zero.

    A zero last layer makes every raw parameter 0 at init, which the couplings below map to the
    identity (shift 0 / log-scale 0, or the identity spline), so a new flow is exactly b(z) = z.
    """

    def __init__(self, k: int, p: int, hidden: int, n_blocks: int, *, param_dtype, rngs):
        self.k, self.p = k, p
        self.inp = nnx.Linear(k, hidden, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List(
            [ResidualBlock(hidden, param_dtype=param_dtype, rngs=rngs) for _ in range(n_blocks)]
        )
        zeros = nnx.initializers.zeros_init()
        self.out = nnx.Linear(
            hidden, k * p, kernel_init=zeros, bias_init=zeros, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x):
        h = self.inp(x)
        for block in self.blocks:  # a few heterogeneous blocks: unrolled at trace time
            h = block(h)
        out = self.out(jax.nn.relu(h))
        return out.reshape(*out.shape[:-1], self.k, self.p)


def _permutation(perm) -> distrax.Bijector:
    """The volume-preserving bijector x -> x[..., perm] (a fixed, untrained permutation)."""
    perm = np.asarray(perm)
    inv = np.argsort(perm)
    return distrax.Lambda(
        forward=lambda x: x[..., perm],
        inverse=lambda y: y[..., inv],
        forward_log_det_jacobian=lambda x: jnp.zeros(x.shape[:-1], x.dtype),
        inverse_log_det_jacobian=lambda y: jnp.zeros(y.shape[:-1], y.dtype),
        event_ndims_in=1,
        is_constant_jacobian=True,
    )


def _parity_mask(k: int, layer: int) -> np.ndarray:
    """Alternating coupling mask: True entries are passed through and condition the rest."""
    return (np.arange(k) + layer) % 2 == 0


class LULinear(nnx.Module):
    """Trainable linear layer ``x -> L U x + b`` (Glow's LU 1x1 conv, Kingma & Dhariwal 2018).

    Wraps `distrax.LowerUpperTriangularAffine`. The diagonal of U is stored as its log, so U
    stays invertible whatever the optimizer does; all parameters start at zero, i.e. LU = I, b = 0.
    """

    def __init__(self, k: int, *, param_dtype=jnp.float32):
        self.off_diag = nnx.Param(jnp.zeros((k, k), param_dtype))  # strict lower -> L, upper -> U
        self.log_diag = nnx.Param(jnp.zeros((k,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((k,), param_dtype))

    def bijector(self) -> distrax.Bijector:
        """The affine map x -> L U x + b as a distrax bijector (U's diagonal: exp of `log_diag`)."""
        m = self.off_diag[...]
        matrix = m - jnp.diag(jnp.diag(m)) + jnp.diag(jnp.exp(self.log_diag[...]))
        return distrax.LowerUpperTriangularAffine(matrix, self.bias[...])


class Flow(nnx.Module):
    """Common interface of the PAE latent flows; subclasses define `bijector()` (z -> u).

    `forward`, `inverse`, `log_prob` accept [..., K] (one example or any batch) and work under
    `jax.jit` / `jax.vmap`; the module is meant to be used functionally through nnx.split/merge.
    """

    k: int
    param_dtype: jnp.dtype

    def bijector(self) -> distrax.Bijector:
        """The bijector b: z -> u built from the current parameters (subclasses define it)."""
        raise NotImplementedError

    def _init_couplings(self, k, p, *, n_layers, hidden, n_blocks, param_dtype, rngs):
        """K, dtype and `n_layers` zero-initialised conditioners emitting `p` raw values each."""
        if k < 2:
            raise ValueError(f"{type(self).__name__} needs K >= 2 to couple, got K={k}")
        self.k, self.param_dtype = k, param_dtype
        self.conditioners = nnx.List(
            [
                ResidualConditioner(k, p, hidden, n_blocks, param_dtype=param_dtype, rngs=rngs)
                for _ in range(n_layers)
            ]
        )

    def _check(self, x, name: str):
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.k:
            raise ValueError(
                f"{type(self).__name__}.{name}: expected shape [..., {self.k}], got {x.shape}"
            )
        return x

    def forward(self, z):
        """u = b(z) (Eq. 4) and log|det db/dz|. z [..., K] -> (u [..., K], log_det [...])."""
        return self.bijector().forward_and_log_det(self._check(z, "forward"))

    def inverse(self, u):
        """z = b^-1(u). u [..., K] -> z [..., K]."""
        return self.bijector().inverse(self._check(u, "inverse"))

    def log_prob(self, z):
        """log p(z) = log N(b(z); 0, I) + log|det db/dz| (minus Eq. 5). z [..., K] -> [...]."""
        u, log_det = self.forward(self._check(z, "log_prob"))
        return -0.5 * jnp.sum(u**2, axis=-1) - 0.5 * self.k * _LOG_2PI + log_det

    def sample(self, key, n: int):
        """z = b^-1(u), u ~ N(0, I) (the latent part of Eq. 6). Returns z [n, K]."""
        return self.inverse(jax.random.normal(key, (n, self.k), self.param_dtype))

    def distribution(self) -> distrax.Distribution:
        """The flow density over z as a distrax distribution: N(0, I) pushed through b^-1."""
        base = distrax.MultivariateNormalDiag(
            jnp.zeros((self.k,), self.param_dtype), jnp.ones((self.k,), self.param_dtype)
        )
        return distrax.Transformed(base, distrax.Inverse(self.bijector()))


class RealNVP(Flow):
    """RealNVP (Dinh et al. 2016) with fixed random permutations: the PAE's flow for K <= 32.

    Each of `n_layers` steps is a seeded random permutation (a constant, not trained) followed by
    an affine `distrax.MaskedCoupling` with an alternating mask and a residual conditioner
    (`n_blocks` blocks of `hidden` units); a last fixed permutation undoes the composed ones, so
    with the zero-initialised conditioners a new flow is exactly b(z) = z. The log-scale is
    soft-bounded, ``log_scale = c * tanh(raw / c)`` with c = `log_scale_bound`, so one coupling
    rescales by at most e^c: this keeps early training stable, and raw = 0 still gives scale 1.
    """

    def __init__(
        self,
        k: int,
        *,
        n_layers: int = 8,
        hidden: int = 128,
        n_blocks: int = 2,
        log_scale_bound: float = 3.0,
        seed: int = 0,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._init_couplings(k, 2, n_layers=n_layers, hidden=hidden, n_blocks=n_blocks,
                             param_dtype=param_dtype, rngs=rngs)  # fmt: skip
        self.log_scale_bound = log_scale_bound
        rng = np.random.default_rng(seed)
        self.perms = tuple(tuple(int(i) for i in rng.permutation(k)) for _ in range(n_layers))

    def _affine(self, params):
        c = self.log_scale_bound
        return distrax.ScalarAffine(
            shift=params[..., 0], log_scale=c * jnp.tanh(params[..., 1] / c)
        )

    def bijector(self) -> distrax.Bijector:
        """b: z -> u: for each layer a fixed permutation then an affine coupling, then the inverse
        of the composed permutations (so a new flow is the identity)."""
        steps = []  # in the order applied to z
        for layer, (perm, cond) in enumerate(zip(self.perms, self.conditioners, strict=True)):
            steps.append(_permutation(perm))
            steps.append(
                distrax.MaskedCoupling(
                    _parity_mask(self.k, layer), cond, self._affine, event_ndims=1
                )
            )
        # Undo the composed permutations at the end, so that a new flow is exactly b(z) = z.
        total = np.arange(self.k)
        for perm in self.perms:
            total = total[list(perm)]
        steps.append(_permutation(np.argsort(total)))
        return distrax.Chain(steps[::-1])  # Chain applies its last bijector first


class NeuralSplineFlow(Flow):
    """Rational-quadratic Neural Spline Flow (Durkan et al. 2019): the PAE's flow for K > 32.

    Each of `n_layers` steps is a trainable LU linear layer (`LULinear`) followed by a
    `distrax.MaskedCoupling` of `distrax.RationalQuadraticSpline`s with `num_bins` bins on
    [-bound, bound] and identity (linear) tails outside. Raw spline parameters of 0 give equal bin
    widths and heights and unit knot slopes (distrax offsets its softplus so that raw 0 -> 1),
    i.e. the identity spline, so with the zero-initialised conditioners a new flow is b(z) = z.
    """

    def __init__(
        self,
        k: int,
        *,
        n_layers: int = 8,
        hidden: int = 128,
        n_blocks: int = 2,
        num_bins: int = 8,
        bound: float = 5.0,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.linears = nnx.List([LULinear(k, param_dtype=param_dtype) for _ in range(n_layers)])
        self._init_couplings(k, 3 * num_bins + 1, n_layers=n_layers, hidden=hidden,
                             n_blocks=n_blocks, param_dtype=param_dtype, rngs=rngs)  # fmt: skip
        self.bound = bound

    def _spline(self, params):
        return distrax.RationalQuadraticSpline(
            params, range_min=-self.bound, range_max=self.bound, boundary_slopes="identity"
        )

    def bijector(self) -> distrax.Bijector:
        """b: z -> u: per layer, an LU linear layer then a rational-quadratic spline coupling."""
        steps = []  # in the order applied to z
        for layer, (lin, cond) in enumerate(zip(self.linears, self.conditioners, strict=True)):
            steps.append(lin.bijector())
            steps.append(
                distrax.MaskedCoupling(
                    _parity_mask(self.k, layer), cond, self._spline, event_ndims=1
                )
            )
        return distrax.Chain(steps[::-1])


FLOWS = {"realnvp": RealNVP, "nsf": NeuralSplineFlow}


def default_kind(k: int) -> str:
    """The PAE paper's rule (Sec. 4): RealNVP for K <= 32, a Neural Spline Flow above."""
    return "realnvp" if k <= 32 else "nsf"


def make(kind: str | None, k: int, *, rngs: nnx.Rngs, **kw) -> Flow:
    """Builds the flow `kind` ('realnvp' | 'nsf'; None -> `default_kind(k)`) over K-dim codes."""
    kind = default_kind(k) if kind is None else kind
    if kind not in FLOWS:
        raise ValueError(f"unknown flow kind {kind!r}; expected one of {sorted(FLOWS)}")
    return FLOWS[kind](k, rngs=rngs, **kw)
