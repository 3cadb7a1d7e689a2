"""`jaxae.models`: every kind of model satisfies the one interface (encode, decode, likelihood,
latent, event, spec) that `jaxae.objectives` and evaluation rely on; descriptions rebuild the
same model; `register` adds kinds that `build` and the config accept."""

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxae import config as jconfig
from jaxae import models, objectives

SHAPE = (8, 8, 1)
B = 3
LATENT = 4

# name -> (description less the image shape, expected code shape per example, expected terms)
CASES = {
    "ae_mse_mlp": ({"kind": "ae", "arch": "mlp", "head": "mse", "latent_dim": LATENT},
                   (LATENT,), {"loss", "mse"}),
    "ae_mse_conv": ({"kind": "ae", "arch": "conv", "head": "mse", "latent_dim": LATENT},
                    (LATENT,), {"loss", "mse"}),
    "ae_vpae_head": ({"kind": "ae", "arch": "mlp", "head": "t_diag", "k": 2,
                      "latent_dim": LATENT}, (LATENT,), {"loss", "nll"}),
    "maf": ({"kind": "maf", "arch": "mlp", "head": "maf", "latent_dim": LATENT},
            (LATENT,), {"loss", "nll"}),
    "vae": ({"kind": "vae", "head": "vae", "latent_dim": LATENT}, (LATENT,),
            {"loss", "nll", "kl"}),
    "cnn_matrix_head": ({"kind": "ae", "arch": "cnn", "head": "matrix_normal_diag", "k": 2},
                        (4, 4, 320), {"loss", "nll"}),
}  # fmt: skip
CLASSES = {"ae": models.Autoencoder, "maf": models.MAFAutoencoder, "vae": models.VAE}


def _spec(name, **extra):
    return {**CASES[name][0], "image_shape": list(SHAPE), **extra}


def _images(seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((B, *SHAPE)), jnp.float32)


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    name = request.param
    return name, models.build(_spec(name))


def test_interface_shapes(case):
    name, model = case
    _, code_shape, _ = CASES[name]
    head = model.head
    assert isinstance(model, models.Model) and isinstance(model, CLASSES[model.kind])
    assert model.image_shape == SHAPE
    x = _images()
    z = model.encode(x)
    chex.assert_shape(z, (B, *code_shape))
    raw = model.decode(z)
    chex.assert_shape(raw, (B, head.num_params))
    dist = model.likelihood(raw)
    assert isinstance(dist, distrax.Distribution)
    event = model.event(x)
    chex.assert_shape(event, (B, *head.event_shape))
    logp = dist.log_prob(event)
    chex.assert_shape(logp, (B,))
    assert np.isfinite(np.asarray(logp)).all()
    zs, regs = model.latent(x, jax.random.PRNGKey(0))
    chex.assert_shape(zs, (B, *code_shape))
    assert set(regs) == ({"kl"} if model.kind == "vae" else set())
    for value in regs.values():
        chex.assert_shape(value, (B,))
    with pytest.raises(AssertionError):  # images of another shape are refused
        model.event(jnp.zeros((B, 4, 4, 1)))


def test_derived_methods(case):
    _, model = case
    x, key = _images(), jax.random.PRNGKey(1)
    recon, var = model.reconstruct(x, key, num_samples=4)
    chex.assert_shape([recon, var], (B, *SHAPE))
    assert float(recon.min()) >= 0 and float(recon.max()) <= 1
    point, _ = model.decode_code(model.encode(x), key, num_samples=4)
    np.testing.assert_allclose(point, recon, atol=1e-6)
    if model.head.k > 1:  # mixture heads: each component's point and its log-density
        points, logp = model.components(x)
        chex.assert_shape(points, (B, model.head.k, *SHAPE))
        chex.assert_shape(logp, (B, model.head.k))


def test_terms_are_per_example(case):
    name, model = case
    _, _, want = CASES[name]
    x = _images()
    terms = objectives.terms(model, x, jax.random.PRNGKey(2))
    assert set(terms) == want
    chex.assert_shape(list(terms.values()), (B,))
    chex.assert_tree_all_finite(terms)
    extra = sum(terms[k] for k in want - {"loss", "mse", "nll"})
    recon = terms["mse"] if "mse" in terms else terms["nll"]
    np.testing.assert_allclose(terms["loss"], recon + extra, rtol=1e-6)
    # the same under jit, through the split model the trainer sees
    graphdef, params, model_state = objectives.split(model)
    loss_fn = jax.jit(objectives.loss_fn(graphdef))
    jitted, new_state = loss_fn(params, model_state, {"image": x}, jax.random.PRNGKey(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 jitted, terms)  # fmt: skip
    assert jax.tree.structure(new_state) == jax.tree.structure(model_state)
    log_prob = objectives.log_prob_fn(objectives.split(model, train=False)[0])
    chex.assert_shape(log_prob(params, model_state, {"image": x})["log_prob"], (B,))


def test_spec_rebuilds_an_equal_model(case):
    name, model = case
    spec = model.spec
    assert spec == {"k": 1, "latent_dim": 32, **_spec(name)}  # defaults filled in; JSON, no seed
    assert "seed" not in spec and isinstance(spec["image_shape"], list)
    again = models.build(spec)
    assert type(again) is type(model) and again.spec == spec
    assert nnx.graphdef(again) == nnx.graphdef(model)
    for a, b in zip(_params(model), _params(again), strict=True):  # seed 0 both times
        np.testing.assert_array_equal(a, b)
    other = models.build({**spec, "seed": 1})
    assert nnx.graphdef(other) == nnx.graphdef(model)
    assert any(
        not np.array_equal(a, b) for a, b in zip(_params(model), _params(other), strict=True)
    )


def test_earlier_descriptions_still_build():
    old = {"kind": "vpae", "k": 1, "arch": "mlp", "image_shape": list(SHAPE)}
    assert type(models.build({**old, "head": "maf"})) is models.MAFAutoencoder
    assert type(models.build({**old, "head": "vae"})) is models.VAE
    model = models.build({**old, "head": "normal_diag"})
    assert type(model) is models.Autoencoder and model.head.name == "normal_diag"
    ae = models.build({"kind": "ae", "arch": "mlp", "latent_dim": 8, "image_shape": list(SHAPE)})
    assert ae.head.name == "mse" and ae.latent_dim == 8
    for head in ("normal_identity", "maf", "vae"):  # a VPAE table row
        spec = models.vpae_spec(head, 1, "mlp", SHAPE)
        assert models.build(spec).spec == spec


def test_a_model_carries_its_pixel_scale(case):
    """'centered' is described (and so saved with checkpoints); 'unit' is left out, so that
    descriptions of unit models are those written before; the graphdef keeps it too."""
    name, model = case
    assert model.scale == "unit" and "scale" not in model.spec
    centered = models.build(_spec(name, scale="centered"))
    assert centered.scale == "centered" and centered.spec["scale"] == "centered"
    assert models.build(centered.spec).scale == "centered"
    assert nnx.merge(*nnx.split(centered)).scale == "centered"
    assert centered.preprocess.offset == 0.5 and centered.check_scale(None).offset == 0.5
    assert centered.check_scale("centered") == centered.preprocess
    with pytest.raises(ValueError, match="trained on 'centered' pixels .*; scale='unit' does not"):
        centered.check_scale("unit")
    with pytest.raises(ValueError, match="scale 'zero_one' is not a pixel scale"):
        models.build(_spec(name, scale="zero_one"))


def test_unknown_kind_and_incomplete_descriptions():
    first = "model kind 'gan' is not registered: import the module that registers it first "
    with pytest.raises(ValueError, match=first + r"\(the kinds registered now: ae, maf, vae"):
        models.build({"kind": "gan", "image_shape": list(SHAPE)})
    # a description that names its module says what to import; nothing is imported
    with pytest.raises(ValueError, match=r"first \(`import experiments\.examples\.gan`\)$"):
        models.build({"kind": "gan", "module": "experiments.examples.gan", "image_shape": [8]})
    with pytest.raises(ValueError, match="lacks 'kind'"):
        models.build({"image_shape": list(SHAPE)})
    with pytest.raises(ValueError, match="lacks 'image_shape'"):
        models.build({"kind": "ae", "arch": "mlp"})
    with pytest.raises(ValueError, match="model.kind='gan'"):
        jconfig.make(model=dict(kind="gan"))


class SparseAutoencoder(models.Autoencoder):
    """An autoencoder with an L1 penalty on its code: a new regularizer, nothing else."""

    def latent(self, x, key=None):
        z = self.encode(x)
        return z, {"l1": 0.1 * jnp.sum(jnp.abs(z), axis=1)}


def test_register_adds_a_kind(monkeypatch):
    monkeypatch.setattr(models, "KINDS", dict(models.KINDS))  # undone after the test
    assert models.register("sparse_test_ae")(SparseAutoencoder) is SparseAutoencoder
    assert models.register("sparse_test_ae")(SparseAutoencoder) is SparseAutoencoder  # again: ok
    spec = {"kind": "sparse_test_ae", "arch": "mlp", "head": "mse", "latent_dim": LATENT,
            "image_shape": list(SHAPE)}  # fmt: skip
    model = models.build(spec)
    # a kind registered outside jaxae names its module, for the error of a run restored without it
    assert type(model) is SparseAutoencoder and model.spec == {**spec, "k": 1,
                                                               "module": __name__}  # fmt: skip
    terms = objectives.terms(model, _images(), None)
    assert set(terms) == {"loss", "mse", "l1"}
    np.testing.assert_allclose(terms["loss"], terms["mse"] + terms["l1"], rtol=1e-6)
    config = jconfig.make(model=dict(kind="sparse_test_ae", latent_dim=LATENT))
    assert config.model.kind == "sparse_test_ae"
    assert models.build({**config.model.to_dict(), "image_shape": list(SHAPE)}).spec == model.spec
    with pytest.raises(ValueError, match="already registered"):
        models.register("ae")(SparseAutoencoder)
    monkeypatch.undo()
    assert "sparse_test_ae" not in models.KINDS
    with pytest.raises(ValueError, match=rf"not registered: .* \(`import {__name__}`\)"):
        models.build(model.spec)
    with pytest.raises(ValueError, match="model.kind"):
        jconfig.make(model=dict(kind="sparse_test_ae"))
