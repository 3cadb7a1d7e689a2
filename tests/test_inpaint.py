"""`jaxae.inpaint`: the posterior of Eqs. 13-14 against the closed form of probabilistic PCA
(a linear generator: the posterior is Gaussian and the Laplace mixture is exact), mode merging,
sampling, the Gauss-Newton fallback, shapes under vmap and every bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxae import inpaint, models, pae

N, K = 12, 3


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _ppca(seed=0):
    rng = np.random.default_rng(seed)
    w, mu = rng.normal(size=(N, K)), rng.normal(size=N)
    sigma, noise = rng.uniform(0.2, 0.5, N), rng.uniform(0.0, 0.3, N)
    mask = np.ones(N, bool)
    mask[[1, 4, 5, 9]] = False
    x = mu + w @ rng.normal(size=K) + rng.normal(size=N) * 0.3
    return w, mu, sigma, noise, mask, x


def _closed_form(w, mu, sigma, noise, mask, x):
    """u ~ N(0, I), x_o | u ~ N(W_o u + mu_o, diag(var_o)): posterior and evidence."""
    wo, var = w[mask], (sigma**2 + noise**2)[mask]
    prec = np.eye(K) + wo.T @ (wo / var[:, None])
    mean = np.linalg.solve(prec, wo.T @ ((x[mask] - mu[mask]) / var))
    evidence = stats.multivariate_normal.logpdf(x[mask], mu[mask], wo @ wo.T + np.diag(var))
    return mean, prec, evidence


def test_ppca_posterior_is_exact(x64):
    w, mu, sigma, noise, mask, x = _ppca()
    mean, prec, evidence = _closed_form(w, mu, sigma, noise, mask, x)
    generate = lambda u: jnp.asarray(w) @ u + jnp.asarray(mu)
    u0 = np.random.default_rng(1).normal(size=(1, 3, K))  # three starts, one mode
    post = inpaint.posterior(generate, sigma, x[None], mask, noise, u0, steps=200, gtol=1e-10)
    for s in range(3):
        np.testing.assert_allclose(post["u"][0, s], mean, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(post["precision"][0, s], prec, rtol=1e-6)
        np.testing.assert_allclose(post["log_evidence"][0, s], evidence, rtol=1e-6)
    assert not post["gauss_newton"].any() and post["converged"].all()
    # the three starts reach one mode: one distinct, and it carries the weight
    assert post["distinct"][0].sum() == 1
    np.testing.assert_allclose(post["weights"][0].sum(), 1.0)
    # the mixture's samples have the closed-form mean and covariance
    u = np.asarray(inpaint.sample(post, jax.random.PRNGKey(0), 40_000))[0]
    cov = np.linalg.inv(prec)
    np.testing.assert_allclose(u.mean(0), mean, atol=4 * np.sqrt(cov.diagonal().max() / 40_000))
    np.testing.assert_allclose(np.cov(u.T), cov, atol=0.03 * np.abs(cov).max())


def test_distinct_modes_are_kept_and_weighted_by_evidence():
    """G(u) = u^2 (K=1): x~ = 1 has two symmetric modes u = +-~0.95 of equal evidence."""
    generate = lambda u: u**2
    u0 = jnp.array([[[-2.0], [-1.5], [1.0], [2.0]]])
    post = inpaint.posterior(generate, jnp.array([0.1]), jnp.array([[1.0]]), [True], [0.0], u0,
                             steps=100)  # fmt: skip
    u = np.asarray(post["u"][0, :, 0])
    assert np.allclose(np.abs(u), np.abs(u[0]), atol=1e-3) and np.sign(u).tolist() == [-1, -1, 1, 1]
    assert post["distinct"][0].sum() == 2
    np.testing.assert_allclose(post["weights"][0][post["distinct"][0]], [0.5, 0.5], atol=1e-3)
    s = np.asarray(inpaint.sample(post, jax.random.PRNGKey(0), 2000))[0, :, 0]
    assert 0.4 < np.mean(s > 0) < 0.6  # both modes are sampled


def test_gauss_newton_where_the_hessian_is_not_positive_definite():
    generate = lambda u: u**2  # at u = 0 with x~ = 5: f'' = -2 x / var + 1 < 0
    prec, used = inpaint.precision(generate, jnp.array([1.0]), jnp.array([5.0]),
                                   jnp.array([True]), jnp.array([0.0]))  # fmt: skip
    assert bool(used)
    np.testing.assert_allclose(prec, [[1.0]])  # J = 2u = 0: J^T W J + I = I


def test_shapes_under_vmap():
    w, mu, sigma, noise, mask, x = _ppca()
    generate = lambda u: jnp.asarray(w, jnp.float32) @ u + jnp.asarray(mu, jnp.float32)
    xb = np.stack([x, x + 0.1, x - 0.1]).astype(np.float32)
    post = inpaint.posterior(generate, sigma, xb, mask, noise, np.zeros((3, 4, K)), steps=5)
    for key in ("objective", "log_evidence", "gauss_newton", "converged", "distinct", "weights"):
        chex.assert_shape(post[key], (3, 4))
    chex.assert_shape(post["u"], (3, 4, K))
    chex.assert_shape(post["precision"], (3, 4, K, K))
    chex.assert_shape(inpaint.sample(post, jax.random.PRNGKey(0), 7), (3, 7, K))


def test_named_corruptions():
    shape = (28, 28, 1)
    left = inpaint.corruption("left_half", shape)
    assert not left.mask[:, :14].any() and left.mask[:, 14:].all() and (left.noise == 0).all()
    block = inpaint.corruption("block_noise", shape)
    assert not block.mask[8:16, 9:21].any() and block.mask.sum() == 784 - 96
    np.testing.assert_allclose(block.noise, 0.1)
    missing = inpaint.corruption("missing95", shape, seed=3)
    assert 0.03 < missing.mask.mean() < 0.07
    assert inpaint.corruption("noise05", shape).mask.all()
    custom = inpaint.corruption(np.eye(28, dtype=bool), shape, noise=np.full(shape, 0.2))
    assert custom.mask.sum() == 28 and custom.noise.shape == shape
    x = jnp.full((2, *shape), 0.3)
    xt = inpaint.corrupt(x, block, jax.random.PRNGKey(0))
    assert float(jnp.abs(xt[:, 8:16, 9:21]).max()) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": np.ones((27, 28), bool)}, "mask of shape"),
        ({"kind": np.zeros((28, 28), bool)}, "no pixel"),
        ({"kind": "left_half", "noise": -0.1}, ">= 0"),
        ({"kind": "left_half", "noise": float("nan")}, "NaN"),
        ({"kind": "left_half", "noise": np.ones((27, 28, 1))}, "noise map of shape"),
        ({"kind": "smudge"}, "unknown corruption"),
    ],
)
def test_bad_corruptions_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inpaint.corruption(image_shape=(28, 28, 1), **kwargs)


def test_bad_posterior_input_is_named():
    generate = lambda u: jnp.concatenate([u, u])
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="noise map sigma of shape"):
        inpaint.posterior(generate, np.ones(3), x, True, 0.0, np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="NaN or inf in the observed"):
        inpaint.posterior(generate, np.ones(4), np.full((1, 4), np.nan), True, 0.0,
                          np.zeros((1, 1, 2)))  # fmt: skip
    # NaN in hidden pixels is fine
    post = inpaint.posterior(
        generate,
        np.ones(4),
        np.array([[np.nan, 0, 0, 0]], np.float32),
        [False, True, True, True],
        0.0,
        np.zeros((1, 1, 2)),
        steps=3,
    )
    assert np.isfinite(post["objective"]).all()


def _pae():
    ae = models.build({"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": 4,
                       "image_shape": [8, 8, 1], "scale": "centered"})  # fmt: skip
    codes = np.random.default_rng(0).normal(size=(32, 4))
    return pae.build(ae, np.full(64, 0.1, np.float32), codes, flow={"layers": 2, "hidden": 8})


def test_pae_posterior_shapes_and_errors():
    model, shape = _pae(), (8, 8, 1)
    c = inpaint.corruption(np.arange(64).reshape(8, 8) % 3 == 0, shape, noise=0.05)
    images = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    images[:, ~c.mask[..., 0]] = np.nan  # hidden pixels may be anything
    r = inpaint.pae_posterior(model, images, c, scale="centered", key=jax.random.PRNGKey(0),
                              starts=3, steps=5, num_samples=4)  # fmt: skip
    assert r.map_image.shape == (2, *shape) and r.samples.shape == (2, 4, *shape)
    assert r.std.shape == (2, *shape) and r.num_modes.shape == (2,) and (r.num_modes >= 1).all()
    assert 0 <= r.samples.min() and r.samples.max() <= 1
    with pytest.raises(ValueError, match="observed pixels"):
        inpaint.pae_posterior(model, np.full((1, *shape), np.nan, np.float32), c,
                              scale="centered", key=jax.random.PRNGKey(0))  # fmt: skip
    with pytest.raises(ValueError, match="model takes"):
        inpaint.pae_posterior(model, np.zeros((1, 28, 28, 1), np.float32), c,
                              key=jax.random.PRNGKey(0))  # fmt: skip
    unfitted = models.build({**model.spec})
    with pytest.raises(models.NotFittedError, match="inpainting"):
        inpaint.pae_posterior(unfitted, images, c, scale="centered", key=jax.random.PRNGKey(0))


def test_nuts_reference_matches_the_ppca_posterior():
    w, mu, sigma, noise, mask, x = _ppca()
    mean, prec, _ = _closed_form(w, mu, sigma, noise, mask, x)
    generate = lambda u: jnp.asarray(w, jnp.float32) @ u + jnp.asarray(mu, jnp.float32)
    out = inpaint.nuts(generate, jnp.asarray(sigma, jnp.float32), jnp.asarray(x, jnp.float32),
                       mask, noise, jnp.zeros(K), jax.random.PRNGKey(0), num_warmup=300,
                       num_samples=2000)  # fmt: skip
    u, sd = np.asarray(out["u"]), np.sqrt(np.linalg.inv(prec).diagonal())
    assert out["divergences"] == 0 and 0.5 < float(out["acceptance"]) <= 1.0
    np.testing.assert_allclose(u.mean(0), mean, atol=0.15 * sd.max())  # MCMC error, ESS ~ 1000
    np.testing.assert_allclose(u.std(0), sd, rtol=0.1)


def test_pae_posterior_checks_pixels_as_everywhere():
    """uint8 is divided by 255 (the same posterior as its /255 floats); floats in [0, 255] are
    refused, saying so; noisy observations may stray a few noise stds outside [0, 1]."""
    model, shape = _pae(), (8, 8, 1)
    c = inpaint.corruption("left_half", shape)
    raw = np.random.default_rng(1).integers(0, 256, (2, *shape), dtype=np.uint8)
    # the shapes of test_pae_posterior_shapes_and_errors: one compilation for both tests
    kw = dict(key=jax.random.PRNGKey(0), starts=3, steps=5, num_samples=4)
    as_uint8 = inpaint.pae_posterior(model, raw, c, **kw)
    as_floats = inpaint.pae_posterior(model, raw / 255.0, c, scale="centered", **kw)
    np.testing.assert_allclose(as_uint8.map_image, as_floats.map_image, atol=1e-6)
    np.testing.assert_allclose(as_uint8.post["objective"], as_floats.post["objective"],
                               rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match=r"out of range \[0, 1\].*\[0, 255\]\?.*uint8"):
        inpaint.pae_posterior(model, raw.astype(np.float32), c, **kw)
    noisy = inpaint.corruption("left_half", shape, noise=0.1)
    strays = np.where(noisy.mask, -0.3, np.nan)[None].repeat(2, 0)  # 3 stds below 0
    assert inpaint.pae_posterior(model, strays, noisy, **kw).map_image.shape == (2, *shape)
    with pytest.raises(ValueError, match="noisy ones may stray 6 noise stds"):
        inpaint.pae_posterior(model, strays - 0.4, noisy, **kw)  # 7 stds below 0
    with pytest.raises(ValueError, match="out of range"):  # no noise: no slack
        inpaint.pae_posterior(model, strays, c, **kw)
    with pytest.raises(ValueError, match="trained on 'centered' pixels"):
        inpaint.pae_posterior(model, raw, c, scale="unit", **kw)
    with pytest.raises(ValueError, match=r"batch axis is missing: pass images\[None\]"):
        inpaint.pae_posterior(model, raw[0], c, **kw)
