"""Likelihood heads and VPAE models: parameter counts, NLLs against SciPy, the paper's rules."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats as st
from flax import nnx

from jaxae import config as jconfig
from jaxae import models, objectives
from jaxae.heads import (
    ALL_HEADS,
    BERNOULLI_HEADS,
    Head,
    fill_scale_tril,
    fill_triangular,
    positive,
)

SMALL = (4, 4, 1)  # D = 16: cheap full covariances


def vpae(head: Head, arch: str = "mlp", seed: int = 0):
    """The model of a VPAE table row (the `maf` and `vae` rows are their own kinds)."""
    spec = models.vpae_spec(head.name, head.k, arch, head.image_shape)
    return models.build({**spec, "seed": seed})


def _count(model):
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract_vpae(head: Head, arch: str = "mlp"):
    """`vpae` by shapes only (nnx.eval_shape): what a parameter count needs, nothing initialised
    (initialising compiles a sampler per kernel shape)."""
    return nnx.eval_shape(lambda: vpae(head, arch))


def _softplus(x):
    return 1e-6 + np.logaddexp(0, x)


@pytest.mark.parametrize(
    "name,k,want",
    [
        ("mse", 1, 50_992),
        ("normal_identity", 1, 51_025),
        ("normal_diag", 1, 76_897),
        ("t_identity", 1, 51_058),
        ("matrix_normal_diag", 1, 52_873),
        ("matrix_normal_full", 1, 77_821),
        ("normal_identity", 10, 284_170),
        ("maf", 1, 76_090),
        ("vae", 1, 101_984),
        ("t_diag", 10, 543_220),
        ("matrix_t_full", 10, 552_460),
    ],
)
def test_mlp_parameter_counts(name, k, want):
    head = Head(name, k=k)
    model = _abstract_vpae(head)
    assert _count(model) == want == models.num_params(model)
    if name not in ("maf", "vae"):
        assert want == 25_120 + 33 * head.num_params


def test_full_heads_parameter_count_without_building():
    # 10,205,785 weights: checked through P, building it costs ~40 MB per test
    assert 25_120 + 33 * Head("normal_full").num_params == 10_205_785
    assert 25_120 + 33 * Head("t_full").num_params == 10_205_818


@pytest.mark.parametrize(
    "name,k,want",
    [("matrix_normal_identity", 1, 8962), ("matrix_normal_full", 1, 11_843),
     ("matrix_t_diag", 10, 34_891), ("matrix_normal_full", 10, 63_701)],
)  # fmt: skip
def test_cnn_parameter_counts_match_table_2(name, k, want):
    assert _count(_abstract_vpae(Head(name, k=k), "cnn")) == want


def test_bad_heads_are_named():
    with pytest.raises(ValueError, match="unknown head 'gauss'"):
        Head("gauss")
    with pytest.raises(ValueError, match=r"head 't_diag': K must be an integer >= 1"):
        Head("t_diag", k=0)
    with pytest.raises(ValueError, match="head 'maf' has no mixture"):
        Head("maf", k=2)
    with pytest.raises(ValueError, match=r"'matrix_t_diag' is a matrix head and needs 2-D"):
        Head("matrix_t_diag", image_shape=(784,))
    with pytest.raises(ValueError, match=r"'matrix_normal_full' is a matrix head"):
        Head("matrix_normal_full", image_shape=(28, 28, 3))
    with pytest.raises(
        ValueError, match=r"head 'normal_diag' \(K=1\) expects raw outputs \[B, 1569\]"
    ):
        Head("normal_diag").distribution(jnp.zeros((2, 1568)))
    with pytest.raises(ValueError, match="CNN architecture is for matrix heads only"):
        models.Autoencoder(Head("normal_diag"), "cnn")
    with pytest.raises(ValueError, match="CNN architecture is for matrix heads only"):
        models.build(models.vpae_spec("t_diag", 1, "cnn"))


def test_full_covariance_mixture_of_ten_is_rejected_with_its_memory():
    with pytest.raises(MemoryError, match=r"head 'normal_full' with K=10 needs about \d+\.\d GiB"):
        Head("normal_full", k=10)
    assert Head("t_full", k=10, force=True).num_params == 10 * (1 + 784 + 784 * 785 // 2) + 10


def test_fill_scale_tril():
    raw = jnp.asarray(np.random.default_rng(0).normal(size=(3, 10)))
    plain = np.asarray(fill_triangular(raw, 4))
    rows, cols = np.tril_indices(4)
    for b in range(3):  # every raw value lands in the lower triangle exactly once
        np.testing.assert_array_equal(np.sort(plain[b, rows, cols]), np.sort(np.asarray(raw[b])))
    tril = np.asarray(fill_scale_tril(raw, 4))
    assert np.allclose(np.triu(tril, 1), 0)
    np.testing.assert_allclose(
        np.diagonal(tril, axis1=1, axis2=2),
        _softplus(np.diagonal(plain, axis1=1, axis2=2)),
        rtol=1e-6,
    )
    off = np.tril_indices(4, -1)
    np.testing.assert_array_equal(tril[:, off[0], off[1]], plain[:, off[0], off[1]])


def _raw(head, seed=0, batch=3):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, head.num_params)) * 0.5)


def _x(batch=3, seed=1):
    return np.random.default_rng(seed).random((batch, *SMALL)).astype(np.float64)


def test_normal_heads_match_scipy():
    with jax.enable_x64(True):
        x = _x()
        xs = x.reshape(3, -1)
        for name in ("normal_identity", "normal_diag", "normal_full"):
            head = Head(name, image_shape=SMALL)
            raw = _raw(head)
            got = np.asarray(head.distribution(raw).log_prob(head.to_event(jnp.asarray(x))))
            _, blocks = head.split(raw)
            loc = np.asarray(blocks["loc"])
            for b in range(3):
                if name == "normal_identity":
                    cov = np.eye(16)
                elif name == "normal_diag":
                    cov = np.diag(_softplus(np.asarray(blocks["scale"][b])) ** 2)
                else:
                    tril = np.asarray(fill_scale_tril(blocks["scale"][b], 16))
                    cov = tril @ tril.T
                want = st.multivariate_normal(loc[b], cov).logpdf(xs[b])
                np.testing.assert_allclose(got[b], want, rtol=1e-8)


def test_t_heads_match_scipy():
    with jax.enable_x64(True):
        x = _x().reshape(3, -1)
        for name in ("t_identity", "t_diag", "t_full"):
            head = Head(name, image_shape=SMALL)
            raw = _raw(head, seed=2)
            got = np.asarray(head.distribution(raw).log_prob(jnp.asarray(x)))
            _, blocks = head.split(raw)
            for b in range(3):
                df = _softplus(float(blocks["df"][b, 0]))
                if name == "t_identity":
                    shape = np.eye(16)
                elif name == "t_diag":
                    shape = np.diag(_softplus(np.asarray(blocks["scale"][b])) ** 2)
                else:
                    tril = np.asarray(fill_scale_tril(blocks["scale"][b], 16))
                    shape = tril @ tril.T
                want = st.multivariate_t(np.asarray(blocks["loc"][b]), shape, df=df).logpdf(x[b])
                np.testing.assert_allclose(got[b], want, rtol=1e-8)


def test_matrix_normal_heads_match_scipy():
    with jax.enable_x64(True):
        x = _x()[..., 0]
        for name in ("matrix_normal_identity", "matrix_normal_diag", "matrix_normal_full"):
            head = Head(name, image_shape=SMALL)
            raw = _raw(head, seed=3)
            got = np.asarray(head.distribution(raw).log_prob(jnp.asarray(x)))
            _, blocks = head.split(raw)
            for b in range(3):
                if name == "matrix_normal_identity":
                    u = v = np.eye(4)
                elif name == "matrix_normal_diag":
                    u = np.diag(_softplus(np.asarray(blocks["row"][b])) ** 2)
                    v = np.diag(_softplus(np.asarray(blocks["col"][b])) ** 2)
                else:
                    a = np.asarray(fill_scale_tril(blocks["row"][b], 4))
                    c = np.asarray(fill_scale_tril(blocks["col"][b], 4))
                    u, v = a @ a.T, c @ c.T
                mean = np.asarray(blocks["loc"][b]).reshape(4, 4)
                want = st.matrix_normal(mean, rowcov=u, colcov=v).logpdf(x[b])
                np.testing.assert_allclose(got[b], want, rtol=1e-8)
            if name == "matrix_normal_diag":  # per-pixel variance = row variance x column variance
                var = np.asarray(head.variance(head.distribution(raw)))
                np.testing.assert_allclose(var[-1], np.outer(np.diag(u), np.diag(v)), rtol=1e-8)


def test_mixture_nll_is_logsumexp_of_components():
    with jax.enable_x64(True):
        head = Head("normal_diag", k=3, image_shape=SMALL)
        raw = _raw(head, seed=4)
        x = _x().reshape(3, -1)
        got = np.asarray(head.distribution(raw).log_prob(jnp.asarray(x)))
        logits, blocks = head.split(raw)
        for b in range(3):
            logw = np.asarray(jax.nn.log_softmax(logits[b]))
            comps = [
                st.multivariate_normal(
                    np.asarray(blocks["loc"][b, c]),
                    np.diag(_softplus(np.asarray(blocks["scale"][b, c])) ** 2),
                ).logpdf(x[b])
                for c in range(3)
            ]
            np.testing.assert_allclose(got[b], np.logaddexp.reduce(logw + comps), rtol=1e-8)


def test_t_mixture_point_is_the_best_components_mode():
    head = Head("t_identity", k=3, image_shape=SMALL)
    raw = np.zeros((1, head.num_params), np.float32)
    per = head.component_params
    for c, level in enumerate([0.1, 0.5, 0.9]):
        start = 3 + c * per
        raw[0, start] = 3.0  # df
        raw[0, start + 1 : start + per] = level  # loc
    raw[0, :3] = [0.0, 5.0, 0.0]  # the middle component dominates the mixture
    dist = head.distribution(jnp.asarray(raw))
    np.testing.assert_allclose(np.asarray(head.point(dist))[0], 0.5)
    raw[0, :3] = [5.0, 0.0, 0.0]
    dist = head.distribution(jnp.asarray(raw))
    np.testing.assert_allclose(np.asarray(head.point(dist))[0], 0.1)


def test_normal_identity_is_mse_up_to_scale_and_constant():
    x = jnp.asarray(_x(), jnp.float32)
    for_mse = models.Autoencoder(Head("mse", image_shape=SMALL), seed=0)
    for_nll = models.Autoencoder(Head("normal_identity", image_shape=SMALL), seed=0)
    mse = objectives.terms(for_mse, x, None)
    raw = for_nll.decode(for_nll.encode(x))
    mu = raw[:, 1:]
    nll = objectives.terms(for_nll, x, None)
    np.testing.assert_array_equal(nll["loss"], nll["nll"])
    nll = nll["loss"]
    want = 0.5 * jnp.sum((x.reshape(3, -1) - mu) ** 2, 1) + 8 * math.log(2 * math.pi)
    np.testing.assert_allclose(nll, want, rtol=1e-5)
    assert set(mse) == {"loss", "mse"} and mse["loss"].shape == (3,)
    recon = for_mse.decode(for_mse.encode(x))
    np.testing.assert_allclose(mse["mse"], jnp.mean((x.reshape(3, -1) - recon) ** 2, 1), rtol=1e-5)


def test_maf_log_prob_is_change_of_variables():
    with jax.enable_x64(True):
        model = vpae(Head("maf", image_shape=SMALL), seed=0)
        assert isinstance(model, models.MAFAutoencoder)
        x = jnp.asarray(_x(1))
        from jaxae.flows import MaskedAutoregressive

        bij = MaskedAutoregressive(model.made)

        @jax.jit  # one compile, not one per eager op
        def everything(x):
            raw = model.decode(model.encode(x))
            got = model.likelihood(raw).log_prob(x.reshape(1, -1))[0]
            u = bij.inverse(x.reshape(1, -1))[0]
            jac = jax.jacfwd(lambda v: bij.inverse(v[None])[0])(x.reshape(-1))
            return raw, got, u, jac

        raw, got, u, jac = everything(x)
        want = st.multivariate_normal(np.asarray(raw[0]), np.eye(16)).logpdf(np.asarray(u))
        want += np.linalg.slogdet(np.asarray(jac))[1]
        np.testing.assert_allclose(got, want, rtol=1e-8)
        assert np.allclose(np.triu(np.asarray(jac), 1), 0)  # autoregressive


def test_vae_loss_is_nll_plus_closed_form_kl():
    model = vpae(Head("vae", image_shape=SMALL), seed=0)
    assert isinstance(model, models.VAE)
    graphdef, params, model_state = objectives.split(model)
    x = jnp.asarray(_x(), jnp.float32)
    batch = {"image": x}
    terms, _ = objectives.loss_fn(graphdef)(params, model_state, batch, jax.random.PRNGKey(0))
    direct = objectives.terms(model, x, jax.random.PRNGKey(0))
    jax.tree.map(np.testing.assert_array_equal, terms, direct)
    q = model.posterior(x)
    mu, sd = q.mean(), q.stddev()
    kl = 0.5 * jnp.sum(mu**2 + sd**2 - 1 - 2 * jnp.log(sd), axis=1)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms["loss"], terms["nll"] + terms["kl"], rtol=1e-6)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_every_head_trains_a_step_under_jit(name):
    head = Head(name, k=1, image_shape=SMALL)
    model = vpae(head, seed=0)
    graphdef, params, model_state = objectives.split(model)
    loss_fn = objectives.loss_fn(graphdef)
    x = jnp.asarray(_x(4), jnp.float32)

    @jax.jit
    def step(params):
        def mean_loss(p):
            terms, _ = loss_fn(p, model_state, {"image": x}, jax.random.PRNGKey(0))
            return jnp.mean(terms["loss"])

        loss, grads = jax.value_and_grad(mean_loss)(params)
        return loss, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

    loss, new = step(params)
    assert np.isfinite(float(loss))
    recon, var = jax.jit(
        lambda p, x: objectives.merge(graphdef, p, model_state).reconstruct(
            x, jax.random.PRNGKey(1), 4
        )
    )(new, x)
    assert recon.shape == x.shape and var.shape == x.shape
    assert float(recon.min()) >= 0 and float(recon.max()) <= 1
    if name in ("mse",):
        assert np.isnan(np.asarray(var)).all()
    elif head.family not in ("t", "matrix_t"):  # a t variance exists only for df > 2
        assert np.isfinite(np.asarray(var)).all()


def test_positive_constraint():
    np.testing.assert_allclose(
        positive(jnp.asarray([-50.0, 0.0])), [1e-6, 1e-6 + math.log(2)], rtol=1e-6
    )


def test_fill_scale_tril_gradient_matches_autodiff_of_the_plain_construction():
    def plain(raw, n):  # the definition, differentiated by jax: tril, softplus on the diagonal
        x = fill_triangular(raw, n)
        eye = jnp.eye(n, dtype=bool)
        return jnp.where(eye, positive(jnp.where(eye, x, 0.0)), x)

    rng = np.random.default_rng(3)
    raw = jnp.asarray(rng.normal(size=(2, 3, 15)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(2, 3, 5, 5)), jnp.float32)
    np.testing.assert_allclose(fill_scale_tril(raw, 5), plain(raw, 5), rtol=1e-6)
    ours = jax.jit(jax.vjp(lambda r: fill_scale_tril(r, 5), raw)[1])(cot)[0]
    ref = jax.vjp(lambda r: plain(r, 5), raw)[1](cot)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="a 5x5 triangle needs 15 raw values"):
        fill_scale_tril(raw[..., :14], 5)


def test_fill_scale_tril_under_jit_and_scan():
    raw = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 10)), jnp.float32)
    eager = fill_scale_tril(raw[0], 4)
    _, scanned = jax.jit(lambda r: jax.lax.scan(lambda c, x: (c, fill_scale_tril(x, 4)), 0, r))(raw)
    np.testing.assert_allclose(scanned[0], eager, rtol=1e-6)


# Bernoulli heads


def _binary(batch=3, seed=1, shape=SMALL):
    return (np.random.default_rng(seed).random((batch, *shape)) < 0.3).astype(np.float32)


def test_bernoulli_head_is_minus_bce_with_logits_and_a_pmf_on_binary_images():
    head = Head("bernoulli", image_shape=(2, 2, 1))
    raw = _raw(head, batch=2) * 8  # logits up to ~+-10
    dist = head.distribution(raw)
    assert (dist.batch_shape, dist.event_shape) == ((2,), (4,))
    grey = jnp.asarray(np.random.default_rng(2).random((2, 4)), jnp.float32)
    for x in (grey, jnp.round(grey)):  # pythae's BCE on grey and on binary pixels
        bce = optax.sigmoid_binary_cross_entropy(raw, x).sum(-1)
        np.testing.assert_allclose(dist.log_prob(x), -bce, rtol=1e-6)
    every = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=4)))  # all 16 binary images
    total = jnp.exp(jax.vmap(dist.log_prob)(every)).sum(0)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)  # a pmf on {0, 1}^D
    np.testing.assert_allclose(head.point(dist), jax.nn.sigmoid(raw), rtol=1e-6)
    p = jax.nn.sigmoid(raw)
    np.testing.assert_allclose(head.variance(dist), p * (1 - p), rtol=1e-5)


def test_continuous_bernoulli_head_sums_tfp_over_pixels_and_reconstructs_its_mean():
    from tensorflow_probability.substrates.jax import distributions as tfd

    head = Head("continuous_bernoulli", image_shape=SMALL)
    raw = _raw(head) * 8
    x = jnp.asarray(_x(), jnp.float32).reshape(3, -1)
    dist = head.distribution(raw)
    assert (dist.batch_shape, dist.event_shape) == ((3,), (16,))
    want = tfd.ContinuousBernoulli(logits=raw).log_prob(x).sum(-1)
    np.testing.assert_allclose(dist.log_prob(x), want, rtol=1e-5)
    np.testing.assert_allclose(head.point(dist), tfd.ContinuousBernoulli(logits=raw).mean(),
                               atol=1e-6)  # fmt: skip
    assert not np.allclose(head.point(dist), jax.nn.sigmoid(raw), atol=1e-2)  # not lambda


@pytest.mark.parametrize("name", BERNOULLI_HEADS)
def test_bernoulli_heads_train(name):
    model = vpae(Head(name, image_shape=SMALL), seed=0)
    graphdef, params, model_state = objectives.split(model)
    loss_fn = objectives.loss_fn(graphdef)
    x = jnp.asarray(_binary(8) if name == "bernoulli" else _x(8), jnp.float32)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, state):
        def mean_loss(p):
            terms, _ = loss_fn(p, model_state, {"image": x}, None)
            return jnp.mean(terms["loss"])

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, state = opt.update(grads, state, params)
        return loss, optax.apply_updates(params, updates), state

    state, losses = opt.init(params), []
    for _ in range(15):
        loss, params, state = step(params, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 1.0, losses


def test_bernoulli_heads_through_the_config():
    for name in BERNOULLI_HEADS:
        c = jconfig.make(model=dict(head=name))
        spec = models.vpae_spec(c.model.head, c.model.k, c.model.arch, (4, 4, 1))
        assert nnx.eval_shape(functools.partial(models.build, spec)).head.num_params == 16
    with pytest.raises(ValueError, match="model.head='cbern'.*continuous_bernoulli"):
        jconfig.make(model=dict(head="cbern"))
    with pytest.raises(ValueError, match="head 'bernoulli' has no mixture version"):
        Head("bernoulli", k=10)
    for data in (dict(scale="centered"), dict(dequantize=True)):  # pixels off [0, 1]
        with pytest.raises(ValueError, match=r"model.head='bernoulli'.*data.scale='unit'"):
            jconfig.make(model=dict(head="bernoulli"), data=data)


def test_train_py_with_a_bernoulli_head_on_a_binarized_npz(tmp_path):
    from experiments import train as etrain

    images = (_binary(64, shape=(8, 8, 1)) * 255).astype(np.uint8)  # binarized: 0 or 255
    np.savez(tmp_path / "binary.npz", images=images)
    config = jconfig.make(
        data=dict(dataset=str(tmp_path / "binary.npz")),
        model=dict(head="continuous_bernoulli", latent_dim=2),
        training=dict(batch_size=16, epochs=1, max_steps=2),
    )
    summary = etrain.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 2 and summary["model"]["head"] == "continuous_bernoulli"
    assert np.isfinite(summary["test"]["nll"])  # nats per image, on the test split
