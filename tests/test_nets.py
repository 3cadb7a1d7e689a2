"""Networks: shapes, parameter counts, and the sub-pixel transposed convolution."""

from functools import partial

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


def _make(arch, shape, latent, out=None, seed=0):
    out = int(np.prod(shape)) if out is None else out
    return nets.make(arch, shape, latent, out, rngs=nnx.Rngs(params=seed))


def test_mlp_shapes_and_parameter_count():
    net = _make("mlp", (28, 28, 1), 32)
    code = net.encode(jnp.zeros((3, 28, 28, 1)))
    recon = net.decode(code)
    assert recon.shape == (3, 784) and code.shape == (3, 32)  # raw and flat: heads interpret it
    assert _count(net) == 784 * 32 + 32 + 32 * 784 + 784 == 50_992
    assert bool(jnp.all(code >= 0))  # ReLU code
    assert _count(_make("mlp", (28, 28, 1), 32, out=1569)) == 25_120 + 33 * 1569


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 1)])
def test_conv_shapes(shape):
    net = _make("conv", shape, 8)
    code, recon = jax.jit(lambda x: (net.encode(x), net.decode(net.encode(x))))(
        jnp.zeros((2, *shape))
    )
    assert recon.shape == (2, int(np.prod(shape))) and code.shape == (2, 8)


def test_cnn_shapes():
    net = _make("cnn", (8, 8, 1), 0, out=3 * 64 + 5, seed=1)  # 4 output channels, cut to P
    code = net.encode(jnp.ones((2, 8, 8, 1)))
    assert code.shape == (2, 4, 4, 320) and bool(jnp.all(code >= 0))
    assert net.decode(code).shape == (2, 3 * 64 + 5)


def test_same_seed_same_weights():
    a, b, c = (_make("mlp", (8, 8, 1), 4, seed=s) for s in (0, 0, 1))
    leaves = [jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b, c)]
    for x, y in zip(leaves[0], leaves[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(leaves[0][-1], leaves[2][-1])


def test_unknown_architecture_and_bad_shape():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        _make("resnet", (28, 28, 1), 8)
    assert sorted(nets.ARCHS) == ["cnn", "conv", "infogan", "mlp"]
    with pytest.raises(ValueError, match="divisible by 4"):
        _make("conv", (30, 30, 1), 8)
    with pytest.raises(ValueError, match="whole number of values per pixel"):
        _make("conv", (28, 28, 1), 8, out=1569)


def _lax_conv(x, w, stride=1):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=dn)


@pytest.mark.parametrize(
    "size,stride,k,ci,co",
    [((7, 7), 1, 3, 3, 4), ((28, 28), 2, 3, 3, 4), ((9, 6), 2, 3, 3, 4), ((5, 5), 1, 1, 3, 4),
     ((7, 7), 1, 3, 6, 2), ((6, 5), 1, 4, 5, 3), ((8, 8), 2, 3, 6, 2)],
)  # fmt: skip
def test_conv2d_same_matches_lax(size, stride, k, ci, co):
    """Both forms (patches @ kernel; C_in > C_out at stride 1: taps on the output side)."""
    kx, kw = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(kx, (2, *size, ci))
    w = jax.random.normal(kw, (k, k, ci, co))
    ref = _lax_conv(x, w, stride)
    g = jax.random.normal(jax.random.PRNGKey(4), ref.shape)

    @jax.jit
    def value_and_grads(x, w):  # every form's value, and the gradient in both arguments
        forms = {"auto": nets.conv2d_same, "lax": _lax_conv}
        forms |= {t: partial(nets.conv2d_same, taps=t) for t in ("input", "output")[: 3 - stride]}
        vjp = {n: jax.vjp(lambda x, w, f=f: f(x, w, stride), x, w) for n, f in forms.items()}
        return {n: (y, back(g)) for n, (y, back) in vjp.items()}

    out = value_and_grads(x, w)
    assert out["auto"][0].shape == ref.shape
    for name, (y, (gx, gw)) in out.items():
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(gx, out["lax"][1][0], rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(gw, out["lax"][1][1], rtol=1e-4, atol=1e-4, err_msg=name)


def test_conv2d_same_rejects_bad_taps():
    x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 1))
    with pytest.raises(ValueError, match="taps must be"):
        nets.conv2d_same(x, w, taps="both")
    with pytest.raises(ValueError, match="needs stride 1"):
        nets.conv2d_same(x, w, 2, taps="output")


def _conv_then_pool(x, w):
    y = _lax_conv(x, w)
    b, h, wd, c = y.shape
    return y.reshape(b, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))


@pytest.mark.parametrize("ci,co,k", [(1, 8, 3), (3, 5, 3), (2, 4, 2)])  # 9, 27 (matmul), 8 taps
def test_conv_maxpool2_matches_conv_then_pool(ci, co, k):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(5), 3)
    x = jax.random.uniform(kx, (3, 6, 8, ci))
    w = jax.random.normal(kw, (k, k, ci, co))
    g = jax.random.normal(kg, (3, 3, 4, co))
    const = jnp.full((1, 6, 6, ci), 0.5)

    @jax.jit
    def value_and_grads(x, w):
        out = []
        for f in (_conv_then_pool, nets.conv_maxpool2):
            y, back = jax.vjp(f, x, w)
            # ties (a constant image: the four phases see the same patches inside) must give
            # jax's kernel gradient (an equal split) too, without counting a winner twice
            out.append((y, back(g), jax.grad(lambda w, f=f: f(const, w).sum())(w)))
        return out

    (ref, ref_grads, ref_tied), (got, grads, tied) = value_and_grads(x, w)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(ref_grads, grads, strict=True):  # no ties in random data: a unique max
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tied, ref_tied, rtol=1e-5, atol=1e-5)


def test_conv_maxpool2_needs_even_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        nets.conv_maxpool2(jnp.zeros((1, 5, 6, 1)), jnp.zeros((3, 3, 1, 2)))
