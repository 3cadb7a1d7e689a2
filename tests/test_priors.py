"""Latent densities and ex-post samplers (jaxae.priors): the GMM against SciPy, EM on a known
mixture, every sampler's fit / sample / save / load round trip, and each error path.

Shapes are tiny and shared between tests, so each jitted fit compiles once per session.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
from flax import nnx

from jaxae import priors

KEY = jax.random.PRNGKey(0)
W3 = np.array([0.5, 0.3, 0.2])
MU3 = np.array([[0.0, 0.0], [4.0, 4.0], [-4.0, 4.0]])
COV3 = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 0.8]], [[0.4, 0.0], [0.0, 1.2]]])
TINY_FLOW = dict(layers=2, hidden=16, blocks=1)
TINY_VAE = dict(hidden=(16,))


def _draw(w, mu, cov, n, seed=0):
    """n points of a Gaussian mixture, drawn with NumPy (independently of jaxae)."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(w), size=n, p=w)
    eps = rng.normal(size=(n, mu.shape[1]))
    return (mu[comp] + np.einsum("nij,nj->ni", np.linalg.cholesky(cov)[comp], eps)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def mixture_codes():
    """Train [3000, 2] and validation [500, 2] codes of the mixture (W3, MU3, COV3)."""
    x = _draw(W3, MU3, COV3, 3500)
    return x[:3000], x[3000:]


@pytest.fixture(scope="module")
def gaussian_codes():
    """Train [3000, 2] and validation [500, 2] codes of a strongly correlated Gaussian, and its
    covariance (the same shapes as `mixture_codes`: every fit compiles once)."""
    cov = np.array([[2.0, 0.9 * np.sqrt(2.0) * 0.5], [0.9 * np.sqrt(2.0) * 0.5, 0.25]])
    x = _draw(np.ones(1), np.array([[1.0, -2.0]]), cov[None], 3500, seed=1)
    return x[:3000], x[3000:], cov


@pytest.fixture(scope="module")
def em_fit(mixture_codes):
    return priors.fit_gmm(mixture_codes[0], 3, key=KEY, return_info=True)


# --- GMM -------------------------------------------------------------------------------------


def test_log_prob_matches_scipy_mixture():
    g = priors.gmm(W3, MU3, COV3)
    z = np.random.default_rng(1).normal(0, 3, size=(50, 2))
    ref = scipy.special.logsumexp(
        [np.log(w) + scipy.stats.multivariate_normal(m, c).logpdf(z)
         for w, m, c in zip(W3, MU3, COV3, strict=True)], axis=0,
    )  # fmt: skip
    np.testing.assert_allclose(jax.jit(priors.GMM.log_prob)(g, z), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.log_prob(z[:5].reshape(5, 1, 2)), ref[:5, None], rtol=1e-5)
    post = np.exp(ref_joint := np.stack([np.log(w) + scipy.stats.multivariate_normal(m, c).logpdf(z)
                                         for w, m, c in zip(W3, MU3, COV3, strict=True)], 1)
                  - ref[:, None])  # fmt: skip
    np.testing.assert_allclose(g.responsibilities(z), post, atol=1e-5)
    np.testing.assert_array_equal(g.assign(z), np.argmax(ref_joint, 1))
    assert (g.k, g.dim) == (3, 2)


def test_sample_moments_match_mean_and_covariance():
    g = priors.gmm(W3, MU3, COV3)
    z = np.asarray(g.sample(KEY, 40_000), np.float64)
    assert z.shape == (40_000, 2) and z.dtype == np.float64
    mean = W3 @ MU3  # the closed forms, by hand
    second = np.einsum("k,kij->ij", W3, COV3 + MU3[:, :, None] * MU3[:, None, :])
    cov = second - np.outer(mean, mean)
    np.testing.assert_allclose(g.mean(), mean, atol=1e-6)
    np.testing.assert_allclose(g.covariance(), cov, atol=1e-5)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(z, rowvar=False), cov, atol=0.15)


def test_marginal_cdf_matches_scipy_and_diagonal_stds():
    stds = np.array([[1.0, 0.5], [2.0, 0.3], [0.7, 1.1]])
    g = priors.gmm(W3, MU3, stds)
    np.testing.assert_allclose(g.covs, stds[:, :, None] ** 2 * np.eye(2), rtol=1e-6)
    t = np.random.default_rng(2).normal(0, 4, size=(20, 2))
    ref = sum(w * scipy.stats.norm.cdf(t, m, s) for w, m, s in zip(W3, MU3, stds, strict=True))
    np.testing.assert_allclose(g.marginal_cdf(t), ref, atol=1e-6)


def test_onehot_gmm_is_the_gmm_dae_prior():
    g = priors.onehot_gmm(4, 6, std=0.5)
    np.testing.assert_allclose(g.weights, np.full(4, 0.25))
    np.testing.assert_allclose(g.means, np.eye(4, 6))
    np.testing.assert_allclose(g.covs, np.broadcast_to(0.25 * np.eye(6), (4, 6, 6)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.ones(0), np.zeros((0, 2)), np.ones((0, 2))), "K >= 1"),
        ((np.array([0.5, 0.6]), np.zeros((2, 2)), np.ones((2, 2))), "sum to 1.1"),
        ((np.array([1.5, -0.5]), np.zeros((2, 2)), np.ones((2, 2))), "must be >= 0"),
        ((np.array([0.5, 0.5]), np.zeros((2, 2)), np.array([[1.0, 0.0], [1.0, 1.0]])), "> 0"),
        ((np.ones(1), np.zeros((1, 2)), np.array([[[1.0, 2.0], [2.0, 1.0]]])), "positive def"),
        ((np.ones(1), np.zeros((1, 2)), np.array([[[1.0, 0.5], [0.0, 1.0]]])), "symmetric"),
        ((np.ones(2) / 2, np.zeros((3, 2)), np.ones((2, 2))), r"means must be \[K=2"),
        ((np.ones(2) / 2, np.zeros((2, 2)), np.ones((2, 3))), r"stds \[K=2, d=2\]"),
        ((np.ones(1), np.array([[np.nan, 0.0]]), np.ones((1, 2))), "means has 1 NaN"),
    ],
)
def test_gmm_rejects_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        priors.gmm(*args)


def test_onehot_gmm_needs_k_at_most_dim():
    with pytest.raises(ValueError, match="k must be in 1..dim; got k=11, dim=10"):
        priors.onehot_gmm(11, 10)


# --- EM --------------------------------------------------------------------------------------


def test_em_recovers_a_known_mixture(em_fit):
    g = em_fit[0]
    # Match fitted to true components by the distance of their means (Hungarian assignment).
    cost = np.linalg.norm(np.asarray(g.means)[:, None] - MU3[None], axis=-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    order = rows[np.argsort(cols)]
    np.testing.assert_allclose(np.asarray(g.means)[order], MU3, atol=0.1)
    np.testing.assert_allclose(np.asarray(g.weights)[order], W3, atol=0.03)
    np.testing.assert_allclose(np.asarray(g.covs)[order], COV3, atol=0.1)


def test_em_improves_on_its_start_and_keeps_the_best_restart(mixture_codes, em_fit):
    g, info = em_fit
    assert info.log_likelihood.shape == (5,)
    assert np.all(info.log_likelihood >= info.init_log_likelihood - 1e-6)
    assert np.all(info.iterations >= 2) and info.best == int(np.argmax(info.log_likelihood))
    # EM sees standardised codes: its log-likelihood is ours plus sum(log std).
    own = float(np.mean(g.log_prob(mixture_codes[0])))
    shift = np.sum(np.log(mixture_codes[0].std(0, dtype=np.float64)))
    np.testing.assert_allclose(own + shift, info.log_likelihood[info.best], atol=1e-4)


def test_em_survives_components_collapsing_onto_identical_codes():
    # 3 distinct codes, 5 components: components collapse onto single points (covariance reg
    # times the data variance) or die; E[x x^T] - mu mu^T in float32 would go indefinite here.
    x = np.repeat(np.random.default_rng(0).normal(size=(3, 2)), 50, axis=0)
    g, info = priors.fit_gmm(x, 5, key=KEY, return_info=True)
    assert np.all(np.isfinite(info.log_likelihood)) and np.all(np.isfinite(g.log_prob(x)))
    np.testing.assert_allclose(np.sort(np.asarray(g.weights))[-3:], 1 / 3, atol=1e-5)
    assert np.all(np.linalg.eigvalsh(np.asarray(g.covs, np.float64)) > 0)


def test_em_bad_inputs():
    x = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ValueError, match="at least k=6 codes"):
        priors.fit_gmm(x, 6, key=KEY)
    with pytest.raises(ValueError, match="integer >= 1; got 0"):
        priors.fit_gmm(x, 0, key=KEY)
    x[1, 0], x[3, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match="NaN codes handed to a sampler's fit: codes has 1 NaN "
                                         "and 1 infinite entries in 2 of its 5 codes"):  # fmt: skip
        priors.fit_gmm(x, 2, key=KEY)


# --- samplers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [("gaussian", {}), ("gmm", {"components": 3}), ("flow", TINY_FLOW), ("vae", TINY_VAE)],
)
def test_fit_sample_save_load_round_trip(tmp_path, mixture_codes, name, options):
    train, val = mixture_codes
    if name in ("flow", "vae"):
        options = {**options, "epochs": 3}
    s = priors.fit(name, train, key=KEY, val_codes=val, **options)
    again = priors.fit(name, train, key=KEY, val_codes=val, **options)  # deterministic
    z = np.asarray(s.sample(jax.random.PRNGKey(1), 7))
    assert z.shape == (7, 2) and z.dtype == np.float32 and np.all(np.isfinite(z))
    np.testing.assert_array_equal(np.asarray(again.sample(jax.random.PRNGKey(1), 7)), z)
    assert s.name == name and s.dim == 2 and np.isfinite(s.info["val_nll"])
    lp = np.asarray(s.log_prob(val[:5]))
    assert lp.shape == (5,) and np.all(np.isfinite(lp))
    restored = priors.load(s.save(tmp_path / name))
    assert type(restored) is type(s) and restored.name == name and restored.info == s.info
    np.testing.assert_array_equal(np.asarray(restored.sample(jax.random.PRNGKey(1), 7)), z)
    np.testing.assert_array_equal(np.asarray(restored.log_prob(val[:5])), lp)


class _Shift(nnx.Module):
    def __init__(self):
        self.m = nnx.Param(jnp.zeros(()))


def _squared_error(model, batch, key):
    del key
    return jnp.sum((batch - model.m[...]) ** 2, -1)


def test_fit_loop_stops_early_and_keeps_the_best_parameters():
    # Training pulls m towards +1, so the validation loss at -1 only grows: the best epoch is 0.
    module = _Shift()
    info = priors._fit_module(module, _squared_error, np.ones((64, 1)), -np.ones((8, 1)),
                              key=KEY, learning_rate=0.1, batch_size=16, epochs=50,
                              patience=3)  # fmt: skip
    assert info["epochs"] == 3 and info["best_epoch"] == 0 and info["val_loss"] == 1.0
    assert float(module.m[...]) == 0.0
    info = priors._fit_module(module, _squared_error, np.ones((64, 1)), np.ones((8, 1)), key=KEY,
                              learning_rate=0.1, batch_size=16, epochs=2, patience=3)  # fmt: skip
    assert info["best_epoch"] == info["epochs"] == 2 and float(module.m[...]) > 0.3


def test_vae_holds_out_a_seeded_tenth(mixture_codes):
    codes = np.concatenate(mixture_codes)
    a = priors.fit("vae", codes, key=KEY, epochs=2, **TINY_VAE)
    b = priors.fit("vae", codes, key=KEY, epochs=2, **TINY_VAE)
    assert a.info == b.info and a.info["epochs"] == 2
    # The standardisation is of the 90% it trained on, not of every code.
    assert not np.allclose(np.asarray(a.loc), codes.mean(0), rtol=0, atol=1e-6)
    z = np.asarray(a.sample(KEY, 4))
    np.testing.assert_array_equal(np.asarray(b.sample(KEY, 4)), z)


def test_gaussian_sampler_is_the_codes_gaussian(gaussian_codes):
    train, _, _ = gaussian_codes
    s = priors.fit("gaussian", train, key=KEY)
    cov = np.cov(train.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(s.gmm.means[0], train.mean(0), atol=1e-5)
    np.testing.assert_allclose(s.gmm.covs[0], cov, atol=1e-5)
    ref = scipy.stats.multivariate_normal(train.mean(0), cov).logpdf(train[:10])
    np.testing.assert_allclose(s.log_prob(train[:10]), ref, rtol=1e-4)


def test_flow_reaches_the_entropy_of_a_gaussian(gaussian_codes):
    train, val, cov = gaussian_codes
    s = priors.fit("flow", train, key=KEY, val_codes=val, epochs=40, **TINY_FLOW)
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    independent = 0.5 * np.sum(np.log(2 * np.pi * np.e * np.diag(cov)))  # the identity flow's
    nll = -float(np.mean(s.log_prob(val)))
    assert independent - entropy > 0.5  # the correlations are worth learning
    assert abs(nll - entropy) < 0.15, (nll, entropy, independent)
    assert abs(s.info["val_nll"] - nll) < 1e-4  # the report is in the codes' units
    assert s.info["best_epoch"] > 0


def test_standard_normal_and_prior_samplers(tmp_path):
    s = priors.standard_normal(4)
    z = np.asarray(s.sample(KEY, 5))
    np.testing.assert_allclose(s.log_prob(z), scipy.stats.norm.logpdf(z).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(priors.load(s.save(tmp_path)).sample(KEY, 5)), z)
    p = priors.prior_sampler(lambda key, n: jax.random.normal(key, (n, 4)), 4)
    np.testing.assert_array_equal(np.asarray(p.sample(KEY, 3)), jax.random.normal(KEY, (3, 4)))
    with pytest.raises(ValueError, match="cannot be saved"):
        p.save(tmp_path / "p")
    with pytest.raises(NotImplementedError, match="no log_prob"):
        p.log_prob(z)


def test_fit_bad_inputs(gaussian_codes):
    train, _, _ = gaussian_codes
    with pytest.raises(ValueError, match=r"unknown sampler 'prior'; expected one of \['flow', "):
        priors.fit("prior", train, key=KEY)
    with pytest.raises(ValueError, match=r"unknown options \['componets'\]"):
        priors.fit("gmm", train, key=KEY, componets=3)
    bad = train[:10].copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN codes handed to a sampler's fit: codes has 2 NaN"):
        priors.fit("gaussian", bad, key=KEY)
    with pytest.raises(ValueError, match="val_codes must have d=2 columns"):
        priors.fit("gaussian", train, key=KEY, val_codes=train[:, :1])


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(priors.SamplerFileError, match="sampler.json is missing"):
        priors.load(tmp_path / "nowhere")
    folder = priors.standard_normal(2).save(tmp_path / "s")
    (folder / "arrays.npz").write_bytes(b"not a zip file")
    with pytest.raises(priors.SamplerFileError, match="arrays.npz is corrupt"):
        priors.load(folder)
    priors.standard_normal(2).save(folder)
    (folder / "sampler.json").write_text("{")
    with pytest.raises(priors.SamplerFileError, match="sampler.json is corrupt"):
        priors.load(folder)
    (folder / "sampler.json").write_text(json.dumps({"kind": "gmm", "name": "x", "dim": 2}))
    np.savez(folder / "arrays.npz", weights=np.ones(1))  # a covariance is missing
    with pytest.raises(priors.SamplerFileError, match="consistent 'gmm' sampler"):
        priors.load(folder)


def test_log_prob_checks_the_width_of_the_codes(gaussian_codes):
    train, _, _ = gaussian_codes  # d = 2
    flow_config = {"kind": "realnvp", "n_layers": 2, "hidden": 8, "n_blocks": 1, "seed": 0}
    flow = priors.FlowSampler(priors.FlowSampler._build(2, flow_config, KEY), np.zeros(2),
                              np.ones(2), flow_config, "flow")  # fmt: skip
    samplers = [priors.fit("gaussian", train, key=KEY), flow,
                priors.prior_sampler(lambda k, n: jnp.zeros((n, 2)), 2,
                                     log_prob_fn=lambda z: -jnp.sum(z**2, -1))]  # fmt: skip
    for s in samplers:
        assert s.log_prob(train[:3]).shape == (3,)
        with pytest.raises(
            ValueError,
            match=rf"log_prob: z has shape \(3, 5\), but the "
            rf"'{s.name}' sampler is a density over codes of d=2 dimensions",
        ):
            s.log_prob(np.zeros((3, 5)))
