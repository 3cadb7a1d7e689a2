"""Networks: shapes, parameter counts, and the sub-pixel transposed convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxae import nets


def _count(model):
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_subpixel_equals_conv_transpose():
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, 7, 5, 3))
    w = jax.random.normal(kw, (4, 4, 3, 6))
    dn = ("NHWC", "HWIO", "NHWC")
    ref = jax.lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=dn)
    y = jax.lax.conv_general_dilated(
        x, nets.subpixel_kernel(w), (1, 1), "SAME", dimension_numbers=dn
    )
    y = nets.depth_to_space(y)
    assert y.shape == ref.shape == (2, 14, 10, 6)
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_conv_transpose_module_matches_nnx():
    rngs = nnx.Rngs(0)
    ours = nets.ConvTranspose2x(3, 5, rngs=rngs)
    ref = nnx.ConvTranspose(3, 5, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
    ref.kernel[...] = ours.kernel[...]
    ref.bias[...] = jax.random.normal(jax.random.PRNGKey(1), (5,))
    ours.bias[...] = ref.bias[...]
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 7, 3))
    np.testing.assert_allclose(ours(x), ref(x), atol=1e-5)
    # Same gradient too: it is the same linear map.
    g1 = jax.grad(
        lambda k: jnp.sum(
            jnp.sin(
                nets.depth_to_space(
                    jax.lax.conv_general_dilated(
                        x,
                        nets.subpixel_kernel(k),
                        (1, 1),
                        "SAME",
                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    )
                )
            )
        )
    )
    g2 = jax.grad(
        lambda k: jnp.sum(
            jnp.sin(
                jax.lax.conv_transpose(
                    x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        )
    )
    np.testing.assert_allclose(g1(ours.kernel[...]), g2(ours.kernel[...]), rtol=1e-4, atol=1e-4)


def test_mlp_shapes_and_parameter_count():
    model = nets.make_model("mlp", (28, 28, 1), 32)
    out = model(jnp.zeros((3, 28, 28, 1)))
    assert out.recon.shape == (3, 28, 28, 1) and out.code.shape == (3, 32)
    assert _count(model) == 784 * 32 + 32 + 32 * 784 + 784 == 50_992
    assert bool(jnp.all(out.code >= 0))  # ReLU code


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 1)])
def test_conv_shapes(shape):
    model = nets.make_model("conv", shape, 8)
    out = jax.jit(lambda x: model(x))(jnp.zeros((2, *shape)))
    assert out.recon.shape == (2, *shape) and out.code.shape == (2, 8)


def test_unknown_model_and_bad_shape():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        nets.make_model("resnet", (28, 28, 1), 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        nets.make_model("conv", (30, 30, 1), 8)


@pytest.mark.parametrize(
    "size,stride,k", [((7, 7), 1, 3), ((28, 28), 2, 3), ((9, 6), 2, 3), ((5, 5), 1, 1)]
)
def test_conv2d_same_matches_lax(size, stride, k):
    kx, kw = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(kx, (2, *size, 3))
    w = jax.random.normal(kw, (k, k, 3, 4))
    ref = jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = nets.conv2d_same(x, w, stride)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
