"""jaxae.distributions vs independent references: TFP on JAX, SciPy, closed forms, Monte Carlo.

Exact comparisons run in float64 inside `jax.enable_x64(True)` (the `x64` fixture), which restores
the global setting afterwards because other test files share the process.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats
from scipy.special import gammaln
from tensorflow_probability.substrates import jax as tfp

from jaxae import distributions as jd

tfd = tfp.distributions
tfl = tfp.tf2jax.linalg

KINDS = ("identity", "diag", "tril")
RTOL = 1e-9  # float64 comparisons with an independent implementation


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _tril(rng, d, batch=()):
    """Well-conditioned lower-triangular factors with a positive diagonal, [*batch, d, d]."""
    out = np.tril(rng.normal(size=batch + (d, d)), -1) * 0.3
    idx = np.arange(d)
    out[..., idx, idx] = rng.uniform(0.5, 1.5, size=batch + (d,))
    return out


def _factor(rng, kind, d, batch=()):
    """(our value or None, dense L) for one scale kind."""
    if kind == "identity":
        return None, np.broadcast_to(np.eye(d), batch + (d, d))
    if kind == "diag":
        v = rng.uniform(0.5, 1.5, size=batch + (d,))
        return v, v[..., :, None] * np.eye(d)
    tril = _tril(rng, d, batch)
    return tril, tril


def _tfp_op(kind, value, d):
    if kind == "identity":
        return tfl.LinearOperatorIdentity(d, dtype=jnp.float64)
    if kind == "diag":
        return tfl.LinearOperatorDiag(value)
    return tfl.LinearOperatorLowerTriangular(value)


def _mvt_kwargs(kind, value):
    return {"identity": {}, "diag": {"scale_diag": value}, "tril": {"scale_tril": value}}[kind]


def _mat_kwargs(row_kind, row, col_kind, col):
    kw = {}
    if row_kind != "identity":
        kw[f"scale_row_{row_kind}"] = row
    if col_kind != "identity":
        kw[f"scale_column_{col_kind}"] = col
    return kw


def _closed_form_moments(loc, var):
    """mean = mode = loc and the given per-element variance (NumPy references)."""
    return {"mean": loc, "mode": loc, "variance": var}


def _stats(dist, x):
    return {
        "log_prob": dist.log_prob(x),
        "mean": dist.mean(),
        "mode": dist.mode(),
        "variance": dist.variance(),
    }


# ----------------------------------------------------------------------------------------------
# Multivariate Student t
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_mvt_matches_tfp_and_scipy(x64, kind):
    rng = np.random.default_rng(0)
    d, b = 4, 2
    df = np.array([3.5, 7.0])
    loc = rng.normal(size=(b, d))
    value, dense = _factor(rng, kind, d, (b,))
    x = rng.normal(size=(5, b, d)) * 2

    @jax.jit
    def run(df, loc, value, x):  # built inside jit, as a head does
        ref = tfd.MultivariateStudentTLinearOperator(df, loc, _tfp_op(kind, value, d))
        return _stats(jd.MultivariateStudentT(df, loc, **_mvt_kwargs(kind, value)), x), (
            ref.log_prob(x)
        )

    ours, ref_log_prob = run(df, loc, value, x)
    assert ours["log_prob"].shape == (5, b)
    var = np.einsum("bij,bij->bi", dense, dense) * (df / (df - 2))[:, None]  # diag(L L^T) nu/(nu-2)
    ref = _closed_form_moments(loc, var) | {"log_prob": ref_log_prob}
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], rtol=RTOL, err_msg=k)
    for i in range(b):
        sp = scipy.stats.multivariate_t(loc[i], dense[i] @ dense[i].T, df=df[i])
        np.testing.assert_allclose(ours["log_prob"][:, i], sp.logpdf(x[:, i]), rtol=RTOL)
    dist = jd.MultivariateStudentT(df, loc, **_mvt_kwargs(kind, value))
    assert dist.event_shape == (d,) and dist.batch_shape == (b,)


def test_mvt_full_d784_float32_matches_tfp():
    """The training size of the t_{df,mu,Sigma} head: per-example factors at d = 784."""
    rng = np.random.default_rng(1)
    d, b = 784, 8
    tril = np.tril(rng.normal(size=(b, d, d)), -1) * (0.1 / np.sqrt(d))
    tril[..., np.arange(d), np.arange(d)] = rng.uniform(0.5, 1.5, size=(b, d))
    args = [rng.uniform(2, 10, size=b), rng.normal(size=(b, d)), tril, rng.normal(size=(b, d))]
    args = [jnp.asarray(a, jnp.float32) for a in args]

    @jax.jit
    def run(df, loc, tril, x):
        ref = tfd.MultivariateStudentTLinearOperator(
            df, loc, tfl.LinearOperatorLowerTriangular(tril)
        )
        return jd.MultivariateStudentT(df, loc, tril).log_prob(x), ref.log_prob(x)

    ours, ref = run(*args)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


@pytest.mark.parametrize("kind", ("identity", "diag"))
def test_cheap_scales_never_build_a_square_matrix(kind):
    """Identity and diagonal scales are O(d): no [d, d] array anywhere in the computation."""
    d = 97
    kw = _mvt_kwargs(kind, jnp.ones(d))
    mat = {
        "identity": {},
        "diag": {"scale_row_diag": jnp.ones(d), "scale_column_diag": jnp.ones(d)},
    }

    def fns():
        yield lambda x: jd.MultivariateStudentT(3.0, jnp.zeros(d), **kw).log_prob(x), (d,)
        for cls in (jd.MatrixStudentT, jd.MatrixVariateT):
            yield (
                lambda x, c=cls: c(
                    3.0,
                    jnp.zeros((d, 1)),
                    **{k: v[:1] if "column" in k else v for k, v in mat[kind].items()},
                ).log_prob(x),
                (d, 1),
            )

    for fn, shape in fns():
        jaxpr = jax.make_jaxpr(fn)(jnp.zeros((4,) + shape))
        shapes = [v.aval.shape for eqn in jaxpr.eqns for v in eqn.outvars]
        assert not [s for s in shapes if s[-2:] == (d, d)], shapes


# ----------------------------------------------------------------------------------------------
# Matrix normal and matrix t (TFP semantics)
# ----------------------------------------------------------------------------------------------

# Every kind on each side: (row, column).
MATRIX_KINDS = [("identity", "tril"), ("diag", "identity"), ("tril", "diag"), ("tril", "tril")]


def _kron_var(a, b):
    """Var(X_ij) = U_ii V_jj of the matrix normal, from dense factors [B, n, n], [B, p, p]."""
    return np.einsum("bij,bij->bi", a, a)[:, :, None] * np.einsum("bij,bij->bi", b, b)[:, None, :]


def _matrix_case(seed, row_kind, col_kind, n=3, p=2, b=2):
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(b, n, p))
    row, dense_a = _factor(rng, row_kind, n, (b,))
    col, dense_b = _factor(rng, col_kind, p, (b,))
    x = rng.normal(size=(5, b, n, p)) * 2
    return rng, loc, row, dense_a, col, dense_b, x


@pytest.mark.parametrize("row_kind,col_kind", MATRIX_KINDS)
def test_matrix_normal_matches_tfp_and_scipy(x64, row_kind, col_kind):
    _, loc, row, a, col, b_, x = _matrix_case(2, row_kind, col_kind)
    kw = _mat_kwargs(row_kind, row, col_kind, col)

    def make_ref(loc, row, col):
        return tfd.MatrixNormalLinearOperator(
            loc, _tfp_op(row_kind, row, 3), _tfp_op(col_kind, col, 2)
        )

    @jax.jit
    def run(loc, kw, row, col, x):
        return _stats(jd.MatrixNormal(loc, **kw), x), make_ref(loc, row, col).log_prob(x)

    ours, ref_log_prob = run(loc, kw, row, col, x)
    var = _kron_var(a, b_)
    ref = _closed_form_moments(loc, var) | {"log_prob": ref_log_prob}
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], rtol=RTOL, err_msg=k)
    for i in range(2):
        sp = scipy.stats.matrix_normal(loc[i], rowcov=a[i] @ a[i].T, colcov=b_[i] @ b_[i].T)
        np.testing.assert_allclose(ours["log_prob"][:, i], sp.logpdf(x[:, i]), rtol=RTOL)
    dist = jd.MatrixNormal(loc, **kw)
    assert dist.event_shape == (3, 2) and dist.batch_shape == (2,)


@pytest.mark.parametrize("row_kind,col_kind", MATRIX_KINDS)
def test_matrix_student_t_matches_tfp(x64, row_kind, col_kind):
    _, loc, row, a, col, b_, x = _matrix_case(3, row_kind, col_kind)
    df = np.array([2.5, 6.0])
    kw = _mat_kwargs(row_kind, row, col_kind, col)

    def make_ref(df, loc, row, col):
        return tfd.MatrixTLinearOperator(
            df, loc, _tfp_op(row_kind, row, 3), _tfp_op(col_kind, col, 2)
        )

    @jax.jit
    def run(df, loc, kw, row, col, x):
        return (
            _stats(jd.MatrixStudentT(df, loc, **kw), x),
            make_ref(df, loc, row, col).log_prob(x),
            jd.MatrixNormal(loc, **kw).log_prob(x),
            jd.MatrixStudentT(1e9, loc, **kw).log_prob(x),
        )

    ours, ref_log_prob, normal, huge_df = run(df, loc, kw, row, col, x)
    var = _kron_var(a, b_) * (df / (df - 2))[:, None, None]
    ref = _closed_form_moments(loc, var) | {"log_prob": ref_log_prob}
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], rtol=RTOL, err_msg=k)
    np.testing.assert_allclose(huge_df, normal, rtol=1e-6)  # df -> inf: the matrix normal


# ----------------------------------------------------------------------------------------------
# Matrix-variate t (Gupta & Nagar)
# ----------------------------------------------------------------------------------------------


def test_matrix_variate_t_with_one_column_or_row_is_multivariate_t(x64):
    """p = 1: vec(X) ~ t_n(df=nu, M, (omega / nu) Sigma); n = 1: t_p(nu, M, (sigma / nu) Omega).

    From Def. 4.2.1 with p = 1: |I_n + Sigma^-1 e e^T / omega| = 1 + e^T Sigma^-1 e / omega and
    Gamma_n((nu + n)/2) / Gamma_n((nu + n - 1)/2) telescopes to Gamma((nu + n)/2) / Gamma(nu/2).
    In scale-factor terms: MultivariateStudentT(nu, M, (B_11 / sqrt(nu)) A), which is also
    MatrixStudentT(nu, M, A / sqrt(nu), B).
    """
    rng = np.random.default_rng(5)
    nu = np.array([0.7, 3.0, 11.0])

    @jax.jit
    def run(nu, loc, a, b, x):
        n, p = loc.shape[-2:]
        if p == 1:
            scale, vec = a * (b[..., 0, 0] / jnp.sqrt(nu))[:, None, None], x[..., 0]
        else:
            scale, vec = b * (a[..., 0, 0] / jnp.sqrt(nu))[:, None, None], x[..., 0, :]
        mvt = tfd.MultivariateStudentTLinearOperator(
            nu, loc.reshape(3, -1), tfl.LinearOperatorLowerTriangular(scale)
        )
        ours = jd.MatrixVariateT(nu, loc, a, b).log_prob(x)
        tfp_like = jd.MatrixStudentT(nu, loc, a / jnp.sqrt(nu)[:, None, None], b).log_prob(x)
        return ours, mvt.log_prob(vec), tfp_like

    for n, p in ((4, 1), (1, 3)):
        loc = rng.normal(size=(3, n, p))
        a, b = _tril(rng, n, (3,)), _tril(rng, p, (3,))
        x = rng.normal(size=(6, 3, n, p)) * 3
        ours, mvt, tfp_like = run(nu, loc, a, b, x)
        np.testing.assert_allclose(ours, mvt, rtol=RTOL)
        np.testing.assert_allclose(ours, tfp_like, rtol=RTOL)


def test_matrix_variate_t_integrates_to_one_1x2(x64):
    """Gauss-Legendre quadrature of the 1 x 2 density after x = m + tan(theta) (exact tails)."""
    dist = jd.MatrixVariateT(
        2.5, jnp.array([[0.3, -0.5]]), jnp.array([[0.8]]), jnp.array([[1.0, 0.0], [0.6, 0.7]])
    )
    nodes, weights = np.polynomial.legendre.leggauss(200)
    theta, w = nodes * np.pi / 2, weights * np.pi / 2
    t1, t2 = np.meshgrid(theta, theta, indexing="ij")
    x = np.stack([np.tan(t1) + 0.3, np.tan(t2) - 0.5], -1)[..., None, :]
    jac = (1 / np.cos(t1) ** 2) * (1 / np.cos(t2) ** 2)
    density = jax.jit(lambda dd, x: jnp.exp(dd.log_prob(x)))(dist, x)
    np.testing.assert_allclose(np.sum(density * jac * np.outer(w, w)), 1.0, rtol=1e-5)


def test_matrix_variate_t_integrates_to_one_2x2(x64):
    """Importance sampling: E_q[p / q] = 1 for q = TFP's matrix t with df = 2 (heavier tails).

    q's density is TFP's; its draws are M + A Z B^T / sqrt(g / 2) with g = -2 log U ~ chi2(2).
    """
    loc = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    a = jnp.array([[1.0, 0.0], [0.4, 0.8]])
    b = jnp.array([[0.7, 0.0], [-0.3, 1.1]])
    num = 100_000

    @jax.jit
    def weights(key):
        key_z, key_u = jax.random.split(key)
        proposal = tfd.MatrixTLinearOperator(
            2.0, loc, tfl.LinearOperatorLowerTriangular(a), tfl.LinearOperatorLowerTriangular(b)
        )
        g = -2.0 * jnp.log(jax.random.uniform(key_u, (num, 1, 1), jnp.float64))
        x = loc + a @ jax.random.normal(key_z, (num, 2, 2), jnp.float64) @ b.T / jnp.sqrt(g / 2)
        return jnp.exp(jd.MatrixVariateT(4.0, loc, a, b).log_prob(x) - proposal.log_prob(x))

    w = weights(jax.random.PRNGKey(0))
    stderr = float(jnp.std(w) / jnp.sqrt(w.size))
    assert stderr < 0.01
    np.testing.assert_allclose(float(jnp.mean(w)), 1.0, atol=5 * stderr)


def test_matrix_variate_t_sample_moments_and_stein_identity(x64):
    """Samples match E[X] = M, Cov(vec_rows(X)) = Sigma (x) Omega / (nu - 2), and the density:
    Stein's identity E[d log p / dX_ij * X_kl] = -delta_(ij),(kl) ties the sampler to log_prob."""
    rng = np.random.default_rng(6)
    n, p, nu, num = 3, 2, 9.0, 40_000
    loc, a, b = rng.normal(size=(n, p)), _tril(rng, n), _tril(rng, p)

    @jax.jit
    def run(dist):
        x = dist.sample(seed=jax.random.PRNGKey(1), sample_shape=num)
        score = jax.vmap(jax.grad(dist.log_prob))(x)
        return x, score, dist.mean(), dist.variance()

    x, score, mean, var = run(jd.MatrixVariateT(nu, loc, a, b))
    assert x.shape == (num, n, p)
    vec, score = np.asarray(x).reshape(num, n * p), np.asarray(score).reshape(num, n * p)
    cov = np.kron(a @ a.T, b @ b.T) / (nu - 2)
    np.testing.assert_allclose(var.reshape(-1), np.diag(cov), rtol=RTOL)
    np.testing.assert_allclose(mean, loc)
    np.testing.assert_allclose(vec.mean(0), loc.reshape(-1), atol=0.02)
    np.testing.assert_allclose(np.cov(vec.T), cov, atol=0.04 * np.abs(cov).max())
    stein = score.T @ (vec - loc.reshape(-1)) / num
    np.testing.assert_allclose(stein, -np.eye(n * p), atol=0.05)


def test_matrix_variate_t_differs_from_matrix_student_t(x64):
    """For n, p > 1 the Gupta-Nagar matrix t is not TFP's, even where their moments agree.

    With df = nu and A / sqrt(nu) (the p = 1 mapping) both have mean M and covariance
    Sigma (x) Omega / (nu - 2), but with s_k the singular values of Y = A^-1 (X - M) B^-T,
    Gupta-Nagar's density goes as prod_k (1 + s_k^2)^(-(nu + n + p - 1)/2) and TFP's as
    (1 + sum_k s_k^2)^(-(nu + np)/2).
    """
    rng = np.random.default_rng(7)
    n, p, nu = 3, 2, 5.0
    loc, a, b = rng.normal(size=(n, p)), _tril(rng, n), _tril(rng, p)
    x = loc + rng.normal(size=(20, n, p)) * 2
    x[0] = loc

    @jax.jit
    def run(x):
        gn = jd.MatrixVariateT(nu, loc, a, b)
        tt = jd.MatrixStudentT(nu, loc, a / np.sqrt(nu), b)
        return gn.log_prob(x) - tt.log_prob(x), gn.variance(), tt.variance()

    diff, var_gn, var_tt = run(x)
    np.testing.assert_allclose(var_gn, var_tt, rtol=RTOL)
    assert np.std(diff) > 0.1  # not even equal up to a constant
    assert abs(diff[0]) > 0.1  # at the mode M: the normalising constants differ


# ----------------------------------------------------------------------------------------------
# All classes: sampling, gradients, broadcasting, mixtures, pytrees, validation
# ----------------------------------------------------------------------------------------------


def _all_classes(rng, batch=()):
    """One distribution of each class with full scales: (name, constructor, params)."""
    d, n, p = 3, 3, 2
    return [
        (
            "mvt",
            lambda df, loc, s: jd.MultivariateStudentT(df, loc, s),
            (np.full(batch, 10.0), rng.normal(size=batch + (d,)), _tril(rng, d, batch)),
        ),
        (
            "matrix_normal",
            lambda loc, a, b: jd.MatrixNormal(loc, a, b),
            (rng.normal(size=batch + (n, p)), _tril(rng, n, batch), _tril(rng, p, batch)),
        ),
        (
            "matrix_t",
            lambda df, loc, a, b: jd.MatrixStudentT(df, loc, a, b),
            (
                np.full(batch, 10.0),
                rng.normal(size=batch + (n, p)),
                _tril(rng, n, batch),
                _tril(rng, p, batch),
            ),
        ),
        (
            "matrix_variate_t",
            lambda df, loc, a, b: jd.MatrixVariateT(df, loc, a, b),
            (
                np.full(batch, 10.0),
                rng.normal(size=batch + (n, p)),
                _tril(rng, n, batch),
                _tril(rng, p, batch),
            ),
        ),
    ]


@pytest.mark.parametrize("index", range(3))
def test_sample_moments(x64, index):
    """Sample mean and per-element variance against mean() and variance() (MatrixVariateT has
    its own, stricter, test above)."""
    name, make, params = _all_classes(np.random.default_rng(8))[index]

    @jax.jit
    def run(params):
        dist = make(*params)
        x = dist.sample(seed=jax.random.PRNGKey(2), sample_shape=100_000)
        return x.shape, x.mean(0), x.var(0), dist.mean(), dist.variance()

    shape, sample_mean, sample_var, mean, var = run(params)
    assert shape[0] == 100_000, name
    np.testing.assert_allclose(sample_mean, mean, atol=0.02 * np.sqrt(var.max()))
    np.testing.assert_allclose(sample_var, var, rtol=0.04)


@pytest.mark.parametrize("index", range(4))
def test_gradients_match_finite_differences(x64, index):
    """d log_prob / d(every parameter, df included): reverse mode against central differences
    along random directions (which also move the ignored upper triangles of the factors)."""
    rng = np.random.default_rng(9)
    name, make, params = _all_classes(rng)[index]
    params = tuple(np.asarray(q) for q in params)
    if name != "matrix_normal":
        params = (np.asarray(3.5),) + params[1:]
    x = rng.normal(size=(4,) + make(*params).event_shape) * 2
    directions = tuple(rng.normal(size=(3,) + q.shape) for q in params)
    eps = 1e-5

    def log_prob(params):
        return jnp.sum(make(*params).log_prob(x))

    @jax.jit
    def run(params, directions):
        grads = jax.grad(log_prob)(params)
        along = jax.vmap(lambda v: sum(jnp.vdot(g, vi) for g, vi in zip(grads, v, strict=True)))(
            directions
        )

        def central(v):
            up = tuple(q + eps * vi for q, vi in zip(params, v, strict=True))
            down = tuple(q - eps * vi for q, vi in zip(params, v, strict=True))
            return (log_prob(up) - log_prob(down)) / (2 * eps)

        return along, jax.vmap(central)(directions)

    along, numeric = run(params, directions)
    np.testing.assert_allclose(along, numeric, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("transpose", [False, True])
def test_triangular_solve_vjp(x64, transpose):
    """The hand-written VJP of L^-1 X / L^-T X (with batch folding) against central differences."""
    rng = np.random.default_rng(12)
    tril, x = _tril(rng, 3, (2,)), rng.normal(size=(4, 2, 3, 2))
    dirs = (rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3, 4, 2, 3, 2)))
    eps = 1e-6

    def f(tril, x):
        return jnp.sum(jnp.sin(jd._solve(tril, x, transpose)))

    @jax.jit
    def run(tril, x, dirs):
        g_l, g_x = jax.grad(f, argnums=(0, 1))(tril, x)
        along = jnp.sum(g_l * dirs[0], axis=(1, 2, 3)) + jnp.sum(g_x * dirs[1], axis=(1, 2, 3, 4))
        numeric = jax.vmap(
            lambda dl, dx: (
                (f(tril + eps * dl, x + eps * dx) - f(tril - eps * dl, x - eps * dx)) / (2 * eps)
            )
        )(*dirs)
        return along, numeric, jd._solve(tril, x, transpose)

    along, numeric, y = run(tril, x, dirs)
    np.testing.assert_allclose(along, numeric, rtol=1e-6)
    ref = np.linalg.solve(np.swapaxes(tril, -1, -2) if transpose else tril, x)
    np.testing.assert_allclose(y, ref, rtol=1e-10)


def test_gradient_solves_form_one_chain():
    """log_prob + gradient costs one triangular solve per factor forward and one backward.

    Plain autodiff of `solve_triangular` emits two independent batched solves in the backward pass
    (for the cotangents of L and of the right-hand side); jaxlib's CPU trsm runs them side by side
    on its small intra-op pool and can deadlock (seen at batch 128, 28 x 28, 2 cores). The
    hand-written VJP keeps every solve on one dependency chain; this guards it.
    """
    a, b = jnp.eye(3)[None].repeat(2, 0), jnp.eye(2)[None].repeat(2, 0)
    x = jnp.ones((2, 3, 2))

    def count(fn, *args):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)
        return str(jaxpr).count("triangular_solve[")

    def matrix_t(loc, a, b):
        return jd.MatrixStudentT(3.0, loc, a, b).log_prob(x).sum()

    def mvt(loc, tril):
        return jd.MultivariateStudentT(3.0, loc, tril).log_prob(x[..., 0]).sum()

    assert count(matrix_t, jnp.zeros((2, 3, 2)), a, b) == 4
    assert count(mvt, jnp.zeros((2, 3)), a) == 2


@pytest.mark.parametrize("index", range(4))
def test_batch_shapes_broadcast(x64, index):
    """loc [3, 1, ...] with scales [2, ...] (df scalar) -> batch [3, 2], entry by entry."""
    rng = np.random.default_rng(10)
    name, make, params = _all_classes(rng, batch=(2,))[index]
    i_loc = int(name != "matrix_normal")
    params = list(params)
    params[i_loc] = rng.normal(size=(3, 1) + params[i_loc].shape[1:])
    if i_loc:
        params[0] = np.asarray(4.0)
    dist = make(*params)
    assert dist.batch_shape == (3, 2), name
    x = rng.normal(size=(5, 1, 1) + dist.event_shape)

    # The same parameters, one unbatched distribution per entry (i, j), flattened to [6, ...].
    def flat(q, batch_ndim):
        core = q.shape[batch_ndim:]
        return np.broadcast_to(q, (3, 2) + core).reshape((6,) + core)

    entries = params[:i_loc] + [
        flat(q, 2 if k == i_loc else 1) for k, q in enumerate(params) if k >= i_loc
    ]
    in_axes = [None] * i_loc + [0] * (len(params) - i_loc)

    @jax.jit
    def run(dist, entries):
        one_by_one = jax.vmap(lambda *ps: make(*ps).log_prob(x[:, 0, 0]), in_axes, -1)(*entries)
        indexed = [dist[i, j].log_prob(x[:, 0, 0]) for i, j in ((0, 1), (2, 0))]
        shapes = (dist.mean().shape, dist.variance().shape)
        return dist.log_prob(x), one_by_one, indexed, shapes

    lp, one_by_one, indexed, (mean, var) = run(dist, entries)
    assert lp.shape == (5, 3, 2)
    assert mean == var == (3, 2) + dist.event_shape
    # Shapes only (compiling a gamma sampler costs ~1.5 s; the samplers are tested elsewhere).
    sample = jax.eval_shape(lambda d: d.sample(seed=jax.random.PRNGKey(0), sample_shape=4), dist)
    assert sample.shape == (4, 3, 2) + dist.event_shape
    np.testing.assert_allclose(lp.reshape(5, 6), one_by_one, rtol=RTOL)
    np.testing.assert_allclose(indexed[0], lp[:, 0, 1], rtol=RTOL)
    np.testing.assert_allclose(indexed[1], lp[:, 2, 0], rtol=RTOL)


@pytest.mark.parametrize("index", range(4))
def test_mixture_same_family(x64, index):
    """K = 3 components stacked along the last batch axis of a batch of 2 mixtures."""
    rng = np.random.default_rng(11)
    k = 3
    name, make, params = _all_classes(rng, batch=(2, k))[index]
    logits = rng.normal(size=(2, k))
    event = make(*params).event_shape
    x = rng.normal(size=(5, 2) + event)

    @jax.jit
    def run(logits, params, x):
        mix = distrax.MixtureSameFamily(distrax.Categorical(logits=logits), make(*params))
        # Manual: each component on its own (batch [2]), then logsumexp over the weights.
        per_component = jax.vmap(lambda *ps: make(*ps).log_prob(x), 1, -1)(*params)
        manual = jax.nn.logsumexp(jax.nn.log_softmax(logits) + per_component, axis=-1)
        return mix.log_prob(x), manual, mix.mean().shape, mix.variance().shape

    lp, manual, mean, var = run(logits, params, x)
    assert lp.shape == (5, 2) and mean == var == (2,) + event, name
    sample = jax.eval_shape(
        lambda logits, params: distrax.MixtureSameFamily(
            distrax.Categorical(logits=logits), make(*params)
        ).sample(seed=jax.random.PRNGKey(0), sample_shape=7),
        logits,
        params,
    )
    assert sample.shape == (7, 2) + event
    np.testing.assert_allclose(lp, manual, rtol=RTOL)


def test_pytree_round_trip_and_no_retrace_on_new_df():
    traces = []

    @jax.jit
    def build(df, loc):
        traces.append(None)
        return jd.MatrixStudentT(df, loc, scale_row_diag=jnp.ones(3))

    loc = jnp.zeros((3, 2))
    d1, d2 = build(3.0, loc), build(5.0, loc)  # df is an array leaf, not static metadata
    assert len(traces) == 1
    assert isinstance(d1, jd.MatrixStudentT) and d1.scale_kind == ("diag", "identity")
    leaves = jax.tree_util.tree_leaves(d2)
    assert any(leaf.shape == () and float(leaf) == 5.0 for leaf in leaves)
    x = jnp.ones((3, 2))  # |Y|_F^2 = 6 = np: closed form of the TFP-semantics density
    ref = gammaln(5.5) - gammaln(2.5) - 3 * np.log(5 * np.pi) - 5.5 * np.log1p(6 / 5)
    np.testing.assert_allclose(jax.jit(lambda d: d.log_prob(x))(d2), ref, rtol=1e-6)
    # vmap over a batch of distributions.
    mvts = jax.vmap(lambda df: jd.MultivariateStudentT(df, jnp.zeros(2)))(jnp.array([2.0, 4.0]))
    assert mvts.batch_shape == (2,)


@pytest.mark.parametrize("cls", [jd.MultivariateStudentT, jd.MatrixStudentT, jd.MatrixVariateT])
def test_undefined_moments(cls):
    loc = jnp.zeros((2,) if cls is jd.MultivariateStudentT else (2, 2))
    mean, var = jax.jit(lambda df: (cls(df, loc).mean(), cls(df, loc).variance()))(
        jnp.array([0.5, 1.5, 3.0])
    )
    assert np.isnan(mean[0]).all() and np.isnan(var[0]).all()
    assert (mean[1] == 0).all() and np.isinf(var[1]).all()
    assert np.isfinite(var[2]).all()


MVT_LOC = np.zeros(3)
MAT_LOC = np.zeros((3, 2))
BAD_TRIL = np.array([[1.0, 0, 0], [0.2, -1.0, 0], [0, 0, 1.0]])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: jd.MultivariateStudentT(0.0, MVT_LOC), "`df`"),
        (lambda: jd.MatrixStudentT(np.array([2.0, -1.0]), MAT_LOC), "`df`"),
        (lambda: jd.MatrixVariateT(-3.0, MAT_LOC), "`df`"),
        (lambda: jd.MultivariateStudentT(3.0, MVT_LOC, BAD_TRIL), "`scale_tril`"),
        (lambda: jd.MultivariateStudentT(3.0, MVT_LOC, scale_diag=[1.0, 0.0, 1.0]), "scale_diag"),
        (lambda: jd.MatrixNormal(MAT_LOC, BAD_TRIL), "`scale_row_tril`"),
        (lambda: jd.MatrixNormal(MAT_LOC, scale_column_diag=[1.0, -2.0]), "scale_column_diag"),
        (lambda: jd.MultivariateStudentT(3.0, MVT_LOC, np.eye(4)), r"\(3,\).*\(4, 4\)"),
        (
            lambda: jd.MatrixStudentT(3.0, MAT_LOC, scale_column_diag=np.ones(3)),
            r"\(3, 2\).*\(3,\)",
        ),
        (lambda: jd.MatrixVariateT(3.0, MAT_LOC, np.eye(2)), r"\(3, 2\).*\(2, 2\)"),
        (lambda: jd.MultivariateStudentT(3.0, MVT_LOC, np.eye(3), scale_diag=np.ones(3)), "both"),
        (lambda: jd.MultivariateStudentT(3.0, MVT_LOC, np.ones((3, 4))), "square"),
        (lambda: jd.MultivariateStudentT(np.ones(2), np.zeros((3, 3))), "broadcast"),
    ],
    ids=[
        "mvt_df",
        "matrix_t_df",
        "matrix_variate_t_df",
        "scale_tril",
        "scale_diag",
        "scale_row_tril",
        "scale_column_diag",
        "loc_vs_scale_tril",
        "loc_vs_column_diag",
        "loc_vs_row_tril",
        "tril_and_diag",
        "not_square",
        "batch_shapes",
    ],
)
def test_validation_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_value_checks_are_skipped_under_tracing():
    lp = jax.jit(lambda df, s: jd.MultivariateStudentT(df, MVT_LOC, s).log_prob(MVT_LOC))(
        -1.0, BAD_TRIL
    )
    assert lp.shape == ()  # no error: values are unknown while tracing


def test_multivariate_normal_matches_scipy_and_moments(x64):
    rng = np.random.default_rng(11)
    d = 5
    loc = rng.normal(size=(2, d))
    tril = np.tril(rng.normal(size=(2, d, d)), -1) + np.diag(rng.uniform(0.5, 1.5, d))
    x = rng.normal(size=(2, d))
    dist = jd.MultivariateNormal(jnp.asarray(loc), jnp.asarray(tril))
    got = jax.jit(lambda v: dist.log_prob(v))(jnp.asarray(x))
    for b in range(2):
        want = scipy.stats.multivariate_normal(loc[b], tril[b] @ tril[b].T).logpdf(x[b])
        np.testing.assert_allclose(got[b], want, rtol=1e-10)
    samples = np.asarray(dist.sample(seed=jax.random.PRNGKey(0), sample_shape=20000))
    np.testing.assert_allclose(samples.mean(0), loc, atol=0.05)
    np.testing.assert_allclose(samples.var(0), np.asarray(dist.variance()), rtol=0.05)
    diag = jd.MultivariateNormal(jnp.asarray(loc), scale_diag=jnp.asarray([1.0, 2, 3, 4, 5]))
    want = scipy.stats.multivariate_normal(loc[0], np.diag([1.0, 4, 9, 16, 25])).logpdf(x[0])
    np.testing.assert_allclose(diag.log_prob(jnp.asarray(x))[0], want, rtol=1e-10)
    # The accessors shared with MultivariateStudentT: the factor as given, loc broadcast.
    np.testing.assert_array_equal(dist.scale_tril, tril)
    np.testing.assert_array_equal(diag.scale_tril, np.diag([1.0, 2, 3, 4, 5]))
    assert (dist.scale_kind, diag.scale_kind) == ("tril", "diag")
    ident = jd.MultivariateNormal(jnp.asarray(loc[0]), scale_diag=jnp.ones((3, d)))
    assert ident.loc.shape == (3, d) and ident.mean().shape == (3, d)
    want = np.stack(
        [scipy.linalg.solve_triangular(tril[b], x[b] - loc[b], lower=True) for b in range(2)]
    )
    np.testing.assert_allclose(dist.whiten(jnp.asarray(x)), want, rtol=1e-10)


# Continuous Bernoulli

# logits across [-20, 20], with values at and very near 0 (lambda ~ 1/2, where the closed forms
# are 0/0) and on both sides of the series cutoffs (~1 to 1.5 in float32)
CB_LOGITS = np.concatenate(
    [np.linspace(-20, 20, 41), [0.0, 1e-30, 1e-7, -1e-7, 1e-4, -1e-3, 0.3, 0.95, 1.02, -1.21, 1.5]]
)


def _cb_summary(dist, x):
    """What the float32 test compares, of a continuous Bernoulli (ours or TFP's) at x."""
    return {"log_prob": dist.log_prob(x), "mean": dist.mean(), "variance": dist.variance()}


def test_continuous_bernoulli_matches_tfp_in_float32():
    eta = jnp.asarray(CB_LOGITS, jnp.float32)
    x = jnp.asarray(np.random.default_rng(0).random(eta.shape), jnp.float32)

    @jax.jit  # one compile, not one per eager op
    def ours(eta, x):
        dist = jd.ContinuousBernoulli(eta)
        grad = jax.grad(lambda e: jd.ContinuousBernoulli(e).log_prob(x).sum())(eta)
        outside = dist.log_prob(jnp.asarray([-0.1, 1.1])[:, None])
        return {
            **_cb_summary(dist, x),
            "log_normalizer": dist.log_normalizer(),
            "grad": grad,
            "outside": outside,
            "tfp_f32": tfd.ContinuousBernoulli(logits=eta).log_prob(x),
        }

    got = ours(eta, x)
    with jax.enable_x64(True):  # the reference: TFP in float64; d log p / d eta = x - E[x]
        ref = tfd.ContinuousBernoulli(logits=jnp.asarray(CB_LOGITS))
        want = jax.jit(
            lambda x: {
                **_cb_summary(ref, x),
                "log_normalizer": ref._log_normalizer(),
                "grad": x - ref.mean(),
            }
        )(jnp.asarray(np.asarray(x), jnp.float64))
        want = {k: np.asarray(v) for k, v in want.items()}
    np.testing.assert_allclose(got["log_prob"], got["tfp_f32"], atol=4e-6)
    for key, atol in (("log_prob", 4e-6), ("log_normalizer", 4e-6), ("mean", 1e-6),
                      ("variance", 1e-6), ("grad", 2e-6)):  # fmt: skip
        # the gradient is smooth through 0, where autodiff of a 0/0 form would not be
        np.testing.assert_allclose(got[key], want[key], atol=atol, err_msg=key)
    np.testing.assert_allclose(got["log_normalizer"][41], np.log(2), rtol=1e-7)  # eta = 0
    np.testing.assert_allclose(got["mean"][41], 0.5)
    np.testing.assert_array_equal(got["outside"], -np.inf)
    dist = jd.ContinuousBernoulli(eta)
    assert dist.batch_shape == eta.shape and dist.event_shape == ()


def test_continuous_bernoulli_integrates_to_one_with_its_mean_and_variance(x64):
    eta = jnp.asarray(CB_LOGITS)
    dist = jd.ContinuousBernoulli(eta)
    density = jax.jit(lambda x: jnp.exp(dist.log_prob(x)))

    def moments(x):
        p = np.asarray(density(x))
        return np.concatenate([p, x * p, x * x * p])

    got, _ = scipy.integrate.quad_vec(moments, 0.0, 1.0, epsabs=1e-12, epsrel=1e-10)
    total, first, second = np.split(got, 3)
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)
    np.testing.assert_allclose(first, dist.mean(), rtol=1e-9)
    np.testing.assert_allclose(second - first**2, dist.variance(), rtol=1e-7, atol=1e-12)


def test_continuous_bernoulli_samples_follow_its_cdf():
    eta = np.asarray([-20.0, -3.0, -1e-6, 0.0, 1e-6, 0.5, 2.0, 20.0], np.float32)
    dist = jd.ContinuousBernoulli(eta)
    draws = np.asarray(dist.sample(seed=jax.random.PRNGKey(0), sample_shape=4000))
    assert draws.shape == (4000, 8) and draws.dtype == np.float32
    assert draws.min() >= 0 and draws.max() <= 1
    for j, e in enumerate(eta.astype(np.float64)):  # F(x) = expm1(eta x) / expm1(eta); x at 0
        cdf = (lambda x: x) if e == 0 else (lambda x, e=e: np.expm1(e * x) / np.expm1(e))
        assert scipy.stats.kstest(draws[:, j], cdf).pvalue > 1e-3, e
    sd = np.sqrt(np.asarray(dist.variance()) / 4000)
    assert np.all(np.abs(draws.mean(0) - np.asarray(dist.mean())) < 5 * sd)
