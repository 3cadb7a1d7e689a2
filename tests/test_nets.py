"""Networks: the registry, shapes, parameter counts, which parameters the decoder uses,
BatchNorm state, and the sub-pixel transposed convolution."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxae import models, nets
from jaxae.heads import Head


def _count(model):
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_subpixel_equals_conv_transpose():
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, 7, 5, 3))
    w = jax.random.normal(kw, (4, 4, 3, 6))
    dn = ("NHWC", "HWIO", "NHWC")

    @jax.jit  # one compile, not one per eager op
    def both(x, w):
        ref = jax.lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=dn)
        y = jax.lax.conv_general_dilated(
            x, nets.subpixel_kernel(w), (1, 1), "SAME", dimension_numbers=dn
        )
        return nets.depth_to_space(y), ref

    y, ref = both(x, w)
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
    # one compile for both modules' outputs, not one per eager op
    np.testing.assert_allclose(*jax.jit(lambda x: (ours(x), ref(x)))(x), atol=1e-5)
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
    grads = jax.jit(lambda k: (g1(k), g2(k)))(ours.kernel[...])
    np.testing.assert_allclose(*grads, rtol=1e-4, atol=1e-4)


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
    assert list(nets.ARCHS) == ["mlp", "conv", "cnn", "infogan", "dense", "dcgan", "pythae"]
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


# --- the registry -------------------------------------------------------------------------------


def test_register_passes_code_features_and_options():
    seen = {}

    @nets.register("_test_arch")
    def factory(image_shape, latent_dim, out_features, code_features, rngs, *, depth=1):
        seen.update(shape=image_shape, k=latent_dim, p=out_features, code=code_features, d=depth)
        return nets.MLPAutoencoder(image_shape, latent_dim, out_features=out_features,
                                   code_features=code_features, rngs=rngs)  # fmt: skip

    try:
        net = nets.make("_test_arch", [4, 4, 1], 3, 16, rngs=nnx.Rngs(0))
        # code_features=None reaches the factory as latent_dim, not None
        assert seen == {"shape": (4, 4, 1), "k": 3, "p": 16, "code": 3, "d": 1}
        assert net.encoder.kernel.shape == (16, 3)
        nets.make("_test_arch", (4, 4, 1), 3, 16, code_features=6, depth=2, rngs=nnx.Rngs(0))
        assert (seen["code"], seen["d"]) == (6, 2)
        with pytest.raises(ValueError, match="'_test_arch' has no option 'width'.*'depth'"):
            nets.make("_test_arch", (4, 4, 1), 3, 16, width=8, rngs=nnx.Rngs(0))
        assert nets.register("_test_arch")(factory) is factory  # the same factory again: fine
        with pytest.raises(ValueError, match="'_test_arch' is already taken"):
            nets.register("_test_arch")(lambda *args, **options: None)
        with pytest.raises(ValueError, match="'mlp' is already taken"):
            nets.register("mlp")(factory)
    finally:
        nets.ARCHS.pop("_test_arch", None)
    assert "_test_arch" not in nets.ARCHS


def test_factory_with_any_options():
    @nets.register("_test_any")
    def factory(image_shape, latent_dim, out_features, code_features, rngs, **options):
        return options

    try:
        assert nets.make("_test_any", (2, 2, 1), 1, 4, width=3, x=1, rngs=None) == {
            "width": 3,
            "x": 1,
        }
    finally:
        nets.ARCHS.pop("_test_any", None)


def test_unknown_option_is_named_and_width_is_checked():
    with pytest.raises(ValueError, match="architecture 'mlp' has no option 'width'"):
        nets.make("mlp", (8, 8, 1), 4, 64, width=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="architecture 'infogan' has no option 'widht'"):
        nets.make("infogan", (8, 8, 1), 4, 64, widht=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width must be an integer >= 2, got 1"):
        nets.make("dense", (8, 8, 1), 4, 64, width=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width must be an integer >= 1, got 0"):
        nets.make("dcgan", (16, 16, 1), 4, 256, width=0, rngs=nnx.Rngs(0))
    # 'conv' takes width too: it sets the conv widths (w, 2w); by shapes only (nnx.eval_shape)
    net = nnx.eval_shape(lambda: nets.make("conv", (8, 8, 1), 4, 64, width=4, rngs=nnx.Rngs(0)))
    assert net.conv1.kernel.shape == (3, 3, 1, 4) and net.conv2.kernel.shape == (3, 3, 4, 8)


# --- the regularized autoencoders' networks: shapes and parameter counts -------------------------


def _dense_count(d, w, k, code, p):
    """Dense: d -> w -> w/2 -> code, and k -> w/2 -> w -> p (weights and biases)."""
    layers = [(d, w), (w, w // 2), (w // 2, code), (k, w // 2), (w // 2, w), (w, p)]
    return sum(a * b + b for a, b in layers)


def _dcgan_count(c, w, k, code, m, h=32):
    """DCGAN: 4x4 convs and transposed convs with biases, BatchNorm scale and offset, 2 denses."""
    n = (h // 16) ** 2 * 8 * w
    convs = [(c, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)]
    ups = [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, m * c)]
    bn = 2 * (w + 2 * w + 4 * w + 8 * w) + 2 * (4 * w + 2 * w + w)
    return sum(16 * a * b + b for a, b in convs + ups) + bn + n * code + code + k * n + n


def _pythae_count(c, w, k, code, m, h=28):
    """pythae's comparison net: 4x4 convs w, 2w; denses to and from (H/4)(W/4)2w."""
    n = (h // 4) ** 2 * 2 * w
    convs = [(c, w), (w, 2 * w), (2 * w, w), (w, m * c)]
    return sum(16 * a * b + b for a, b in convs) + n * code + code + k * n + n


@pytest.mark.parametrize(
    "arch,shape,m,count",
    [("dense", (32, 32, 1), 1, _dense_count(1024, 4, 4, 6, 1024)),
     ("dcgan", (32, 32, 1), 1, _dcgan_count(1, 4, 4, 6, 1)),
     ("dcgan", (32, 32, 1), 2, _dcgan_count(1, 4, 4, 6, 2)),
     ("pythae", (28, 28, 1), 1, _pythae_count(1, 4, 4, 6, 1))],
)  # fmt: skip
def test_regularized_nets_shapes_and_counts(arch, shape, m, count):
    """Encoder: 6 code values (a wider code, as a VAE's 2K); decoder: K=4 codes -> M H W C."""
    p = m * int(np.prod(shape))
    net = nets.make(arch, shape, 4, p, code_features=6, width=4, rngs=nnx.Rngs(0))
    net.eval()
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, *shape)) - 0.5
    code, raw = jax.jit(lambda x: (net.encode(x), net.decode(net.encode(x)[:, :4])))(x)
    assert code.shape == (3, 6) and raw.shape == (3, p)
    assert _count(net) == count
    assert bool(jnp.any(code < 0)) and bool(jnp.any(raw < 0))  # linear code and output


def test_dcgan_and_pythae_default_widths():
    """The default widths, by shapes only (nnx.eval_shape: nothing is initialised)."""
    dcgan = nnx.eval_shape(lambda: nets.make("dcgan", (32, 32, 1), 10, 1024, rngs=nnx.Rngs(0)))
    widths = [getattr(dcgan, f"conv{i}").kernel.shape[-1] for i in range(1, 5)]
    assert widths == [128, 256, 512, 1024]  # GMM-DAE Table 1
    assert dcgan.from_code.kernel.shape == (10, 1024 * 2 * 2)  # "FC, Reshape 1024 x 2 x 2"
    pythae = nnx.eval_shape(lambda: nets.make("pythae", (28, 28, 1), 16, 784, rngs=nnx.Rngs(0)))
    assert pythae.conv1.kernel.shape == (4, 4, 1, 64) and pythae.conv2.kernel.shape[-1] == 128
    assert _count(pythae) == _pythae_count(1, 64, 16, 16, 1)


def test_dcgan_refuses_28x28_with_the_padding_hint():
    with pytest.raises(ValueError, match=r"divisible by 16.*image_size=32.*pad them to 32.*pad_to"):
        nets.make("dcgan", (28, 28, 1), 4, 784, width=8, rngs=nnx.Rngs(0))


def test_dcgan_batchnorm_statistics_are_state():
    net = nets.make("dcgan", (32, 32, 1), 4, 1024, code_features=6, width=4, rngs=nnx.Rngs(0))
    stats = nnx.state(net, nnx.BatchStat)
    assert sum(s.size for s in jax.tree.leaves(stats)) == 2 * (4 + 8 + 16 + 32 + 16 + 8 + 4)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 32, 32, 1))
    z = jax.random.normal(jax.random.PRNGKey(2), (5, 4))

    def snapshot():
        return [np.array(s) for s in jax.tree.leaves(nnx.state(net, nnx.BatchStat))]

    run = nnx.jit(lambda net, x, z: (net.encode(x), net.decode(z)))  # updates net's state
    before = snapshot()
    net.eval()
    run(net, x, z)
    for a, b in zip(before, snapshot(), strict=True):
        np.testing.assert_array_equal(a, b)
    net.train()
    run(net, x, z)
    after = snapshot()
    for a, b in zip(before, after, strict=True):
        assert not np.allclose(a, b)
    # the running mean moved by (1 - momentum) of the batch mean: 0.99 * 0 + 0.01 * mean
    batch_mean = np.asarray(jax.jit(net.conv1)(x)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(net.bn1.mean[...], 0.01 * batch_mean, rtol=1e-5, atol=1e-7)


# --- any image shape -----------------------------------------------------------------------------

_SHAPES = [(28, 28, 1), (32, 32, 1), (32, 32, 3), (64, 64, 1), (64, 64, 3)]


@pytest.mark.parametrize("shape", _SHAPES, ids=["x".join(map(str, s)) for s in _SHAPES])
@pytest.mark.parametrize("arch", list(nets.ARCHS))
def test_every_architecture_at_every_image_shape(arch, shape):
    """encode -> [B, code_features] and decode -> the head's [B, P], for the `mse` head (P = D)
    and the VAE's (P = 2D, code 2K), latents 2 and 16, default widths; 'dcgan' refuses 28 x 28
    when built. By shapes only (nnx.eval_shape: nothing is initialised or run)."""
    if arch == "dcgan" and shape[0] % 16:
        with pytest.raises(ValueError, match=r"divisible by 16.*image_size=32.*pad_to_32"):
            nnx.eval_shape(lambda: nets.make(arch, shape, 2, 784, rngs=nnx.Rngs(0)))
        return

    def code_and_raw(k, p, code_features):
        net = nets.make(arch, shape, k, p, code_features=code_features, rngs=nnx.Rngs(0))
        code = net.encode(jnp.zeros((3, *shape)))
        return code, net.decode(code if arch == "cnn" else jnp.zeros((3, k)))

    for head, code_per_k in (("mse", 1), ("vae", 2)):
        p = Head(head, image_shape=shape).num_params
        for k in (2, 16):
            code, raw = jax.eval_shape(partial(code_and_raw, k, p, code_per_k * k))
            want = (3, shape[0] // 2, shape[1] // 2, 320) if arch == "cnn" else (3, code_per_k * k)
            assert (code.shape, raw.shape) == (want, (3, p)), (head, k)


@pytest.mark.parametrize(
    "arch,shape,match",
    [("conv", (30, 30, 1), r"ConvAutoencoder needs H and W divisible by 4.*image_size=32.*pad_to"),
     ("pythae", (28, 30, 3), r"PythaeAutoencoder needs .* by 4.*image_size=32.*pad_to_32"),
     ("infogan", (62, 62, 3), r"InfoGANAutoencoder needs .* by 4.*image_size=64\)(?! or)"),
     ("dcgan", (40, 40, 3), r"DCGANAutoencoder needs .* by 16.*image_size=48\)(?! or)"),
     ("cnn", (27, 27, 1), r"VPAECNN needs .* by 2.*image_size=28.*pad_to_32"),
     *[(a, (7,), r"shape \(H, W, C\), got image_shape \(7,\): for vectors.*'mlp' or 'dense'")
       for a in ("conv", "cnn", "infogan", "dcgan", "pythae")],
     ("conv", (28, 28), r"give the channels too, image_shape \[28, 28, 1\]"),
     ("infogan", (32, 32, 0), "positive integers")],
)  # fmt: skip
def test_conv_nets_refuse_other_shapes_when_built(arch, shape, match):
    """A named ValueError from `make` (not a shape error inside a layer when it runs) that says
    which sizes the net takes and how to get one."""
    with pytest.raises(ValueError, match=match):
        nnx.eval_shape(lambda: nets.make(arch, shape, 4, 64, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("head", ["normal_diag", "t_diag"])
@pytest.mark.parametrize("arch", ["mlp", "dense"])
def test_mlp_and_dense_take_vectors(arch, head):
    """image_shape (D,): a model of tabular data, with the Normal and Student-t heads; by
    shapes only."""

    def code_raw_nll():
        model = models.build({"kind": "ae", "arch": arch, "head": head, "latent_dim": 3,
                              "image_shape": [7]})  # fmt: skip
        x = jnp.zeros((5, 7))
        code = model.encode(x)
        raw = model.decode(code)
        return code, raw, -model.likelihood(raw).log_prob(model.event(x))

    code, raw, nll = jax.eval_shape(code_raw_nll)
    p = Head(head, image_shape=(7,)).num_params
    assert (code.shape, raw.shape, nll.shape) == ((5, 3), (5, p), (5,))


def test_compiled_gradient_at_32x32x3_and_64x64x3():
    """One jitted MSE gradient (BatchNorm in train mode): 'conv' at 32 x 32 x 3 and 'dcgan'
    (width 8) at 64 x 64 x 3, so the shapes hold in compiled code too; every parameter gets a
    finite, non-zero gradient. Weights from numpy on the nets' abstract shapes: flax's
    initialisers compile once per kernel shape (~0.3 s each)."""
    rng = np.random.default_rng(0)
    cases = [("conv", (32, 32, 3), 4), ("dcgan", (64, 64, 3), 8)]
    graphdefs, params, rests, xs = [], [], [], []
    for arch, shape, width in cases:
        make = partial(nets.make, arch, shape, 4, int(np.prod(shape)), width=width)
        net = nnx.eval_shape(lambda make=make: make(rngs=nnx.Rngs(0)))
        graphdef, param, rest = nnx.split(net, nnx.Param, ...)
        graphdefs.append(graphdef)
        params.append(jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape, np.float32), param))
        rests.append(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), rest))
        xs.append(rng.uniform(-0.5, 0.5, (2, *shape)).astype(np.float32))

    def mse(params, rest, x, graphdef):
        net = nnx.merge(graphdef, params, rest, copy=True)  # BatchNorm updates its copy
        return jnp.mean((net.decode(net.encode(x)) - x.reshape(x.shape[0], -1)) ** 2)

    @jax.jit
    def grads(params, rests, xs):  # one compilation for both nets
        return [
            jax.grad(partial(mse, graphdef=g))(p, r, x)
            for g, p, r, x in zip(graphdefs, params, rests, xs, strict=True)
        ]

    for g in grads(params, rests, xs):
        for leaf in jax.tree.leaves(g):
            assert bool(jnp.all(jnp.isfinite(leaf))) and bool(jnp.any(leaf != 0))


# --- decoder_layers: exactly the decoder's parameters -------------------------------------------

# dcgan and pythae as in the tests above: each distinct kernel shape costs a compilation of its
# initialiser (truncated normal), ~0.3 s.

_ALL_NETS = [
    ("mlp", (8, 8, 1), 4, {}),
    ("conv", (8, 8, 1), 4, {"width": 4}),
    ("cnn", (4, 4, 1), 0, {}),
    ("infogan", (8, 8, 1), 4, {}),
    ("dense", (8, 8, 1), 4, {"width": 8}),
    ("dcgan", (32, 32, 1), 4, {"width": 4, "code_features": 6}),
    ("pythae", (28, 28, 1), 4, {"width": 4, "code_features": 6}),
]


def test_every_architecture_is_covered():
    assert sorted(a for a, *_ in _ALL_NETS) == sorted(nets.ARCHS)


@pytest.mark.parametrize("arch,shape,k,options", _ALL_NETS, ids=[a for a, *_ in _ALL_NETS])
def test_decoder_layers_are_the_decoders_parameters(arch, shape, k, options):
    """decode depends on every parameter under decoder_layers and on none other; encode on
    none of them (eval mode: BatchNorm in train mode cancels the bias before it)."""
    p = int(np.prod(shape))
    net = nets.make(arch, shape, k, p, rngs=nnx.Rngs(0), **options)
    names = type(net).decoder_layers
    assert names and all(isinstance(getattr(net, n), nnx.Module) for n in names)
    net.eval()
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, *shape)) - 0.5
    code = nnx.jit(lambda net, x: net.encode(x))(net, x)
    r_code = jax.random.normal(jax.random.PRNGKey(1), code.shape)
    if arch != "cnn":  # the CNN decodes its own (over-complete) code; the others K values
        code = jax.random.normal(jax.random.PRNGKey(3), (3, k))
    r_out = jax.random.normal(jax.random.PRNGKey(2), (3, p))

    @jax.jit
    def both_grads(params):
        def grad(fn):
            return jax.grad(lambda params: fn(nnx.merge(graphdef, params, rest)))(params)

        dec = grad(lambda m: jnp.sum(m.decode(code) * r_out))
        return dec, grad(lambda m: jnp.sum(m.encode(x) * r_code))

    dec, enc = (
        {name: jax.tree.leaves(sub) for name, sub in nnx.to_pure_dict(g).items()}
        for g in both_grads(params)
    )
    assert set(names) <= set(dec)
    for name, leaves in dec.items():
        nonzero = [bool(jnp.any(g != 0)) for g in leaves]
        if name in names:  # every decoder parameter array is used by decode, not by encode
            assert all(nonzero), (name, nonzero)
            assert not any(bool(jnp.any(g != 0)) for g in enc[name]), name
        else:  # the encoder's: decode does not use it
            assert not any(nonzero), name


# --- MLP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(7, 3), ()])
def test_mlp_matches_numpy(hidden):
    mlp = nets.MLP(5, hidden, 2, rngs=nnx.Rngs(0), activation=jnp.tanh)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (4, 5)))
    y = mlp(jnp.asarray(x))
    assert y.shape == (4, 2) and len(mlp.layers) == len(hidden) + 1
    h = x
    for i, layer in enumerate(mlp.layers):
        h = h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
        if i < len(hidden):
            h = np.tanh(h)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)


def test_mlp_relu_default_and_bad_sizes():
    mlp = nets.MLP(3, (16,), 1, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.PRNGKey(4), (6, 3))
    hidden = x @ mlp.layers[0].kernel[...] + mlp.layers[0].bias[...]
    ref = jax.nn.relu(hidden) @ mlp.layers[1].kernel[...] + mlp.layers[1].bias[...]
    np.testing.assert_allclose(mlp(x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="positive integers.*hidden=\\(8, 0\\)"):
        nets.MLP(3, (8, 0), 1, rngs=nnx.Rngs(0))
