"""PAE latent flows (jaxae.flows.RealNVP / NeuralSplineFlow): identity init, invertibility,
log-det against autodiff Jacobians, normalisation, sampling, jit/vmap, a short fit, errors.

Exact comparisons run in float64 inside `jax.enable_x64(True)` (the `x64` fixture).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from flax import nnx

from jaxae import flows

KINDS = ["realnvp", "nsf"]
TINY = dict(n_layers=3, hidden=8, n_blocks=1)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _make(kind, k, dtype=jnp.float32, **kw):
    kw = {**TINY, **kw}
    if kind == "nsf":
        kw.setdefault("num_bins", 4)
    return flows.make(kind, k, rngs=nnx.Rngs(0), param_dtype=dtype, **kw)


def _perturbed(kind, k, dtype, scale=0.1, seed=1):
    """A flow whose every parameter (incl. the zero-initialised last layers) is randomised."""
    graphdef, params = nnx.split(_make(kind, k, dtype), nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    # NumPy draws: jax.random would compile a sampler for every leaf shape and dtype
    rng = np.random.default_rng(seed)
    leaves = [p + (scale * rng.standard_normal(p.shape)).astype(p.dtype) for p in leaves]
    return graphdef, jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [2, 3])  # an even and an odd split; K = 8 runs below
def test_new_flow_is_identity(kind, k):
    graphdef, params = nnx.split(_make(kind, k), nnx.Param)

    @jax.jit
    def everything(p, z):
        flow = nnx.merge(graphdef, p)
        return (
            *flow.forward(z),
            flow.inverse(z),
            flow.log_prob(z),
            flow.distribution().log_prob(z),
        )

    z = np.random.default_rng(0).normal(size=(16, k)).astype(np.float32)
    u, log_det, z_inv, log_prob, dist_log_prob = everything(params, z)
    np.testing.assert_allclose(u, z, atol=1e-6)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)
    np.testing.assert_allclose(z_inv, z, atol=1e-6)
    ref = scipy.stats.multivariate_normal(np.zeros(k), np.eye(k)).logpdf(z)
    np.testing.assert_allclose(log_prob, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dist_log_prob, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [2])  # K = 3 and 8: the float64 test below, the same code
def test_inverse_and_log_det_float32(kind, k):
    graphdef, params = _perturbed(kind, k, jnp.float32)

    @jax.jit
    def roundtrip(p, z):
        flow = nnx.merge(graphdef, p)
        u, _ = flow.forward(z)
        return u, flow.inverse(u)

    z = jax.random.normal(jax.random.key(2), (32, k))
    u, z_back = roundtrip(params, z)
    assert np.abs(u - z).max() > 0.1  # the perturbation made a non-trivial map
    np.testing.assert_allclose(z_back, z, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [3, 8])
def test_inverse_and_log_det_match_autodiff_float64(x64, kind, k):
    graphdef, params = _perturbed(kind, k, jnp.float64)

    def forward(z):  # single example
        return nnx.merge(graphdef, params).forward(z)

    @jax.jit
    def everything(z):
        u, log_det = jax.vmap(forward)(z)
        jac = jax.vmap(jax.jacfwd(lambda zi: forward(zi)[0]))(z)  # [B, K, K]
        return u, log_det, nnx.merge(graphdef, params).inverse(u), jac

    z = jax.random.normal(jax.random.key(3), (8, k), jnp.float64) * 2.0
    u, log_det, z_back, jac = everything(z)
    assert u.dtype == jnp.float64 and log_det.dtype == jnp.float64
    assert np.abs(u - z).max() > 0.1
    np.testing.assert_allclose(z_back, z, atol=1e-10)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(np.asarray(jac))[1], atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_integrates_to_one_2d(x64, kind):
    graphdef, params = _perturbed(kind, 2, jnp.float64)
    t = np.linspace(-8.0, 8.0, 401)
    grid = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    log_prob = jax.jit(lambda p, z: nnx.merge(graphdef, p).log_prob(z))(params, grid)
    dens = np.exp(np.asarray(log_prob)).reshape(401, 401)
    mass = np.trapezoid(np.trapezoid(dens, t, axis=1), t)
    assert abs(mass - 1.0) < 1e-2, mass
    # The density is not the standard normal's any more.
    ref = scipy.stats.multivariate_normal(np.zeros(2), np.eye(2)).pdf(grid)
    assert np.abs(dens.reshape(-1) - ref).max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_sample_shapes_and_standard_normal_at_init(kind):
    graphdef, params = nnx.split(_make(kind, 3), nnx.Param)
    sample = jax.jit(lambda p, key, n: nnx.merge(graphdef, p).sample(key, n), static_argnums=2)
    z = sample(params, jax.random.key(0), 20000)
    assert z.shape == (20000, 3) and z.dtype == jnp.float32
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(np.cov(np.asarray(z).T), np.eye(3), atol=0.05)
    graphdef, params = _perturbed(kind, 3, jnp.float32)
    z = sample(params, jax.random.key(1), 5)
    assert z.shape == (5, 3) and np.isfinite(z).all()
    # Samples are b^-1 of the same normal draws: mapping them forward gives those draws back.
    u = jax.random.normal(jax.random.key(1), (5, 3))
    u_back = jax.jit(lambda p, z: nnx.merge(graphdef, p).forward(z)[0])(params, z)
    np.testing.assert_allclose(u_back, u, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_jit_vmap_single_example_matches_batched(kind):
    graphdef, params = _perturbed(kind, 3, jnp.float32)
    z = jax.random.normal(jax.random.key(4), (10, 3))

    def one(p, zi):  # zi [K]
        flow = nnx.merge(graphdef, p)
        u, log_det = flow.forward(zi)
        return u, log_det, flow.log_prob(zi), flow.inverse(zi)

    got = jax.jit(jax.vmap(one, in_axes=(None, 0)))(params, z)
    want = jax.jit(one)(params, z)  # the same function on the whole batch [B, K]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert got[1].shape == (10,) and got[2].shape == (10,)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_correlated_gaussian_reaches_entropy(kind):
    cov = np.array([[2.0, 1.2], [1.2, 1.0]])
    rng = np.random.default_rng(0)
    z_train = rng.multivariate_normal([1.0, -0.5], cov, size=2048).astype(np.float32)
    z_test = rng.multivariate_normal([1.0, -0.5], cov, size=4096).astype(np.float32)
    entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))

    graphdef, params = nnx.split(_make(kind, 2, n_layers=2, hidden=16), nnx.Param)
    opt = optax.adam(1e-2)

    def loss_fn(p, z):
        return -jnp.mean(nnx.merge(graphdef, p).log_prob(z))  # Eq. 5

    @jax.jit
    def fit(p):
        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, z_train)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), loss

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=300)
        return p, losses

    params, losses = fit(params)
    nll = float(loss_fn(params, z_test))
    assert losses[-1] < losses[0]
    assert abs(nll - entropy) < 0.05, (nll, entropy)


def test_wrong_k_raises_value_error_naming_shapes():
    flow = _make("realnvp", 3)
    with pytest.raises(ValueError, match=r"expected shape \[\.\.\., 3\], got \(4, 2\)"):
        flow.forward(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"expected shape \[\.\.\., 3\], got \(5,\)"):
        flow.log_prob(jnp.zeros((5,)))
    nsf = _make("nsf", 3)
    with pytest.raises(ValueError, match=r"expected shape \[\.\.\., 3\], got \(\)"):
        nsf.inverse(jnp.zeros(()))


def test_make_and_default_kind():
    assert flows.default_kind(2) == "realnvp" and flows.default_kind(32) == "realnvp"
    assert flows.default_kind(33) == "nsf" and flows.default_kind(256) == "nsf"
    assert isinstance(flows.make(None, 4, rngs=nnx.Rngs(0), **TINY), flows.RealNVP)
    assert isinstance(flows.make(None, 40, rngs=nnx.Rngs(0), **TINY), flows.NeuralSplineFlow)
    with pytest.raises(ValueError, match="unknown flow kind 'maf'"):
        flows.make("maf", 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="K >= 2"):
        flows.make("nsf", 1, rngs=nnx.Rngs(0))


def test_default_sizes():
    # by shapes only (nnx.eval_shape): sizes need no initialised weights
    f = nnx.eval_shape(lambda: flows.RealNVP(32, rngs=nnx.Rngs(0)))
    assert len(f.conditioners) == 8 and len(f.conditioners[0].blocks) == 2
    assert f.conditioners[0].inp.out_features == 128
    g = nnx.eval_shape(lambda: flows.NeuralSplineFlow(64, rngs=nnx.Rngs(0)))
    assert len(g.linears) == 8 and g.bound == 5.0
    assert g.conditioners[0].out.out_features == 64 * (3 * 8 + 1)
