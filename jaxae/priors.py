"""Latent densities and ex-post samplers of the regularized-autoencoder family.

A deterministic autoencoder has no sampler of its own: Ghosh et al. (2020, "From Variational to
Deterministic Autoencoders", RAE, Sec. 4) fit a density to the encoded training codes *ex post*
and decode its samples. Fitting a density to codes [N, d] and sampling from it is one interface
here, `fit(name, codes, key=...) -> Sampler`, with these backends (`SAMPLERS`):

- 'gaussian': one full-covariance Gaussian of the codes;
- 'gmm': a full-covariance Gaussian mixture fitted by EM (Dempster, Laird & Rubin 1977) from a
  k-means++ start (Arthur & Vassilvitskii 2007) with several restarts: the RAE's ex-post density
  (Ghosh et al. 2020, 10 components), `fit_gmm`;
- 'flow': the PAE's latent flow (Boehm & Seljak 2020, Eq. 5; `jaxae.flows`) fitted by maximum
  likelihood to any model's standardised codes (the slides' "VAE + Flow" rows);
- 'vae': the second stage of the two-stage VAE (Dai & Wipf 2019, "Diagnosing and Enhancing VAE
  Models", Sec. 4): a second VAE fitted to the first one's codes, sampled by decoding u ~ N(0, I).

A model's own prior is not fitted: `prior_sampler` wraps its sampling function, `standard_normal`
is N(0, I) and `GMMSampler(onehot_gmm())` is the GMM-DAE's one-hot mixture prior. Every sampler
has `sample(key, n)`, `log_prob(z)` where defined, and `save(directory)` / `load(directory)`
(``sampler.json`` + ``arrays.npz``, read without pickle). Every fit is deterministic given its key.

`GMM` is a small pytree (weights, means, full covariances) with `log_prob`, `sample`,
`responsibilities`, `assign`, moments and per-dimension marginal CDFs; `gmm` builds a validated
one.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from jaxae import flows

_LOG_2PI = math.log(2.0 * math.pi)

# --- Gaussian mixtures ---------------------------------------------------------------------------


class GMM(NamedTuple):
    """A Gaussian mixture with full covariances: a pytree, usable inside `jit` and `vmap`.

    Build a checked one with `gmm`; `fit_gmm` fits one to codes. The methods are jitted (one
    compilation per input shape, not one per operation).
    """

    weights: jax.Array  # [K], non-negative, summing to one
    means: jax.Array  # [K, d]
    covs: jax.Array  # [K, d, d], symmetric positive definite

    @property
    def k(self) -> int:
        """The number of components K."""
        return self.weights.shape[-1]

    @property
    def dim(self) -> int:
        """The dimension d of the space."""
        return self.means.shape[-1]

    @jax.jit
    def component_log_probs(self, z) -> jax.Array:
        """log w_k + log N(z; mu_k, Sigma_k) of each component. z [..., d] -> [..., K]."""
        chol = jnp.linalg.cholesky(self.covs)  # [K, d, d]
        diff = jnp.asarray(z)[..., None, :] - self.means  # [..., K, d]
        flat = diff.reshape(-1, self.k, self.dim).transpose(1, 2, 0)  # [K, d, M]
        y = solve_triangular(chol, flat, lower=True)  # L_k^-1 (z - mu_k)
        maha = jnp.sum(y**2, axis=1).T.reshape(diff.shape[:-1])  # [..., K]
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return jnp.log(self.weights) - 0.5 * (maha + log_det + self.dim * _LOG_2PI)

    @jax.jit
    def log_prob(self, z) -> jax.Array:
        """log p(z) = logsumexp_k [log w_k + log N(z; mu_k, Sigma_k)]. z [..., d] -> [...]."""
        return logsumexp(self.component_log_probs(z), axis=-1)

    @jax.jit
    def responsibilities(self, z) -> jax.Array:
        """p(k | z), the posterior over components (the E-step). z [N, d] -> [N, K]."""
        return jax.nn.softmax(self.component_log_probs(z), axis=-1)

    @jax.jit
    def assign(self, z) -> jax.Array:
        """The most probable component of each code (the GMM-DAE's cluster). z [N, d] -> [N]."""
        return jnp.argmax(self.component_log_probs(z), axis=-1)

    @jax.jit(static_argnums=2)
    def sample(self, key, n: int) -> jax.Array:
        """n draws: k ~ Categorical(w), z = mu_k + L_k eps, eps ~ N(0, I). Returns [n, d]."""
        k_comp, k_eps = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))
        eps = jax.random.normal(k_eps, (n, self.dim), self.means.dtype)
        chol = jnp.linalg.cholesky(self.covs)
        # Every component's draw, then pick: [n, K, d] is smaller than gathering [n, d, d]
        # factors whenever K < d, and it is one matmul.
        every = self.means + jnp.einsum("kij,nj->nki", chol, eps)
        return jnp.take_along_axis(every, comp[:, None, None], axis=1)[:, 0]

    @jax.jit
    def mean(self) -> jax.Array:
        """E[z] = sum_k w_k mu_k. Returns [d]."""
        return self.weights @ self.means

    @jax.jit
    def covariance(self) -> jax.Array:
        """Cov[z] = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[z] E[z]^T. Returns [d, d]."""
        m = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights, self.covs)
        second += jnp.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - jnp.outer(m, m)

    @jax.jit
    def marginal_cdf(self, t) -> jax.Array:
        """Per-dimension marginal CDFs P(z_j <= t_j) = sum_k w_k Phi((t_j - mu_kj) / s_kj),
        s_kj^2 = Sigma_k[j, j]. t [B, d] -> [B, d]."""
        std = jnp.sqrt(jnp.diagonal(self.covs, axis1=-2, axis2=-1))  # [K, d]
        cdf = norm.cdf((jnp.asarray(t)[..., None, :] - self.means) / std)  # [B, K, d]
        return jnp.einsum("k,...kd->...d", self.weights, cdf)


def gmm(weights, means, stds_or_covs) -> GMM:
    """A checked `GMM` (float32) from weights [K], means [K, d] and per-dimension standard
    deviations [K, d] (diagonal covariances) or full covariances [K, d, d].

    Raises:
      ValueError: NaN or infinite entries, K < 1, shapes that disagree, weights negative or not
        summing to one (within 1e-5), a non-positive std, or a covariance that is not symmetric
        positive definite; the message names the argument.
    """
    args = {"weights": weights, "means": means, "stds_or_covs": stds_or_covs}
    a = {name: np.asarray(v, np.float64) for name, v in args.items()}
    for name, v in a.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"gmm: {name} has {np.sum(~np.isfinite(v))} NaN or infinite entries")
    w, mu, s = a["weights"], a["means"], a["stds_or_covs"]
    if w.ndim != 1 or len(w) < 1:
        raise ValueError(f"gmm: weights must be [K] with K >= 1 components, got shape {w.shape}")
    k = len(w)
    if mu.ndim != 2 or mu.shape[0] != k:
        raise ValueError(f"gmm: means must be [K={k}, d] (K from weights), got shape {mu.shape}")
    d = mu.shape[1]
    if s.shape == (k, d):
        if np.any(s <= 0):
            raise ValueError(f"gmm: stds_or_covs holds per-dimension stds [K, d] that must be > 0; "
                             f"its smallest is {s.min():.3g}")  # fmt: skip
        covs = s[:, :, None] ** 2 * np.eye(d)
    elif s.shape == (k, d, d):
        covs = s
        asym = np.max(np.abs(covs - np.swapaxes(covs, 1, 2)), initial=0.0)
        if asym > 1e-6 * max(np.max(np.abs(covs)), 1.0):
            raise ValueError(f"gmm: stds_or_covs covariances [K, d, d] must be symmetric; the "
                             f"largest |C - C^T| is {asym:.3g}")  # fmt: skip
        low = np.linalg.eigvalsh(covs).min(axis=1)
        if np.any(low <= 0):
            i = int(np.argmin(low))
            raise ValueError(f"gmm: stds_or_covs covariance {i} is not positive definite (smallest "
                             f"eigenvalue {low[i]:.3g}); add a small multiple of I")  # fmt: skip
    else:
        raise ValueError(f"gmm: stds_or_covs must be stds [K={k}, d={d}] or covariances "
                         f"[K={k}, d={d}, d={d}] (K from weights, d from means), got shape "
                         f"{s.shape}")  # fmt: skip
    if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-5:
        raise ValueError(f"gmm: weights must be >= 0 and sum to one (within 1e-5); they sum to "
                         f"{w.sum():.8g} with smallest {w.min():.3g}")  # fmt: skip
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return GMM(f32(w), f32(mu), f32(0.5 * (covs + np.swapaxes(covs, 1, 2))))


def onehot_gmm(k: int = 10, dim: int = 10, std: float = 1.0) -> GMM:
    """The GMM-DAE's prior (appendix A.2.3): K equally weighted components with means the one-hot
    vectors e_1..e_K of R^dim and isotropic std `std`; needs k <= dim."""
    if not 1 <= k <= dim:
        raise ValueError(f"onehot_gmm: the means are one-hot vectors e_1..e_k of R^dim, so k must "
                         f"be in 1..dim; got k={k}, dim={dim}")  # fmt: skip
    return gmm(np.full(k, 1.0 / k), np.eye(k, dim), np.full((k, dim), std))


# --- EM for a full-covariance GMM ------------------------------------------------------------


class EMInfo(NamedTuple):
    """What `fit_gmm(..., return_info=True)` reports per restart, with the chosen one.

    Log-likelihoods are means per code of the standardised codes (what EM sees).
    """

    log_likelihood: np.ndarray  # [R] at the end of EM
    init_log_likelihood: np.ndarray  # [R] at the k-means++ start
    iterations: np.ndarray  # [R] E-steps run
    best: int  # the restart kept: the highest final log-likelihood


# At most this many codes per step of an EM sweep: the [K, d, B] temporaries (1.3 MB at K = 10,
# d = 16) stay in cache. On a 2-core CPU (K = 10, d = 16) 2,048-3,072 were the fastest; 1,024 and
# 4,096 took 10% longer per EM iteration, all 60,000 codes in one step 8x.
_CHUNK = 2048


def _chunked(x: np.ndarray) -> np.ndarray:
    """Codes x [N, d] as columns [C, d + 1, B]: C = ceil(N / 2048) equal chunks of B codes (the
    last zero-padded), each code with a 1 appended (row d)."""
    n, d = x.shape
    c = -(-n // _CHUNK)
    b = -(-n // c)
    xs = np.ones((c * b, d + 1), x.dtype)
    xs[:n, :d] = x
    xs[n:, :d] = 0.0
    return np.ascontiguousarray(xs.reshape(c, b, d + 1).transpose(0, 2, 1))


def _whitening(params):
    """(A [K d, d + 1], c [K, 1], L [K, d, d]) of the mixture `params` = (weights [K], means
    [K, d], covs [K, d, d]), with Sigma_k = L_k L_k^T (Cholesky), row block k of A the whitening
    L_k^-1 [I, -mu_k] of a code with a 1 appended and c_k = log w_k - log|L_k| - d/2 log 2 pi, so
    that log w_k + log N(x; mu_k, Sigma_k) = c_k - |A_k [x; 1]|^2 / 2 (as scikit-learn's
    GaussianMixture scores: a whitened difference, never x^T P x - 2 mu^T P x + mu^T P mu, whose
    float32 cancellation grows with the precision P).

    LAPACK works on column-major matrices, whose storage is the row-major storage of their
    transposes: factoring Sigma^T (= Sigma, symmetric) and solving X L^T = [I, -mu]^T for
    X = A^T leaves XLA fewer matrix transposes to insert, each a large kernel to compile (the EM
    program's compiled code shrank by 6% against jnp.linalg.cholesky and solving for A).
    """
    weights, means, covs = params
    k, d = means.shape
    # covs are symmetric (`_m_step` symmetrises them): no need to average them with Sigma^T
    chol = jax.lax.linalg.cholesky(jnp.swapaxes(covs, 1, 2), symmetrize_input=False)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=covs.dtype), covs.shape)
    rhs = jnp.concatenate([eye, -means[:, None, :]], axis=1)  # [K, d + 1, d] [I, -mu]^T
    mat = jnp.swapaxes(jax.lax.linalg.triangular_solve(
        chol, rhs, left_side=False, lower=True, transpose_a=True), 1, 2)  # fmt: skip
    # diag(L_k^-1): every (d + 2)-th entry of the flattened [L_k^-1, -L_k^-1 mu_k]
    diag = mat.reshape(k, d * (d + 1))[:, :: d + 2]
    const = jnp.log(weights) + jnp.sum(jnp.log(diag), axis=1) - 0.5 * d * _LOG_2PI
    return mat.reshape(k * d, d + 1), const[:, None], chol


def _sweep(params, hard, xts, labels, k: int):
    """One pass over the codes, chunk by chunk: the E-step under the mixture `params` and the
    M-step's statistics, ((sum of log p(x), N_k [K], sum_n r_nk y_nk [K, d],
    sum_n r_nk y_nk x_n^T [K, d, d]), the Cholesky factors L [K, d, d] of `params`).

    y_nk = L_k^-1 (x_n - mu_k) is code n whitened by component k. `xts` [C, d + 1, B] are the codes
    from `_chunked`, `labels` [C, B] their k-means labels (-1: padding); `hard` (a traced bool)
    takes the responsibilities r one-hot from the labels instead of the posterior (the start:
    with covs I, y_nk = x_n - mu_k).

    Per chunk the codes are columns (B the minor axis, along which the elementwise work runs): y
    is one matmul [K d, d + 1] @ [x; 1] [d + 1, B], the sum of r y x^T one [K d, B] @ [B, d], and
    the sums of r and log p(x) one [K + 1, B] @ 1 [B] (with the appended 1s: a reduction over the
    codes would compile to a larger kernel). Summing per chunk, then over chunks, keeps the
    float32 rounding of sums over N codes near sqrt(N) eps.
    """
    mat, const, chol = _whitening(params)
    d = params[1].shape[1]
    comps = jnp.arange(k)[:, None]
    over_codes = (((1,), (1,)), ((), ()))  # contract the codes axis B of both operands

    def body(acc, chunk):
        xt, lab = chunk  # [d + 1, B], [B]
        real = lab >= 0
        y = (mat @ xt).reshape(k, d, -1)  # [K, d, B]
        joint = const - 0.5 * jnp.sum(y**2, axis=1)  # [K, B] log w_k + log N(x; mu_k, Sigma_k)
        # log p(x) [B] by log-sum-exp (as jax.scipy.special.logsumexp, in fewer XLA kernels)
        top = jax.lax.stop_gradient(jnp.max(joint, axis=0))
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        log_p = jnp.log(jnp.sum(jnp.exp(joint - top), axis=0)) + top
        r = jnp.where(hard, (lab == comps).astype(xt.dtype), jnp.exp(joint - log_p) * real)
        ry = (r[:, None, :] * y).reshape(k * d, -1)
        sums = (jax.lax.dot_general(ry, xt[:d], over_codes), ry.sum(1),
                jnp.concatenate([r, jnp.where(real, log_p, 0.0)[None]]) @ xt[d])  # fmt: skip
        return jax.tree.map(jnp.add, acc, sums), None

    zeros = (jnp.zeros((k * d, d)), jnp.zeros((k * d,)), jnp.zeros((k + 1,)))
    ryx, ry, r_lp = jax.lax.scan(body, zeros, (xts, labels))[0]
    return (r_lp[k], r_lp[:k], ry.reshape(k, d), ryx.reshape(k, d, d)), chol


def _m_step(sums, means, chol, reg):
    """Weights, means and covariances maximising the expected log-likelihood (Dempster et al.
    1977, the M-step) from `_sweep`'s sums, taken relative to the previous `means` m [K, d] with
    Cholesky factors `chol` L [K, d, d]; `reg` is added to every covariance diagonal.

    With delta = L E[y] (the mean's step) and L E[y x^T] = E[(x - m) x^T], the covariance is
    E[(x - m) x^T] - delta (m + delta)^T. Its float32 rounding error is ~eps |m| sigma, not the
    ~eps |m|^2 of E[x x^T] - mu mu^T, which exceeds `reg` (and turns a covariance indefinite) when
    a component collapses onto a few identical codes. A component holding less than one code's
    worth of responsibility keeps its mean and covariance (its weight falls to ~0).
    """
    _, nk, sy, syx = sums
    d = sy.shape[1]
    safe = jnp.maximum(nk, 1e-12)
    delta = jnp.einsum("kij,kj->ki", chol, sy) / safe[:, None]
    new_means = means + delta
    covs = chol @ syx / safe[:, None, None] - delta[:, :, None] * new_means[:, None, :]
    covs = 0.5 * (covs + jnp.swapaxes(covs, 1, 2)) + reg * jnp.eye(d)
    alive = nk > 1.0
    new_means = jnp.where(alive[:, None], new_means, means)
    covs = jnp.where(alive[:, None, None], covs, chol @ jnp.swapaxes(chol, 1, 2))
    return nk / nk.sum(), new_means, covs


def _kmeans_pp(x, k: int, key, lloyd: int):
    """k-means++ seeding (Arthur & Vassilvitskii 2007: each new centre drawn with probability
    proportional to the squared distance to the nearest chosen one), then `lloyd` Lloyd steps.
    Returns (centres [K, d], the label of each code [N]).

    Centre i is ``jax.random.categorical(fold_in(k_next, i), log d2)``, computed as that function
    does (the index of the largest Gumbel noise + log d2), with the noise of every draw made by one
    vmapped call before the loop.
    """
    n = x.shape[0]
    k_first, k_next = jax.random.split(key)
    first = x[jax.random.randint(k_first, (), 0, n)]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    draws = jnp.arange(1, k)
    noise = jax.vmap(lambda i: jax.random.gumbel(jax.random.fold_in(k_next, i), (n,), x.dtype))(
        draws
    )  # [K - 1, N]

    def seed(carry, i):
        centres, d2 = carry
        c = x[jnp.argmax(noise[i - 1] + jnp.log(d2))]
        return (centres.at[i].set(c), jnp.minimum(d2, jnp.sum((x - c) ** 2, -1))), None

    centres = jax.lax.scan(seed, (centres, jnp.sum((x - first) ** 2, -1)), draws)[0][0]

    def assign(centres):
        d2 = jnp.sum(centres**2, -1) - 2 * x @ centres.T  # + |x|^2, the same for every centre
        return jnp.argmin(d2, -1)

    def step(centres, _):
        r = jax.nn.one_hot(assign(centres), k, dtype=x.dtype)
        count = r.sum(0)[:, None]
        return jnp.where(count > 0, r.T @ x / jnp.maximum(count, 1), centres), None

    centres, _ = jax.lax.scan(step, centres, None, length=lloyd)
    return centres, assign(centres)


@jax.jit(static_argnames=("k", "iters", "lloyd"))
def _em(x, xts, key, restart, tol, reg, *, k: int, iters: int, lloyd: int):
    """Restart `restart` (its key ``fold_in(key, restart)``): k-means++ start, then EM until the
    mean log-likelihood changes by less than tol * max(|ll|, 1) or after `iters` E-steps.

    x [N, d] the standardised codes; `xts` the same from `_chunked`. One compilation serves every
    restart of codes of one shape (the restart index is traced). Returns ((weights, means, covs),
    their mean log-likelihood, that of the k-means start, the number of E-steps).
    """
    n, d = x.shape
    centres, labels = _kmeans_pp(x, k, jax.random.fold_in(key, restart), lloyd)
    chunks = (xts.shape[0], xts.shape[2])
    labels = jnp.pad(labels, (0, math.prod(chunks) - n), constant_values=-1).reshape(chunks)
    # The start is the M-step of the k-means assignment, relative to the centres: the loop's
    # first pass (it = -1), a sweep with the labels as responsibilities under covariances I, so
    # one sweep is compiled, not two (L = I: an empty cluster keeps its centre and covariance I).
    eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (k, d, d))
    start = (jnp.full((k,), 1.0 / k, x.dtype), centres, eye)

    def cond(state):
        _, _, ll_prev, ll, it, _ = state
        change = jnp.abs(ll - ll_prev)  # meaningful from the second iteration on
        return (it < iters) & ((it < 2) | (change > tol * jnp.maximum(jnp.abs(ll), 1.0)))

    def body(state):
        params, _, _, ll, it, ll0 = state
        sums, chol = _sweep(params, it < 0, xts, labels, k)
        ll_new = sums[0] / n  # the log-likelihood of `params`, before their update
        # After the start's pass (it = -1) the scored parameters and ll are placeholders, which
        # the first E-step overwrites; the stopping test reads ll_prev from it = 2 on.
        ll0 = jnp.where(it == 0, ll_new, ll0)
        return _m_step(sums, params[1], chol, reg), params, ll, ll_new, it + 1, ll0

    # The loop returns the last parameters it scored (one M-step short of its final update), so
    # that the log-likelihood restarts are compared by is exactly theirs.
    zero = jnp.zeros((), x.dtype)
    _, params, _, ll, it, ll0 = jax.lax.while_loop(
        cond, body, (start, start, zero, zero, jnp.int32(-1), zero)
    )
    return params, ll, ll0, it


def fit_gmm(codes, k: int, *, key, restarts: int = 5, iters: int = 200, tol: float = 1e-4,
            reg: float = 1e-6, lloyd: int = 10, return_info: bool = False):  # fmt: skip
    """A full-covariance GMM fitted to codes [N, d] by EM (Dempster et al. 1977), each restart one
    call of a program compiled once per (N, d, k, iters, lloyd).

    Each of `restarts` starts (restart i from ``fold_in(key, i)``, so restarts=1 is restart 0 of
    any larger number) seeds K centres by k-means++ (Arthur & Vassilvitskii 2007), refines them by
    `lloyd` Lloyd iterations and begins EM at the M-step of that hard assignment; EM stops when the
    mean log-likelihood per code changes by less than ``tol * max(|ll|, 1)`` or after `iters`
    E-steps. The restart with the highest final log-likelihood is kept.

    Float32 with care: the codes are standardised per dimension first (so `reg`, added to each
    covariance diagonal there, is `reg` times each dimension's variance in the codes' units),
    responsibilities are normalised by log-sum-exp, covariances are moments about the previous
    means (see `_m_step`), and every sum over codes is taken per chunk of 2,048 codes, then over
    chunks.
    Measured on a shared 2-core CPU (load average 3-6.5) on 60,000 codes (d = 16) of a barely
    trained autoencoder, K = 10, 5 restarts of 21-100 EM iterations (239 in all): 2.1-3.2 s
    (2.2 s of CPU time), 3.8-6.7 s with the first call's compilation (1.2-1.5 s of it); one
    restart (21 iterations) 0.2-0.3 s, 1.6-3.0 s with compilation. An EM iteration takes ~7 ms,
    near this CPU's single-core matmul rate; the restarts run one after another, as vmapping them
    ran all five for as long as the slowest (2.8x slower here).

    Args:
      codes: [N, d] finite codes, N >= k.
      k: the number of components K >= 1.
      key: a JAX PRNG key.
      restarts, iters, tol, reg, lloyd: as above.
      return_info: also return an `EMInfo` of every restart.

    Returns:
      The `GMM` in the codes' units, or ``(GMM, EMInfo)`` with `return_info`.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"fit_gmm: k is the number of components, an integer >= 1; got {k!r}")
    if restarts < 1 or iters < 1:
        raise ValueError(f"fit_gmm: need restarts >= 1 and iters >= 1; got {restarts}, {iters}")
    x = _check_codes(codes, "codes")
    if len(x) < k:
        raise ValueError(f"fit_gmm: needs at least k={k} codes to fit {k} components; got "
                         f"{len(x)}: lower k or pass more codes")  # fmt: skip
    loc = x.mean(0, dtype=np.float64)
    std = x.std(0, dtype=np.float64)
    scale = np.where(std > 1e-12 * max(std.max(), 1e-30), std, 1.0)  # a constant dim: unscaled
    f32 = lambda a: np.asarray(a, np.float32)
    z = f32((x - loc) / scale)
    args = (jnp.asarray(z), jnp.asarray(_chunked(z)), key)
    statics = dict(k=int(k), iters=int(iters), lloyd=int(lloyd))
    # Restarts one after another, each its own call of one compiled program (dispatched without
    # waiting): a vmapped while_loop would run every restart as long as the slowest one.
    runs = [_em(*args, np.int32(i), f32(tol), f32(reg), **statics) for i in range(restarts)]
    (w, mu, cov), ll, ll0, its = jax.tree.map(lambda *a: np.stack(a), *runs)
    best = int(np.argmax(np.where(np.isnan(ll), -np.inf, ll)))
    if not np.isfinite(ll[best]):
        raise ValueError(f"fit_gmm: every EM restart diverged (log-likelihoods {ll}); raise reg")
    loc, scale = f32(loc), f32(scale)
    out = GMM(jnp.asarray(w[best]), jnp.asarray(mu[best] * scale + loc),
              jnp.asarray(cov[best] * scale[:, None] * scale[None, :]))  # fmt: skip
    if return_info:
        return out, EMInfo(ll, ll0, its, best)
    return out


# --- samplers: one interface -----------------------------------------------------------------


class SamplerFileError(ValueError):
    """A saved sampler folder that is missing, incomplete or corrupt."""


SPEC_FILE, ARRAYS_FILE = "sampler.json", "arrays.npz"


class Sampler:
    """A density over codes [d] to draw from (and score under, where defined).

    Subclasses set `kind` (the key `load` rebuilds them by) and implement `sample`, `log_prob`,
    `_config` (JSON) and `_arrays`, and the classmethod `_restore`.
    """

    kind: ClassVar[str] = ""

    def __init__(self, name: str, dim: int, info: dict | None = None):
        self.name, self.dim, self.info = name, int(dim), dict(info or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"

    def sample(self, key, n: int) -> jax.Array:
        """n codes drawn from the density: [n, d] float32."""
        raise NotImplementedError

    def log_prob(self, z) -> jax.Array:
        """log p(z) of codes z [N, d] -> [N] (a bound where the subclass says so)."""
        raise NotImplementedError(f"the {self.name!r} sampler has no log_prob")

    def _codes(self, z) -> jax.Array:
        """z as float32, its last axis checked against the sampler's dimension d: codes of
        another width would broadcast into an error that does not say which input is wrong."""
        z = jnp.asarray(z, jnp.float32)
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(
                f"log_prob: z has shape {tuple(z.shape)}, but the {self.name!r} sampler is a "
                f"density over codes of d={self.dim} dimensions: pass codes [N, {self.dim}] of "
                "the model it was fitted to"
            )
        return z

    def _config(self) -> dict:
        return {}

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def save(self, directory) -> Path:
        """Write ``sampler.json`` (kind, name, dim, config, fit info) and ``arrays.npz`` in
        `directory` (created); `load` reads them back. Returns the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "name": self.name, "dim": self.dim,
                "config": self._config(), "info": self.info}  # fmt: skip
        arrays = {k: np.asarray(v) for k, v in self._arrays().items()}
        # Written beside, then renamed: a reader never sees half a file.
        with open(directory / (ARRAYS_FILE + ".tmp"), "wb") as f:
            np.savez(f, **arrays)
        os.replace(directory / (ARRAYS_FILE + ".tmp"), directory / ARRAYS_FILE)
        (directory / (SPEC_FILE + ".tmp")).write_text(json.dumps(spec, indent=2) + "\n")
        os.replace(directory / (SPEC_FILE + ".tmp"), directory / SPEC_FILE)
        return directory

    @classmethod
    def _restore(cls, spec: dict, arrays: dict[str, np.ndarray]) -> Sampler:
        raise NotImplementedError


def load(directory) -> Sampler:
    """The sampler `Sampler.save` wrote in `directory`.

    Raises:
      SamplerFileError: the folder or one of its files is missing, unreadable or corrupt.
    """
    directory = Path(directory)
    spec_path, arrays_path = directory / SPEC_FILE, directory / ARRAYS_FILE
    for path in (spec_path, arrays_path):
        if not path.is_file():
            raise SamplerFileError(f"load: {path} is missing: {directory} is not a folder written "
                                   "by Sampler.save")  # fmt: skip
    try:
        spec = json.loads(spec_path.read_text())
        cls = _KINDS[spec["kind"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise SamplerFileError(
            f"load: {spec_path} is corrupt or not a sampler spec ({type(e).__name__}: {e}); "
            "save the sampler again"
        ) from e
    try:
        with np.load(arrays_path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SamplerFileError(f"load: {arrays_path} is corrupt ({type(e).__name__}: {e}); "
                               "save the sampler again") from e  # fmt: skip
    try:
        return cls._restore(spec, arrays)
    except (KeyError, ValueError, TypeError) as e:
        raise SamplerFileError(f"load: {directory} does not hold a consistent {spec['kind']!r} "
                               f"sampler ({type(e).__name__}: {e})") from e  # fmt: skip


class GMMSampler(Sampler):
    """A `GMM` as a sampler: 'gaussian' (K = 1), 'gmm', or a fixed prior (`onehot_gmm`)."""

    kind = "gmm"

    def __init__(self, mixture: GMM, name: str = "gmm", info: dict | None = None):
        super().__init__(name, mixture.dim, info)
        self.gmm = mixture

    def sample(self, key, n: int) -> jax.Array:
        """n draws from the mixture: [n, d] float32."""
        return self.gmm.sample(key, int(n))

    def log_prob(self, z) -> jax.Array:
        """The mixture's exact log-density. z [N, d] -> [N]."""
        return self.gmm.log_prob(self._codes(z))

    def _arrays(self):
        return self.gmm._asdict()

    @classmethod
    def _restore(cls, spec, arrays):
        g = gmm(arrays["weights"], arrays["means"], arrays["covs"])
        return cls(g, spec["name"], spec.get("info"))


class PriorSampler(Sampler):
    """A model's own prior: a callable ``(key, n) -> [n, d]`` (and optionally z -> log p(z))."""

    kind = "prior"

    def __init__(self, sample_fn: Callable, dim: int, name: str = "prior", log_prob_fn=None):
        super().__init__(name, dim)
        self._sample_fn, self._log_prob_fn = sample_fn, log_prob_fn

    def sample(self, key, n: int) -> jax.Array:
        """n draws of the wrapped callable: [n, d] float32."""
        z = jnp.asarray(self._sample_fn(key, int(n)), jnp.float32)
        if z.shape != (n, self.dim):
            raise ValueError(f"the {self.name!r} sample function returned shape {z.shape}, "
                             f"expected [n={n}, d={self.dim}]")  # fmt: skip
        return z

    def log_prob(self, z) -> jax.Array:
        """The wrapped log-density, where one was given. z [N, d] -> [N]."""
        if self._log_prob_fn is None:
            return super().log_prob(z)
        return self._log_prob_fn(self._codes(z))

    def save(self, directory):
        """A wrapped callable cannot be saved; raises ValueError."""
        raise ValueError(
            f"the {self.name!r} sampler wraps a Python callable and cannot be saved; use "
            "standard_normal(dim) or GMMSampler(gmm) for a saveable prior"
        )


def prior_sampler(sample_fn: Callable, dim: int, name: str = "prior", log_prob_fn=None):
    """A model's own prior as a `Sampler`: wraps ``sample_fn(key, n) -> [n, d]``."""
    return PriorSampler(sample_fn, dim, name, log_prob_fn)


def standard_normal(dim: int, name: str = "prior") -> GMMSampler:
    """N(0, I) over [dim] as a saveable sampler (a one-component `GMM`)."""
    return GMMSampler(gmm(np.ones(1), np.zeros((1, dim)), np.ones((1, dim))), name)


# --- shared maximum-likelihood loop for the neural densities ----------------------------------


def _mean_loss(graphdef, loss_fn, params, batch, key):
    return jnp.mean(loss_fn(nnx.merge(graphdef, params), batch, key))


@jax.jit(static_argnums=(0, 1, 7))
def _train_epoch(graphdef, loss_fn, params, opt_state, train, key, learning_rate, batch_size):
    """One epoch of Adam as one `lax.scan` over its batches (a fresh permutation; the last
    incomplete batch is dropped). Returns (params, opt_state, the mean training loss)."""
    opt = optax.adam(learning_rate)
    k_perm, k_step = jax.random.split(key)
    perm = jax.random.permutation(k_perm, train.shape[0])
    grad_fn = jax.value_and_grad(_mean_loss, argnums=2)

    def step(carry, t):
        params, opt_state = carry
        batch = train[jax.lax.dynamic_slice_in_dim(perm, t * batch_size, batch_size)]
        value, grads = grad_fn(graphdef, loss_fn, params, batch, jax.random.fold_in(k_step, t))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    steps = jnp.arange(train.shape[0] // batch_size)
    (params, opt_state), values = jax.lax.scan(step, (params, opt_state), steps)
    return params, opt_state, values.mean()


_eval_loss = jax.jit(_mean_loss, static_argnums=(0, 1))


def _fit_module(module, loss_fn, train, val, *, key, learning_rate: float, batch_size: int,
                epochs: int, patience: int):  # fmt: skip
    """Adam on the per-example loss ``loss_fn(model, batch [B, d], key) -> [B]`` (a module-level
    function, so that its compiled epoch is reused by later fits of the same shapes),
    early-stopped on its mean over `val` after `patience` epochs without improvement; the module
    ends with the parameters of its best epoch (epoch 0: as initialised). Returns the fit info.

    An epoch is one jitted call (`_train_epoch`), so the host is reached once per epoch.
    """
    graphdef, params = nnx.split(module)
    train, val = jnp.asarray(train), jnp.asarray(val)
    batch_size = min(batch_size, len(train))
    lr = jnp.float32(learning_rate)
    opt_state = optax.adam(lr).init(params)
    k_val, k_epochs = jax.random.split(key)  # one key for every validation pass: comparable

    def val_loss(params):
        return float(_eval_loss(graphdef, loss_fn, params, val, k_val))

    best, best_params, best_epoch, wait, history = val_loss(params), params, 0, 0, []
    for epoch in range(1, epochs + 1):
        params, opt_state, train_loss = _train_epoch(
            graphdef, loss_fn, params, opt_state, train, jax.random.fold_in(k_epochs, epoch), lr,
            batch_size,
        )  # fmt: skip
        value = val_loss(params)
        history.append(float(train_loss))
        if value < best:  # NaN never is: a diverged fit keeps its best parameters
            best, best_params, best_epoch, wait = value, params, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                break
    nnx.update(module, best_params)
    return {"epochs": len(history), "best_epoch": best_epoch, "val_loss": best,
            "train_loss": history[-1] if history else float("nan")}  # fmt: skip


def _flat_arrays(module) -> dict[str, np.ndarray]:
    """The module's state as ``{'params/<path>': array}`` (path keys joined by '/')."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module))[0]
    return {_path_name(p): np.asarray(v) for p, v in leaves}


def _path_name(path) -> str:
    parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    return "params/" + "/".join(str(p) for p in parts if p != "value")


def _load_state(module, arrays: dict[str, np.ndarray]) -> None:
    """Set the module's state from `_flat_arrays` output (names and shapes must match)."""
    state = nnx.state(module)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [_path_name(p) for p, _ in leaves]
    saved = {k for k in arrays if k.startswith("params/")}
    if saved != set(names):
        raise ValueError(f"the saved parameters do not match the module: missing "
                         f"{sorted(set(names) - saved)[:3]}, unexpected "
                         f"{sorted(saved - set(names))[:3]}")  # fmt: skip
    new = []
    for name, (_, old) in zip(names, leaves, strict=True):
        if arrays[name].shape != old.shape:
            raise ValueError(f"{name}: saved shape {arrays[name].shape}, module {old.shape}")
        new.append(jnp.asarray(arrays[name], old.dtype))
    nnx.update(module, jax.tree_util.tree_unflatten(treedef, new))


def _standardisation(codes: np.ndarray):
    """Per-dimension (loc [d], scale [d]) of the training codes, the scale floored at 1e-6."""
    return codes.mean(0).astype(np.float32), np.maximum(codes.std(0), 1e-6).astype(np.float32)


class _Standardised(Sampler):
    """A neural density fitted to standardised codes (z - loc) / scale: shared save/restore."""

    def __init__(self, module, loc, scale, config: dict, name: str, info=None):
        super().__init__(name, len(loc), info)
        self.module, self.config = module, dict(config)
        self.loc, self.scale = jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32)
        self._graphdef = nnx.graphdef(module)

    def _state(self):
        return nnx.state(self.module)

    def _config(self):
        return self.config

    def _arrays(self):
        return {"loc": self.loc, "scale": self.scale, **_flat_arrays(self.module)}

    @classmethod
    def _restore(cls, spec, arrays):
        module = cls._build(spec["dim"], spec["config"], jax.random.PRNGKey(0))
        _load_state(module, arrays)
        return cls(module, arrays["loc"], arrays["scale"], spec["config"], spec["name"],
                   spec.get("info"))  # fmt: skip


class FlowSampler(_Standardised):
    """The PAE's latent flow (`jaxae.flows`) over standardised codes: z = b^-1(u) scale + loc."""

    kind = "flow"

    @staticmethod
    def _build(dim, config, key):
        c = dict(config)
        kind = c.pop("kind")
        return flows.make(kind, dim, rngs=nnx.Rngs(params=key), **c)

    def sample(self, key, n: int) -> jax.Array:
        """z = b^-1(u) * scale + loc, u ~ N(0, I) (PAE Eq. 6's latent part): [n, d] float32."""
        return _flow_sample(self._graphdef, self._state(), self.loc, self.scale, key, int(n))

    def log_prob(self, z) -> jax.Array:
        """The flow's exact log-density in the codes' units (Eq. 5 plus the standardisation's
        log-Jacobian). z [N, d] -> [N]."""
        return _flow_log_prob(self._graphdef, self._state(), self.loc, self.scale,
                              self._codes(z))  # fmt: skip


@jax.jit(static_argnums=(0, 5))
def _flow_sample(graphdef, state, loc, scale, key, n):
    return nnx.merge(graphdef, state).sample(key, n) * scale + loc


@jax.jit(static_argnums=0)
def _flow_log_prob(graphdef, state, loc, scale, z):
    return nnx.merge(graphdef, state).log_prob((z - loc) / scale) - jnp.sum(jnp.log(scale))


class SecondStageVAE(nnx.Module):
    """The two-stage VAE's second stage (Dai & Wipf 2019, Sec. 4) over standardised codes [d].

    MLP encoder z -> (mean, log std) of q(u | z) [latent_dim], MLP decoder u -> the mean of
    p(z | u) = N(decoder(u), gamma^2 I) with one learned scalar gamma (stored as its log, as Dai &
    Wipf learn gamma), ReLU hidden layers `hidden`, prior p(u) = N(0, I).
    """

    def __init__(self, dim: int, latent_dim: int, hidden=(512, 512), *, rngs: nnx.Rngs):
        def layers(sizes):
            pairs = zip(sizes[:-1], sizes[1:], strict=True)
            return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])

        self.enc = layers([dim, *hidden])
        self.enc_out = nnx.Linear(hidden[-1], 2 * latent_dim, rngs=rngs)
        self.dec = layers([latent_dim, *hidden])
        self.dec_out = nnx.Linear(hidden[-1], dim, rngs=rngs)
        self.log_gamma = nnx.Param(jnp.zeros((), jnp.float32))
        self.latent_dim = latent_dim

    @staticmethod
    def _mlp(layers, out, h):
        for layer in layers:  # a few layers of different sizes: unrolled at trace time
            h = jax.nn.relu(layer(h))
        return out(h)

    def encode(self, z):
        """q(u | z): (mean [..., L], log std [..., L]) of z [..., d]."""
        out = self._mlp(self.enc, self.enc_out, z)
        return out[..., : self.latent_dim], out[..., self.latent_dim :]

    def decode(self, u):
        """The mean of p(z | u) [..., d] of u [..., L]."""
        return self._mlp(self.dec, self.dec_out, u)

    def neg_elbo(self, z, key):
        """-ELBO = -log N(z; decode(u), gamma^2 I) + KL(q(u|z) || N(0, I)), u ~ q(u | z) by one
        reparameterised draw (Kingma & Welling 2014, Eq. 7). z [B, d] -> [B]."""
        mean, log_std = self.encode(z)
        u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
        log_gamma = self.log_gamma[...]
        err = (z - self.decode(u)) * jnp.exp(-log_gamma)
        nll = 0.5 * jnp.sum(err**2, -1) + z.shape[-1] * (log_gamma + 0.5 * _LOG_2PI)
        kl = 0.5 * jnp.sum(mean**2 + jnp.exp(2 * log_std) - 1.0 - 2 * log_std, -1)
        return nll + kl


class VAESampler(_Standardised):
    """The two-stage VAE's second stage as a sampler: z = decode(u) * scale + loc, u ~ N(0, I)."""

    kind = "vae"

    @staticmethod
    def _build(dim, config, key):
        return SecondStageVAE(dim, config["latent_dim"], tuple(config["hidden"]),
                              rngs=nnx.Rngs(params=key))  # fmt: skip

    def sample(self, key, n: int) -> jax.Array:
        """Decoded means of u ~ N(0, I) (Dai & Wipf's sampler), in the codes' units: [n, d]."""
        return _vae_sample(self._graphdef, self._state(), self.loc, self.scale, key, int(n))

    def log_prob(self, z, key=None, num_samples: int = 8) -> jax.Array:
        """A lower bound on log p(z): the ELBO in the codes' units, averaged over `num_samples`
        draws of u ~ q(u | z) (from `key`; default a fixed key, so repeated calls agree).
        z [N, d] -> [N]."""
        key = jax.random.PRNGKey(0) if key is None else key
        z = self._codes(z)
        return _vae_elbo(self._graphdef, self._state(), self.loc, self.scale, z, key,
                         int(num_samples))  # fmt: skip


@jax.jit(static_argnums=(0, 5))
def _vae_sample(graphdef, state, loc, scale, key, n):
    model = nnx.merge(graphdef, state)
    return model.decode(jax.random.normal(key, (n, model.latent_dim))) * scale + loc


@jax.jit(static_argnums=(0, 6))
def _vae_elbo(graphdef, state, loc, scale, z, key, num_samples):
    model = nnx.merge(graphdef, state)
    keys = jax.random.split(key, num_samples)
    neg = jax.vmap(lambda k: model.neg_elbo((z - loc) / scale, k))(keys).mean(0)
    return -neg - jnp.sum(jnp.log(scale))


# --- fitting: the registry -------------------------------------------------------------------


def _check_codes(codes, name: str, dim: int | None = None) -> np.ndarray:
    """Codes as float32 [N, d], refusing anything but finite 2-D arrays (of width `dim`)."""
    a = np.asarray(codes)
    if a.ndim != 2 or a.shape[0] < 1 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a numeric [N, d] array of latent codes, got shape "
                         f"{a.shape} dtype {a.dtype}")  # fmt: skip
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} must have d={dim} columns like the training codes, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(
            f"NaN codes handed to a sampler's fit: {name} has {int(np.isnan(a).sum())} NaN and "
            f"{int(np.isinf(a).sum())} infinite entries in {int(bad.any(1).sum())} of its "
            f"{len(a)} codes; the encoder diverged or its input is broken: fix it (or drop "
            "those rows) before fitting"
        )
    return a.astype(np.float32)


def _inputs(codes, val_codes):
    """Checked training codes [N, d] and validation codes [M, d] (or None), float32."""
    codes = _check_codes(codes, "codes")
    if val_codes is not None:
        val_codes = _check_codes(val_codes, "val_codes", codes.shape[1])
    return codes, val_codes


def fit_gaussian(codes, *, key, val_codes=None, jitter: float = 1e-6) -> GMMSampler:
    """A full-covariance Gaussian of the codes: their mean and covariance plus
    ``jitter * max(mean variance, 1)`` on the diagonal (what `evaluate.samplers` fitted)."""
    del key  # closed form: nothing random
    codes, val_codes = _inputs(codes, val_codes)
    if len(codes) < 2:
        raise ValueError("fit('gaussian'): needs at least 2 codes to estimate a covariance")
    x = codes.astype(np.float64)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    cov += jitter * max(np.trace(cov) / len(cov), 1.0) * np.eye(len(cov))
    g = gmm(np.ones(1), x.mean(0)[None], cov[None])
    return GMMSampler(g, "gaussian", _nll_info(g, codes, val_codes))


def fit_mixture(codes, *, key, val_codes=None, components: int = 10, restarts: int = 5,
                iters: int = 200, tol: float = 1e-4, reg: float = 1e-6) -> GMMSampler:  # fmt: skip
    """The RAE's ex-post density (Ghosh et al. 2020): `fit_gmm` with `components` components."""
    codes, val_codes = _inputs(codes, val_codes)
    g, em = fit_gmm(codes, components, key=key, restarts=restarts, iters=iters, tol=tol,
                    reg=reg, return_info=True)  # fmt: skip
    info = {**_nll_info(g, codes, val_codes), "em_iterations": int(em.iterations[em.best])}
    return GMMSampler(g, "gmm", info)


def _nll_info(g: GMM, codes, val_codes) -> dict:
    """Mean NLL per code (nats) of the training codes and, if given, the validation codes."""
    info = {"train_nll": float(-jnp.mean(g.log_prob(codes)))}
    if val_codes is not None:
        info["val_nll"] = float(-jnp.mean(g.log_prob(val_codes)))
    return info


def _split(codes, val_codes, key):
    """(train, val): `val_codes` if given, else a seeded 10% of `codes` held out."""
    if val_codes is not None:
        return codes, val_codes
    if len(codes) < 2:
        raise ValueError("fit: holding out validation codes needs at least 2 codes")
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(codes)))
    n_val = max(1, len(codes) // 10)
    return codes[perm[n_val:]], codes[perm[:n_val]]


def _fit_neural(cls, config, loss_fn, codes, val_codes, key, name, train_options):
    """Standardise, build `cls._build(config)`, fit it by `_fit_module` and wrap it."""
    o = train_options
    if not (o["learning_rate"] > 0 and min(o["batch_size"], o["epochs"], o["patience"]) >= 1):
        raise ValueError(f"fit({name!r}): learning_rate must be > 0 and batch_size, epochs, "
                         f"patience >= 1; got {o}")  # fmt: skip
    train, val = _split(codes, val_codes, key)
    loc, scale = _standardisation(train)
    module = cls._build(codes.shape[1], config, jax.random.fold_in(key, 0))
    fitted = _fit_module(module, loss_fn, (train - loc) / scale, (val - loc) / scale,
                         key=jax.random.fold_in(key, 2), **train_options)  # fmt: skip
    # The losses are of standardised codes; in the codes' units add log|det diag(scale)|.
    shift = float(np.sum(np.log(scale)))
    info = {
        "epochs": fitted["epochs"],
        "best_epoch": fitted["best_epoch"],
        "val_nll": fitted["val_loss"] + shift,
        "train_nll": fitted["train_loss"] + shift,
    }
    return cls(module, loc, scale, config, name, info)


def fit_flow(codes, *, key, val_codes=None, kind: str | None = None, layers: int = 8,
             hidden: int = 128, blocks: int = 2, bins: int = 8, learning_rate: float = 1e-3,
             batch_size: int = 256, epochs: int = 100,
             patience: int = 10) -> FlowSampler:  # fmt: skip
    """The PAE's latent flow (Boehm & Seljak 2020, Eq. 5) fitted to any model's codes.

    `flows.make(kind, d)` (None: the paper's rule, `flows.default_kind`) with `layers` couplings,
    `hidden` units and `blocks` residual blocks (`bins` spline bins for 'nsf'), fitted by maximum
    likelihood to the standardised codes with Adam, early-stopped on the validation NLL
    (`patience` epochs, at most `epochs`). info['val_nll']: nats per code, the codes' units.
    """
    codes, val_codes = _inputs(codes, val_codes)
    kind = flows.default_kind(codes.shape[1]) if kind is None else kind
    config = {"kind": kind, "n_layers": layers, "hidden": hidden, "n_blocks": blocks}
    config.update(num_bins=bins) if kind == "nsf" else config.update(seed=0)
    options = dict(learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
                   patience=patience)  # fmt: skip
    return _fit_neural(FlowSampler, config, _flow_nll, codes, val_codes, key, "flow", options)


def fit_vae(codes, *, key, val_codes=None, hidden=(512, 512), latent_dim: int | None = None,
            learning_rate: float = 1e-3, batch_size: int = 256, epochs: int = 100,
            patience: int = 10) -> VAESampler:  # fmt: skip
    """The two-stage VAE's second stage (Dai & Wipf 2019): a VAE with `latent_dim` (default d)
    latents and ReLU MLPs of `hidden` units (theirs: 3 x 1024), fitted to the standardised codes
    by the negative ELBO with Adam and the same early stopping as `fit_flow` (on the validation
    codes' -ELBO). info['val_nll'] is that -ELBO: an upper bound on the NLL."""
    codes, val_codes = _inputs(codes, val_codes)
    config = {"hidden": [int(h) for h in hidden], "latent_dim": int(latent_dim or codes.shape[1])}
    if not config["hidden"] or min(config["hidden"]) < 1 or config["latent_dim"] < 1:
        raise ValueError(
            f"fit('vae'): hidden must be one or more layer widths >= 1 and latent_dim >= 1; got "
            f"hidden={hidden}, latent_dim={latent_dim}"
        )
    options = dict(learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
                   patience=patience)  # fmt: skip
    return _fit_neural(VAESampler, config, _vae_loss, codes, val_codes, key, "vae", options)


def _flow_nll(flow, batch, key):
    del key  # exact likelihood
    return -flow.log_prob(batch)


def _vae_loss(vae, batch, key):
    return vae.neg_elbo(batch, key)


_FIT_ARGS = ("codes", "key", "val_codes")
SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "gaussian": fit_gaussian,
    "gmm": fit_mixture,
    "flow": fit_flow,
    "vae": fit_vae,
}
_KINDS: dict[str, type[Sampler]] = {c.kind: c for c in (GMMSampler, FlowSampler, VAESampler)}


def fit(name: str, codes, *, key, val_codes=None, **options) -> Sampler:
    """Fit the sampler `name` (a key of `SAMPLERS`) to codes [N, d].

    Args:
      name: 'gaussian', 'gmm', 'flow' or 'vae'.
      codes: [N, d] finite training codes.
      key: a JAX PRNG key; the fit is deterministic given it.
      val_codes: [M, d] codes for early stopping and the reported validation NLL (the neural
        samplers hold out 10% of `codes` when it is None).
      **options: the named fit function's keyword options (`fit_mixture`, `fit_flow`, ...).

    Returns:
      The fitted `Sampler`; ``sampler.info`` holds the fit's report (NLLs in nats per code).
    """
    check_options(name, options)
    return SAMPLERS[name](codes, key=key, val_codes=val_codes, **options)


def check_options(name: str, options) -> None:
    """Refuse an unknown sampler `name` or an option its fit function does not take, before any
    slow work (encoding a data set, fitting another sampler first).

    Raises:
      ValueError: naming the sampler or the options, and listing what it takes.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)} (a "
                         "model's own prior is prior_sampler / standard_normal)")  # fmt: skip
    allowed = [p for p in inspect.signature(SAMPLERS[name]).parameters if p not in _FIT_ARGS]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"fit({name!r}): unknown options {unknown}; it takes {allowed}")
