"""Tests for jaxae.laplace against closed forms (Boehm & Seljak 2020, Eqs. 8-12).

With a linear decoder g(z) = W z + mu and an affine flow the model is linear-Gaussian
(probabilistic PCA, Tipping & Bishop 1999): the MAP, the marginal p(x) and the Laplace
approximation are all exact, so Eq. 11 must equal the Gaussian marginal to float64 precision.
Exact comparisons run inside ``jax.enable_x64(True)`` (the ``x64`` fixture), which restores.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxae import laplace

N, K = 12, 3


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _ppca(seed=0, b=1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(N, K))
    mu = rng.normal(size=N)
    sigma = rng.uniform(0.3, 1.2, size=N)
    x = mu + rng.normal(size=(b, N)) * 2.0
    return w, mu, sigma, x


def _affine_flow(a, c):
    a, c = jnp.asarray(a), jnp.asarray(c)
    return lambda z: (a * z + c, jnp.sum(jnp.log(jnp.abs(a))))


def _gaussian_closed_form(w, mu, sigma, x, m, d):
    """Prior z ~ N(m, diag(d)); x|z ~ N(W z + mu, diag(sigma^2)): posterior mean, log p(x)."""
    s_inv = 1.0 / sigma**2
    precision = np.diag(1.0 / d) + w.T @ (s_inv[:, None] * w)
    z_post = np.linalg.solve(precision, m / d + w.T @ (s_inv * (x - mu)))
    cov = w @ np.diag(d) @ w.T + np.diag(sigma**2)
    return z_post, stats.multivariate_normal.logpdf(x, w @ m + mu, cov)


# --------------------------------------------------------------------------- (a), (b), Eq. 12


def test_reconstruction_and_latent_density_match_numpy(x64):
    w, mu, sigma, x = _ppca()
    x = x[0]
    z = np.array([0.3, -1.2, 0.7])
    decode = lambda v: w @ v + mu
    got = laplace.reconstruction_term(decode, sigma, x, z)
    np.testing.assert_allclose(got, -0.5 * np.sum((x - w @ z - mu) ** 2 / sigma**2), rtol=1e-12)
    np.testing.assert_allclose(
        laplace.latent_log_density(laplace.identity_flow, z),
        stats.multivariate_normal.logpdf(z, np.zeros(K), np.eye(K)),
        rtol=1e-12,
    )
    a, c = np.array([2.0, -0.5, 1.5]), np.array([0.1, 0.4, -0.3])
    np.testing.assert_allclose(
        laplace.latent_log_density(_affine_flow(a, c), z),
        stats.multivariate_normal.logpdf(z, -c / a, np.diag(1 / a**2)),
        rtol=1e-12,
    )
    # Eq. 12 = (a) + (b) + K/2 ln 2 pi (Eq. 12 drops the Gaussian constant).
    flow = _affine_flow(a, c)
    np.testing.assert_allclose(
        laplace.eq12(decode, flow, sigma, x, z),
        got + laplace.latent_log_density(flow, z) + 0.5 * K * np.log(2 * np.pi),
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- (c), (d): PPCA


def test_ppca_map_and_log_evidence_are_exact(x64):
    w, mu, sigma, x = _ppca()
    x = x[0]
    decode = lambda v: w @ v + mu
    z_true, logp_true = _gaussian_closed_form(w, mu, sigma, x, np.zeros(K), np.ones(K))
    # Closed-form PPCA posterior mean (I + W^T S^-1 W)^-1 W^T S^-1 (x - mu), written out again.
    s = np.diag(sigma**2)
    z_ppca = np.linalg.solve(
        np.eye(K) + w.T @ np.linalg.solve(s, w), w.T @ np.linalg.solve(s, x - mu)
    )
    np.testing.assert_allclose(z_true, z_ppca, rtol=1e-12)

    z_map, report = laplace.map_estimate(
        decode, laplace.identity_flow, sigma, x, np.zeros(K), steps=50, gtol=1e-10
    )
    np.testing.assert_allclose(z_map, z_ppca, atol=1e-6)
    assert bool(report.converged) and float(report.grad_norm) <= 1e-10
    np.testing.assert_allclose(
        report.objective, -laplace.eq12(decode, laplace.identity_flow, sigma, x, z_map)
    )

    logp = laplace.log_evidence(decode, laplace.identity_flow, sigma, x, z_map)
    np.testing.assert_allclose(logp, logp_true, atol=1e-6)
    # Away from the MAP the Laplace value must differ (so the test above can fail).
    off = laplace.log_evidence(decode, laplace.identity_flow, sigma, x, z_map + 0.3)
    assert abs(float(off) - logp_true) > 1e-2


def test_adam_map_reaches_ppca_posterior_mean(x64):
    w, mu, sigma, x = _ppca(seed=1)
    x = x[0]
    decode = lambda v: w @ v + mu
    z_true, _ = _gaussian_closed_form(w, mu, sigma, x, np.zeros(K), np.ones(K))
    z_map, report = laplace.map_estimate(
        decode,
        laplace.identity_flow,
        sigma,
        x,
        np.zeros(K),
        optimizer=optax.adam(0.05),
        steps=5000,
        gtol=1e-9,
    )
    np.testing.assert_allclose(z_map, z_true, atol=1e-6)
    assert bool(report.converged) and int(report.steps) < 5000


def test_default_optimizer_vmapped_has_no_branch_and_converges(x64):
    """The default L-BFGS solves a batch of Rosenbrock problems under vmap, and has no lax.cond
    to batch: vmap turns one into a select over every operand broadcast to the batch, the
    decoder's weights included."""
    rosen = lambda v: jnp.sum(100.0 * (v[1:] - v[:-1] ** 2) ** 2 + (1.0 - v[:-1]) ** 2)
    starts = jnp.array([[-1.2, 1.0, 0.5], [0.0, 0.0, 0.0], [2.0, -1.0, 3.0]])
    run = jax.vmap(lambda x0: laplace.minimize(rosen, x0, steps=500, gtol=1e-8))
    x, report = jax.jit(run)(starts)
    np.testing.assert_allclose(x, np.ones_like(starts), atol=1e-5)
    assert bool(jnp.all(report.converged)) and float(report.grad_norm.max()) <= 1e-8
    one = lambda opt: str(jax.make_jaxpr(lambda x0: laplace.minimize(rosen, x0, optimizer=opt))(
        starts[0]))  # fmt: skip
    assert " cond[" not in one(None) and " cond[" in one(optax.lbfgs())


def test_default_optimizer_built_under_jit_outlives_the_trace(monkeypatch):
    monkeypatch.setattr(laplace, "_DEFAULT_OPTIMIZER", None)
    f = lambda v: jnp.sum((v - 1.0) ** 2)
    solve = lambda x0: laplace.minimize(f, x0, steps=20)[0]
    jax.jit(solve)(jnp.zeros(2))  # builds the module's optimiser inside this trace
    np.testing.assert_allclose(jax.jit(lambda x0: solve(x0) * 1.0)(jnp.zeros(2)), 1.0, atol=1e-5)


def test_parallel_linesearch_takes_no_step_uphill():
    f = lambda v: jnp.sum(v**2)
    ls = laplace.parallel_linesearch(etas=(1.0,), steepest_etas=(4.0,))
    x = jnp.array([1.0, -1.0])
    # Both trials (x + d and x - 4 grad/||grad||) are worse than f(x) = 2: no step.
    step, _ = ls.update(jnp.array([-2.0, 2.0]), ls.init(x), x, value=f(x), grad=2 * x, value_fn=f)
    np.testing.assert_array_equal(step, [0.0, 0.0])
    # An ascent direction is replaced by the steepest descent one, -grad/||grad||.
    ls = laplace.parallel_linesearch(etas=(1.0,), steepest_etas=())
    step, _ = ls.update(jnp.array([1.0, 0.0]), ls.init(x), x, value=f(x), grad=2 * x, value_fn=f)
    np.testing.assert_allclose(step, -x / np.sqrt(2), rtol=1e-6)


def test_unconverged_map_is_reported(x64):
    w, mu, sigma, x = _ppca()
    decode = lambda v: w @ v + mu
    _, report = laplace.map_estimate(
        decode, laplace.identity_flow, sigma, x[0], np.zeros(K), optimizer=optax.sgd(1e-4), steps=3
    )
    assert not bool(report.converged) and int(report.steps) == 3 and float(report.grad_norm) > 1


def test_affine_flow_linear_decoder_is_exact(x64):
    w, mu, sigma, x = _ppca(seed=2)
    x = x[0]
    a, c = np.array([2.0, -0.5, 1.5]), np.array([0.1, 0.4, -0.3])
    flow = _affine_flow(a, c)
    decode = lambda v: w @ v + mu
    # b(z) = a z + c with u ~ N(0, I)  =>  z ~ N(-c/a, diag(1/a^2)).
    z_true, logp_true = _gaussian_closed_form(w, mu, sigma, x, -c / a, 1.0 / a**2)
    z_map, report = laplace.map_estimate(decode, flow, sigma, x, np.zeros(K), gtol=1e-10)
    assert bool(report.converged)
    np.testing.assert_allclose(z_map, z_true, atol=1e-6)
    np.testing.assert_allclose(
        laplace.log_evidence(decode, flow, sigma, x, z_map), logp_true, atol=1e-6
    )
    # Eq. 10 is the exact posterior precision here.
    np.testing.assert_allclose(
        laplace.gauss_newton_precision(decode, flow, sigma, z_map),
        np.diag(a**2) + w.T @ (w / sigma[:, None] ** 2),
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- batched entry point


def test_scores_shapes_and_match_per_example(x64):
    b = 5
    w, mu, sigma, x = _ppca(seed=3, b=b)
    a, c = np.array([2.0, -0.5, 1.5]), np.array([0.1, 0.4, -0.3])
    flow = _affine_flow(a, c)
    decode = lambda v: w @ v + mu
    z0 = np.random.default_rng(4).normal(size=(b, K))
    out = laplace.scores(decode, flow, sigma, x, z0, map_steps=50, gtol=1e-10)
    for key in ("reconstruction", "latent_density", "eq12", "eq12_map", "log_evidence"):
        assert out[key].shape == (b,), key
    assert out["map_converged"].shape == (b,) and out["map_converged"].dtype == jnp.bool_
    assert out["map_grad_norm"].shape == (b,) and out["z_map"].shape == (b, K)
    # One example at a time (unbatched), jitted once so the loop does not recompile per example.
    map_one = jax.jit(
        lambda xi, zi: laplace.map_estimate(decode, flow, sigma, xi, zi, steps=50, gtol=1e-10)[0]
    )
    for i in range(b):
        z_map = map_one(x[i], z0[i])
        np.testing.assert_allclose(out["z_map"][i], z_map, atol=1e-9)
        np.testing.assert_allclose(
            out["reconstruction"][i], laplace.reconstruction_term(decode, sigma, x[i], z0[i])
        )
        np.testing.assert_allclose(
            out["latent_density"][i], laplace.latent_log_density(flow, z0[i])
        )
        np.testing.assert_allclose(
            out["eq12_map"][i], laplace.eq12(decode, flow, sigma, x[i], z_map), rtol=1e-10
        )
        _, logp_true = _gaussian_closed_form(w, mu, sigma, x[i], -c / a, 1.0 / a**2)
        np.testing.assert_allclose(out["log_evidence"][i], logp_true, atol=1e-6)
        assert bool(out["map_converged"][i])


def test_scores_compiles_once_per_shape():
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(N, K)), jnp.float32)
    sigma = jnp.asarray(rng.uniform(0.5, 1.0, N), jnp.float32)
    traces = []

    def apply_fn(params, z):
        traces.append(1)  # Python side effect: runs once per trace, never per call
        return params @ z

    # Parameters travel as traced leaves of a Partial, so new params do not retrace either.
    decode = jax.tree_util.Partial(apply_fn, w)
    z0 = jnp.zeros((4, K), jnp.float32)
    x1, x2 = (jnp.asarray(rng.normal(size=(4, N)), jnp.float32) for _ in range(2))
    laplace.scores(decode, laplace.identity_flow, sigma, x1, z0, map_steps=5)
    n_first = len(traces)
    assert n_first > 0
    out = laplace.scores(decode, laplace.identity_flow, sigma, x2, z0, map_steps=5)
    new_params = jax.tree_util.Partial(apply_fn, w * 2.0)
    laplace.scores(new_params, laplace.identity_flow, sigma, x2, z0, map_steps=5)
    assert len(traces) == n_first  # second batch and new params: no retrace
    chex.assert_shape(out["log_evidence"], (4,))


def test_single_example_jits_once():
    rng = np.random.default_rng(6)
    w = jnp.asarray(rng.normal(size=(N, K)), jnp.float32)
    sigma = jnp.ones(N, jnp.float32)
    decode = lambda v: w @ v

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batch_fn(x, z):
        return jax.vmap(
            lambda xi, zi: laplace.log_evidence(decode, laplace.identity_flow, sigma, xi, zi)
        )(x, z)

    for _ in range(2):
        out = batch_fn(jnp.asarray(rng.normal(size=(3, N)), jnp.float32), jnp.zeros((3, K)))
        chex.assert_shape(out, (3,))


# --------------------------------------------------------------------------- named errors


def _good():
    w, mu, sigma, x = _ppca(b=2)
    return (lambda v: w @ v + mu), sigma, x, np.zeros((2, K))


def test_error_x_shape_mismatch():
    decode, sigma, x, z0 = _good()
    with pytest.raises(ValueError, match="does not match sigma"):
        laplace.scores(decode, laplace.identity_flow, sigma, x[:, :-1], z0)
    with pytest.raises(ValueError, match="does not match sigma"):
        laplace.log_evidence(decode, laplace.identity_flow, sigma, x[0, :-1], z0[0])


def test_error_batch_mismatch():
    decode, sigma, x, z0 = _good()
    with pytest.raises(ValueError, match="batch size"):
        laplace.scores(decode, laplace.identity_flow, sigma, x, z0[:1])


def test_error_nan_in_x():
    decode, sigma, x, z0 = _good()
    x = x.copy()
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        laplace.scores(decode, laplace.identity_flow, sigma, x, z0)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_error_nonpositive_sigma(bad):
    decode, sigma, x, z0 = _good()
    sigma = sigma.copy()
    sigma[2] = bad
    with pytest.raises(ValueError, match="strictly positive"):
        laplace.scores(decode, laplace.identity_flow, sigma, x, z0)


def test_error_sigma_not_flat():
    decode, sigma, x, z0 = _good()
    with pytest.raises(ValueError, match="flat per-pixel"):
        laplace.scores(decode, laplace.identity_flow, sigma[None], x, z0)
