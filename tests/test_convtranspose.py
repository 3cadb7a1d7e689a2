"""`nets.ConvTranspose2x` by output phase (2x2 taps each) against `lax.conv_transpose` and the
3x3 sub-pixel formulation, values and gradients, on the sizes the architectures use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import nets

DN = ("NHWC", "HWIO", "NHWC")
# (input shape [B, H, W, C_in], C_out): the archs' odd and even sizes (7->14, 14->28, 2->4,
# 8->16; one not square), C_in != C_out both ways, a single output channel.
SHAPES = [
    ((2, 7, 7, 6), 3),
    ((1, 14, 14, 3), 1),
    ((2, 2, 2, 8), 4),
    ((1, 8, 6, 2), 5),
]


def _reference(x, k):
    """The transposed convolution itself: lax.conv_transpose, 'SAME', stride 2, HWIO."""
    return jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=DN)


def _subpixel(x, k):
    """The previous formulation: a 3x3 convolution to 4*C_out channels, then depth-to-space."""
    y = jax.lax.conv_general_dilated(
        x, nets.subpixel_kernel(k), (1, 1), "SAME", dimension_numbers=DN
    )
    return nets.depth_to_space(y)


def _inputs(shape, co, seed=0):
    # NumPy draws: jax.random would compile a sampler for every shape (seconds per test)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    return x, rng.standard_normal((4, 4, shape[-1], co)).astype(np.float32)


# Both sides of the matmul; 'auto' picks one of them (the module's path, also checked against
# nnx.ConvTranspose in tests/test_nets.py).
TAPS = ("input", "output")


def _loss(f):
    # a nonlinear loss, so the cotangent differs at every output pixel
    return lambda x, k: jnp.sum(jnp.sin(f(x, k)))


@jax.jit
def _all(x, k):
    """Outputs and gradients (x, kernel) of both sides and of lax.conv_transpose, and the 3x3
    form's outputs, in one program: one compile per shape."""
    fns = {t: lambda x, k, t=t: nets._conv_transpose2x(x, k, t) for t in TAPS}
    fns["reference"] = _reference
    out = {n: (f(x, k), jax.grad(_loss(f), (0, 1))(x, k)) for n, f in fns.items()}
    return out, _subpixel(x, k)


@pytest.mark.parametrize("shape,co", SHAPES)
def test_matches_conv_transpose_and_subpixel(shape, co):
    """Outputs equal the 3x3 sub-pixel form's and lax.conv_transpose's, on either side of the
    matmul; gradients w.r.t. the input and the kernel equal jax.grad of lax.conv_transpose's."""
    x, k = _inputs(shape, co)
    out, subpixel = _all(x, k)
    ref, (ref_dx, ref_dk) = out["reference"]
    b, h, w, _ = shape
    assert ref.shape == subpixel.shape == (b, 2 * h, 2 * w, co)
    np.testing.assert_allclose(subpixel, ref, atol=1e-4, rtol=1e-5)
    for taps in TAPS:
        y, (dx, dk) = out[taps]
        assert y.shape == ref.shape and dx.shape == x.shape and dk.shape == k.shape
        np.testing.assert_allclose(y, subpixel, atol=1e-4, rtol=1e-5, err_msg=taps)
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-5, err_msg=taps)
        np.testing.assert_allclose(dx, ref_dx, atol=1e-4, rtol=1e-4, err_msg=taps)
        np.testing.assert_allclose(dk, ref_dk, atol=1e-4, rtol=1e-4, err_msg=taps)


def test_one_impulse_lands_where_placed_by_hand():
    """A hand-placed check of the convention: a single input pixel x[a, b] = 1 writes the
    kernel, reversed, onto output pixels 2a - 1 + i, 2b - 1 + j (i, j in [0, 4)): 'SAME' is a
    padding of 1 at kernel 4, stride 2 (PyTorch's ConvTranspose2d(4, 2, padding=1)), and
    lax.conv_transpose (transpose_kernel=False) correlates the stride-dilated input with the
    kernel as given, so an impulse comes out reversed."""
    k = np.arange(4 * 4, dtype=np.float32).reshape(4, 4, 1, 1)
    x = np.zeros((1, 3, 3, 1), np.float32)
    x[0, 1, 2] = 1.0
    want = np.zeros((1, 8, 8, 1), np.float32)  # one pixel of border on each side, cut below
    want[0, 2 - 1 + 1 : 2 + 3 + 1, 4 - 1 + 1 : 4 + 3 + 1, 0] = k[::-1, ::-1, 0, 0]
    for taps in ("input", "output"):
        y = jax.jit(nets._conv_transpose2x, static_argnums=2)(x, k, taps)
        np.testing.assert_array_equal(y, want[:, 1:7, 1:7])


def test_bad_arguments():
    x, k = _inputs((1, 2, 2, 3), 2)
    with pytest.raises(ValueError, match="taps must be"):
        nets._conv_transpose2x(x, k, "both")
    with pytest.raises(ValueError, match=r"kernel must be \[4, 4, 3, C_out\]"):
        nets._conv_transpose2x(x, k[:3])
