"""The PAE paper's infoGAN autoencoder (`nets.InfoGANAutoencoder`, arch 'infogan'): shapes, the
parameter count, BatchNorm through the model interface (train mode updates the running
statistics and mixes the batch; eval mode does neither), one jitted training step, and its
stride-2 4x4 convolutions against `lax`."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxae import config as jconfig
from jaxae import models, nets, objectives, train

SHAPE = (28, 28, 1)
SPEC = {"kind": "ae", "arch": "infogan", "head": "mse", "latent_dim": 8, "image_shape": [28, 28, 1]}


def _images(b, seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (b, *SHAPE)) - 0.5


def _hand_count(k, h=28, w=28, c=1):
    """The architecture's trainable weights, layer by layer (BatchNorm: scale and offset)."""
    n = (h // 4) * (w // 4) * 128
    conv1 = 4 * 4 * c * 64 + 64
    conv2 = 4 * 4 * 64 * 128 + 128 + 2 * 128
    dense3 = n * 1024 + 1024 + 2 * 1024
    code = 1024 * k + k
    from_code = k * 1024 + 1024 + 2 * 1024
    dense_d2 = 1024 * n + n + 2 * n
    up1 = 4 * 4 * 128 * 64 + 64 + 2 * 64
    up2 = 4 * 4 * 64 * c + c
    return conv1 + conv2 + dense3 + code + from_code + dense_d2 + up1 + up2


def _abstract(shape, k, out, images):
    """The net by shapes only (nnx.eval_shape: nothing initialised or computed, ~10 s of eager
    ops on the full-size net saved), and the shapes of its code and decoded code of `images`."""

    def build_and_apply():
        net = nets.make("infogan", shape, k, out, rngs=nnx.Rngs(0))
        z = net.encode(images)
        return net, z, net.decode(z)

    return nnx.eval_shape(build_and_apply)


@pytest.mark.parametrize("k", [4, 32])
def test_shapes_and_parameter_count(k):
    net, z, recon = _abstract(SHAPE, k, 784, _images(3))
    chex.assert_shape(z, (3, k))
    chex.assert_shape(recon, (3, 784))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param)))
    assert count == _hand_count(k)
    if k == 32:
        assert count == 13_200_417
    # running mean and variance of every BatchNorm: model state, not parameters
    stats = sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.BatchStat)))
    assert stats == 2 * (128 + 1024 + 1024 + 6272 + 64)


def test_32x32_and_errors():
    _, _, recon = _abstract((32, 32, 3), 4, 32 * 32 * 3, jnp.zeros((2, 32, 32, 3)))
    chex.assert_shape(recon, (2, 32 * 32 * 3))
    with pytest.raises(ValueError, match="divisible by 4"):
        nets.make("infogan", (30, 30, 1), 4, 900, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="whole number of values per pixel"):
        nets.make("infogan", SHAPE, 4, 2 * 784 + 1, rngs=nnx.Rngs(0))


def test_two_values_per_pixel_and_wide_code():
    """A VAE's infoGAN net: encoder emits 2K, decoder 2 values per pixel as two blocks."""
    net = nets.make("infogan", SHAPE, 4, 2 * 784, code_features=8, rngs=nnx.Rngs(0))
    net.eval()
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, *SHAPE)) - 0.5

    @jax.jit  # one compile, not one per eager op of the full-size net
    def code_raw_and_by_hand(x):
        code = net.encode(x)
        raw = net.decode(code[:, :4])
        # the last transposed conv's channel m is block m of the raw vector
        h = jax.nn.relu(net.bn_d1(net.from_code(code[:, :4])))
        h = jax.nn.relu(net.bn_d2(net.dense_d2(h))).reshape(3, *net.hidden)
        return code, raw, net.up2(jax.nn.relu(net.bn_u1(net.up1(h))))  # [3, 28, 28, 2]

    code, raw, y = code_raw_and_by_hand(x)
    chex.assert_shape(code, (3, 8))
    chex.assert_shape(raw, (3, 2 * 784))
    np.testing.assert_allclose(raw[:, :784], y[..., 0].reshape(3, -1), rtol=1e-6)
    np.testing.assert_allclose(raw[:, 784:], y[..., 1].reshape(3, -1), rtol=1e-6)


def test_train_mode_updates_running_statistics():
    graphdef, params, state = objectives.split(models.build(SPEC))
    terms, new_state = jax.jit(objectives.loss_fn(graphdef))(
        params, state, {"image": _images(4)}, None
    )
    chex.assert_shape(terms["mse"], (4,))
    old, new = jax.tree.leaves(state), jax.tree.leaves(new_state)
    assert len(old) == len(new) == 10  # mean and var of 5 BatchNorms
    assert jax.tree.structure(state) == jax.tree.structure(new_state)
    for a, b in zip(old, new, strict=True):
        assert not np.allclose(a, b)


@pytest.mark.parametrize("train_mode", [True, False])
def test_batch_dependence_by_mode(train_mode):
    """Eval mode: an image's output does not depend on the rest of the batch; train mode
    (batch statistics): it does."""
    model = models.build(SPEC)
    graphdef, params, state = objectives.split(model, train=train_mode)
    loss = jax.jit(objectives.loss_fn(graphdef))
    x, other = _images(4, seed=1), _images(4, seed=2)
    y = jnp.concatenate([x[:1], other[1:]])  # same first image, different companions
    a = loss(params, state, {"image": x}, None)[0]["mse"][0]
    b = loss(params, state, {"image": y}, None)[0]["mse"][0]
    if train_mode:
        assert not np.allclose(a, b, rtol=1e-4)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_one_jitted_training_step():
    graphdef, params, state = objectives.split(models.build(SPEC))
    update = train.single(objectives.loss_fn(graphdef), optax.adam(1e-3))
    opt_state = update.init(params)
    step = jax.jit(update.step)
    batch = {"image": _images(4)}
    new_params, new_state, _, metrics = step(params, state, opt_state, batch, None)
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    old, new = jax.tree.leaves(params), jax.tree.leaves(new_params)
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))


def _lax_conv(x, w, stride):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=dn)


@pytest.mark.parametrize("size,ci,co", [(28, 1, 64), (14, 64, 128)])
def test_strided_4x4_conv_matches_lax(size, ci, co):
    """This network's encoder convolutions: 4x4, stride 2, 'SAME': 28 -> 14 -> 7."""
    kx, kw = jax.random.split(jax.random.PRNGKey(5))
    x = jax.random.normal(kx, (2, size, size, ci))
    w = jax.random.normal(kw, (4, 4, ci, co))
    g = jax.random.normal(jax.random.PRNGKey(6), (2, size // 2, size // 2, co))

    @jax.jit  # both convolutions and their gradients: one compile
    def values_and_grads(x, w):
        y, back = jax.vjp(lambda x, w: nets.conv2d_same(x, w, 2), x, w)
        y_ref, back_ref = jax.vjp(lambda x, w: _lax_conv(x, w, 2), x, w)
        return y, y_ref, back(g), back_ref(g)

    y, y_ref, ours, ref = values_and_grads(x, w)
    chex.assert_shape(y, (2, size // 2, size // 2, co))
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k", [32, 4])
def test_config(k):
    from experiments.configs import pae_ae

    c = pae_ae.get_config(str(k))
    jconfig.validate(c)
    assert (c.model.arch, c.model.head, c.model.latent_dim) == ("infogan", "mse", k)
    assert (c.data.scale, c.data.dequantize, c.data.val_size) == ("centered", True, 5000)
    assert tuple(c.optimizer.decay_epochs) == (400,) and c.optimizer.decay_factor == 0.1
    assert (c.training.epochs, c.training.batch_size) == (500, 128)
    assert pae_ae.get_config().model.latent_dim == 32
