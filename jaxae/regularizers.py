"""Latent regularizers and critic losses of the regularized-autoencoder family: pure functions.

Every function here is plain math on arrays, jit-able, with no Python loop over a data-sized
axis. Per-example terms return [B]; a batch-level divergence (MMD, covariance distance, KS)
returns a scalar, which the model broadcasts to [B] itself (`jaxae.models`: ``latent(x, key) ->
(z, {name: [B]})``).

- GMM-DAE (Saseendran et al. 2021, "Shape your Space: A Gaussian Mixture Regularization Approach
  to Deterministic Autoencoders", NeurIPS, Sec. 3 and Appendix A.1): a mean squared distance
  between the batch covariance of the codes and the covariance of a Gaussian-mixture prior
  (`covariance_distance`), a simplified Kolmogorov-Smirnov distance between the per-dimension
  empirical CDF and the prior's marginal CDF (`ks_distance`), each weighted by the inverse of its
  mean value on batches drawn from the prior itself (`prior_weights`).
- WAE-MMD (Tolstikhin et al. 2018, "Wasserstein Auto-Encoders", ICLR, Algorithm 2 and Sec. 4):
  the unbiased MMD^2 with a sum of inverse multiquadratic kernels (`imq_mmd`).
- RAE (Ghosh et al. 2020, "From Variational to Deterministic Autoencoders", ICLR; their
  objective L_RAE = L_REC + beta L_Z + lambda L_REG): the code penalty L_Z = ||z||^2 / 2
  (`code_penalty`) and the decoder regularizers L_GP (`decoder_gradient_penalty`) and L_L2
  (`l2_penalty`).
- Adversarial critics: the discriminator of AAE (Makhzani et al. 2016) and WAE-GAN (Tolstikhin et
  al. 2018, Algorithm 1) (`gan_critic_loss`, `gan_generator_loss`), the WGAN critic (Arjovsky et
  al. 2017) and its gradient penalty (Gulrajani et al. 2017, "Improved Training of Wasserstein
  GANs", Eq. 3) (`wgan_critic_loss`, `gradient_penalty`).
- MaskAAE (Mondal et al. 2020, "MaskAAE: Latent space optimization for adversarial
  auto-encoders", UAI; the slides "The landscape of Regularized Auto-Encoders", Figure 4 and
  Table 2): the mask alpha = 1 - exp(-m) (`mask`), its active dimensions (`active_dims`) and the
  normalized absolute correlation of the codes (`nac`).

Shapes are checked eagerly (``ValueError`` naming the argument); value checks (weights summing
to 1, positive standard deviations) run only where the values are concrete, never under `jit`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The multipliers s of the IMQ kernel's constant C = 2 d scale^2 s, from the WAE authors' code.
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


# --- validation --------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known (eager code), else None (under tracing)."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _gmm(w, mu, sigma) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Checks a diagonal Gaussian mixture and returns (w [K], mu [K, d], sigma [K, d])."""
    w, mu = jnp.asarray(w), jnp.asarray(mu)
    if mu.ndim != 2:
        raise ValueError(
            f"`mu` must be the component means [K, d], got shape {mu.shape}; pass one row per "
            "component (a single Gaussian: mu[None])"
        )
    if w.shape != (mu.shape[0],):
        raise ValueError(
            f"`w` must be the mixture weights [K] = [{mu.shape[0]}] (one per row of `mu`), got "
            f"shape {w.shape}"
        )
    sigma_in = jnp.asarray(sigma)
    try:
        sigma = jnp.broadcast_to(sigma_in, mu.shape)
    except ValueError:
        raise ValueError(
            f"`sigma` must be the per-dimension component stds [K, d] = {mu.shape} (or broadcast "
            f"to it, e.g. a scalar 1.0), got shape {sigma_in.shape}"
        ) from None
    w_val, sigma_val = _concrete(w), _concrete(sigma)
    if w_val is not None and (np.any(w_val < 0) or not np.isclose(w_val.sum(), 1.0, atol=1e-4)):
        raise ValueError(
            f"`w` must be non-negative mixture weights summing to 1, got {w_val} (sum "
            f"{w_val.sum():.6g}); normalise them: w / w.sum()"
        )
    if sigma_val is not None and not np.all(sigma_val > 0):
        raise ValueError(
            f"`sigma` must be strictly positive standard deviations, got a minimum of "
            f"{sigma_val.min():.6g}"
        )
    return w, mu, sigma


def _codes(
    z, name: str = "z", d: int | None = None, min_rows: int = 2, of: str = "the prior"
) -> jax.Array:
    """Checks a batch of codes [B, d] (B >= min_rows; d as given) and returns it as an array."""
    z = jnp.asarray(z)
    if z.ndim != 2:
        raise ValueError(
            f"`{name}` must be a batch of codes [B, d], got shape {z.shape}; flatten each code "
            f"first ({name}.reshape(B, -1))"
        )
    if z.shape[0] < min_rows:
        raise ValueError(
            f"`{name}` must hold at least {min_rows} codes (a batch statistic needs them), got "
            f"{z.shape[0]}; use a larger batch"
        )
    if d is not None and z.shape[1] != d:
        raise ValueError(
            f"`{name}` has {z.shape[1]} dimensions but {of} has d = {d}; both must share the "
            "latent dimension"
        )
    return z


def _same_shape(a, b, name_a: str, name_b: str) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape (one value per example of a "
            f"batch), got {a.shape} and {b.shape}; draw as many prior samples as codes"
        )
    return a, b


def _per_example_sum(x: jax.Array) -> jax.Array:
    """Sum over every axis but the first: [B, ...] -> [B]."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


# --- GMM-DAE (Saseendran et al. 2021) ----------------------------------------------------------


def gmm_moments(w, mu, sigma) -> tuple[jax.Array, jax.Array]:
    """Mean and covariance of a Gaussian mixture with diagonal components.

    m = sum_k w_k mu_k and cov = sum_k w_k (diag(sigma_k^2) + mu_k mu_k^T) - m m^T (the law of
    total covariance), the target of the GMM-DAE covariance term (Saseendran et al. 2021, Sec. 3).

    Args:
      w: mixture weights [K], non-negative, summing to 1 (not renormalised here).
      mu: component means [K, d].
      sigma: per-dimension component standard deviations [K, d] (or anything broadcasting to it;
        the paper's prior: 1.0).

    Returns:
      (mean [d], cov [d, d]).
    """
    w, mu, sigma = _gmm(w, mu, sigma)
    mean = w @ mu
    second = jnp.diag(w @ jnp.square(sigma)) + (mu * w[:, None]).T @ mu
    return mean, second - jnp.outer(mean, mean)


def sample_gmm(key: jax.Array, n: int, w, mu, sigma) -> jax.Array:
    """Draws n codes from a Gaussian mixture with diagonal components.

    Args:
      key: a PRNG key.
      n: number of draws (a Python int: the output shape).
      w: mixture weights [K] summing to 1.
      mu: component means [K, d].
      sigma: per-dimension component standard deviations [K, d] (or broadcasting to it).

    Returns:
      Draws [n, d].
    """
    w, mu, sigma = _gmm(w, mu, sigma)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive Python int (the number of draws), got {n!r}")
    return _sample_gmm(key, int(n), w, mu, sigma)


# One compiled program rather than one per eager random op (which costs seconds on a CPU).
@functools.partial(jax.jit, static_argnums=1)
def _sample_gmm(key: jax.Array, n: int, w: jax.Array, mu: jax.Array, sigma: jax.Array):
    key_k, key_eps = jax.random.split(key)
    # log(0) = -inf is a valid categorical logit: a zero-weight component is never drawn.
    k = jax.random.categorical(key_k, jnp.log(w), shape=(n,))
    eps = jax.random.normal(key_eps, (n, mu.shape[1]), mu.dtype)
    return mu[k] + sigma[k] * eps


def covariance_distance(z, w, mu, sigma) -> jax.Array:
    """GMM-DAE mean squared covariance distance (Saseendran et al. 2021, Sec. 3).

    mean_{i,j} (S_ij - Sigma_ij)^2 over the d x d entries, where S is the unbiased batch
    covariance of the codes (1 / (B - 1)) and Sigma the mixture's covariance (`gmm_moments`).

    Args:
      z: codes [B, d], B >= 2.
      w, mu, sigma: the mixture prior, as in `gmm_moments`.

    Returns:
      A scalar (a batch-level divergence).
    """
    w, mu, sigma = _gmm(w, mu, sigma)
    z = _codes(z, d=mu.shape[1])
    _, target = gmm_moments(w, mu, sigma)
    centred = z - jnp.mean(z, axis=0)
    cov = centred.T @ centred / (z.shape[0] - 1)
    return jnp.mean(jnp.square(cov - target))


def _mixture_cdf(t: jax.Array, w: jax.Array, mu: jax.Array, sigma: jax.Array) -> jax.Array:
    """Marginal CDFs F_j(t_ij) = sum_k w_k Phi((t_ij - mu_kj) / sigma_kj): [B, d] -> [B, d]."""
    standard = (t[:, None, :] - mu[None]) / sigma[None]  # [B, K, d]
    return jnp.einsum("k,bkd->bd", w, jax.scipy.stats.norm.cdf(standard))


def ks_distance(z, w, mu, sigma) -> jax.Array:
    """GMM-DAE simplified Kolmogorov-Smirnov distance (Saseendran et al. 2021, Sec. 3).

    Per dimension j, the codes are sorted, z_(1)j <= ... <= z_(B)j, and the prior's marginal CDF
    F_j (a mixture of the components' one-dimensional normal CDFs) at them is compared with the
    empirical CDF's steps i / B:

        KS = mean_{i, j} (F_j(z_(i)j) - i / B)^2.

    The squared difference replaces the supremum of the classical statistic so that every code
    gets a gradient; gradients flow through the sort (a permutation).

    Args:
      z: codes [B, d].
      w, mu, sigma: the mixture prior, as in `gmm_moments`.

    Returns:
      A scalar (a batch-level divergence).
    """
    w, mu, sigma = _gmm(w, mu, sigma)
    z = _codes(z, d=mu.shape[1], min_rows=1)
    b = z.shape[0]
    steps = jnp.arange(1, b + 1, dtype=z.dtype) / b  # [B]
    return jnp.mean(jnp.square(_mixture_cdf(jnp.sort(z, axis=0), w, mu, sigma) - steps[:, None]))


def prior_weights(
    fns: Mapping[str, Callable[[jax.Array], jax.Array]],
    w,
    mu,
    sigma,
    *,
    batch_size: int,
    key: jax.Array,
    num_batches: int = 100,
) -> dict[str, float]:
    """GMM-DAE loss weights (Saseendran et al. 2021, Sec. 3; Appendix A.2: "the other two loss
    coefficient values can be calculated as mentioned in section 3").

    Each term's weight is the inverse of its mean value on `num_batches` batches of `batch_size`
    codes drawn from the prior itself, so that each weighted term is ~1 when the codes follow the
    prior and grows as they move away from it. Run once, eagerly, before training; the weights are
    Python floats (static constants of the training step).

    Args:
      fns: name -> fn(z [batch_size, d]) -> scalar, e.g.
        ``{'ks': partial(ks_distance, w=w, mu=mu, sigma=sigma), ...}``.
      w, mu, sigma: the mixture prior, as in `gmm_moments`.
      batch_size: the training batch size (the terms' values depend on it).
      key: a PRNG key for the prior draws.
      num_batches: how many prior batches to average over.

    Returns:
      name -> weight (a positive float).

    Raises:
      ValueError: `fns` is empty, a size is not a positive int, or a term's mean value at the
        prior is not positive and finite (it cannot be normalised).
    """
    w, mu, sigma = _gmm(w, mu, sigma)
    if not fns:
        raise ValueError("`fns` must name at least one term: {name: fn(z) -> scalar}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(
            f"`batch_size` must be an int >= 2 (the training batch), got {batch_size!r}"
        )
    if not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
        raise ValueError(f"`num_batches` must be a positive int, got {num_batches!r}")
    z = sample_gmm(key, num_batches * batch_size, w, mu, sigma)
    batches = z.reshape(num_batches, batch_size, mu.shape[1])
    names = list(fns)

    @jax.jit
    def means(batches):
        return jnp.stack([jnp.mean(jax.vmap(fns[name])(batches)) for name in names])

    values = np.asarray(means(batches), dtype=np.float64)
    weights = {}
    for name, value in zip(names, values, strict=True):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"term {name!r} has mean value {value:.6g} on batches drawn from the prior: a "
                "weight 1 / value needs a positive, finite value; check the term or use a larger "
                "`batch_size`"
            )
        weights[name] = float(1.0 / value)
    return weights


# --- WAE-MMD (Tolstikhin et al. 2018) ----------------------------------------------------------


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """||a_i - b_j||^2 [n, m]; clipped at 0 against the expansion's rounding."""
    sq = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(sq, 0.0)


def imq_mmd(x, y, *, scale=1.0, scales=IMQ_SCALES) -> jax.Array:
    """Unbiased MMD^2 with a sum of inverse multiquadratic kernels (Tolstikhin et al. 2018, WAE-MMD
    Algorithm 2; the kernel of their Sec. 4 and their code).

    k(a, b) = sum_s C_s / (C_s + ||a - b||^2), with C_s = 2 d scale^2 s (2 d scale^2 is the
    expected squared distance between two draws of N(0, scale^2 I_d)), and

        MMD^2 = sum_{i != i'} k(x_i, x_i') / (n (n-1)) + sum_{j != j'} k(y_j, y_j') / (m (m-1))
                - 2 sum_{i, j} k(x_i, y_j) / (n m).

    Args:
      x: samples [n, d], n >= 2 (e.g. the codes).
      y: samples [m, d], m >= 2 (e.g. prior draws).
      scale: the prior's standard deviation (keyword; may be an array).
      scales: the multipliers s of the kernel's constant (keyword; a tuple of floats).

    Returns:
      A scalar (a batch-level divergence; unbiased, so it can be slightly negative).
    """
    x = _codes(x, "x")
    y = _codes(y, "y", d=x.shape[1], of="`x`")
    if len(scales) == 0:
        raise ValueError("`scales` must hold at least one kernel multiplier, got an empty tuple")
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    c = 2.0 * d * jnp.square(jnp.asarray(scale, x.dtype)) * jnp.asarray(scales, x.dtype)  # [S]

    def kernel_sum(sq: jax.Array, off_diagonal: bool) -> jax.Array:
        k = jnp.sum(c[:, None, None] / (c[:, None, None] + sq[None]), axis=0)
        if off_diagonal:
            k = jnp.where(jnp.eye(sq.shape[0], dtype=bool), 0.0, k)
        return jnp.sum(k)

    xx = kernel_sum(_squared_distances(x, x), True) / (n * (n - 1))
    yy = kernel_sum(_squared_distances(y, y), True) / (m * (m - 1))
    xy = kernel_sum(_squared_distances(x, y), False) / (n * m)
    return xx + yy - 2.0 * xy


# --- RAE (Ghosh et al. 2020) -------------------------------------------------------------------


def code_penalty(z) -> jax.Array:
    """RAE code penalty L_Z = ||z||^2 / 2 per example (Ghosh et al. 2020, the L_Z^RAE of L_RAE).

    The paper's form; the authors' Keras code uses the mean of z^2 over the code's dimensions,
    2 / d times this, which only rescales beta.

    Args:
      z: codes [B, ...] (every axis but the first is summed).

    Returns:
      [B].
    """
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(f"`z` must be a batch of codes [B, ...], got a scalar of shape {z.shape}")
    return 0.5 * _per_example_sum(jnp.square(z))


def decoder_gradient_penalty(decode_fn: Callable[[jax.Array], jax.Array], z) -> jax.Array:
    """RAE decoder gradient penalty L_GP = ||grad_z D(z)||^2 per example (Ghosh et al. 2020,
    L_REG = L_GP).

    The gradient is that of the decoder's *summed* output with respect to z, g = J^T 1 (the
    column sums of the decoder's Jacobian J), computed with one vector-Jacobian product, as the
    RAE authors' code does with ``K.gradients``; it is not the Frobenius norm of the full
    Jacobian, which would take one product per output. Their Keras code differentiates the sum of
    the *squared* outputs and averages g^2 instead of summing it: pass
    ``lambda v: decode(v) ** 2`` and divide by z's size per example for that variant. Summing over
    the batch is exact when `decode_fn` treats examples independently (no batch statistics:
    BatchNorm in eval mode).

    Args:
      decode_fn: codes [B, ...] -> decoder outputs [B, ...].
      z: codes [B, ...].

    Returns:
      [B]: sum over z's axes of (d sum(D(z)) / dz)^2.
    """
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(f"`z` must be a batch of codes [B, ...], got a scalar of shape {z.shape}")
    grad = jax.grad(lambda v: jnp.sum(decode_fn(v)))(z)
    return _per_example_sum(jnp.square(grad))


def l2_penalty(params) -> jax.Array:
    """RAE L_L2 = ||theta||^2: the sum of squares of every leaf of a pytree (Ghosh et al. 2020,
    the L_REG of their RAE-L2, applied to the decoder's parameters).

    Args:
      params: a pytree of arrays (an `nnx.State`, a dict, ...).

    Returns:
      A scalar (0.0 for an empty tree).
    """
    leaves = jax.tree_util.tree_leaves(params)
    return sum((jnp.sum(jnp.square(leaf)) for leaf in leaves), jnp.zeros((), jnp.float32))


# --- adversarial critics -----------------------------------------------------------------------


def gan_critic_loss(real_logits, fake_logits) -> jax.Array:
    """Binary cross-entropy of the latent discriminator of AAE (Makhzani et al. 2016) and WAE-GAN
    (Tolstikhin et al. 2018, Algorithm 1), per example.

    The discriminator D = sigmoid(logit) says "prior" (real, label 1) for prior draws and "code"
    (fake, label 0) for encoder codes: -log D(real) - log(1 - D(fake)) = softplus(-real) +
    softplus(fake), stable for logits of any size.

    Args:
      real_logits: logits on prior draws [B].
      fake_logits: logits on codes [B] (the same shape).

    Returns:
      [B].
    """
    real, fake = _same_shape(real_logits, fake_logits, "real_logits", "fake_logits")
    return jax.nn.softplus(-real) + jax.nn.softplus(fake)


def gan_generator_loss(fake_logits) -> jax.Array:
    """Non-saturating generator loss -log D(fake) = softplus(-logit) per example (Goodfellow et al.
    2014, Sec. 3): what the WAE-GAN / AAE encoder minimises so its codes pass for prior draws.

    Args:
      fake_logits: the discriminator's logits on codes [B].

    Returns:
      [B].
    """
    return jax.nn.softplus(-jnp.asarray(fake_logits))


def wgan_critic_loss(real_scores, fake_scores) -> jax.Array:
    """WGAN critic loss f(fake) - f(real) per example (Arjovsky et al. 2017; Gulrajani et al. 2017,
    Eq. 3 without the penalty): the critic minimises it, so real scores rise above fake ones.

    Args:
      real_scores: critic scores on prior draws [B].
      fake_scores: critic scores on codes [B] (the same shape).

    Returns:
      [B].
    """
    real, fake = _same_shape(real_scores, fake_scores, "real_scores", "fake_scores")
    return fake - real


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], real, fake, key) -> jax.Array:
    """WGAN-GP penalty (||grad_x critic(x_hat)||_2 - 1)^2 per example (Gulrajani et al. 2017,
    Eq. 3 and Algorithm 1).

    x_hat = e real + (1 - e) fake with e ~ U[0, 1] drawn per example. The per-example gradients
    are the gradient of the critic's summed scores, one backward pass: exact because the critic
    scores each example independently (Gulrajani et al. leave BatchNorm out of the critic for
    this reason). The norm's gradient at a zero gradient is 0, not NaN.

    Args:
      critic_fn: samples [B, ...] -> scores [B].
      real: prior draws [B, ...].
      fake: codes [B, ...] (the same shape).
      key: PRNG key for e.

    Returns:
      [B].
    """
    real, fake = _same_shape(real, fake, "real", "fake")
    if real.ndim < 1:
        raise ValueError(f"`real` must be a batch [B, ...], got a scalar of shape {real.shape}")
    e = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    x_hat = e * real + (1.0 - e) * fake
    grad = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat)
    sq = _per_example_sum(jnp.square(grad))
    # sqrt'(0) is infinite; the double `where` keeps the gradient finite there.
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return jnp.square(norm - 1.0)


# --- MaskAAE (Mondal et al. 2020) --------------------------------------------------------------


def mask(m) -> jax.Array:
    """MaskAAE mask alpha = 1 - exp(-m) in [0, 1) (Mondal et al. 2020; the slides' Figure 4).

    The mask multiplies the codes and the prior draws alike before the discriminator, so that the
    encoder can switch off spurious latent dimensions. alpha is a valid mask only for m >= 0: the
    model keeps m non-negative by its parameterisation (e.g. m = softplus(raw) or raw^2), not by
    this function, which is plain math and jit-able.

    Args:
      m: mask parameters [d], m >= 0.

    Returns:
      alpha [d] (-expm1(-m): accurate for small m).
    """
    return -jnp.expm1(-jnp.asarray(m))


def active_dims(alpha, threshold: float = 0.1) -> jax.Array:
    """Number of active (unmasked) latent dimensions m_A: the count of alpha >= threshold (the
    slides' Figure 5 and Table 2).

    Args:
      alpha: the mask [d] (`mask`).
      threshold: the smallest mask value that counts as active.

    Returns:
      An int32 scalar array (jit-able; `int(...)` it outside `jit`).
    """
    return jnp.sum(jnp.asarray(alpha) >= threshold).astype(jnp.int32)


def nac(z, dims=None) -> jax.Array:
    """Normalized absolute correlation of codes (the slides' Table 2; Mondal et al. 2020).

    The mean over the off-diagonal pairs i != j of |cov_ij| / sqrt(cov_ii cov_jj) (the absolute
    Pearson correlations), over the dimensions selected by `dims` (the WAE / MaskAAE comparison
    uses the active ones) that also have a nonzero variance. A prior N(0, I) has NAC -> 0; a low
    NAC says the aggregate posterior is closer to the prior's independence.

    Args:
      z: codes [N, d], N >= 2.
      dims: optional boolean [d] selecting the dimensions (e.g. ``mask(m) >= 0.1``); None: all.

    Returns:
      A scalar; NaN when fewer than two dimensions are selected with nonzero variance.
    """
    z = _codes(z)
    d = z.shape[1]
    if dims is None:
        selected = jnp.ones((d,), bool)
    else:
        selected = jnp.asarray(dims)
        if selected.shape != (d,) or selected.dtype != jnp.bool_:
            raise ValueError(
                f"`dims` must be a boolean mask [d] = [{d}] over the code's dimensions, got "
                f"shape {selected.shape} and dtype {selected.dtype}; e.g. mask(m) >= 0.1"
            )
    centred = z - jnp.mean(z, axis=0)
    cov = centred.T @ centred / (z.shape[0] - 1)  # the normalisation cancels in the correlation
    var = jnp.diag(cov)
    # A constant column's centred values are rounding errors of its mean (~eps |z|), not spread.
    eps = float(jnp.finfo(z.dtype).eps)
    floor = jnp.square(64.0 * eps * jnp.max(jnp.abs(z), axis=0))
    valid = selected & (var > floor)
    pairs = valid[:, None] & valid[None, :] & ~jnp.eye(d, dtype=bool)
    safe_var = jnp.where(valid, var, 1.0)
    corr = jnp.abs(cov) / jnp.sqrt(safe_var[:, None] * safe_var[None, :])
    count = jnp.sum(pairs)
    total = jnp.sum(jnp.where(pairs, corr, 0.0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


__all__ = [
    "IMQ_SCALES",
    "active_dims",
    "code_penalty",
    "covariance_distance",
    "decoder_gradient_penalty",
    "gan_critic_loss",
    "gan_generator_loss",
    "gmm_moments",
    "gradient_penalty",
    "imq_mmd",
    "ks_distance",
    "l2_penalty",
    "mask",
    "nac",
    "prior_weights",
    "sample_gmm",
    "wgan_critic_loss",
]
