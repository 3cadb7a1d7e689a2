"""Normalizing-flow building blocks: MADE and the masked autoregressive flow (MAF).

MAF (Papamakarios et al. 2017) with a MADE conditioner (Germain et al. 2015):
``x_i = u_i * exp(a_i(x_<i)) + m_i(x_<i)``, so ``u = (x - m(x)) * exp(-a(x))`` in one pass and
``log p(x) = log p_u(u) - sum_i a_i(x)``. Sampling needs D sequential passes. The VPAE's `maf`
head (Ciobanu 2021, Sec. 3.1) is this flow on a base N(decoder output, I), with one MADE layer of
10 ReLU units; the PAE's latent flows build on the same pieces.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def made_masks(dim: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks [dim, hidden] and [hidden, dim] of a one-hidden-layer MADE (natural input order).

    Input i has degree i+1; hidden unit j has degree in 1..dim-1 (cycled); output i may see
    hidden units of degree < i+1, so output i depends on x_<i only (output 0 is constant).
    """
    d_in = np.arange(1, dim + 1)
    d_hidden = np.arange(hidden) % max(dim - 1, 1) + 1
    m1 = (d_hidden[None, :] >= d_in[:, None]).astype(np.float32)
    m2 = (d_in[None, :] > d_hidden[:, None]).astype(np.float32)
    return m1, m2


class MADE(nnx.Module):
    """x [..., D] -> (shift [..., D], log_scale [..., D]), autoregressive in the input order."""

    def __init__(self, dim: int, hidden: int = 10, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.glorot_uniform()
        self.dim, self.hidden = dim, hidden  # masks are rebuilt as constants when traced
        self.w1 = nnx.Param(init(rngs.params(), (dim, hidden)))
        self.b1 = nnx.Param(jnp.zeros((hidden,)))
        self.w2 = nnx.Param(init(rngs.params(), (hidden, 2 * dim)))
        self.b2 = nnx.Param(jnp.zeros((2 * dim,)))

    def __call__(self, x):
        m1, m2 = made_masks(self.dim, self.hidden)
        h = jax.nn.relu(x @ (self.w1[...] * m1) + self.b1[...])
        out = h @ (self.w2[...] * np.concatenate([m2, m2], axis=1)) + self.b2[...]
        return out[..., : self.dim], out[..., self.dim :]


class MaskedAutoregressive(distrax.Bijector):
    """The MAF bijector u -> x for a conditioner ``fn(x) -> (shift, log_scale)``."""

    def __init__(self, conditioner):
        super().__init__(event_ndims_in=1)
        self._conditioner = conditioner

    def inverse_and_log_det(self, y):
        shift, log_scale = self._conditioner(y)
        return (y - shift) * jnp.exp(-log_scale), -jnp.sum(log_scale, axis=-1)

    def forward_and_log_det(self, x):
        # x_i is right after pass i+1: D passes fix every coordinate in order.
        def body(_, y):
            shift, log_scale = self._conditioner(y)
            return x * jnp.exp(log_scale) + shift

        y = jax.lax.fori_loop(0, x.shape[-1], body, jnp.zeros_like(x))
        _, log_scale = self._conditioner(y)
        return y, jnp.sum(log_scale, axis=-1)
