"""jaxae.regularizers against independent references: NumPy, SciPy, closed forms, jax.jacfwd.

Plus the GMM-DAE paper's loss analysis (Saseendran et al. 2021, Appendix A.1, Figures 1-2): the
prior-weighted KS + covariance regularizer sits at its prior level for codes drawn from the prior
and grows monotonically as the codes' mean shifts or their spread grows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from jaxae import regularizers as R

# A small two-component mixture in 3 dimensions with unequal weights and stds.
W2 = np.array([0.3, 0.7], np.float32)
MU2 = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], np.float32)
SIGMA2 = np.array([[0.5, 1.0, 2.0], [2.0, 0.1, 1.0]], np.float32)

# The paper's prior (Appendix A.2): 10 equally weighted unit-std components at one-hot means, d=10.
K, D, B = 10, 10, 100
W10 = jnp.full((K,), 1.0 / K)
MU10 = jnp.eye(K, D)
SIGMA10 = jnp.ones((K, D))


def _np_gmm_cov(w, mu, sigma):
    """Law of total covariance, written as within + between (not the formula under test)."""
    mean = (w[:, None] * mu).sum(0)
    within = np.diag((w[:, None] * sigma**2).sum(0))
    between = sum(wk * np.outer(mk - mean, mk - mean) for wk, mk in zip(w, mu, strict=True))
    return mean, within + between


# --- GMM-DAE -----------------------------------------------------------------------------------


def test_gmm_moments_vs_hand_and_monte_carlo():
    mean, cov = R.gmm_moments(W2, MU2, SIGMA2)
    ref_mean, ref_cov = _np_gmm_cov(W2.astype(np.float64), MU2, SIGMA2)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-5, atol=1e-6)
    # sample_gmm draws from the same mixture: its sample moments converge to these.
    z = np.asarray(R.sample_gmm(jax.random.PRNGKey(0), 200_000, W2, MU2, SIGMA2), np.float64)
    assert z.shape == (200_000, 3)
    np.testing.assert_allclose(z.mean(0), ref_mean, atol=0.02)
    np.testing.assert_allclose(np.cov(z, rowvar=False), ref_cov, atol=0.05)


def test_covariance_distance_vs_np_cov():
    z = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32) * 2.0
    _, target = _np_gmm_cov(W2.astype(np.float64), MU2, SIGMA2)
    ref = np.mean((np.cov(z, rowvar=False) - target) ** 2)  # np.cov: unbiased, 1 / (B - 1)
    np.testing.assert_allclose(R.covariance_distance(z, W2, MU2, SIGMA2), ref, rtol=1e-5)


def test_ks_distance_vs_scipy():
    z = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32) * 2.0
    ref = 0.0
    for j in range(3):
        t = np.sort(z[:, j]).astype(np.float64)
        cdf = sum(W2[k] * scipy.stats.norm.cdf(t, MU2[k, j], SIGMA2[k, j]) for k in range(2))
        ref += np.sum((cdf - np.arange(1, 7) / 6) ** 2)
    ref /= 6 * 3
    np.testing.assert_allclose(R.ks_distance(z, W2, MU2, SIGMA2), ref, rtol=1e-5)
    # By hand: one code at the median of N(0, 1): (Phi(0) - 1/1)^2 = 0.25.
    np.testing.assert_allclose(R.ks_distance(jnp.zeros((1, 1)), [1.0], [[0.0]], 1.0), 0.25)


def test_ks_distance_gradient_through_sort():
    # One N(0, 1) component: d KS / d z_ij = 2 / (B d) (Phi(z_ij) - rank_ij / B) phi(z_ij).
    z = np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32)
    grad = jax.grad(R.ks_distance)(jnp.asarray(z), jnp.ones(1), jnp.zeros((1, 2)), 1.0)
    ranks = scipy.stats.rankdata(z, axis=0)  # 1..B, no ties in continuous draws
    ref = 2 / (5 * 2) * (scipy.stats.norm.cdf(z) - ranks / 5) * scipy.stats.norm.pdf(z)
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def paper_weights():
    """The Section 3 weights of the KS and covariance terms for the paper's prior, B = 100."""
    fns = {
        "ks": functools.partial(R.ks_distance, w=W10, mu=MU10, sigma=SIGMA10),
        "cov": functools.partial(R.covariance_distance, w=W10, mu=MU10, sigma=SIGMA10),
    }
    weights = R.prior_weights(fns, W10, MU10, SIGMA10, batch_size=B, key=jax.random.PRNGKey(0))
    return fns, weights


def test_prior_weights_normalise_each_term_on_fresh_prior_batches(paper_weights):
    fns, weights = paper_weights
    assert set(weights) == {"ks", "cov"}
    assert all(isinstance(v, float) and v > 0 for v in weights.values())
    fresh = R.sample_gmm(jax.random.PRNGKey(7), 200 * B, W10, MU10, SIGMA10).reshape(200, B, D)
    for name, fn in fns.items():
        values = weights[name] * jax.jit(jax.vmap(fn))(fresh)
        # Each weighted term's mean at the prior is 1; its standard error here is ~0.03.
        np.testing.assert_allclose(float(jnp.mean(values)), 1.0, atol=0.15, err_msg=name)


def _weighted_regularizer(paper_weights):
    fns, weights = paper_weights
    return jax.jit(lambda z: sum(weights[n] * fn(z) for n, fn in fns.items()))


def test_weighted_regularizer_grows_with_mean_shift(paper_weights):
    # Appendix A.1, Figures 1-2: the loss is at its floor for prior draws and grows with the
    # distance of the codes' distribution from the prior.
    reg = _weighted_regularizer(paper_weights)
    z = R.sample_gmm(jax.random.PRNGKey(1), B, W10, MU10, SIGMA10)
    values = [float(reg(z + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(values) > 0), values
    # At the prior, each of the two weighted terms is ~1 (a finite batch's noise floor, spread
    # ~0.3 over batches); a shift of 2 stds is far above it.
    assert 1.0 < values[0] < 3.0, values
    assert values[0] < 0.05 * values[-1], values


def test_weighted_regularizer_grows_with_std_factor(paper_weights):
    reg = _weighted_regularizer(paper_weights)
    values = [
        float(reg(R.sample_gmm(jax.random.PRNGKey(1), B, W10, MU10, SIGMA10 * factor)))
        for factor in (1.0, 1.5, 2.0, 3.0)
    ]
    assert np.all(np.diff(values) > 0), values
    assert values[0] < 0.05 * values[-1], values


# --- WAE-MMD -----------------------------------------------------------------------------------


def _np_imq_mmd(x, y, scale, scales):
    x, y = x.astype(np.float64), y.astype(np.float64)
    n, m, d = len(x), len(y), x.shape[1]

    def k(a, b):
        return sum(
            2 * d * scale**2 * s / (2 * d * scale**2 * s + np.sum((a - b) ** 2)) for s in scales
        )

    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_imq_mmd_vs_numpy_double_loop():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3)).astype(np.float32) + 1.0
    y = rng.normal(size=(4, 3)).astype(np.float32) * 1.5
    ref = _np_imq_mmd(x, y, 1.5, R.IMQ_SCALES)
    np.testing.assert_allclose(R.imq_mmd(x, y, scale=1.5), ref, rtol=1e-4, atol=1e-6)
    ref_one = _np_imq_mmd(x, y, 1.0, (1.0,))
    np.testing.assert_allclose(R.imq_mmd(x, y, scales=(1.0,)), ref_one, rtol=1e-4, atol=1e-6)


def test_imq_mmd_separates_distributions():
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    x, y = (jax.random.normal(k, (200, 8)) for k in keys[:2])
    shifted = jax.random.normal(keys[2], (200, 8)) + 1.0
    same, apart = float(R.imq_mmd(x, y)), float(R.imq_mmd(shifted, y))
    assert abs(same) < 0.02 < apart, (same, apart)


# --- RAE ---------------------------------------------------------------------------------------


def test_code_and_l2_penalties_closed_form():
    z = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(R.code_penalty(z), 0.5 * (z**2).sum(1), rtol=1e-6)
    params = {"a": np.arange(6.0).reshape(2, 3), "b": {"c": np.array([-1.0, 2.0])}}
    np.testing.assert_allclose(R.l2_penalty(params), 55.0 + 5.0, rtol=1e-6)
    assert float(R.l2_penalty({})) == 0.0


def test_decoder_gradient_penalty_linear_and_nonlinear():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(3, 5)).astype(np.float32)
    z = rng.normal(size=(4, 3)).astype(np.float32)
    # Linear decoder z A + b: grad_z sum(D(z)) = A 1 (A's row sums) for every example.
    linear = R.decoder_gradient_penalty(lambda v: v @ a + 1.0, z)
    np.testing.assert_allclose(linear, np.full(4, np.sum(a.sum(1) ** 2)), rtol=1e-5)
    # Nonlinear: ||J(z_b)^T 1||^2 with each example's Jacobian from jacfwd.

    def decode_one(v):
        return jnp.tanh(v @ a) ** 2

    ref = [np.sum(np.asarray(jax.jacfwd(decode_one)(zb)).sum(0) ** 2) for zb in z]
    got = R.decoder_gradient_penalty(jax.vmap(decode_one), z)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


# --- adversarial critics -----------------------------------------------------------------------


def test_gan_losses_closed_form():
    real = np.array([-3.0, -1.0, 0.0, 2.0, 4.0], np.float32)
    fake = np.array([1.0, 0.0, -2.0, 3.0, -4.0], np.float32)
    d_real, d_fake = scipy.special.expit(real), scipy.special.expit(fake)
    critic_ref = -np.log(d_real) - np.log(1 - d_fake)
    np.testing.assert_allclose(R.gan_critic_loss(real, fake), critic_ref, rtol=1e-5)
    np.testing.assert_allclose(R.gan_generator_loss(fake), -np.log(d_fake), rtol=1e-5)
    np.testing.assert_allclose(R.gan_critic_loss(0.0, 0.0), 2 * np.log(2), rtol=1e-6)
    np.testing.assert_allclose(R.wgan_critic_loss(real, fake), fake - real)
    # Stable where log(sigmoid) would overflow: -log sigmoid(-100) = 100.
    big = R.gan_critic_loss(np.array([-100.0]), np.array([100.0]))
    np.testing.assert_allclose(big, [200.0], rtol=1e-6)
    np.testing.assert_allclose(R.gan_generator_loss(np.array([-100.0])), [100.0], rtol=1e-6)


def test_gradient_penalty_linear_critic():
    v = np.array([0.3, -1.2, 2.0], np.float32)
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(2, 6, 3)).astype(np.float32)
    got = R.gradient_penalty(lambda x: x @ v, real, fake, jax.random.PRNGKey(0))
    np.testing.assert_allclose(got, np.full(6, (np.linalg.norm(v) - 1) ** 2), rtol=1e-5)


def test_gradient_penalty_nonlinear_critic_vs_jacfwd():
    rng = np.random.default_rng(8)
    w1 = rng.normal(size=(3, 4)).astype(np.float32)

    def critic_one(x):
        return jnp.sum(jnp.tanh(x @ w1)) + 0.1 * jnp.sum(x**3)

    x = rng.normal(size=(5, 3)).astype(np.float32)
    # real == fake pins x_hat = x whatever e is drawn, so the reference needs no e.
    got = R.gradient_penalty(jax.vmap(critic_one), x, x, jax.random.PRNGKey(1))
    ref = [(np.linalg.norm(jax.jacfwd(critic_one)(xb)) - 1) ** 2 for xb in x]
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_gradient_penalty_interpolates_uniformly_per_example():
    # critic 0.5 ||x||^2 with fake = 0 and a unit real: the gradient is x_hat = e u, of norm e,
    # so each example's e = 1 - sqrt(penalty).
    n = 4000
    real = jnp.tile(jnp.array([[0.6, 0.8]]), (n, 1))
    fake = jnp.zeros_like(real)

    def critic(x):
        return 0.5 * jnp.sum(x**2, axis=1)

    e = 1 - np.sqrt(np.asarray(R.gradient_penalty(critic, real, fake, jax.random.PRNGKey(2))))
    assert np.all((e >= 0) & (e <= 1))
    assert scipy.stats.kstest(e, "uniform").pvalue > 1e-3
    again = R.gradient_penalty(critic, real, fake, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(1 - np.sqrt(np.asarray(again)), e)


def test_gradient_penalty_finite_gradient_at_zero_critic_gradient():
    x = jnp.ones((3, 2))

    def penalty(v):
        return jnp.sum(R.gradient_penalty(lambda s: s @ v, x, -x, jax.random.PRNGKey(0)))

    grad = jax.grad(penalty)(jnp.zeros(2))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(penalty(jnp.zeros(2)), 3.0)


# --- MaskAAE -----------------------------------------------------------------------------------


def test_mask_and_active_dims():
    m = np.array([0.0, 1e-8, 0.05, 0.2, 1.0, 30.0], np.float32)
    alpha = R.mask(m)
    np.testing.assert_allclose(alpha, -np.expm1(-m.astype(np.float64)), rtol=1e-6)
    assert float(alpha[1]) > 0  # 1 - exp(-1e-8) would round to 0 in float32
    assert int(R.active_dims(alpha)) == 3  # 0.18, 0.63, 1.0
    assert int(R.active_dims(alpha, threshold=0.5)) == 2
    assert int(jax.jit(R.active_dims)(alpha)) == 3
    assert int(R.active_dims(jnp.array([0.1, 0.0999]), 0.1)) == 1  # the threshold counts


def test_nac_vs_np_corrcoef():
    nac = jax.jit(R.nac)  # one compile per shape, not one per eager op
    rng = np.random.default_rng(9)
    mix = np.array([[1, 0.5, 0, 0], [0, 1, -0.8, 0], [0, 0, 1, 0.3], [0, 0, 0, 1]])
    z = (rng.normal(size=(50, 4)) @ mix).astype(np.float32)
    corr = np.abs(np.corrcoef(z, rowvar=False))
    ref = corr[~np.eye(4, dtype=bool)].mean()
    np.testing.assert_allclose(nac(z), ref, rtol=1e-5)
    dims = np.array([True, False, True, True])
    sub = corr[np.ix_(dims, dims)]
    np.testing.assert_allclose(nac(z, dims), sub[~np.eye(3, dtype=bool)].mean(), rtol=1e-5)
    # A constant (masked-off) dimension has no correlation and is left out.
    with_constant = np.concatenate([z, np.full((50, 1), 0.1, np.float32)], axis=1)
    np.testing.assert_allclose(nac(with_constant), ref, rtol=1e-5)
    assert np.isnan(float(nac(np.ones((5, 3), np.float32))))


# --- jit, gradients, errors --------------------------------------------------------------------


def test_everything_jits_with_finite_gradients():
    rng = np.random.default_rng(10)
    z = jnp.asarray(rng.normal(size=(8, 3)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(8, 3)).astype(np.float32))
    key = jax.random.PRNGKey(3)
    scalars = {
        "covariance_distance": lambda z: R.covariance_distance(z, W2, MU2, SIGMA2),
        "ks_distance": lambda z: R.ks_distance(z, W2, MU2, SIGMA2),
        "imq_mmd": lambda z: R.imq_mmd(z, y),
        "code_penalty": lambda z: jnp.sum(R.code_penalty(z)),
        "decoder_gradient_penalty": lambda z: jnp.sum(
            R.decoder_gradient_penalty(lambda v: jnp.sin(v) * v, z)
        ),
        "l2_penalty": lambda z: R.l2_penalty({"z": z}),
        "gan_critic_loss": lambda z: jnp.sum(R.gan_critic_loss(z[:, 0], z[:, 1])),
        "gan_generator_loss": lambda z: jnp.sum(R.gan_generator_loss(z[:, 0])),
        "wgan_critic_loss": lambda z: jnp.sum(R.wgan_critic_loss(z[:, 0], z[:, 1])),
        "gradient_penalty": lambda z: jnp.sum(
            R.gradient_penalty(lambda x: jnp.sum(jnp.tanh(x), 1), z, y, key)
        ),
        "mask": lambda z: jnp.sum(R.mask(jnp.abs(z))),
        "nac": R.nac,
    }
    # One compiled program for all of them: a compile each (or an eager run, which compiles
    # every op) would dominate this file's runtime. Values are checked eagerly above.
    jitted = jax.jit(lambda z: {name: jax.value_and_grad(fn)(z) for name, fn in scalars.items()})
    out = jitted(z)
    for name, (value, grad) in out.items():
        assert np.isfinite(value), name
        assert grad.shape == z.shape and np.all(np.isfinite(grad)), name
    _, target = _np_gmm_cov(W2.astype(np.float64), MU2, SIGMA2)
    cov_ref = np.mean((np.cov(np.asarray(z), rowvar=False) - target) ** 2)
    np.testing.assert_allclose(out["covariance_distance"][0], cov_ref, rtol=1e-5)
    corr = np.abs(np.corrcoef(np.asarray(z), rowvar=False))
    np.testing.assert_allclose(out["nac"][0], corr[~np.eye(3, dtype=bool)].mean(), rtol=1e-5)
    moments = jax.jit(R.gmm_moments)(W2, MU2, SIGMA2)
    np.testing.assert_allclose(moments[1], R.gmm_moments(W2, MU2, SIGMA2)[1], rtol=1e-6)
    draws = jax.jit(R.sample_gmm, static_argnums=1)(key, 5, W2, MU2, SIGMA2)
    assert draws.shape == (5, 3)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: R.gmm_moments(W2, MU2[0], SIGMA2), "`mu`"),
        (lambda: R.gmm_moments(W2[:1], MU2, SIGMA2), "`w`"),
        (lambda: R.gmm_moments(np.array([0.5, 0.6]), MU2, SIGMA2), "`w`"),
        (lambda: R.gmm_moments(W2, MU2, SIGMA2[:, :2]), "`sigma`"),
        (lambda: R.gmm_moments(W2, MU2, -SIGMA2), "`sigma`"),
        (lambda: R.covariance_distance(np.zeros((1, 3)), W2, MU2, SIGMA2), "`z`"),
        (lambda: R.ks_distance(np.zeros((4, 2)), W2, MU2, SIGMA2), "`z`"),
        (lambda: R.sample_gmm(jax.random.PRNGKey(0), 0, W2, MU2, SIGMA2), "`n`"),
        (lambda: R.imq_mmd(np.zeros((4, 3)), np.zeros((4, 2))), "`y`"),
        (lambda: R.imq_mmd(np.zeros((4, 3)), np.zeros((4, 3)), scales=()), "`scales`"),
        (lambda: R.gan_critic_loss(np.zeros(3), np.zeros(4)), "`real_logits`"),
        (lambda: R.wgan_critic_loss(np.zeros(3), np.zeros((3, 1))), "`real_scores`"),
        (lambda: R.gradient_penalty(jnp.sum, np.zeros((3, 2)), np.zeros((2, 2)), None), "`real`"),
        (lambda: R.nac(np.zeros((5, 3)), np.ones(2, bool)), "`dims`"),
        (lambda: R.nac(np.zeros((5, 3)), np.ones(3)), "`dims`"),
        (lambda: R.prior_weights({}, W2, MU2, SIGMA2, batch_size=4, key=None), "`fns`"),
        (
            lambda: R.prior_weights({"a": jnp.sum}, W2, MU2, SIGMA2, batch_size=1, key=None),
            "`batch_size`",
        ),
    ],
)
def test_bad_input_raises_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_prior_weights_rejects_a_term_that_is_zero_at_the_prior():
    with pytest.raises(ValueError, match="'zero'"):
        R.prior_weights(
            {"zero": lambda z: 0.0 * jnp.sum(z)},
            W2,
            MU2,
            SIGMA2,
            batch_size=4,
            key=jax.random.PRNGKey(0),
            num_batches=2,
        )
