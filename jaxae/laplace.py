"""PAE out-of-distribution scores and the Laplace log-evidence (Boehm & Seljak 2020, Sec. 2.2).

A PAE is a decoder ``g: R^K -> R^N``, a normalizing flow ``b: z -> u`` with ``log|det J_b(z)|``
and a per-pixel noise map ``sigma`` [N] (the implicit Gaussian likelihood of Eq. 8). Everything
here is a pure function over plain callables, so it does not depend on the model classes:

- ``decode(z)``: z [K] -> g(z) [N], the decoder's mean image, flattened (one example);
- ``flow(z)``: z [K] -> (u [K], log_det []), i.e. b(z) and log|det J_b(z)|; the identity flow
  is ``lambda z: (z, 0.0)``;
- ``sigma``: [N] positive per-pixel standard deviation (Eq. 8); ``x``: [N] one flattened image.

Single-example functions come first (``reconstruction_term``, ``latent_log_density``, ``eq12``,
``map_estimate``, ``log_evidence``); ``scores`` is the batched entry point (vmap, then jit).

Constants. ``reconstruction_term`` and ``eq12`` drop every constant, exactly as Eq. 12 does;
``latent_log_density`` is the normalised log p(z) (it keeps -K/2 ln 2 pi); ``log_evidence`` is a
normalised log p(x) (Eq. 11, see its docstring for why Eq. 11 needs no K/2 ln 2 pi term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DecodeFn = Callable[[jax.Array], jax.Array]
FlowFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]

_LOG_2PI = math.log(2.0 * math.pi)


def identity_flow(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The identity flow b(z) = z, log|det J_b| = 0: the prior is then N(0, I)."""
    return z, jnp.zeros((), z.dtype)


# ---------------------------------------------------------------------------------------------
# Validation (shapes always; values on the host, where the arrays are concrete)
# ---------------------------------------------------------------------------------------------


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _check_shapes(sigma, x, z, *, batched: bool) -> None:
    sigma_shape, x_shape, z_shape = jnp.shape(sigma), jnp.shape(x), jnp.shape(z)
    if len(sigma_shape) != 1:
        raise ValueError(f"sigma must be a flat per-pixel map [N]; got shape {sigma_shape}")
    n = sigma_shape[0]
    want_x, want_z = (2, 2) if batched else (1, 1)
    lead = "[B, N]" if batched else "[N]"
    if len(x_shape) != want_x or x_shape[-1] != n:
        raise ValueError(
            f"x shape {x_shape} does not match sigma shape {sigma_shape}: expected {lead} with "
            f"N={n} (flatten images first)"
        )
    if len(z_shape) != want_z:
        raise ValueError(f"z must be {'[B, K]' if batched else '[K]'}; got shape {z_shape}")
    if batched and z_shape[0] != x_shape[0]:
        raise ValueError(f"z0 batch size {z_shape[0]} does not match x batch size {x_shape[0]}")


def _check_values(sigma, x, z) -> None:
    if _is_concrete(sigma):
        s = np.asarray(sigma)
        if not np.all(np.isfinite(s)):
            raise ValueError("sigma contains NaN or inf")
        if not np.all(s > 0):
            raise ValueError(f"sigma must be strictly positive; min is {s.min()}")
    if _is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("x contains NaN or inf")
    if _is_concrete(z) and not np.all(np.isfinite(np.asarray(z))):
        raise ValueError("z0 contains NaN or inf")


def validate(sigma, x, z, *, batched: bool = False) -> None:
    """Raise ValueError for mismatched shapes, non-finite x/z, non-positive sigma.

    Value checks run only on concrete arrays (skipped under an outer jit).
    """
    _check_shapes(sigma, x, z, batched=batched)
    _check_values(sigma, x, z)


# ---------------------------------------------------------------------------------------------
# Single-example terms
# ---------------------------------------------------------------------------------------------


def reconstruction_term(decode: DecodeFn, sigma: jax.Array, x: jax.Array, z: jax.Array):
    """-1/2 sum_i (x_i - g_i(z))^2 / sigma_i^2: the first term of Eq. 12 (no constants).

    Evaluated at z = f(x) this is the paper's "AE reconstruction error" score.

    Args:
      decode: z [K] -> g(z) [N].
      sigma: [N] per-pixel std (Eq. 8).
      x: [N] one flattened image.
      z: [K] latent code.
    Returns:
      [] scalar.
    """
    _check_shapes(sigma, x, z, batched=False)
    r = (x - decode(z)) / sigma  # [N]
    return -0.5 * jnp.sum(r**2)


def latent_log_density(flow: FlowFn, z: jax.Array):
    """log p(z) = log N(b(z); 0, I) + log|det J_b(z)| (the "PAE density").

    This is the 2nd and 3rd term of Eq. 12 plus the Gaussian constant -K/2 ln 2 pi, which is kept
    here so that the value is a normalised log density (Eq. 12 itself drops it; see ``eq12``).

    Args:
      flow: z [K] -> (u [K], log_det []).
      z: [K] latent code.
    Returns:
      [] scalar.
    """
    u, log_det = flow(z)
    k = z.shape[-1]
    return -0.5 * jnp.sum(u**2) + log_det - 0.5 * k * _LOG_2PI


def eq12(decode: DecodeFn, flow: FlowFn, sigma: jax.Array, x: jax.Array, z: jax.Array):
    """Eq. 12: -1/2 r^T sigma^-2 r - 1/2 b(z)^T b(z) + ln det J_b(z), constants dropped.

    Equals ``reconstruction_term + latent_log_density + K/2 ln 2 pi`` and minus the MAP objective
    of Eq. 9 (up to z-independent constants). Args as in ``reconstruction_term``; returns [].
    """
    u, log_det = flow(z)
    return reconstruction_term(decode, sigma, x, z) - 0.5 * jnp.sum(u**2) + log_det


def map_objective(decode: DecodeFn, flow: FlowFn, sigma: jax.Array, x: jax.Array, z: jax.Array):
    """Eq. 9 objective, -ln p(x|z) - ln p(z) without z-independent constants (= -Eq. 12). []."""
    return -eq12(decode, flow, sigma, x, z)


# ---------------------------------------------------------------------------------------------
# MAP (Eq. 9)
# ---------------------------------------------------------------------------------------------


class MapReport(NamedTuple):
    """Per-example report of ``map_estimate`` (each field [] for one example, [B] batched)."""

    objective: jax.Array  # final Eq. 9 objective (= -Eq. 12, constants dropped)
    grad_norm: jax.Array  # ||d objective / dz|| at the returned z
    converged: jax.Array  # bool: grad_norm <= gtol, or last relative change <= ftol (a stall)
    steps: jax.Array  # int: optimiser steps taken (stops early once converged)


def parallel_linesearch(
    etas: Sequence[float] = tuple(2.0**-j for j in range(-1, 7)),
    steepest_etas: Sequence[float] = (1.0, 0.1, 0.01, 1e-3, 1e-4),
) -> optax.GradientTransformationExtraArgs:
    """A line search on a fixed grid of trial steps, all evaluated at once.

    With d the incoming direction (L-BFGS's; replaced by s if it is not a descent direction)
    and s = -grad / max(1, ||grad||), the trials are x + eta d for eta in `etas` and x + eta s
    for eta in `steepest_etas`; the step goes to the trial with the lowest value if it is below
    f(x), else nowhere (which `minimize` reports as a stall). The steepest-descent trials span
    four decades, so a first step whose scale L-BFGS cannot know yet, or a direction spoilt by
    a bad curvature pair, still makes progress.

    Why not optax's line searches: they branch with ``lax.cond`` on objective values. Under
    ``vmap`` (every image and every start at once, as `jaxae.inpaint` and `scores` run) JAX
    turns a batched ``cond`` into a ``select`` and broadcasts every operand of the branches
    over the batch, the decoder's weights included, so each trial becomes a per-example grouped
    convolution. On the K=8 MNIST PAE's inpainting MAP (10 images x 4 starts), 30 vmapped
    L-BFGS steps took 77-101 s with ``optax.lbfgs()``'s zoom search and 65 s with optax's
    backtracking, against 3.8 s here; after 100 steps the mean objective is 205.5 here and
    205.0 for the zoom search run one start at a time (``lax.map``, 24 s). The trials are one
    ``vmap``: len(etas) + len(steepest_etas) forward passes per step, no branch, no inner loop.
    """
    # NumPy, not jnp: the optimiser may be built inside a trace (`default_optimizer` under jit)
    # and then outlive it.
    trial_etas = np.concatenate(
        [np.asarray(etas, np.float32), np.asarray(steepest_etas, np.float32)]
    )
    along_d = np.arange(trial_etas.shape[0]) < len(etas)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params, *, value, grad, value_fn, **extra_args):
        del extra_args  # value_fn takes the parameters alone
        steepest = optax.tree.scale(-1.0 / jnp.maximum(1.0, optax.tree.norm(grad)), grad)
        descent = optax.tree.real(optax.tree.vdot(updates, grad)) < 0
        d = jax.tree.map(lambda a, b: jnp.where(descent, a, b), updates, steepest)

        def trial_steps(a, b):  # [T, ...]: eta_j d for the first len(etas), eta_i s after
            eta = trial_etas.astype(a.dtype).reshape(-1, *([1] * a.ndim))
            return eta * jnp.where(along_d.reshape(eta.shape), a, b)

        steps = jax.tree.map(trial_steps, d, steepest)
        f = jax.vmap(lambda step: value_fn(optax.tree.add(params, step)))(steps)
        f = jnp.where(jnp.isfinite(f), f, jnp.inf)
        pick = jnp.argmin(f)
        accept = f[pick] < value
        step = jax.tree.map(lambda t: jnp.where(accept, t[pick], jnp.zeros_like(t[pick])), steps)
        return step, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_DEFAULT_OPTIMIZER = None


def default_optimizer() -> optax.GradientTransformationExtraArgs:
    """L-BFGS (optax's ``scale_by_lbfgs``) with `parallel_linesearch`: the MAP is a smooth,
    deterministic, K-dim problem, solved for many examples at once under ``vmap``.

    One module-level instance, so that ``scores`` (which keys its jit cache on the optimiser)
    does not retrace when called without an explicit optimiser.
    """
    global _DEFAULT_OPTIMIZER
    if _DEFAULT_OPTIMIZER is None:
        _DEFAULT_OPTIMIZER = optax.chain(
            optax.scale_by_lbfgs(), optax.scale(-1.0), parallel_linesearch()
        )
    return _DEFAULT_OPTIMIZER


def minimize(
    value_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 100,
    gtol: float = 1e-6,
    ftol: float = 0.0,
) -> tuple[jax.Array, MapReport]:
    """Minimise a smooth scalar function of one example's vector from `x0`, inside
    ``lax.while_loop``: at most `steps` optimiser steps, stopping once converged (under vmap the
    loop runs until every example has stopped; finished ones are frozen). The MAP of Eq. 9
    (`map_estimate`) and the inpainting MAP of Eq. 13 (`jaxae.inpaint`) both use it.

    Any optax optimiser works: plain ones (``optax.adam(1e-2)``) are wrapped with
    ``optax.with_extra_args_support``; line searches (the default's, ``optax.lbfgs``'s) receive
    the value, gradient and ``value_fn`` they need.

    Args:
      value_fn: x [D] -> [] objective.
      x0: [D] start.
      optimizer: optax optimiser; None -> ``default_optimizer()`` (vmap-friendly L-BFGS).
      steps: maximum number of optimiser steps (static).
      gtol: converged when ||grad|| <= gtol.
      ftol: also converged when |f_prev - f| <= ftol * max(|f|, 1). With the default 0 this
        still fires when a step leaves the objective exactly unchanged (an L-BFGS line search
        that can make no progress at the working precision, common in float32): read
        ``grad_norm`` alongside ``converged``. A negative ftol disables the test.
    Returns:
      (x [D], MapReport of scalars).
    """
    opt = optax.with_extra_args_support(optimizer or default_optimizer())
    value_and_grad = jax.value_and_grad(value_fn)

    def done(f, g, f_prev):
        gnorm = optax.tree.norm(g)
        small_change = jnp.abs(f_prev - f) <= ftol * jnp.maximum(jnp.abs(f), 1.0)
        return (gnorm <= gtol) | small_change

    def cond(carry):
        i, _, _, f, g, f_prev = carry
        return (i < steps) & ~done(f, g, f_prev)

    def body(carry):
        i, x, opt_state, f, g, _ = carry
        updates, opt_state = opt.update(g, opt_state, x, value=f, grad=g, value_fn=value_fn)
        x_new = optax.apply_updates(x, updates)
        f_new, g_new = value_and_grad(x_new)
        return i + 1, x_new, opt_state, f_new, g_new, f

    f0, g0 = value_and_grad(x0)
    init = (jnp.zeros((), jnp.int32), x0, opt.init(x0), f0, g0, jnp.full_like(f0, jnp.inf))
    i, x, _, f, g, f_prev = jax.lax.while_loop(cond, body, init)
    report = MapReport(
        objective=f, grad_norm=optax.tree.norm(g), converged=done(f, g, f_prev), steps=i
    )
    return x, report


def map_estimate(
    decode: DecodeFn,
    flow: FlowFn,
    sigma: jax.Array,
    x: jax.Array,
    z0: jax.Array,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 100,
    gtol: float = 1e-6,
    ftol: float = 0.0,
) -> tuple[jax.Array, MapReport]:
    """Minimise Eq. 9, -ln p(x|z) - ln p(z) (Eq. 8 likelihood + flow prior), from z0 = f(x),
    with `minimize` (its arguments: the optimiser, the step budget and the tolerances).

    Args:
      decode, flow, sigma, x: as in the module docstring; sigma [N], x [N].
      z0: [K] start, usually the encoder's f(x).
    Returns:
      (z' [K], MapReport of scalars).
    """
    _check_shapes(sigma, x, z0, batched=False)
    return minimize(lambda z: map_objective(decode, flow, sigma, x, z), z0, optimizer=optimizer,
                    steps=steps, gtol=gtol, ftol=ftol)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Laplace log-evidence (Eqs. 10-11)
# ---------------------------------------------------------------------------------------------


def gauss_newton_precision(decode: DecodeFn, flow: FlowFn, sigma: jax.Array, z: jax.Array):
    """Eq. 10: Sigma^-1 = J_b^T J_b + G^T diag(sigma^-2) G, with G = dg/dz [N, K].

    G and J_b come from forward mode (``jax.jacfwd``: K Jacobian-vector products over the basis
    vectors), so nothing N x N is ever formed. Returns [K, K].
    """
    g_jac = jax.jacfwd(decode)(z)  # [N, K]
    b_jac = jax.jacfwd(lambda v: flow(v)[0])(z)  # [K, K]
    gw = g_jac / sigma[:, None]  # [N, K]
    return b_jac.T @ b_jac + gw.T @ gw


def log_evidence(decode: DecodeFn, flow: FlowFn, sigma: jax.Array, x: jax.Array, z: jax.Array):
    """Laplace approximation of ln p(x) at z (Eq. 11; meant for z = z', the MAP of Eq. 9).

    ln p(x) ~= -1/2 r^T sigma^-2 r - 1/2 b(z)^T b(z) + ln det J_b
               - [ln det sigma^2 - ln det Sigma_z + N ln 2 pi] / 2,     r = x - g(z),

    with Sigma_z^-1 the Gauss-Newton precision of Eq. 10; its log det comes from a Cholesky
    factor L (ln det Sigma_z^-1 = 2 sum ln L_ii).

    Why Eq. 11 has no K/2 ln 2 pi. Write h(z) = ln p(x|z) + ln p(z) with
      ln p(x|z) = -1/2 r^T sigma^-2 r - 1/2 ln det sigma^2 - N/2 ln 2 pi          (Eq. 8)
      ln p(z)   = -1/2 b^T b + ln det J_b - K/2 ln 2 pi                            (flow prior)
    Laplace: ln int exp h(z) dz ~= h(z') + K/2 ln 2 pi + 1/2 ln det Sigma_z'. The prior's
    -K/2 ln 2 pi and the Gaussian integral's +K/2 ln 2 pi cancel, leaving exactly Eq. 11. For a
    linear decoder and an affine flow h is quadratic, Gauss-Newton is the exact Hessian, and the
    result is the exact marginal (PPCA: N(x; mu, W W^T + diag(sigma^2))); the tests check this.

    Args:
      decode, flow, sigma, x: as in the module docstring; sigma [N], x [N].
      z: [K] expansion point (the MAP z').
    Returns:
      [] scalar, a normalised log density of x (NaN if the precision is not positive definite).
    """
    _check_shapes(sigma, x, z, batched=False)
    precision = gauss_newton_precision(decode, flow, sigma, z)  # [K, K]
    chol = jnp.linalg.cholesky(precision)
    logdet_precision = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))  # = -ln det Sigma_z
    logdet_sigma2 = 2.0 * jnp.sum(jnp.log(sigma))
    n = x.shape[-1]
    return eq12(decode, flow, sigma, x, z) - 0.5 * (logdet_sigma2 + logdet_precision + n * _LOG_2PI)


# ---------------------------------------------------------------------------------------------
# Batched entry point: single example -> vmap -> jit
# ---------------------------------------------------------------------------------------------


def _scores_one(decode, flow, sigma, x, z0, optimizer, map_steps, gtol, ftol):
    z_map, report = map_estimate(
        decode, flow, sigma, x, z0, optimizer=optimizer, steps=map_steps, gtol=gtol, ftol=ftol
    )
    return {
        "reconstruction": reconstruction_term(decode, sigma, x, z0),  # [] at f(x)
        "latent_density": latent_log_density(flow, z0),  # [] at f(x)
        "eq12": eq12(decode, flow, sigma, x, z0),  # [] at f(x)
        "eq12_map": eq12(decode, flow, sigma, x, z_map),  # [] at z'
        "log_evidence": log_evidence(decode, flow, sigma, x, z_map),  # [] at z'
        "map_objective": report.objective,
        "map_grad_norm": report.grad_norm,
        "map_converged": report.converged,
        "map_steps": report.steps,
        "z_map": z_map,  # [K]
    }


def _scores_batch(decode, flow, sigma, x, z0, *, optimizer, map_steps, gtol, ftol):
    # decode/flow arrive as jax.tree_util.Partial pytrees: their functions are static treedef
    # data (jit cache key), their bound arguments (e.g. params) are traced leaves.
    one = lambda xi, zi: _scores_one(decode, flow, sigma, xi, zi, optimizer, map_steps, gtol, ftol)
    return jax.vmap(one)(x, z0)


_scores_jit = jax.jit(_scores_batch, static_argnames=("optimizer", "map_steps", "gtol", "ftol"))


def as_partial(fn):
    """fn as a `jax.tree_util.Partial`, a pytree a jitted function can take as an argument (its
    bound arrays traced, not baked in as constants)."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def scores(
    decode: DecodeFn,
    flow: FlowFn,
    sigma: jax.Array,
    x: jax.Array,
    z0: jax.Array,
    *,
    map_steps: int = 100,
    optimizer: optax.GradientTransformation | None = None,
    gtol: float = 1e-6,
    ftol: float = 0.0,
) -> dict[str, jax.Array]:
    """All PAE scores for a batch, one jitted call (validated on the host first).

    Args:
      decode: z [K] -> g(z) [N]; flow: z [K] -> (u [K], log_det []).
        Plain functions are part of the jit cache key (by identity): pass the *same* function
        objects on every call, or it retraces. To keep parameters traced rather than baked in as
        constants, pass ``jax.tree_util.Partial(apply_fn, params)``: the function keys the cache,
        ``params`` is an ordinary traced argument (new params, no retrace).
      sigma: [N] per-pixel std (Eq. 8).
      x: [B, N] flattened images.
      z0: [B, K] starting codes, usually the encoder's f(x).
      map_steps, optimizer, gtol, ftol: see ``map_estimate``; static (the optimiser by identity;
        None -> the module's single ``default_optimizer()``).
    Returns:
      dict of [B]: 'reconstruction', 'latent_density', 'eq12' (all at z0), 'eq12_map',
      'log_evidence' (at the MAP z'), 'map_objective', 'map_grad_norm', 'map_converged',
      'map_steps'; and 'z_map' [B, K].
    """
    validate(sigma, x, z0, batched=True)
    return _scores_jit(
        as_partial(decode),
        as_partial(flow),
        jnp.asarray(sigma),
        jnp.asarray(x),
        jnp.asarray(z0),
        optimizer=optimizer or default_optimizer(),
        map_steps=int(map_steps),
        gtol=float(gtol),
        ftol=float(ftol),
    )
