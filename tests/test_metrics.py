"""Tests for jaxae.metrics against independent references: SciPy, pytorch-fid's formula, closed
forms and brute-force loops."""

import itertools
import math

import numpy as np
import pytest
from scipy import linalg

from jaxae import metrics


def random_cov(rng, d, n=None):
    """A random covariance: the sample covariance of n correlated Gaussian samples (n <= d gives a
    rank-deficient one), or a well-conditioned one when n is None."""
    if n is None:
        q = linalg.qr(rng.normal(size=(d, d)))[0]
        return (q * rng.uniform(0.5, 3.0, d)) @ q.T
    return np.cov(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), rowvar=False)


def pytorch_fid_trace(sigma1, sigma2, eps=1e-6):
    """tr((S1 S2)^{1/2}) as pytorch-fid's calculate_frechet_distance computes it."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return np.trace(covmean)


def pytorch_fid(mu1, sigma1, mu2, sigma2):
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * pytorch_fid_trace(sigma1, sigma2)


# ----------------------------------------------------------------------------------------------
# FID


def test_gaussian_stats_match_numpy_unbiased_cov():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = metrics.gaussian_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(0)
    np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
    _, sigma1 = metrics.gaussian_stats(x[:, :1])  # d = 1 keeps a [1, 1] matrix
    assert sigma1.shape == (1, 1)


@pytest.mark.parametrize(
    "d, n, rtol", [(10, None, 1e-12), (40, 200, 1e-12), (10, 5, 1e-6), (64, 20, 1e-6)]
)
def test_sqrtm_psd_matches_scipy(d, n, rtol):
    a = random_cov(np.random.default_rng(d), d, n)
    root = metrics.sqrtm_psd(a)
    ref = linalg.sqrtm(a)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(root, np.real(ref), atol=rtol * scale)
    np.testing.assert_allclose(root, root.T, atol=0)  # exactly symmetric
    np.testing.assert_allclose(root @ root, a, atol=1e-13 * np.abs(a).max())
    assert np.linalg.eigvalsh(root).min() > -1e-12 * scale


@pytest.mark.parametrize(
    "d, n, rtol", [(10, None, 1e-11), (40, 200, 1e-11), (10, 5, 1e-6), (64, 20, 1e-6)]
)
def test_frechet_distance_matches_pytorch_fid_formula(d, n, rtol):
    rng = np.random.default_rng(100 + d)
    sigma1, sigma2 = random_cov(rng, d, n), random_cov(rng, d, n)
    if n is not None:
        assert np.linalg.matrix_rank(sigma1) == min(n - 1, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
    want = pytorch_fid(mu1, sigma1, mu2, sigma2)
    np.testing.assert_allclose(got, want, rtol=rtol)
    # The trace term on its own, where cancellation cannot hide an error.
    np.testing.assert_allclose(
        metrics._trace_sqrt_product(sigma1, sigma2), pytorch_fid_trace(sigma1, sigma2), rtol=rtol
    )
    # W2 is symmetric although the computation (S1^1/2 S2 S1^1/2) is not.
    np.testing.assert_allclose(
        metrics.frechet_distance(mu2, sigma2, mu1, sigma1), got, rtol=max(rtol, 1e-10)
    )


def test_fid_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(300, 16)) * 5 + 3
    value = metrics.fid(x, x)
    assert 0.0 <= value < 1e-9
    # A permuted copy too (different summation order).
    assert metrics.fid(x, x[::-1]) < 1e-9


def test_frechet_distance_closed_form_commuting_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr((S1 S2)^1/2) = sum sqrt(a b).
    rng = np.random.default_rng(2)
    d = 6
    q = linalg.qr(rng.normal(size=(d, d)))[0]
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = metrics.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # Singular: b has zeros, the sqrt of the product has them too.
    b[:3] = 0
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = metrics.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_frechet_distance_closed_form_2d_non_commuting():
    # In 2-D, M = S1 S2 has eigenvalues l1, l2 >= 0 and
    # (sqrt l1 + sqrt l2)^2 = tr M + 2 sqrt(det M).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    want = 0.25 + 6.25 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-13)


def test_fid_of_large_samples_approaches_the_population_value():
    rng = np.random.default_rng(3)
    d = 4
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    population = metrics.frechet_distance(mu1, s1, mu2, s2)
    errors = []
    for n in (1_000, 200_000):
        x = rng.multivariate_normal(mu1, s1, size=n)
        y = rng.multivariate_normal(mu2, s2, size=n)
        errors.append(abs(metrics.fid(x, y) - population))
    assert errors[1] < 0.01 * population
    assert errors[1] < errors[0]


def test_fid_needs_more_samples_than_dimensions_unless_quick():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(50, 8))
    with pytest.raises(ValueError, match=r"features_a: 8 samples.*d=8.*quick=True"):
        metrics.fid(a, b)
    with pytest.raises(ValueError, match="features_b: 8 samples"):
        metrics.fid(b, a)
    value = metrics.fid(a, b, quick=True)
    np.testing.assert_allclose(
        value, pytorch_fid(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b)), rtol=1e-6
    )
    metrics.fid(rng.normal(size=(9, 8)), b)  # d + 1 samples: full rank, allowed


@pytest.mark.parametrize("which", ["features_a", "features_b"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fid_rejects_non_finite_features_naming_the_set(which, bad):
    rng = np.random.default_rng(5)
    sets = {"features_a": rng.normal(size=(20, 3)), "features_b": rng.normal(size=(20, 3))}
    sets[which][4, 1] = bad
    with pytest.raises(ValueError, match=rf"{which}: \d NaN and \d inf"):
        metrics.fid(sets["features_a"], sets["features_b"])


def test_fid_rejects_bad_shapes():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="mismatched feature dimension"):
        metrics.fid(rng.normal(size=(20, 3)), rng.normal(size=(20, 4)))
    with pytest.raises(ValueError, match="features_a: wrong rank 1"):
        metrics.fid(rng.normal(size=20), rng.normal(size=(20, 4)))
    with pytest.raises(ValueError, match="features_b: empty array"):
        metrics.fid(rng.normal(size=(20, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="features: 1 samples; needs at least 2"):
        metrics.gaussian_stats(np.zeros((1, 3)))


def test_frechet_distance_and_sqrtm_reject_bad_matrices():
    eye = np.eye(3)
    with pytest.raises(ValueError, match=r"mismatched feature dimension.*sigma2.*\(3, 3\)"):
        metrics.frechet_distance(np.zeros(3), eye, np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match=r"mismatched feature dimension.*mu2"):
        metrics.frechet_distance(np.zeros(3), eye, np.zeros(2), eye)
    with pytest.raises(ValueError, match="sigma1: not symmetric"):
        metrics.frechet_distance(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), eye)
    with pytest.raises(ValueError, match="sigma2: 1 NaN"):
        metrics.frechet_distance(np.zeros(3), eye, np.zeros(3), np.diag([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="a: not square"):
        metrics.sqrtm_psd(np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------------
# KID


def brute_force_mmd2(x, y, unbiased):
    d = len(x[0])
    k = lambda a, b: (sum(ai * bi for ai, bi in zip(a, b, strict=True)) / d + 1) ** 3
    m, n = len(x), len(y)
    pairs = lambda s, t: [(i, j) for i in range(s) for j in range(t)]
    if unbiased:
        xx = sum(k(x[i], x[j]) for i, j in pairs(m, m) if i != j) / (m * (m - 1))
        yy = sum(k(y[i], y[j]) for i, j in pairs(n, n) if i != j) / (n * (n - 1))
    else:
        xx = sum(k(x[i], x[j]) for i, j in pairs(m, m)) / m**2
        yy = sum(k(y[i], y[j]) for i, j in pairs(n, n)) / n**2
    xy = sum(k(x[i], y[j]) for i, j in pairs(m, n)) / (m * n)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("unbiased", [True, False])
def test_polynomial_mmd2_matches_brute_force(unbiased):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.3
    np.testing.assert_allclose(
        metrics.polynomial_mmd2(x, y, unbiased=unbiased),
        brute_force_mmd2(x.tolist(), y.tolist(), unbiased),
        rtol=1e-12,
    )


def test_kid_clamps_subset_size_and_matches_brute_force():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) * 1.5
    mean, std = metrics.kid(x, y, subsets=4, subset_size=1000, seed=0)
    # subset_size is clamped to 5: all 5 of y, and 5 of the 6 rows of x.
    rng0 = np.random.default_rng(0)
    xs, ys = x[rng0.choice(6, 5, replace=False)], y[rng0.choice(5, 5, replace=False)]
    first = brute_force_mmd2(xs.tolist(), ys.tolist(), True)
    mean1, std1 = metrics.kid(x, y, subsets=1, subset_size=1000, seed=0)
    np.testing.assert_allclose(mean1, first, rtol=1e-12)
    assert std1 == 0.0
    assert std > 0.0  # the subsets of x differ
    # All four subsets, drawn as documented (x's subset, then y's, from one default_rng(seed)).
    rng0 = np.random.default_rng(0)
    per_subset = []
    for _ in range(4):
        xs, ys = x[rng0.choice(6, 5, replace=False)], y[rng0.choice(5, 5, replace=False)]
        per_subset.append(brute_force_mmd2(xs.tolist(), ys.tolist(), True))
    np.testing.assert_allclose((mean, std), (np.mean(per_subset), np.std(per_subset)), rtol=1e-10)
    # With both sets at the subset size every subset is a permutation: the same value each time.
    mean2, std2 = metrics.kid(x[:5], y, subsets=3)
    np.testing.assert_allclose(
        mean2, brute_force_mmd2(x[:5].tolist(), y.tolist(), True), rtol=1e-12
    )
    assert std2 < 1e-12 * abs(mean2)


def test_kid_unbiased_estimator_is_unbiased_and_the_v_statistic_is_not():
    rng = np.random.default_rng(9)
    d, m, reps = 16, 50, 300
    u, v = np.empty(reps), np.empty(reps)
    for i in range(reps):
        x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        u[i] = metrics.polynomial_mmd2(x, y)
        v[i] = metrics.polynomial_mmd2(x, y, unbiased=False)
    se_u, se_v = u.std() / np.sqrt(reps), v.std() / np.sqrt(reps)
    assert abs(u.mean()) < 4 * se_u
    assert (u < 0).any()  # the unbiased estimate can be negative
    assert v.mean() > 20 * se_v and (v > 0).all()


def test_kid_same_distribution_near_zero_shifted_clearly_positive():
    rng = np.random.default_rng(10)
    d = 8
    x, y = rng.normal(size=(4000, d)), rng.normal(size=(4000, d))
    mean, std = metrics.kid(x, y, subsets=50, subset_size=100, seed=1)
    assert abs(mean) < 4 * std / np.sqrt(50)
    shifted, std_s = metrics.kid(x, y + 0.5, subsets=50, subset_size=100, seed=1)
    assert shifted > 10 * std_s / np.sqrt(50) and shifted > 10 * abs(mean)
    assert metrics.kid(x, y + 0.5, subsets=50, subset_size=100, seed=1) == (shifted, std_s)


def test_kid_rejects_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="mismatched feature dimension"):
        metrics.kid(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="features_b: 1 samples"):
        metrics.kid(x, np.zeros((1, 3)))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="features_a: 1 NaN"):
        metrics.kid(bad, x)
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(x, x, subset_size=1)


# ----------------------------------------------------------------------------------------------
# Precision and recall


def brute_force_precision_recall(real, gen, k):
    def radii(f):
        d = np.linalg.norm(f[:, None] - f[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    def inside(q, c, r):
        return (np.linalg.norm(q[:, None] - c[None], axis=-1) <= r[None]).any(axis=1).mean()

    return inside(gen, real, radii(real)), inside(real, gen, radii(gen))


def test_precision_recall_identical_sets_is_one():
    x = np.random.default_rng(11).normal(size=(200, 32)) * 10 + 100
    assert metrics.precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_far_apart_sets_is_zero():
    rng = np.random.default_rng(12)
    assert metrics.precision_recall(rng.normal(size=(100, 8)), rng.normal(size=(80, 8)) + 50) == (
        0.0,
        0.0,
    )


def test_precision_recall_hand_case():
    # 1-D, k = 1. Real {0, 1, 3}: radii 1, 1, 2. Generated {0.5, 2.5, 6, 20}: radii 2, 2, 3.5, 14.
    # Precision: 0.5 (in ball of 0), 2.5 (ball of 3) in; 6 (3 away from 3 > 2) and 20 out -> 2/4.
    # Recall: 0, 1 within 2 of 0.5; 3 within 2 of 2.5 -> 3/3.
    real = np.array([[0.0], [1.0], [3.0]])
    gen = np.array([[0.5], [2.5], [6.0], [20.0]])
    np.testing.assert_allclose(metrics.knn_radii(real, k=1), [1, 1, 2])
    np.testing.assert_allclose(metrics.knn_radii(gen, k=1), [2, 2, 3.5, 14])
    assert metrics.precision_recall(real, gen, k=1) == (0.5, 1.0)
    # k = 2: real radii 3, 2, 3 -> 6 is exactly on the ball of 3 (counts, <=), 20 is not.
    # Generated radii 2.5, 3.5, 5.5, 17.5: real 0, 1, 3 all covered.
    assert metrics.precision_recall(real, gen, k=2) == (0.75, 1.0)


@pytest.mark.parametrize("batch_size", [1, 7, 4096])
def test_precision_recall_matches_brute_force(batch_size):
    rng = np.random.default_rng(13)
    real = rng.normal(size=(120, 5))
    gen = rng.normal(size=(90, 5)) * 1.4 + 0.3
    got = metrics.precision_recall(real, gen, k=3, batch_size=batch_size)
    want = brute_force_precision_recall(real, gen, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert 0.1 < got[0] < 0.95 and 0.1 < got[1] < 1.0  # a case that discriminates


def test_knn_radii_duplicates_and_errors():
    # Duplicates are neighbours at distance 0; only the point itself is excluded.
    np.testing.assert_allclose(metrics.knn_radii(np.array([[0.0], [0.0], [5.0]]), k=1), [0, 0, 5])
    with pytest.raises(ValueError, match="generated: 3 samples; k=3"):
        metrics.precision_recall(np.zeros((10, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="mismatched feature dimension"):
        metrics.precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="real: 1 NaN"):
        metrics.precision_recall(np.pad([[np.nan]], ((0, 9), (0, 1))), np.zeros((10, 2)))


# ----------------------------------------------------------------------------------------------
# AUROC


def brute_force_auroc(neg, pos):
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("n_neg, n_pos, levels", [(1, 1, 2), (30, 17, 4), (200, 150, 10)])
def test_auroc_matches_brute_force_with_ties(n_neg, n_pos, levels):
    rng = np.random.default_rng(n_neg)
    neg = rng.integers(0, levels, n_neg)
    pos = rng.integers(0, levels, n_pos) + rng.integers(0, 2, n_pos)
    want = brute_force_auroc(neg.tolist(), pos.tolist())
    np.testing.assert_allclose(metrics.auroc(neg, pos), want, rtol=1e-14)


def test_auroc_hand_cases():
    assert metrics.auroc([0, 1, 2], [3, 4]) == 1.0
    assert metrics.auroc([3, 4], [0, 1, 2]) == 0.0
    assert metrics.auroc([1, 1, 1], [1, 1]) == 0.5
    # pos 2 beats neg 1, ties neg 2, loses to neg 3: (1 + 0.5 + 0) / 3.
    np.testing.assert_allclose(metrics.auroc([1, 2, 3], [2]), 0.5)
    np.testing.assert_allclose(metrics.auroc([1.0, 2.0], [1.5, 2.0]), (1 + 1 + 0 + 0.5) / 4)


def test_auroc_ci_contains_estimate_and_narrows_with_data():
    rng = np.random.default_rng(14)
    widths = []
    for n in (40, 2000):
        neg, pos = rng.normal(size=n), rng.normal(size=n // 2) + 1.0
        auc, lo, hi = metrics.auroc_ci(neg, pos, n_boot=300, seed=0)
        assert auc == metrics.auroc(neg, pos)
        assert lo < auc < hi
        widths.append(hi - lo)
    assert widths[1] < 0.3 * widths[0]
    # Population AUC for N(1, 1) vs N(0, 1): Phi(1 / sqrt 2) = 0.760; the large-n CI covers it.
    assert lo < 0.7602 < hi
    # Wider level, wider interval; same seed, same interval.
    _, lo99, hi99 = metrics.auroc_ci(neg, pos, n_boot=300, level=0.99, seed=0)
    assert lo99 <= lo and hi99 >= hi
    assert metrics.auroc_ci(neg, pos, n_boot=300, seed=0) == (auc, lo, hi)


@pytest.mark.parametrize("n_neg, n_pos", [(20, 2000), (2000, 20)])
def test_auroc_ci_width_matches_delong(n_neg, n_pos):
    # Both classes must be resampled: with one class small, its sampling error dominates.
    # DeLong et al. (1988): SE^2 = var(V_pos) / n_pos + var(V_neg) / n_neg with the placement
    # values V_pos_i = P(neg < pos_i) (+ ties / 2) and V_neg_j = P(pos > neg_j) (+ ties / 2).
    rng = np.random.default_rng(19)
    neg, pos = rng.normal(size=n_neg), rng.normal(size=n_pos) + 1.0
    auc, lo, hi = metrics.auroc_ci(neg, pos, n_boot=400, level=0.95, seed=1)
    wins = (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])
    se = math.sqrt(wins.mean(1).var(ddof=1) / n_pos + wins.mean(0).var(ddof=1) / n_neg)
    assert 0.75 < (hi - lo) / (2 * 1.96 * se) < 1.3


def test_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match="scores_positive: empty array"):
        metrics.auroc([1.0], [])
    with pytest.raises(ValueError, match="scores_negative: 1 NaN"):
        metrics.auroc([1.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="scores_positive: wrong rank 2"):
        metrics.auroc([1.0], [[1.0]])
    with pytest.raises(ValueError, match="level"):
        metrics.auroc_ci([1.0], [2.0], level=1.0)


# ----------------------------------------------------------------------------------------------
# Clustering


def test_nmi_hand_case():
    # Labels {0,0,0,1,1,1}, clusters {a,a,b,b,c,c}; contingency [[2, 1, 0], [0, 1, 2]], N = 6.
    # H(Y) = ln 2, H(C) = ln 3. MI = sum p_ij ln(p_ij / (p_i p_j)):
    #   (0,a), (1,c): p = 1/3, p_i p_j = 1/2 * 1/3 -> 2 * (1/3) ln 2; (0,b), (1,b): ln 1 = 0.
    # NMI = (2/3) ln 2 / ((ln 2 + ln 3) / 2) = (4/3) ln 2 / ln 6.
    labels = [0, 0, 0, 1, 1, 1]
    clusters = ["a", "a", "b", "b", "c", "c"]
    np.testing.assert_allclose(
        metrics.nmi(labels, clusters), (4 / 3) * math.log(2) / math.log(6), rtol=1e-14
    )
    # Best map: 0 -> a (2), 1 -> c (2), b unmapped -> accuracy 4/6; both mapped clusters are
    # pure -> mAP 1.
    np.testing.assert_allclose(metrics.cluster_accuracy(labels, clusters), 4 / 6)
    np.testing.assert_allclose(metrics.cluster_map(labels, clusters), 1.0)


def test_cluster_accuracy_and_map_hand_case():
    # Contingency (labels x clusters) [[3, 1, 0], [0, 2, 0], [1, 0, 3]]; best map 0->0, 1->1,
    # 2->2: 8 of 10. Precisions 3/4, 2/3, 3/3.
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    clusters = [0, 0, 0, 1, 1, 1, 0, 2, 2, 2]
    np.testing.assert_allclose(metrics.cluster_accuracy(labels, clusters), 0.8)
    np.testing.assert_allclose(metrics.cluster_map(labels, clusters), (3 / 4 + 2 / 3 + 1) / 3)
    # Fewer clusters than labels: label 1 gets none, its precision counts 0.
    clusters2 = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(metrics.cluster_accuracy(labels, clusters2), 0.8)
    np.testing.assert_allclose(metrics.cluster_map(labels, clusters2), (4 / 6 + 0 + 1) / 3)


def test_cluster_accuracy_is_the_brute_force_best_permutation():
    rng = np.random.default_rng(15)
    labels = rng.integers(0, 4, 60)
    clusters = np.where(rng.random(60) < 0.6, (labels + 1) % 4, rng.integers(0, 4, 60))
    best = max(
        np.mean(np.asarray(perm)[clusters] == labels) for perm in itertools.permutations(range(4))
    )
    np.testing.assert_allclose(metrics.cluster_accuracy(labels, clusters), best)


def test_clustering_metrics_are_invariant_to_renaming():
    rng = np.random.default_rng(16)
    labels = rng.integers(0, 5, 300)
    clusters = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 6, 300))
    renamed = (rng.permutation(6) * 10 + 7)[clusters]
    relabelled = rng.permutation(5)[labels]
    for fn in (metrics.nmi, metrics.cluster_accuracy, metrics.cluster_map):
        base = fn(labels, clusters)
        assert 0.2 < base < 1.0
        np.testing.assert_allclose(fn(relabelled, renamed), base, rtol=1e-13)


def test_clustering_perfect_and_independent():
    rng = np.random.default_rng(17)
    labels = rng.integers(0, 10, 100_000)
    perfect = (labels * 3 + 1) % 10  # a renaming
    for fn in (metrics.nmi, metrics.cluster_accuracy, metrics.cluster_map):
        np.testing.assert_allclose(fn(labels, perfect), 1.0, rtol=1e-13)
    independent = rng.integers(0, 10, 100_000)
    assert 0.0 <= metrics.nmi(labels, independent) < 1e-3
    assert metrics.cluster_accuracy(labels, independent) < 0.12
    assert metrics.nmi([3, 3, 3], [1, 1, 1]) == 1.0  # both constant: sklearn's convention
    assert metrics.nmi([0, 1, 0, 1], [5, 5, 5, 5]) == 0.0


def test_clustering_rejects_bad_input():
    with pytest.raises(ValueError, match="labels has 3 entries, clusters has 2"):
        metrics.nmi([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="clusters: empty"):
        metrics.cluster_accuracy([0], [])
    with pytest.raises(ValueError, match="labels: wrong rank 2"):
        metrics.cluster_map([[0, 1]], [0, 1])


# ----------------------------------------------------------------------------------------------
# Reconstruction and likelihood


def test_mse_and_psnr():
    x = np.zeros((2, 2, 2, 1))
    recon = x.copy()
    recon[0, 0, 0, 0] = 0.4  # one pixel of 8 off by 0.4
    np.testing.assert_allclose(metrics.mse(x, recon), 0.16 / 8)
    np.testing.assert_allclose(metrics.psnr(0.01), 20.0)
    np.testing.assert_allclose(metrics.psnr(0.01 * 255**2, peak=255), 20.0)
    np.testing.assert_allclose(metrics.psnr(np.array([1e-2, 1e-4])), [20.0, 40.0])
    assert metrics.psnr(0.0) == math.inf
    with pytest.raises(ValueError, match="x has shape .* recon has shape"):
        metrics.mse(x, recon[0])
    with pytest.raises(ValueError, match="recon: 1 NaN"):
        metrics.mse(x, np.where(recon > 0, np.nan, recon))
    with pytest.raises(ValueError, match="mse: negative"):
        metrics.psnr(-1.0)


def test_bits_per_dim_closed_forms():
    # The uniform density on [0, 1]^D: 0 nats; on dequantized 8-bit pixels it is the uniform
    # distribution over 256 levels per dimension, exactly 8 bits per dimension.
    assert metrics.bits_per_dim(0.0, 784) == 0.0
    assert metrics.bits_per_dim(0.0, 784, scale=256) == 8.0
    np.testing.assert_allclose(metrics.bits_per_dim(784 * math.log(2), 784), 1.0)
    # A density constant on each bin [x/256, (x+1)/256): p(y) = 256^D P(x), so the correction
    # recovers the discrete -log2 P(x) / D exactly.
    rng = np.random.default_rng(18)
    probs = rng.dirichlet(np.ones(256), size=3)  # D = 3 independent pixels
    x = np.array([[0, 17, 255], [128, 3, 9]])
    p = probs[np.arange(3), x]  # [2, 3]
    nats_density = -np.log(256 * p).sum(axis=1)
    bits_discrete = -np.log2(p).sum(axis=1) / 3
    np.testing.assert_allclose(metrics.bits_per_dim(nats_density, 3, scale=256), bits_discrete)
    # A standard normal per dimension, evaluated at 0: 0.5 ln(2 pi) nats each.
    np.testing.assert_allclose(
        metrics.bits_per_dim(10 * 0.5 * math.log(2 * math.pi), 10), 0.5 * math.log2(2 * math.pi)
    )
    with pytest.raises(ValueError, match="num_dims"):
        metrics.bits_per_dim(1.0, 0)
    with pytest.raises(ValueError, match="nats_per_image: 0 NaN and 1 inf"):
        metrics.bits_per_dim(math.inf, 4)


# ----------------------------------------------------------------------------------------------
# Protocol


def test_protocol_note():
    assert metrics.protocol_note(10_000, 10_000, False) == metrics.PROTOCOL
    assert "10,000 generated samples" in metrics.PROTOCOL and "2x-1" in metrics.PROTOCOL
    note = metrics.protocol_note(2_000, 10_000, False)
    assert "2,000 generated samples vs 10,000 test images" in note
    assert "not comparable" in note and note.count(". ") == 0 and note.endswith(".")
    quick = metrics.protocol_note(10_000, 10_000, quick=True)
    assert "quick" in quick and "not comparable" in quick
    with pytest.raises(ValueError, match="n_samples"):
        metrics.protocol_note(0, 10_000)


def test_fid_with_fewer_samples_than_features_takes_the_low_rank_route_exactly():
    """n <= d: the SVD of the [n, m] cross product gives the d x d formula's distance (to its
    rounding: the d x d route sums square roots of clipped ~1e-15 eigenvalues of rank-deficient
    products)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 64)) + 0.3
    b = rng.normal(size=(15, 64)) @ rng.normal(size=(64, 64)) / 8
    want = metrics.frechet_distance(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
    assert metrics.fid(a, b, quick=True) == pytest.approx(want, rel=1e-7)
    assert metrics.fid(a, a, quick=True) == pytest.approx(0.0, abs=1e-9)
