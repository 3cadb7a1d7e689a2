"""Issue 24: the RAE's spectral normalisation of its decoder (Miyato et al. 2018): each decoder
kernel is divided by the power iteration's estimate of its largest singular value, whose vector
is model state updated in train mode only."""

import jax
import numpy as np
from flax import nnx

from jaxae import config as jconfig
from jaxae import models, objectives, train

X = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)


def _rae(arch="dense"):
    spec = {"kind": "rae", "arch": arch, "width": 8, "latent_dim": 4, "image_shape": [16, 16, 1],
            "settings": {"regularizer": "sn"}}  # fmt: skip
    return models.build(spec)


def _kernels(model):
    return {tuple(p): np.asarray(n[...]).reshape(-1, n[...].shape[-1])
            for p, n in nnx.iter_graph(model.net)
            if isinstance(n, nnx.Param) and tuple(p) in model.sn_paths}  # fmt: skip


def test_sigma_converges_to_the_largest_singular_value():
    model = _rae()
    assert {p[0] for p in model.sn_paths} == set(model.net.decoder_layers)
    model.train()
    graphdef, state = nnx.split(model)

    def body(_, state):  # one train-mode call: one power iteration per kernel
        m = nnx.merge(graphdef, state)
        m.decode(m.encode(X))
        return nnx.split(m)[1]

    # the error shrinks as (sigma_2 / sigma_1)^t
    nnx.update(model, jax.jit(lambda s: jax.lax.fori_loop(0, 300, body, s))(state))
    model.eval()
    sigmas = model.spectral_norms()
    for path, w in _kernels(model).items():
        np.testing.assert_allclose(float(sigmas[path]), np.linalg.svd(w, compute_uv=False)[0],
                                   rtol=1e-3)  # fmt: skip


def test_a_batchnorm_decoder_keeps_its_statistics_up_to_date():
    model = _rae("dcgan")  # conv kernels [4, 4, Ci, Co] as [16 Ci, Co]; BatchNorm in the decoder
    assert len(model.sn_paths) == 5 and {p[0] for p in model.sn_paths} <= {
        "from_code",
        "up1",
        "up2",
        "up3",
        "up4",
    }
    stats = lambda: (np.asarray(model.sn_u[...]), np.asarray(model.net.bn_u1.mean[...]))  # noqa: E731
    u0, mean0 = stats()
    model.train()  # (eval mode leaves both alone: the test below, on the dense decoder)
    nnx.jit(lambda m: m.decode(m.encode(X)))(model)
    assert not np.allclose(stats()[0], u0) and not np.allclose(stats()[1], mean0)


def test_eval_mode_leaves_the_vectors_and_the_decoder_is_normalised():
    model = _rae()
    model.eval()
    u0 = np.asarray(model.sn_u[...])
    out = model.decode(model.encode(X))
    np.testing.assert_array_equal(np.asarray(model.sn_u[...]), u0)
    # the same output as the plain decoder with every kernel divided by its sigma
    sigmas = model.spectral_norms()
    for path, node in nnx.iter_graph(model.net):
        if isinstance(node, nnx.Param) and tuple(path) in sigmas:
            node[...] = node[...] / sigmas[tuple(path)]
    plain = models.Autoencoder.decode(model, model.encode(X))
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-5, atol=1e-6)


def test_training_updates_the_vector_as_model_state():
    model = _rae()
    graphdef, params, state = objectives.split(model, train=True)
    update = train.model_update(model, graphdef, jconfig.default("rae").optimizer, 10)
    opt = update.init(params)
    terms, new_state = jax.jit(objectives.loss_fn(graphdef))(params, state, {"image": X}, None)
    assert sorted(terms) == ["code", "loss", "mse"]  # no loss term: a reparameterisation
    u0, u1 = np.asarray(state["sn_u"][...]), np.asarray(new_state["sn_u"][...])
    assert not np.allclose(u0, u1)
    p1, _, _, m = jax.jit(update.step)(params, state, opt, {"image": X}, jax.random.PRNGKey(0))
    assert np.isfinite(float(m["loss"]))
