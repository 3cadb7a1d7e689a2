"""The fast EM of `priors.fit_gmm`: one chunked sweep (E-step and M-step statistics, padded chunks,
the hard k-means start) against NumPy in float64, and one compilation for every restart count.

Shapes are tiny; each test compiles one small program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from jaxae import priors

K, D = 3, 2
N = priors._CHUNK + 37  # two chunks, the last one padded


@pytest.fixture(scope="module")
def problem():
    """Codes [N, D], a mixture (weights, means, SPD covariances) and k-means-like labels [N]."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)) * [1.0, 0.5] + rng.choice([-2.0, 0.0, 2.0], size=(N, 1))
    w = np.array([0.2, 0.5, 0.3])
    mu = np.array([[-2.0, 0.1], [0.0, -0.2], [2.1, 0.0]])
    a = rng.normal(size=(K, D, D))
    cov = a @ np.swapaxes(a, 1, 2) / D + 0.3 * np.eye(D)
    labels = rng.integers(0, K, N)
    return x.astype(np.float32), w, mu, cov, labels


@jax.jit
def _one_iteration(params, hard, xts, labels, reg):
    sums, chol = priors._sweep(params, hard, xts, labels, K)
    return sums, priors._m_step(sums, params[1], chol, reg)


def _run(problem, hard):
    x, w, mu, cov, labels = problem
    xts = priors._chunked(x)
    c, b = xts.shape[0], xts.shape[2]
    lab = np.full(c * b, -1, np.int32)
    lab[:N] = labels
    if hard:  # the start: covariances I, so y = x - mu
        cov = np.broadcast_to(np.eye(D), cov.shape)
    params = tuple(jnp.asarray(p, jnp.float32) for p in (w, mu, cov))
    sums, new = _one_iteration(params, hard, jnp.asarray(xts), jnp.asarray(lab.reshape(c, b)),
                               jnp.float32(1e-3))  # fmt: skip
    return x.astype(np.float64), w, mu, cov, labels, sums, new


@pytest.mark.parametrize("hard", [False, True])
def test_one_em_iteration_matches_numpy(problem, hard):
    x, w, mu, cov, labels, sums, (w_new, mu_new, cov_new) = _run(problem, hard)
    joint = np.stack([np.log(w[j]) + scipy.stats.multivariate_normal(mu[j], cov[j]).logpdf(x)
                      for j in range(K)], 1)  # fmt: skip
    log_p = scipy.special.logsumexp(joint, axis=1)
    r = np.eye(K)[labels] if hard else np.exp(joint - log_p[:, None])
    nk = r.sum(0)
    means = r.T @ x / nk[:, None]
    diff = x[None] - means[:, None]  # [K, N, D]
    covs = np.einsum("nk,kni,knj->kij", r, diff, diff) / nk[:, None, None] + 1e-3 * np.eye(D)
    chol = np.linalg.cholesky(cov)
    y = np.linalg.solve(chol[:, None], (x[None] - mu[:, None])[..., None])[..., 0]  # [K, N, D]
    np.testing.assert_allclose(sums[1], nk, rtol=1e-5)
    np.testing.assert_allclose(sums[2], np.einsum("nk,knd->kd", r, y), rtol=1e-4, atol=1e-2)
    if not hard:  # the start's log-likelihood is not used
        np.testing.assert_allclose(sums[0], log_p.sum(), rtol=1e-5)
    np.testing.assert_allclose(w_new, nk / N, rtol=1e-5)
    np.testing.assert_allclose(mu_new, means, atol=1e-5)
    np.testing.assert_allclose(cov_new, covs, rtol=1e-4, atol=1e-5)


def test_fit_gmm_compiles_once_for_every_restart_count():
    x = np.random.default_rng(1).normal(size=(301, D)).astype(np.float32)
    key = jax.random.PRNGKey(3)
    before = priors._em._cache_size()
    one, info1 = priors.fit_gmm(x, 2, key=key, restarts=1, return_info=True)
    compiled = priors._em._cache_size()
    three, info3 = priors.fit_gmm(x, 2, key=key, restarts=3, return_info=True)
    assert compiled - before <= 1 and priors._em._cache_size() == compiled
    # restart i starts from fold_in(key, i): restarts=1 is restart 0 of restarts=3
    assert info1.iterations[0] == info3.iterations[0]
    assert info1.log_likelihood[0] == info3.log_likelihood[0]
    assert info3.log_likelihood.shape == (3,) and info3.best == np.argmax(info3.log_likelihood)
