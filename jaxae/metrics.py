"""Evaluation statistics on host NumPy arrays: sample quality, outlier detection, clustering and
likelihood.

Everything here takes already computed features, scores or labels (the Inception features come
from ``jaxae.inception``, which this module does not import) and works in float64.

- FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium"): the Fréchet distance between Gaussians fitted to two feature sets,
  ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4): the unbiased MMD^2 with the
  cubic polynomial kernel, averaged over random subsets.
- Precision and recall with k-NN manifolds (Kynkäänniemi et al. 2019, "Improved precision and
  recall metric for assessing generative models", Sec. 2).
- AUROC (the Mann-Whitney U statistic divided by ``n_pos * n_neg``) with a bootstrap interval.
- NMI, best-map accuracy and the "mAP" of the GMM-DAE appendix (Saseendran et al. 2021, A.4,
  Table 5).
- MSE, PSNR and bits per dimension.

Bad input (wrong rank, mismatched dimensions, NaN/inf, empty arrays, too few samples) raises a
``ValueError`` that names the argument and the problem.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

PROTOCOL = (
    "FID/KID/precision-recall: 10,000 generated samples vs the 10,000 test images of the same "
    "dataset, pixels in [0, 1], then the pytorch-fid Inception transform (bilinear resize to "
    "299x299, 2x-1); Inception pool3 features (TF inception-2015-12-05 weights)."
)
PROTOCOL_N = 10_000  # generated samples and reference images of the standard protocol


# ----------------------------------------------------------------------------------------------
# Validation


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise ValueError(f"{name}: {n_nan} NaN and {n_inf} inf values (shape {x.shape})")


def _as_array(x, name: str, ndim: int, what: str) -> np.ndarray:
    """float64 array of rank ``ndim``, non-empty and finite."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: cannot be read as a float64 array ({e})") from e
    if a.ndim != ndim:
        raise ValueError(f"{name}: wrong rank {a.ndim} (shape {a.shape}); expected {what}")
    if a.size == 0:
        raise ValueError(f"{name}: empty array (shape {a.shape}); expected {what}")
    _check_finite(a, name)
    return a


def _as_features(x, name: str, min_samples: int = 1) -> np.ndarray:
    f = _as_array(x, name, 2, "[N, d] features")
    if f.shape[0] < min_samples:
        raise ValueError(f"{name}: {f.shape[0]} samples; needs at least {min_samples}")
    return f


def _check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"mismatched feature dimension: {name_a} has d={a.shape[1]} (shape {a.shape}), "
            f"{name_b} has d={b.shape[1]} (shape {b.shape})"
        )


def _as_scores(x, name: str) -> np.ndarray:
    return _as_array(x, name, 1, "[n] scores")


def _as_labels(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: wrong rank {a.ndim} (shape {a.shape}); expected [N] labels")
    if a.size == 0:
        raise ValueError(f"{name}: empty array; expected [N] labels")
    if a.dtype.kind == "f":
        _check_finite(a, name)
    return a


# ----------------------------------------------------------------------------------------------
# FID


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set, as pytorch-fid computes them.

    Args:
      features: [N, d] features (e.g. Inception pool3, d = 2048), N >= 2.

    Returns:
      ``(mu [d], sigma [d, d])`` in float64; ``sigma`` is ``np.cov(features, rowvar=False)``
      (divides by N - 1).
    """
    f = _as_features(features, "features", min_samples=2)
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def _check_symmetric(a: np.ndarray, name: str) -> np.ndarray:
    scale = max(float(np.abs(a).max()), np.finfo(np.float64).tiny)
    asym = float(np.abs(a - a.T).max())
    if asym > 1e-6 * scale:
        raise ValueError(
            f"{name}: not symmetric (max |a - a^T| = {asym:.3g}, max |a| = {scale:.3g}); "
            "expected a covariance matrix"
        )
    return 0.5 * (a + a.T)  # removes rounding asymmetry before eigh, which reads one triangle


def _eigh_psd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix, eigenvalues clipped at 0 (rounding)."""
    w, v = np.linalg.eigh(a)
    return np.clip(w, 0.0, None), v


def sqrtm_psd(a) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix.

    ``V diag(sqrt(max(w, 0))) V^T`` from ``a = V diag(w) V^T`` (``np.linalg.eigh``): real and
    symmetric even when ``a`` is singular, where a general-purpose ``scipy.linalg.sqrtm`` can
    return complex parts or fail. Negative eigenvalues are rounding error and are clipped to 0.

    Args:
      a: [d, d] symmetric PSD matrix (e.g. a covariance).

    Returns:
      [d, d] float64 ``s`` with ``s @ s == a`` up to rounding.
    """
    a = _as_array(a, "a", 2, "a [d, d] matrix")
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"a: not square (shape {a.shape}); expected a [d, d] matrix")
    w, v = _eigh_psd(_check_symmetric(a, "a"))
    return (v * np.sqrt(w)) @ v.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^{1/2})`` for symmetric PSD S1, S2.

    ``S1 S2`` is similar to the symmetric PSD ``M = S1^{1/2} S2 S1^{1/2}``
    (``S1^{1/2} M S1^{-1/2} = S1 S2`` when S1 is invertible, and by continuity otherwise), so
    both have the same eigenvalues and ``tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M))``.
    """
    root1 = sqrtm_psd(sigma1)
    m = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, S1) and N(mu2, S2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`` (Dowson & Landau 1982; the FID
    of Heusel et al. 2017). The trace of the matrix square root is the sum of the square roots of
    the (clipped at 0) eigenvalues of the symmetric PSD ``S1^{1/2} S2 S1^{1/2}``: no complex
    parts and no failure on singular covariances, unlike ``scipy.linalg.sqrtm(S1 @ S2)`` in
    pytorch-fid (which then retries with ``1e-6 * I`` added to both).

    Args:
      mu1, mu2: [d] means.
      sigma1, sigma2: [d, d] symmetric PSD covariances.

    Returns:
      The distance, a float >= 0 (rounding can make the formula slightly negative when the
      Gaussians are equal; that is clipped to 0).
    """
    mu1 = _as_array(mu1, "mu1", 1, "[d] mean")
    mu2 = _as_array(mu2, "mu2", 1, "[d] mean")
    sigma1 = _as_array(sigma1, "sigma1", 2, "[d, d] covariance")
    sigma2 = _as_array(sigma2, "sigma2", 2, "[d, d] covariance")
    d = mu1.shape[0]
    for name, shape, want in (
        ("mu2", mu2.shape, (d,)),
        ("sigma1", sigma1.shape, (d, d)),
        ("sigma2", sigma2.shape, (d, d)),
    ):
        if shape != want:
            raise ValueError(
                f"mismatched feature dimension: mu1 has d={d}, so {name} must have shape "
                f"{want}, got {shape}"
            )
    sigma1 = _check_symmetric(sigma1, "sigma1")
    sigma2 = _check_symmetric(sigma2, "sigma2")
    diff = mu1 - mu2
    value = (
        diff @ diff
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * _trace_sqrt_product(sigma1, sigma2)
    )
    return max(float(value), 0.0)


def fid(features_a, features_b, *, quick: bool = False) -> float:
    """Fréchet Inception Distance between two feature sets (Heusel et al. 2017).

    ``frechet_distance`` of the ``gaussian_stats`` of each set. FID is biased upwards for finite
    N, by an amount that depends on N (Chong & Forsyth 2020): compare numbers only at equal
    sample counts (see ``PROTOCOL`` and ``protocol_note``).

    Args:
      features_a, features_b: [N_a, d] and [N_b, d] features, e.g. generated and test images.
      quick: allow fewer than d + 1 samples per set. N samples give a covariance of rank at
        most N - 1, so with N <= d it is singular and the FID is strongly biased; without
        ``quick`` that is an error.

    Returns:
      The FID, a float >= 0.
    """
    a = _as_features(features_a, "features_a", min_samples=2)
    b = _as_features(features_b, "features_b", min_samples=2)
    _check_same_dim(a, b, "features_a", "features_b")
    d = a.shape[1]
    if not quick:
        for name, f in (("features_a", a), ("features_b", b)):
            if f.shape[0] <= d:
                raise ValueError(
                    f"{name}: {f.shape[0]} samples for feature dimension d={d}; the covariance "
                    f"needs at least d + 1 = {d + 1} samples to be full rank (with fewer it is "
                    "singular and the FID biased). Pass quick=True to compute it anyway."
                )
    if min(len(a), len(b)) <= d:  # covariances of rank < d: the same distance, far cheaper
        return _frechet_low_rank(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _frechet_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """`frechet_distance` of the `gaussian_stats` of features a [n, d] and b [m, d], exactly,
    without a d x d matrix: with A, B the centred features, S1 = A^T A / (n - 1) and S2 = B^T B /
    (m - 1), the nonzero eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T / ((n - 1)(m - 1)),
    so tr((S1 S2)^{1/2}) is the sum of the singular values of A B^T over sqrt((n - 1)(m - 1)):
    an SVD of [n, m] in place of two eigendecompositions of [d, d]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = a - a.mean(axis=0), b - b.mean(axis=0)
    n, m = len(a), len(b)
    tr1, tr2 = float((ca**2).sum()) / (n - 1), float((cb**2).sum()) / (m - 1)
    cross = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / np.sqrt((n - 1) * (m - 1))
    diff = float(((a.mean(axis=0) - b.mean(axis=0)) ** 2).sum())
    return max(diff + tr1 + tr2 - 2.0 * cross, 0.0)


# ----------------------------------------------------------------------------------------------
# KID


def polynomial_mmd2(x, y, *, unbiased: bool = True) -> float:
    """MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (Bińkowski et al.).

    Unbiased (the reference implementation's default estimator, ``mmd_est='unbiased'``)::

        sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
            - 2 sum_{i, j} k(x_i, y_j) / (m n)

    which can be negative; biased (the V-statistic): all three terms as plain means, including
    the diagonals ``k(x_i, x_i)``, which biases it upwards.

    Args:
      x: [m, d] features, m >= 2.
      y: [n, d] features, n >= 2.
      unbiased: the U-statistic above (default) or the biased V-statistic.

    Returns:
      The MMD^2 estimate, a float.
    """
    x = _as_features(x, "x", min_samples=2)
    y = _as_features(y, "y", min_samples=2)
    _check_same_dim(x, y, "x", "y")
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    if not unbiased:
        return float(k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean())
    m, n = x.shape[0], y.shape[0]
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kid(
    features_a, features_b, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4).

    The unbiased ``polynomial_mmd2`` of ``subsets`` pairs of random subsets (without
    replacement) of ``subset_size`` samples from each set, as in the reference implementation
    (``polynomial_mmd_averages``). ``subset_size`` is clamped to the smaller set size.

    Args:
      features_a, features_b: [N_a, d] and [N_b, d] features.
      subsets: number of subset pairs.
      subset_size: samples per subset (clamped to ``min(N_a, N_b)``; needs at least 2).
      seed: for ``np.random.default_rng``.

    Returns:
      ``(mean, std)`` over subsets (``std`` with ddof=0, as the reference): the KID and its
      spread between subsets. The mean is unbiased for MMD^2 and can be negative.
    """
    a = _as_features(features_a, "features_a", min_samples=2)
    b = _as_features(features_b, "features_b", min_samples=2)
    _check_same_dim(a, b, "features_a", "features_b")
    if int(subsets) != subsets or subsets < 1:
        raise ValueError(f"subsets: must be a positive integer, got {subsets!r}")
    if int(subset_size) != subset_size or subset_size < 2:
        raise ValueError(f"subset_size: must be an integer >= 2, got {subset_size!r}")
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m == a.shape[0] == b.shape[0]:  # every subset pair is both whole sets, permuted, and the
        return float(polynomial_mmd2(a, b)), 0.0  # unbiased MMD^2 ignores order: one suffices
    rng = np.random.default_rng(seed)
    mmds = np.empty(int(subsets))
    for i in range(int(subsets)):
        sa = a[rng.choice(a.shape[0], m, replace=False)]
        sb = b[rng.choice(b.shape[0], m, replace=False)]
        mmds[i] = polynomial_mmd2(sa, sb)
    return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------------------------
# Precision and recall


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] squared Euclidean distances ``|a|^2 + |b|^2 - 2 a.b``, clipped at 0."""
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0, out=d2)


def knn_radii(features, *, k: int = 3, batch_size: int = 1024) -> np.ndarray:
    """Distance of each sample to its k-th nearest neighbour in the same set, itself excluded.

    Args:
      features: [N, d], N > k.
      k: which neighbour.
      batch_size: rows per block of the [batch_size, N] distance matrix.

    Returns:
      [N] float64 radii (0 where a point has k or more exact duplicates).
    """
    f = _as_features(features, "features")
    _check_k_batch(k, batch_size)
    if f.shape[0] <= k:
        raise ValueError(f"features: {f.shape[0]} samples; k={k} needs at least k + 1")
    return np.sqrt(_knn_sq_radii(f, k, batch_size))


def _check_k_batch(k: int, batch_size: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k: must be a positive integer, got {k!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")


def _knn_sq_radii(f: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    n = f.shape[0]
    f_sq = np.einsum("ij,ij->i", f, f)
    out = np.empty(n)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        d2 = _sq_dists(f[rows], f, f_sq)
        d2[np.arange(rows.size), rows] = np.inf  # excludes the point itself, not its duplicates
        out[rows] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return out


def _inside_any_ball(
    queries: np.ndarray, centres: np.ndarray, sq_radii: np.ndarray, batch_size: int
) -> np.ndarray:
    """[len(queries)] bool: within (<=) the radius of at least one centre."""
    c_sq = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(queries.shape[0], dtype=bool)
    for start in range(0, queries.shape[0], batch_size):
        stop = min(start + batch_size, queries.shape[0])
        out[start:stop] = (_sq_dists(queries[start:stop], centres, c_sq) <= sq_radii).any(axis=1)
    return out


def precision_recall(real, generated, *, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2).

    The manifold of a set Phi is the union of balls around each of its samples, of radius the
    distance to the sample's k-th nearest neighbour in Phi (itself excluded);
    ``f(phi, Phi) = 1`` if ``||phi - phi'|| <= ||phi' - NN_k(phi', Phi)||`` for some
    ``phi'`` in Phi. Then ``precision = mean_{g} f(g, Phi_real)`` and
    ``recall = mean_{r} f(r, Phi_generated)``.

    Squared distances come from ``|a|^2 + |b|^2 - 2 a.b`` in float64, one [batch_size, N] block
    at a time (nothing of size N x N x d is formed), and are compared with squared radii, so no
    square root rounds them. Its rounding error, ~1e-16 |a|^2 (float32, as in the reference
    implementation, would be ~1e-7 |a|^2), only matters for points within that of a ball's
    boundary; for integer or dyadic features of moderate size the arithmetic is exact and a
    point exactly on the boundary counts as inside (``<=``), as in the paper.

    Args:
      real: [N_r, d] features of real images, N_r > k.
      generated: [N_g, d] features of generated images, N_g > k.
      k: the neighbour that sets the radii (3 in the paper).
      batch_size: rows per distance block (memory ``8 * batch_size * N`` bytes).

    Returns:
      ``(precision, recall)``, floats in [0, 1].
    """
    r = _as_features(real, "real")
    g = _as_features(generated, "generated")
    _check_same_dim(r, g, "real", "generated")
    _check_k_batch(k, batch_size)
    for name, f in (("real", r), ("generated", g)):
        if f.shape[0] <= k:
            raise ValueError(f"{name}: {f.shape[0]} samples; k={k} needs at least k + 1")
    r_sq_radii = _knn_sq_radii(r, k, batch_size)
    g_sq_radii = _knn_sq_radii(g, k, batch_size)
    precision = _inside_any_ball(g, r, r_sq_radii, batch_size).mean()
    recall = _inside_any_ball(r, g, g_sq_radii, batch_size).mean()
    return float(precision), float(recall)


# ----------------------------------------------------------------------------------------------
# AUROC


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties given the mean of the ranks they span. O(n log n)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new_group = np.concatenate([[True], xs[1:] != xs[:-1]])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], x.size)  # exclusive
    group_rank = (starts + 1 + ends) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(x.size)
    ranks[order] = group_rank[np.cumsum(new_group) - 1]
    return ranks


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    ranks = _average_ranks(np.concatenate([neg, pos]))
    n_neg, n_pos = neg.size, pos.size
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc(scores_negative, scores_positive) -> float:
    """Area under the ROC curve, ties counted 1/2.

    ``AUC = U / (n_pos n_neg) = P(s_pos > s_neg) + P(s_pos == s_neg) / 2`` over all pairs, with
    the Mann-Whitney ``U = R_pos - n_pos (n_pos + 1) / 2`` from the average ranks (``R_pos``:
    the sum of the positives' ranks in the pooled sample). O(n log n).

    Args:
      scores_negative: [n_neg] scores of the negatives (inliers).
      scores_positive: [n_pos] scores of the positives (outliers); higher = more likely positive.

    Returns:
      The AUC in [0, 1]: 1 when every positive scores above every negative, 0.5 when all tie.
    """
    return _auroc(
        _as_scores(scores_negative, "scores_negative"),
        _as_scores(scores_positive, "scores_positive"),
    )


def auroc_ci(
    scores_negative, scores_positive, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC with a percentile bootstrap confidence interval.

    Each bootstrap replicate resamples the negatives and the positives separately, with
    replacement and at their own sizes (a stratified bootstrap: the class sizes stay fixed),
    and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
    replicates' AUCs (Efron & Tibshirani 1993, Ch. 13).

    Args:
      scores_negative: [n_neg] scores of the negatives.
      scores_positive: [n_pos] scores of the positives; higher = more likely positive.
      n_boot: bootstrap replicates.
      level: coverage of the interval, in (0, 1).
      seed: for ``np.random.default_rng``.

    Returns:
      ``(auc, lo, hi)``: the AUROC of the full data and the interval bounds.
    """
    neg = _as_scores(scores_negative, "scores_negative")
    pos = _as_scores(scores_positive, "scores_positive")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: must be a positive integer, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    boots = np.empty(int(n_boot))
    for i in range(int(n_boot)):
        boots[i] = _auroc(
            neg[rng.integers(0, neg.size, neg.size)], pos[rng.integers(0, pos.size, pos.size)]
        )
    alpha = 1.0 - level
    lo, hi = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return _auroc(neg, pos), float(lo), float(hi)


def roc_curve(inlier_scores, outlier_scores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of an outlier score: the outliers are the positives, higher = outlier.

    One point per distinct score t, from the highest down: the fractions of inliers (FPR) and
    of outliers (TPR) scoring >= t, after a first point (0, 0). Tied scores enter together, so
    a tie between an inlier and an outlier is a diagonal step, and the trapezoid area under the
    curve equals `auroc` (ties counted 1/2).

    Args:
      inlier_scores: [n_neg] scores of the inliers (negatives).
      outlier_scores: [n_pos] scores of the outliers (positives).

    Returns:
      ``(fpr, tpr)``: [T + 1] each, non-decreasing from 0 to 1, T the number of distinct scores.
    """
    neg = _as_scores(inlier_scores, "inlier_scores")
    pos = _as_scores(outlier_scores, "outlier_scores")
    s = np.concatenate([neg, pos])
    order = np.argsort(-s, kind="stable")
    is_pos = np.concatenate([np.zeros(neg.size), np.ones(pos.size)])[order]
    s = s[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last index of each tied group
    tp = np.cumsum(is_pos)[last]
    fp = last + 1 - tp
    return np.concatenate([[0.0], fp / neg.size]), np.concatenate([[0.0], tp / pos.size])


# ----------------------------------------------------------------------------------------------
# Clustering


def _contingency(labels, clusters) -> np.ndarray:
    """[n_labels, n_clusters] counts of the values that occur (every row and column non-empty)."""
    y = _as_labels(labels, "labels")
    c = _as_labels(clusters, "clusters")
    if y.shape != c.shape:
        raise ValueError(f"labels has {y.size} entries, clusters has {c.size}; they must match")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((yi.max() + 1, ci.max() + 1), dtype=np.int64)
    np.add.at(table, (yi, ci), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels, clusters) -> float:
    """Normalized mutual information with the arithmetic-mean normalisation.

    ``NMI = I(Y; C) / ((H(Y) + H(C)) / 2)``, "normalized by the average of the entropy of both
    target and observed labels" (GMM-DAE appendix, Saseendran et al. 2021, A.4; scikit-learn's
    default ``average_method='arithmetic'``), from the empirical joint distribution of
    ``(label, cluster)``. Invariant to renaming labels or clusters. When both labelings have a
    single value (both entropies 0) it is 1, as in scikit-learn.

    Args:
      labels: [N] true classes (any values that ``np.unique`` can sort).
      clusters: [N] cluster assignments.

    Returns:
      NMI in [0, 1].
    """
    table = _contingency(labels, clusters)
    n = table.sum()
    h_y, h_c = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if h_y == 0.0 and h_c == 0.0:
        return 1.0
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    i, j = np.nonzero(table)
    nij = table[i, j].astype(np.float64)
    # log(p_ij / (p_i p_j)) = log(n_ij) + log(n) - log(n_i) - log(n_j), all in counts.
    mi = float((nij / n * (np.log(nij) + np.log(n) - np.log(rows[i]) - np.log(cols[j]))).sum())
    return float(np.clip(mi / (0.5 * (h_y + h_c)), 0.0, 1.0))


def _best_map(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (label, cluster) pairs maximising the matched count (Hungarian algorithm)."""
    return linear_sum_assignment(table, maximize=True)


def cluster_accuracy(labels, clusters) -> float:
    """Best-map clustering accuracy (unsupervised clustering accuracy, e.g. Xie et al. 2016).

    ``max_m (1/N) sum_i [labels_i == m(clusters_i)]`` over one-to-one maps ``m`` from clusters
    to labels, found with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``).
    With more clusters than labels the surplus clusters stay unmapped and their samples count
    as errors (the usual convention; a many-to-one map would be cluster purity instead).

    Args:
      labels: [N] true classes.
      clusters: [N] cluster assignments (any number of clusters).

    Returns:
      Accuracy in [0, 1].
    """
    table = _contingency(labels, clusters)
    rows, cols = _best_map(table)
    return float(table[rows, cols].sum() / table.sum())


def cluster_map(labels, clusters) -> float:
    """The clustering "mAP" of the GMM-DAE appendix (Saseendran et al. 2021, A.4, Table 5).

    Definition used here: the mean over classes of the precision of the cluster that the best
    map (``cluster_accuracy``'s Hungarian assignment) gives each class::

        mAP = (1/C) sum_c |{i: labels_i = c, clusters_i = m(c)}| / |{i: clusters_i = m(c)}|

    i.e. macro-averaged precision after the best one-to-one mapping; a class that gets no
    cluster (more classes than clusters) has precision 0.

    The ambiguity: the appendix names the metric "mean Average Precision (mAP)" and defines
    only NMI. Average precision proper is a retrieval metric over a ranking (area under the
    precision-recall curve) and needs continuous scores, e.g. per-component responsibilities,
    which hard cluster assignments do not have; for a hard assignment the natural reading is
    the per-class precision of the retrieved set (the cluster mapped to the class), averaged
    over classes. Its reported values (MNIST 0.75, Fashion-MNIST 0.61, next to NMI 0.72 and
    0.60) fit that reading but cannot confirm it. Note that surplus clusters (more clusters
    than classes) are ignored, so it can exceed ``cluster_accuracy``.

    Args:
      labels: [N] true classes.
      clusters: [N] cluster assignments.

    Returns:
      mAP in [0, 1].
    """
    table = _contingency(labels, clusters)
    rows, cols = _best_map(table)
    precision = table[rows, cols] / table[:, cols].sum(axis=0)
    return float(precision.sum() / table.shape[0])


# ----------------------------------------------------------------------------------------------
# Reconstruction and likelihood


def mse(x, recon) -> float:
    """Mean squared error per pixel: ``mean((x - recon)^2)`` over all images and pixels.

    Args:
      x: [N, ...] images (e.g. [N, H, W, C] in [0, 1]).
      recon: reconstructions, same shape.

    Returns:
      The mean, a float (in the squared units of the pixels).
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(recon, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x has shape {a.shape}, recon has shape {b.shape}; they must match")
    if a.size == 0:
        raise ValueError(f"x: empty array (shape {a.shape})")
    _check_finite(a, "x")
    _check_finite(b, "recon")
    return float(np.mean((a - b) ** 2))


def psnr(mse_value, peak: float = 1.0):
    """Peak signal-to-noise ratio in dB: ``10 log10(peak^2 / mse)``.

    Args:
      mse_value: a mean squared error (float or array, e.g. per image), >= 0; 0 gives ``inf``.
      peak: the largest possible pixel value (1.0 for [0, 1] images, 255 for uint8).

    Returns:
      PSNR in dB, a float (or an array for array input). Note that the PSNR of the mean MSE
      is not the mean of per-image PSNRs; say which one a table reports.
    """
    m = np.asarray(mse_value, dtype=np.float64)
    _check_finite(m, "mse")
    if (m < 0).any():
        raise ValueError(f"mse: negative value {float(m.min())}")
    if not (math.isfinite(peak) and peak > 0):
        raise ValueError(f"peak: must be a positive finite number, got {peak!r}")
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(peak**2 / m)
    return float(out) if out.ndim == 0 else out


def bits_per_dim(nats_per_image, num_dims: int, *, scale: float = 1.0):
    """Negative log-likelihood in bits per dimension.

    ``bpd = (nats + D ln(scale)) / (D ln 2) = nats / (D ln 2) + log2(scale)``.

    Convention: ``nats_per_image`` is ``-log p(y)`` of a density over ``y = x / scale``, where
    ``x`` is the data in the units the bpd should refer to. The change of variables
    ``p_x(x) = p_y(x / scale) / scale^D`` adds ``log2(scale)`` bits per dimension.

    - ``scale=1`` (default): plain conversion, bpd of the density in the units it was fitted in.
    - ``scale=256``: the usual bpd of 8-bit images (Theis et al. 2016, Sec. 3.1; Dinh et al.
      2017, Sec. 4.1) for a density on [0, 1]^D fitted to dequantized pixels
      ``y = (x + u) / 256``, ``x in {0, ..., 255}``, ``u ~ U[0, 1)^D`` (``jaxae.data.Preprocess(
      dequantize=True)``): ``+ log2(256) = 8`` bits per dimension, and the result is an upper
      bound on the discrete model's ``-log2 P(x) / D`` (exact for a density constant on each
      bin). Use ``scale=255`` only to change the units of a density on ``x / 255``; that is a
      change of variables, not a discrete likelihood.

    Args:
      nats_per_image: -log-likelihood in nats per image (float or [N] array).
      num_dims: D, the number of dimensions per image (e.g. 28 * 28 = 784).
      scale: the factor the data were divided by before the density was fitted.

    Returns:
      Bits per dimension, a float (or an array for array input).
    """
    nats = np.asarray(nats_per_image, dtype=np.float64)
    _check_finite(nats, "nats_per_image")
    if int(num_dims) != num_dims or num_dims < 1:
        raise ValueError(f"num_dims: must be a positive integer, got {num_dims!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: must be a positive finite number, got {scale!r}")
    out = nats / (num_dims * math.log(2.0)) + math.log2(scale)
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------------------------
# Protocol


def protocol_note(n_samples: int, n_reference: int, quick: bool = False) -> str:
    """One sentence for a table: ``PROTOCOL``, or how this evaluation departs from it.

    Args:
      n_samples: generated samples used.
      n_reference: reference (test) images used.
      quick: whether ``fid(..., quick=True)`` was used.

    Returns:
      ``PROTOCOL`` when both counts are 10,000 and ``quick`` is False; otherwise a sentence
      giving the counts used and saying the numbers are not comparable to the standard protocol.
    """
    for name, n in (("n_samples", n_samples), ("n_reference", n_reference)):
        if int(n) != n or n < 1:
            raise ValueError(f"{name}: must be a positive integer, got {n!r}")
    if n_samples == PROTOCOL_N and n_reference == PROTOCOL_N and not quick:
        return PROTOCOL
    mode = " in quick mode (covariances possibly singular)" if quick else ""
    return (
        f"FID/KID/precision-recall: {int(n_samples):,} generated samples vs "
        f"{int(n_reference):,} test images{mode}, otherwise as the standard protocol (pixels "
        "in [0, 1], pytorch-fid Inception transform, pool3 features of the TF "
        "inception-2015-12-05 weights); these numbers are not comparable to the standard "
        f"{PROTOCOL_N:,}-vs-{PROTOCOL_N:,} protocol."
    )
