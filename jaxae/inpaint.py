"""Posterior inpainting and denoising with a PAE (Boehm & Seljak 2020, Sec. 2.3, Eqs. 13-14).

Corrupted data x~ = M x + n: a pixel mask M (1 observed, 0 hidden) and Gaussian noise of
per-pixel std sigma_noise. With G(u) = g(b^-1(u)) the PAE's generator (decoder after the inverse
flow) the posterior over the flow's latent u is (Eq. 13, with the likelihood of Eq. 14)

    ln p(u | x~) = -1/2 sum_i M_i (x~_i - G_i(u))^2 / (sigma_i^2 + sigma_noise,i^2)
                   - 1/2 |u|^2 + const,

sigma being the PAE's noise map (Eq. 8). Everything below is a function of a plain callable
``generate: u [K] -> [N]`` (one example), as in `jaxae.laplace`; `posterior` vmaps it over
images and starts inside one jit, and `pae_posterior` applies it to a fitted `models.PAE`.

- MAP: `laplace.minimize` (L-BFGS by default) from several starts per image;
- at each MAP a Laplace Gaussian in u: the exact Hessian of -ln p(u|x~) by forward-over-reverse
  autodiff (``jax.hessian``), or, where that is not positive definite, the Gauss-Newton
  precision J^T W J + I (the report says which);
- distinct modes (no better mode within `merge_radius` posterior standard deviations) combined
  into a full-rank Gaussian mixture weighted by each mode's Laplace evidence (as the paper does
  after Seljak & Yu 2019), sampled by `sample`.

For a linear generator (probabilistic PCA: a linear decoder and an identity flow) the posterior
is Gaussian, the Hessian is exact, and the mode, covariance and evidence equal the closed forms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import data as jdata
from jaxae import laplace

GenerateFn = Callable[[jax.Array], jax.Array]
_LOG_2PI = math.log(2.0 * math.pi)


# --- Corruptions ---------------------------------------------------------------------------------


class Corruption(NamedTuple):
    """Which pixels are observed (`mask`, bool [H, W, C]) and the noise std on them (`noise`,
    float [H, W, C], >= 0)."""

    mask: np.ndarray
    noise: np.ndarray


def _named_mask(name: str, shape, rng) -> tuple[np.ndarray, float]:
    h, w, _ = shape
    mask = np.ones(shape, bool)
    if name == "left_half":
        mask[:, : w // 2] = False
        return mask, 0.0
    if name == "block_noise":  # the paper's Figure 6 block, rows 8-15, columns 9-20
        mask[8:16, 9:21] = False
        return mask, 0.1
    if name == "missing95":  # whole pixels: every channel of a hidden pixel is hidden
        return np.repeat(rng.random((h, w, 1)) >= 0.95, shape[2], axis=2), 0.0
    if name == "noise05":
        return mask, 0.5
    raise ValueError(f"unknown corruption {name!r}: choose one of {CORRUPTIONS} or pass a mask")


CORRUPTIONS = ("left_half", "block_noise", "missing95", "noise05")


def _per_channel(a: np.ndarray, shape, name: str) -> np.ndarray:
    """[H, W, C], or [H, W] repeated over the C channels (a pixel of an RGB image is hidden
    or noisy in all its channels)."""
    if a.shape == shape[:2]:
        a = np.repeat(a[..., None], shape[2], axis=2)
    if a.shape != shape:
        raise ValueError(f"{name} of shape {a.shape} for images of shape {shape}: give "
                         f"[H, W, C] = {list(shape)} or [H, W] = {list(shape[:2])}")  # fmt: skip
    return a


def corruption(kind, image_shape, *, noise=None, seed: int = 0) -> Corruption:
    """A checked `Corruption`: `kind` is a name of `CORRUPTIONS` (the paper's Figure 6: the
    left half masked; a block [8:16, 9:21] masked plus noise 0.1; 95% of pixels missing at
    random, drawn with `seed`; Gaussian noise 0.5 everywhere) or a mask (True/1 = observed) of
    the image's shape [H, W, C], or [H, W] for every channel of a pixel alike. `noise` (a scalar,
    or a per-pixel array [H, W, C] or [H, W]) replaces the named noise level.
    """
    shape = tuple(image_shape)
    if isinstance(kind, str):
        mask, level = _named_mask(kind, shape, np.random.default_rng(seed))
    else:
        mask, level = _per_channel(np.asarray(kind), shape, "mask"), 0.0
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError("mask values must be booleans or 0/1 (1: observed)")
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("the mask observes no pixel: nothing to condition on")
    noise = np.asarray(level if noise is None else noise, np.float64)
    if noise.ndim:
        noise = _per_channel(noise, shape, "noise map")
    if np.isnan(noise).any() or (noise < 0).any():
        raise ValueError("noise std must be >= 0 and not NaN")
    return Corruption(mask, np.broadcast_to(noise, shape).astype(np.float32))


def corrupt(x, c: Corruption, key) -> jax.Array:
    """x~ = M (x + n), n ~ N(0, noise^2): images [B, H, W, C] in the model's scale; hidden
    pixels are set to 0 (they are never read)."""
    n = jax.random.normal(key, x.shape, jnp.float32) * c.noise
    return jnp.where(c.mask, x + n, 0.0)


# --- One example ---------------------------------------------------------------------------------


def neg_log_posterior(generate: GenerateFn, var, x_t, mask, u):
    """-ln p(u | x~) of Eqs. 13-14 without constants; var = sigma^2 + sigma_noise^2 [N]."""
    r = jnp.where(mask, x_t - generate(u), 0.0)
    return 0.5 * jnp.sum(r**2 / var) + 0.5 * jnp.sum(u**2)


def precision(generate: GenerateFn, var, x_t, mask, u):
    """(P [K, K], used Gauss-Newton []): the exact Hessian of `neg_log_posterior` at u
    (forward-over-reverse), or J^T W J + I (J = dG/du, W = mask / var) where the exact one is
    not positive definite."""
    exact = jax.hessian(lambda v: neg_log_posterior(generate, var, x_t, mask, v))(u)
    exact = 0.5 * (exact + exact.T)
    jac = jax.jacfwd(generate)(u)  # [N, K]
    jw = jac * jnp.sqrt(jnp.where(mask, 1.0 / var, 0.0))[:, None]
    gn = jw.T @ jw + jnp.eye(u.shape[0], dtype=u.dtype)
    use_gn = ~jnp.all(jnp.isfinite(jnp.linalg.cholesky(exact)))
    return jnp.where(use_gn, gn, exact), use_gn


def log_evidence(objective, prec, var, mask):
    """Laplace ln p(x~_observed) at a mode: -f* - 1/2 sum_obs ln(2 pi var) - 1/2 ln det P
    (f* = `neg_log_posterior` there; the prior's and the Gaussian integral's K/2 ln 2 pi cancel,
    as in Eq. 11)."""
    chol = jnp.linalg.cholesky(prec)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    obs = jnp.sum(jnp.where(mask, jnp.log(var) + _LOG_2PI, 0.0))
    return -objective - 0.5 * obs - 0.5 * logdet


def _one(generate, var, x_t, mask, u0, optimizer, steps, gtol, ftol):
    u, report = laplace.minimize(
        lambda v: neg_log_posterior(generate, var, x_t, mask, v), u0,
        optimizer=optimizer, steps=steps, gtol=gtol, ftol=ftol,
    )  # fmt: skip
    prec, use_gn = precision(generate, var, x_t, mask, u)
    return {
        "u": u, "precision": prec, "gauss_newton": use_gn, "objective": report.objective,
        "log_evidence": log_evidence(report.objective, prec, var, mask),
        "converged": report.converged, "grad_norm": report.grad_norm, "steps": report.steps,
    }  # fmt: skip


def _merge(out, merge_radius):
    """Distinct modes of one image's starts [S]: a start is a duplicate when a better one (lower
    objective; ties: lower index) lies within `merge_radius` standard deviations of it, measured
    with the better one's precision. Weights: softmax of the distinct modes' evidences."""
    u, prec, f = out["u"], out["precision"], out["objective"]
    s = f.shape[0]
    d = u[:, None, :] - u[None, :, :]  # [S, S, K]: u_i - u_j
    maha = jnp.einsum("ijk,jkl,ijl->ij", d, prec, d)  # distance of i under j's precision
    idx = jnp.arange(s)
    better = (f[None, :] < f[:, None]) | (
        (f[None, :] == f[:, None]) & (idx[None, :] < idx[:, None])
    )
    dup = jnp.any(better & (maha <= merge_radius**2), axis=1)
    ok = ~dup & jnp.isfinite(out["log_evidence"])
    logw = jnp.where(ok, out["log_evidence"], -jnp.inf)
    return ok, jax.nn.softmax(logw)


def _posterior_batch(generate, var, x_t, mask, u0, *, optimizer, steps, gtol, ftol, merge_radius):
    per_start = jax.vmap(
        lambda v, x, m, u: _one(generate, v, x, m, u, optimizer, steps, gtol, ftol),
        in_axes=(None, None, None, 0),
    )
    out = jax.vmap(per_start)(var, x_t, mask, u0)  # [B, S, ...]
    out["distinct"], out["weights"] = jax.vmap(lambda o: _merge(o, merge_radius))(out)
    return out


_posterior_jit = jax.jit(
    _posterior_batch, static_argnames=("optimizer", "steps", "gtol", "ftol", "merge_radius")
)


def posterior(generate: GenerateFn, sigma, x_t, mask, noise, u0, *, steps: int = 100,
              optimizer: optax.GradientTransformation | None = None, gtol: float = 1e-5,
              ftol: float = 0.0, merge_radius: float = 1.0) -> dict:  # fmt: skip
    """The Laplace-mixture posterior of a batch of corrupted images, one jitted call.

    Args:
      generate: u [K] -> G(u) [N], one example (a `jax.tree_util.Partial` keeps weights traced).
      sigma: [N] the PAE's noise map (Eq. 8).
      x_t: [B, N] corrupted images, flattened (hidden pixels: any finite value).
      mask: [N] or [B, N] bool, observed pixels; noise: [N] or [B, N] std of the noise.
      u0: [B, S, K] starts (the encoder's guess mapped to u, and prior draws).
      steps, optimizer, gtol, ftol: of `laplace.minimize`; merge_radius: of the mode merging.
    Returns:
      dict of [B, S]: 'objective' (-ln p(u|x~) at the MAP, constants dropped), 'log_evidence',
      'gauss_newton', 'converged', 'grad_norm', 'steps', 'distinct', 'weights'; 'u' [B, S, K];
      'precision' [B, S, K, K].
    """
    x_t = jnp.asarray(x_t)
    b, n = x_t.shape

    def per_image(a, dtype, name):
        a = jnp.asarray(a, dtype)
        if a.ndim and a.size not in (n, b * n):
            raise ValueError(f"{name} of shape {a.shape} for {b} images of {n} pixels")
        return jnp.broadcast_to(a.reshape(-1, n) if a.ndim else a, (b, n))

    mask, noise = per_image(mask, bool, "mask"), per_image(noise, x_t.dtype, "noise")
    sigma = jnp.asarray(sigma, x_t.dtype)
    if sigma.shape != (n,):
        raise ValueError(f"noise map sigma of shape {sigma.shape} for images of {n} pixels")
    if not bool(jnp.all(jnp.isfinite(jnp.where(mask, x_t, 0.0)))):
        raise ValueError("NaN or inf in the observed pixels of the corrupted images")
    u0 = jnp.asarray(u0, x_t.dtype)
    if u0.ndim != 3 or u0.shape[0] != b:
        raise ValueError(f"starts u0 must be [B={b}, S, K], got {u0.shape}")
    var = sigma**2 + noise**2
    partial = laplace.as_partial(generate)
    return _posterior_jit(partial, var, jnp.where(mask, x_t, 0.0), mask, u0,
                          optimizer=optimizer or laplace.default_optimizer(), steps=int(steps),
                          gtol=float(gtol), ftol=float(ftol),
                          merge_radius=float(merge_radius))  # fmt: skip


def sample(post: dict, key, num_samples: int = 100) -> jax.Array:
    """Draws from each image's Gaussian mixture in u (`posterior`'s modes, precisions and
    weights): [B, num_samples, K]."""
    return _sample(post["u"], post["precision"], post["weights"], key, int(num_samples))


@functools.partial(jax.jit, static_argnums=4)
def _sample(u, prec, weights, key, n):
    def one(u_b, p_b, w_b, k):  # [S, K], [S, K, K], [S]
        kc, ke = jax.random.split(k)
        comp = jax.random.categorical(kc, jnp.log(w_b), shape=(n,))
        chol = jnp.linalg.cholesky(p_b)[comp]  # P = L L^T, so u = mu + L^-T eps ~ N(mu, P^-1)
        eps = jax.random.normal(ke, (n, u_b.shape[-1]), u_b.dtype)
        solve = lambda c, e: jax.scipy.linalg.solve_triangular(c, e, trans="T", lower=True)  # noqa: E731
        return u_b[comp] + jax.vmap(solve)(chol, eps)

    return jax.vmap(one)(u, prec, weights, jax.random.split(key, u.shape[0]))


# --- A fitted PAE ------------------------------------------------------------------------------


class Result(NamedTuple):
    """`pae_posterior`'s output for a batch of B corrupted images; every image is in [0, 1]
    pixel units, clipped to [0, 1].

    Attributes:
      post: `posterior`'s dict, per image and start [B, S, ...]: the modes 'u', their
        'objective', 'log_evidence', 'distinct', mixture 'weights', Laplace 'precision' and the
        optimiser's report ('converged', 'grad_norm', 'steps', 'gauss_newton').
      map_image: [B, H, W, C] the decoded image G(u') of the best mode (the MAP), every pixel as
        the model draws it: the observed pixels are not pasted back (``np.where(mask, x, map)``
        does that).
      samples: [B, num_samples, H, W, C] G(u) of draws u from the Laplace mixture.
      mean: [B, H, W, C] the samples' mean (the posterior mean image).
      std: [B, H, W, C] the samples' per-pixel standard deviation (the posterior's spread of
        G(u), without the pixel noise sigma), in [0, 1] pixel units.
      num_modes: [B] the number of distinct modes found per image.
    """

    post: dict
    map_image: np.ndarray
    samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_modes: np.ndarray


@jax.jit
def _decode_chunk(generate, u):
    return jax.vmap(generate)(u)


def decode_codes(generate: GenerateFn, u, chunk: int = 256) -> np.ndarray:
    """G(u) [M, N] of codes u [M, K], in chunks: a batched transposed convolution's buffers grow
    with the batch (thousands of posterior samples at once would take tens of GiB on a CPU)."""
    generate = laplace.as_partial(generate)
    u = jnp.asarray(u)
    parts = [np.asarray(_decode_chunk(generate, u[i : i + chunk])) for i in range(0, len(u), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


# How far (in noise stds) a noisy observed pixel may lie outside [0, 1]: a clean pixel in [0, 1]
# plus Gaussian noise passes 6 stds about once in 5e8 pixels.
NOISE_STDS = 6.0


def observed_images(images, c: Corruption, shape, name: str = "images") -> np.ndarray:
    """Corrupted images checked as `data.check_images` checks clean ones, on observed pixels.

    Args:
      images: [B, H, W, C] (or [B, H, W] when C is 1); uint8 (divided by 255) or floats in
        [0, 1] on the observed pixels, where noisy ones (noise > 0) may lie up to `NOISE_STDS`
        noise stds outside [0, 1]. Hidden pixels may hold anything, NaN included.
      c: the `Corruption`; shape: (H, W, C), the model's image shape.
      name: what the images are, used in error messages.

    Returns:
      float32 [B, H, W, C] in [0, 1] pixel units.

    Raises:
      TypeError: a non-numeric dtype.
      ValueError: a wrong shape (`data.check_image_shape`), no image, NaN/inf or out-of-range
        observed pixels (floats in [0, 255] among them).
    """
    shape = tuple(shape)
    x = np.asarray(images)
    if x.dtype.kind not in "uif":
        raise TypeError(
            f"{name}: unsupported dtype {x.dtype}; use uint8 in [0, 255] or floating in [0, 1]"
        )
    x = jdata.check_image_shape(x, shape, name)
    if c.mask.shape != shape or c.noise.shape != shape:
        raise ValueError(f"corruption of shape {c.mask.shape} for images of shape {shape}")
    if len(x) == 0:
        raise ValueError(f"{name}: no image (shape {list(x.shape)})")
    mask = np.broadcast_to(c.mask, x.shape)
    if x.dtype.kind in "ui":
        seen = x[mask]
        if x.dtype != np.uint8 and (seen.min() < 0 or seen.max() > 255):
            raise ValueError(f"{name}: integer pixels out of range [0, 255]: min {seen.min()}, "
                             f"max {seen.max()} (dtype {x.dtype})")  # fmt: skip
        return np.where(mask, x.astype(np.float32) / 255.0, 0.0).astype(np.float32)
    x = x.astype(np.float32)
    if not np.isfinite(x[mask]).all():
        raise ValueError(f"{name}: NaN or inf in the observed pixels of the corrupted images")
    slack = NOISE_STDS * np.broadcast_to(c.noise, x.shape)
    out = mask & ((x < -slack) | (x > 1.0 + slack))
    if out.any():
        lo, hi = float(x[mask].min()), float(x[mask].max())
        why = f"float pixels out of range [0, 1]: observed min {lo:.4g}, max {hi:.4g}"
        if c.noise.any():
            why += f" (noisy ones may stray {NOISE_STDS:g} noise stds outside)"
        if hi > 2.0:
            why += (": floats in [0, 255]? Pass images / 255, or the uint8 images (divided by "
                    "255 as everywhere in jaxae)")  # fmt: skip
        raise ValueError(f"{name}: {why}")
    return np.where(mask, x, 0.0)


def pae_posterior(model, images, c: Corruption, *, key, scale: str | None = None,
                  starts: int = 10, steps: int = 100, num_samples: int = 100, optimizer=None,
                  merge_radius: float = 1.0) -> Result:  # fmt: skip
    """Inpaint / denoise corrupted images with a fitted PAE: the Laplace-mixture posterior of
    Eqs. 13-14 from `starts` starts per image (the encoder's guess f(x~) mapped to u by the
    flow, then prior draws), and `num_samples` posterior samples decoded.

    Args:
      model: a fitted `models.PAE`.
      images: [B, H, W, C] corrupted images: uint8, or floats in [0, 1] (e.g. from `corrupt`
        plus the offset; noisy pixels may stray outside, see `observed_images`); hidden pixels
        may hold anything, NaN included.
      c: the `Corruption` (mask and noise std, in [0, 1] pixel units).
      key: PRNG key of the prior starts and the posterior samples.
      scale: None (the model's own pixel scale, `Model.scale`), or that same scale.
    Returns:
      `Result`, images in [0, 1].
    """
    from jaxae import pae  # the PAE glue only; the functions above need neither

    pae.require_fitted(model, "inpainting")
    offset = model.check_scale(scale).offset
    shape = tuple(model.image_shape)
    x = observed_images(images, c, shape)
    x_model = x - offset  # hidden pixels: black (0 in [0, 1] units), for the encoder's guess
    generate, sigma = pae.generator(model)
    k_start, k_samples = jax.random.split(key)
    z = model.encode(jnp.asarray(x_model))
    u_guess = model.latent_flow(z)[0]  # [B, K]
    prior = jax.random.normal(k_start, (len(x), starts - 1, model.latent_dim))
    u0 = jnp.concatenate([u_guess[:, None], prior], axis=1)
    b = len(x)
    post = posterior(generate, sigma, x_model.reshape(b, -1), c.mask.reshape(-1),
                     c.noise.reshape(-1), u0, steps=steps, optimizer=optimizer,
                     merge_radius=merge_radius)  # fmt: skip
    best = jnp.argmin(jnp.where(post["distinct"], post["objective"], jnp.inf), axis=1)
    u_best = jnp.take_along_axis(post["u"], best[:, None, None], axis=1)[:, 0]
    to_image = lambda g: np.clip(np.asarray(g) + offset, 0.0, 1.0).reshape(*g.shape[:-1], *shape)  # noqa: E731
    u_s = sample(post, k_samples, num_samples)  # [B, n, K]
    samples = to_image(
        decode_codes(generate, u_s.reshape(-1, u_s.shape[-1])).reshape(b, num_samples, -1)
    )
    map_image = to_image(decode_codes(generate, u_best))
    return Result(post=jax.tree.map(np.asarray, post), map_image=map_image, samples=samples,
                  mean=samples.mean(1), std=samples.std(1),
                  num_modes=np.asarray(post["distinct"]).sum(1))  # fmt: skip


# --- Reference posterior: NUTS -------------------------------------------------------------------


def nuts(generate: GenerateFn, sigma, x_t, mask, noise, u_init, key, *, num_warmup: int = 500,
         num_samples: int = 1000) -> dict:  # fmt: skip
    """NUTS samples of Eq. 13 for one image (`blackjax`: window adaptation of the step size and
    a diagonal mass matrix, then `num_samples` draws), the reference the Laplace mixture is
    checked against. x_t, mask, noise, sigma: [N]; u_init [K] (e.g. the best MAP). One jitted
    call, compiled once per shape: the decoder's weights are arguments, not constants.

    Returns {'u': [num_samples, K], 'acceptance': [], 'divergences': []}.
    """
    var = (
        jnp.asarray(sigma) ** 2 + jnp.broadcast_to(jnp.asarray(noise, jnp.float32), x_t.shape) ** 2
    )
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), x_t.shape)
    x_t = jnp.where(mask, jnp.asarray(x_t), 0.0)
    partial = laplace.as_partial(generate)
    return _nuts(partial, var, x_t, mask, jnp.asarray(u_init), key, num_warmup=int(num_warmup),
                 num_samples=int(num_samples))  # fmt: skip


@functools.partial(jax.jit, static_argnames=("num_warmup", "num_samples"))
def _nuts(generate, var, x_t, mask, u_init, key, *, num_warmup, num_samples):
    import blackjax  # only the reference sampler needs it

    def logdensity(u):
        return -neg_log_posterior(generate, var, x_t, mask, u)

    k_warm, k_run = jax.random.split(key)
    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
    (state, params), _ = warmup.run(k_warm, u_init, num_steps=num_warmup)
    kernel = blackjax.nuts(logdensity, **params).step

    def step(state, k):
        state, info = kernel(k, state)
        return state, (state.position, info.acceptance_rate, info.is_divergent)

    u, acceptance, divergent = jax.lax.scan(step, state, jax.random.split(k_run, num_samples))[1]
    return {"u": u, "acceptance": jnp.mean(acceptance), "divergences": jnp.sum(divergent)}
