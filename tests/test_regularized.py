"""The regularized-autoencoder family (`jaxae.regularized`): gmmdae, rae, wae, aae, maskaae, flexae.

Each kind trains a few steps on tiny synthetic 8 x 8 images by the update it declares
(`jaxae.train.model_update`), and one critic-and-generator kind (aae, 2 critic steps per
autoencoder step) end to end through `experiments.train.train_and_evaluate` (the dataset loader
monkeypatched): finite losses, the metric names its terms and groups give, the parameters each
group owns moving in its own step only. That run, killed in the middle of a checkpoint save (a
child process, SIGKILL), resumes bit for bit. Each regularizer is checked against a NumPy
computation on a tiny batch (the papers' weights divided by the number of pixels D,
`jaxae.regularized`'s Units); the GMM-DAE's weighted regularizer behaves as in Saseendran et al.
(2021), Figure 1 (at its prior level for prior codes, growing with a mean shift); bad settings
are ValueErrors that name the setting.
"""

import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path

import _child  # tests/: on the path under pytest, and in the killed child
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats
from flax import nnx

from experiments import train as etrain
from jaxae import checkpoint, models, objectives, regularized, train
from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae.heads import Head

SHAPE, D, LATENT, BATCH, WIDTH = (8, 8, 1), 64, 4, 16, 8
CRITIC = {"critic_width": 4, "critic_layers": 2}
# case -> (kind, settings): small critics and generators, short prior-weight estimates
CASES = {
    "gmmdae": ("gmmdae", {"components": 3, "weight_batch": BATCH, "weight_batches": 10}),
    "rae-l2": ("rae", {"regularizer": "l2"}),
    "rae-gp": ("rae", {"regularizer": "gp"}),
    "wae": ("wae", {}),
    "aae": ("aae", {**CRITIC, "critic_steps": 2}),
    "maskaae": ("maskaae", {**CRITIC, "critic_steps": 2}),
    "flexae": ("flexae", {**CRITIC, "critic_steps": 2, "prior_width": 4, "prior_layers": 1,
                          "prior_noise": 6}),
}  # fmt: skip
# the latent terms of each case (the autoencoder's loss: mse + these)
TERMS = {"gmmdae": ("cov", "ks"), "rae-l2": ("code", "decoder_l2"),
         "rae-gp": ("code", "decoder_gp"), "wae": ("mmd",), "aae": ("adversarial",),
         "maskaae": ("adversarial",), "flexae": ("adversarial",)}  # fmt: skip
_WGAN_TERMS = ("loss", "wasserstein", "gp", "grad_norm")
# the metrics of each parameter group of the adversarial kinds, in the models' group order
GROUPS = {
    "aae": {"critic": ("loss", "bce", "grad_norm")},
    "maskaae": {"critic": _WGAN_TERMS},
    "flexae": {"prior": ("loss", "adversarial", "grad_norm"), "critic": _WGAN_TERMS},
}
# the top-level attributes each group owns
OWNED = {"aae": {"autoencoder": {"net"}, "critic": {"critic"}},
         "maskaae": {"autoencoder": {"net", "mask_raw"}, "critic": {"critic"}},
         "flexae": {"autoencoder": {"net"}, "prior": {"prior"}, "critic": {"critic"}}}  # fmt: skip
# The critic-and-generator case trained end to end by experiments/train.py, and killed mid-run:
# 3 epochs of 32 images in batches of 16 (2 steps), a checkpoint at each epoch's end. The others
# train STEPS steps of `model_update`: one compilation each, no checkpoints, no evaluation.
E2E, E2E_STEPS, STEPS = "aae", 6, 4
KEY = jax.random.PRNGKey(7)
KEY2 = jax.random.PRNGKey(8)


def _metrics(case):
    """The training metric names a case logs: a single loss, or each group's, prefixed."""
    own = ("loss", "mse", *TERMS[case], "grad_norm")
    if case not in GROUPS:
        return set(own)
    groups = {"autoencoder": own, **GROUPS[case]}
    return {f"{g}/{m}" for g, names in groups.items() for m in names}


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _dataset():
    return jdata.Dataset("synthetic", jdata.from_arrays(_images(32, 0)), None,
                         jdata.from_arrays(_images(16, 1)))  # fmt: skip


def _config(case):
    kind, settings = CASES[case]
    c = jconfig.default(kind)
    c.model.update(arch="dense", width=WIDTH, latent_dim=LATENT)
    c.training.update(batch_size=BATCH, epochs=3)  # a checkpoint at every epoch's end
    c[kind].update(settings)
    return c


def _spec(kind, settings=None):
    return {"kind": kind, "arch": "dense", "width": WIDTH, "latent_dim": LATENT,
            "image_shape": list(SHAPE), "settings": dict(settings or {})}  # fmt: skip


def _train(case, workdir):
    """`experiments.train.train_and_evaluate` of a case on the tiny dataset:
    {summary, params0, model_state0, result, workdir}."""
    got = {}
    mp = pytest.MonkeyPatch()
    mp.setattr(etrain.jdata, "load", lambda *a, **k: _dataset())
    real_fit = train.fit

    def fit(*args, **kw):
        got["params0"] = jax.tree.map(np.array, kw["params"])
        got["model_state0"] = jax.tree.map(np.array, kw["model_state"])
        got["result"] = real_fit(*args, **kw)
        return got["result"]

    mp.setattr(etrain.train, "fit", fit)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            got["summary"] = etrain.train_and_evaluate(_config(case), workdir, progress=False)
    finally:
        mp.undo()
    got["workdir"] = Path(workdir)
    return got


def _steps(case, model):
    """STEPS jitted steps of the update `model` declares, one batch of 16 images each:
    {params0, model_state0, state (params, model_state, opt_state), metrics [per step]}."""
    config = _config(case)
    graphdef, params, model_state = objectives.split(model)
    update = train.model_update(model, graphdef, config.optimizer, STEPS)
    step = jax.jit(update.step)
    images = jnp.asarray(_images(STEPS * BATCH, 0), jnp.float32) / 255
    p, ms, opt_state, metrics = params, model_state, update.init(params), []
    for i in range(STEPS):
        batch = {"image": images[i * BATCH : (i + 1) * BATCH]}
        p, ms, opt_state, m = step(p, ms, opt_state, batch, jax.random.fold_in(KEY, i))
        metrics.append({k: float(v) for k, v in m.items()})
    state = {"params": p, "model_state": ms, "opt_state": opt_state}
    return {"params0": jax.tree.map(np.asarray, params),
            "model_state0": jax.tree.map(np.asarray, model_state), "state": state,
            "metrics": metrics, "steps": STEPS}  # fmt: skip


def _log(workdir):
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The E2E case trained once through experiments/train.py."""
    return _train(E2E, tmp_path_factory.mktemp(E2E) / "run")


@pytest.fixture(scope="module")
def built():
    """case -> its model, built once for the module (a GMM-DAE's build estimates its weights)."""
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = models.build(_spec(*CASES[case]))
        return cache[case]

    return get


@pytest.fixture(scope="module")
def trained(e2e, built):
    """case -> its training (`_steps`; the E2E case: its end-to-end run), each once."""
    cache = {}

    def get(case):
        if case not in cache:
            if case == E2E:
                cache[case] = {**e2e, "state": e2e["result"].state, "steps": E2E_STEPS,
                               "metrics": e2e["result"].history}  # fmt: skip
            else:
                cache[case] = _steps(case, built(case))
        return cache[case]

    return get


@pytest.fixture(params=list(CASES))
def run(request, trained):
    return request.param, trained(request.param)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


# --- training -------------------------------------------------------------------------------------

TIMING = {"step", "epoch", "examples_per_s", "seconds"}


def test_each_kind_trains_with_finite_losses_and_its_metric_names(run):
    case, got = run
    assert got["metrics"]
    for line in got["metrics"]:
        assert {k for k in line if not k.startswith("eval_")} - TIMING == _metrics(case)
        assert all(np.isfinite(v) for v in line.values()), line
        assert "loss" not in line if case in GROUPS else "loss" in line  # no total of groups
        prefix = "autoencoder/" if case in GROUPS else ""
        np.testing.assert_allclose(
            line[f"{prefix}loss"], sum(line[f"{prefix}{t}"] for t in ("mse", *TERMS[case])),
            rtol=1e-5, atol=1e-7,
        )  # fmt: skip


def test_end_to_end_log_and_summary(e2e):
    """experiments/train.py: one line per epoch with each group's metrics and the held-out
    terms of the autoencoder's objective; the summary's losses per group."""
    lines = _log(e2e["workdir"])
    assert [x["step"] for x in lines] == [2, 4, E2E_STEPS] and lines == e2e["result"].history
    for line in lines:
        assert {k for k in line if k.startswith("eval_")} == {
            "eval_loss", "eval_mse", *(f"eval_{t}" for t in TERMS[E2E])
        }  # fmt: skip
    summary = e2e["summary"]
    assert summary["steps"] == E2E_STEPS and all(np.isfinite(v) for v in summary["test"].values())
    assert set(summary["train_loss_last"]) == {"autoencoder", *GROUPS[E2E]}
    assert summary["model"]["settings"]["critic_steps"] == 2


def test_training_moves_every_parameter_and_no_fitted_state(run):
    case, got = run
    state, steps = got["state"], got["steps"]
    params = jax.tree.map(np.asarray, state["params"])
    for name in params:  # every top-level attribute (the net, a critic, a mask, a generator)
        assert _changed(params[name], got["params0"][name]), f"{case}: {name} did not train"
    # the GMM-DAE's prior and term weights are model state: measured once, never trained
    model_state = jax.tree.map(np.asarray, state["model_state"])
    assert not _changed(model_state, got["model_state0"])
    if case == "gmmdae":
        assert {"prior_w", "prior_mu", "prior_sigma", "term_weights"} <= set(model_state)
    opt = state["opt_state"]
    if case not in GROUPS:
        assert int(opt[0].count) == steps
        return
    # each group's Adam holds exactly the attributes it owns and counts its own steps
    assert set(opt) == set(OWNED[case])
    _, settings = CASES[case]
    for group, owned in OWNED[case].items():
        assert set(opt[group][0].mu) == owned, group
        ratio = settings.get("critic_steps", 1) if group == "critic" else 1
        assert int(opt[group][0].count) == ratio * steps, group


def test_a_groups_step_moves_its_own_parameters_only():
    """One grouped step of each aae group alone (the model's own loss method and steps): what it
    owns changes, every other parameter is left exactly as it was: the critic's step leaves the
    encoder untouched and the autoencoder's the critic."""
    case = "aae"
    model = models.build(_spec(*CASES[case]))
    graphdef, params, model_state = objectives.split(model)
    groups = model.groups()
    assert list(groups) == ["autoencoder", *GROUPS[case]]
    batch = {"image": jnp.asarray(_images(BATCH, 2), jnp.float32) / 255}
    for name, group in groups.items():
        owned = OWNED[case][name]
        assert group.params is None or set(group.params) == owned
        update = train.grouped({name: train.Group(
            tuple(owned), objectives.loss_fn(graphdef, group.loss), optax.adam(1e-2), group.steps
        )})  # fmt: skip
        new, _, _, metrics = jax.jit(update.step)(
            params, model_state, update.init(params), batch, KEY
        )
        assert np.isfinite(float(metrics[f"{name}/loss"]))
        for attr in params:
            assert _changed(new[attr], params[attr]) == (attr in owned), (name, attr)


# --- a critic-and-generator run killed mid-run resumes bit for bit --------------------------------


def _run_then_die(workdir: str, kill_at: int) -> None:
    """The child process: train the E2E case, SIGKILLing itself in its save at `kill_at`."""
    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, meta, **kw):
        started = save(self, step, state, meta, **kw)
        if started and step == kill_at:  # the asynchronous write is in flight: die now
            print(f"killing at step {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    checkpoint.Checkpointer.save = save_then_die
    _train(E2E, workdir)


KILL_AT, EVERY = 4, 2  # killed saving epoch 2's end: epoch 1's or 2's checkpoint remains


def _killed_run():
    """The child of `_run_then_die`, in a scratch folder: (its run folder, the process)."""
    workdir = _child.scratch() / "run"
    tests, root = Path(__file__).parent, Path(__file__).parents[1]
    code = (f"import sys; sys.path.insert(0, {str(tests)!r}); import test_regularized as t; "
            f"t._run_then_die({str(workdir)!r}, {KILL_AT})")  # fmt: skip
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return workdir, _child.run([sys.executable, "-c", code], 300, env=env)


# the killed child, started in the background when the tests are collected (tests/_child.py)
BACKGROUND = {"test_a_critic_model_killed_mid_run_resumes_bit_for_bit": _killed_run}


def test_a_critic_model_killed_mid_run_resumes_bit_for_bit(request, e2e):
    kill_at, every = KILL_AT, EVERY
    workdir, proc = _child.result(__file__, request.node.name, BACKGROUND)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert f"killing at step {kill_at}" in proc.stderr
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) in (kill_at - every, kill_at), saved

    resumed, full = _train(E2E, workdir), e2e  # the same run, never interrupted
    assert resumed["result"].resumed_from in (kill_at - every, kill_at)
    assert resumed["summary"]["steps"] == E2E_STEPS
    a, b = resumed["result"].state, full["result"].state
    assert set(a["opt_state"]) == {"autoencoder", "critic"}
    # params (the critic's included), both groups' Adam states, the key and the step
    for part in ("params", "opt_state", "model_state", "key", "step"):
        assert jax.tree.structure(a[part]) == jax.tree.structure(b[part]), part
        for x, y in zip(_leaves(a[part]), _leaves(b[part]), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=part)
    # the log has each epoch once, with the uninterrupted run's numbers
    strip = lambda lines: [{k: v for k, v in x.items() if k not in ("seconds", "examples_per_s")}
                           for x in lines]  # noqa: E731  # fmt: skip
    assert strip(_log(workdir)) == strip(_log(full["workdir"]))


# --- each regularizer by hand ---------------------------------------------------------------------

X = np.random.default_rng(3).random((6, *SHAPE), dtype=np.float32)  # a tiny batch of images


def _np_mixture(k):
    """The one-hot prior of K components in R^LATENT: (w, mu, sigma) in float64."""
    return np.full(k, 1.0 / k), np.eye(k, LATENT), np.ones((k, LATENT))


def _np_prior_codes(rng, n, k):
    """n batches of BATCH codes from the one-hot prior of K components (unit std): [n, B, d]."""
    return np.eye(k, LATENT)[rng.integers(0, k, (n, BATCH))] + rng.standard_normal(
        (n, BATCH, LATENT)
    )


def _np_cov_distance(z, w, mu, sigma):
    """mean_ij (S_ij - Sigma_ij)^2 for codes [..., B, d]: S the unbiased batch covariance,
    Sigma the mixture's (within-component plus between-component covariance)."""
    mean = w @ mu
    target = np.diag(w @ sigma**2) + sum(
        wk * np.outer(mk - mean, mk - mean) for wk, mk in zip(w, mu, strict=True)
    )
    c = z - z.mean(-2, keepdims=True)
    s = np.einsum("...bi,...bj->...ij", c, c) / (z.shape[-2] - 1)
    return ((s - target) ** 2).mean((-2, -1))


def _np_ks(z, w, mu, sigma):
    """mean_ij (F_j(z_(i)j) - i / B)^2 for codes [..., B, d], F_j the mixture's marginal CDF."""
    b = z.shape[-2]
    zs = np.sort(z, axis=-2)
    cdf = scipy.stats.norm.cdf((zs[..., None, :] - mu) / sigma)  # [..., B, K, d]
    f = np.einsum("k,...bkd->...bd", w, cdf)
    return ((f - (np.arange(1, b + 1) / b)[:, None]) ** 2).mean((-2, -1))


def _np_imq_mmd(x, y, scale):
    """Unbiased MMD^2 with the WAE authors' sum of IMQ kernels, C = 2 d scale^2 s."""
    cs = 2 * x.shape[1] * scale**2 * np.array([0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])

    def k(a, b):
        sq = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(c / (c + sq) for c in cs)

    def off_diagonal_mean(kk):
        return (kk.sum() - np.trace(kk)) / (len(kk) * (len(kk) - 1))

    return off_diagonal_mean(k(x, x)) + off_diagonal_mean(k(y, y)) - 2 * k(x, y).mean()


def _sum_of_squares(tree):
    return sum((_np(x) ** 2).sum() for x in jax.tree.leaves(tree))


def _softplus(v):
    return np.logaddexp(0.0, v)


def _np(x):
    return np.asarray(x, np.float64)


class _CodesIn(regularized.GMMDAE):
    """A GMM-DAE whose encoder is the identity: its `latent` and `assign` take codes [B, K]."""

    def encode(self, x):
        return x


def _gmmdae_on_codes(**settings):
    head = Head("mse", k=1, image_shape=SHAPE)
    return _CodesIn(head, "dense", LATENT, width=WIDTH, **settings)


@pytest.fixture(scope="module")
def gmmdae():
    """A GMM-DAE on codes, 3 components, its weights estimated on 200 prior batches of 16."""
    return _gmmdae_on_codes(components=3, weight_batch=BATCH, weight_batches=200)


def test_gmmdae_terms_by_hand(gmmdae):
    w, mu, sigma = _np_mixture(3)
    np.testing.assert_allclose(gmmdae.prior_w[...], w, rtol=1e-6)
    np.testing.assert_allclose(gmmdae.prior_mu[...], mu)
    np.testing.assert_allclose(gmmdae.prior_sigma[...], sigma, rtol=1e-6)
    z = np.random.default_rng(4).normal(0.3, 0.8, (6, LATENT)).astype(np.float32)
    _, terms = gmmdae.latent(z)
    lam = _np(gmmdae.term_weights[...])
    scale = 1.0 / (0.005 * D)  # the paper's reconstruction weight 0.005, per pixel
    for i, (name, fn) in enumerate((("cov", _np_cov_distance), ("ks", _np_ks))):
        want = np.full(len(z), scale * lam[i] * fn(_np(z), w, mu, sigma))
        np.testing.assert_allclose(terms[name], want, rtol=1e-4, err_msg=name)
    # the term weights: the inverses of the terms' means over prior batches of weight_batch
    # codes; here a NumPy estimate from 8,000 other batches (the model's uses 200)
    codes = _np_prior_codes(np.random.default_rng(0), 8000, 3)
    means = [_np_cov_distance(codes, w, mu, sigma).mean(), _np_ks(codes, w, mu, sigma).mean()]
    np.testing.assert_allclose(lam, 1.0 / np.array(means), rtol=0.15)


def test_gmmdae_with_one_term_and_given_means():
    """use_ks off: the covariance term alone; prior_means and prior_weights make the prior."""
    means = ((2.0, 0.0, 0.0, 0.0), (0.0, -1.0, 0.0, 1.0), (0.0, 0.0, 1.0, 1.0))
    weights = (0.25, 0.25, 0.5)
    model = _gmmdae_on_codes(prior_means=means, prior_weights=weights, prior_std=0.5,
                             use_ks=False, weight_batch=BATCH, weight_batches=10)  # fmt: skip
    w, mu, sigma = np.array(weights), np.array(means), np.full((3, LATENT), 0.5)
    np.testing.assert_allclose(model.prior_w[...], w, rtol=1e-6)
    np.testing.assert_allclose(model.prior_mu[...], mu)
    np.testing.assert_allclose(model.prior_sigma[...], sigma, rtol=1e-6)
    z = np.random.default_rng(1).standard_normal((6, LATENT)).astype(np.float32)
    _, terms = model.latent(z)
    assert set(terms) == {"cov"}
    want = _np(model.term_weights[...])[0] * _np_cov_distance(_np(z), w, mu, sigma) / (0.005 * D)
    np.testing.assert_allclose(terms["cov"], np.full(6, want), rtol=1e-4)


def test_gmmdae_regularizer_is_small_at_its_prior_and_grows_with_a_mean_shift(gmmdae):
    """Saseendran et al. (2021), Figure 1: the weighted KS + covariance regularizer of codes drawn
    from the prior sits at its prior level (each weighted term ~1: their sum ~2), and grows as the
    codes' mean moves away (the KS term; the covariance is blind to a shift)."""
    model, scale = gmmdae, 1.0 / (0.005 * D)

    @jax.jit
    def regularizer(z):  # [n, B, K] -> the weighted sum of the latent terms [n], unscaled
        terms = jax.vmap(lambda c: model.latent(c)[1])(z)
        return (terms["cov"][:, 0] + terms["ks"][:, 0]) / scale

    z = _np_prior_codes(np.random.default_rng(5), 64, 3).astype(np.float32)  # [64, B, K]
    levels = [float(jnp.mean(regularizer(z + shift))) for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert 1.5 < levels[0] < 2.5, levels
    assert all(a < b for a, b in zip(levels, levels[1:], strict=False)), levels
    assert levels[-1] > 10 * levels[0], levels


def test_gmmdae_assigns_codes_to_components(gmmdae, built):
    model = gmmdae
    near = 10.0 * np.eye(3, LATENT, dtype=np.float32)  # far along each component's mean
    np.testing.assert_array_equal(model.assign(near), [0, 1, 2])
    labels = np.asarray(model.assign(np.random.default_rng(2).normal(size=(32, LATENT))))
    assert np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < 3
    labels = np.asarray(built("gmmdae").assign(X))  # through the encoder
    assert labels.shape == (len(X),) and labels.min() >= 0 and labels.max() < 3


@pytest.mark.parametrize("regularizer", ["l2", "gp"])
def test_rae_terms_by_hand(regularizer):
    model = models.build(_spec("rae", {"regularizer": regularizer, "code_weight": 0.5,
                                       "decoder_weight": 0.25}))  # fmt: skip
    z, terms = model.latent(X)
    z = _np(z)
    np.testing.assert_allclose(terms["code"], 0.5 / D * 0.5 * (z**2).sum(1), rtol=1e-5)
    if regularizer == "l2":
        assert model.net.decoder_layers == ("decoder",)
        decoder = _sum_of_squares(nnx.state(model.net.decoder, nnx.Param))
        every = _sum_of_squares(nnx.state(model, nnx.Param))
        assert every > 1.05 * decoder  # the encoder's weights are not in the penalty
        np.testing.assert_allclose(terms["decoder_l2"], np.full(len(X), 0.25 / D * decoder),
                                   rtol=1e-5)  # fmt: skip
        assert set(terms) == {"code", "decoder_l2"}
    else:
        # the gradient of the decoder's summed output: the column sums of its Jacobian
        jacobian = jax.jit(jax.vmap(jax.jacfwd(lambda v: model.decode(v[None])[0])))
        jac = jacobian(jnp.asarray(z, jnp.float32))  # [B, P, K]
        g = _np(jac).sum(1)  # [B, K]
        np.testing.assert_allclose(terms["decoder_gp"], 0.25 / D * (g**2).sum(1), rtol=1e-4)
        assert set(terms) == {"code", "decoder_gp"}


def test_wae_mmd_by_hand():
    model = models.build(_spec("wae", {"weight": 3.0, "kernel_scale": 2.0}))
    z, terms = model.latent(X, KEY)
    prior = _np(jax.random.normal(KEY, (len(X), LATENT)))
    want = 3.0 / D * _np_imq_mmd(_np(z), prior, 2.0)
    np.testing.assert_allclose(terms["mmd"], np.full(len(X), want), rtol=1e-4, atol=1e-8)
    # evaluation (no key): a fixed prior batch, so the held-out loss is deterministic
    np.testing.assert_array_equal(model.latent(X)[1]["mmd"], model.latent(X)[1]["mmd"])


def test_aae_terms_by_hand():
    model = models.build(_spec("aae", {**CRITIC, "weight": 2.0}))
    z, terms = model.latent(X, KEY)
    logit = lambda v: _np(model.critic(jnp.asarray(v, jnp.float32))[:, 0])  # noqa: E731
    np.testing.assert_allclose(terms["adversarial"], 2.0 / D * _softplus(-logit(z)), rtol=1e-5)
    prior = jax.random.normal(KEY, (len(X), LATENT))
    critic = model.critic_terms(X, KEY)
    want = _softplus(-logit(prior)) + _softplus(logit(z))  # prior draws real, codes fake
    np.testing.assert_allclose(critic["loss"], want, rtol=1e-5)


def test_maskaae_mask_and_terms_by_hand():
    model = models.build(_spec("maskaae", {**CRITIC, "weight": 2.0, "mask_init": 0.5}))
    alpha = _np(model.alpha())
    np.testing.assert_allclose(alpha, np.full(LATENT, 1 - np.exp(-0.5)), rtol=1e-6)  # alpha(0)
    e = _np(model.net.encode(X))
    z, terms = model.latent(X, KEY)
    np.testing.assert_allclose(z, alpha * e, rtol=1e-6)  # the masked code
    eps = _np(jax.random.normal(KEY, (len(X), LATENT)))
    np.testing.assert_allclose(model.prior_sample(KEY, len(X)), alpha * eps, rtol=1e-6)
    score = lambda v: _np(model.critic(jnp.asarray(v, jnp.float32))[:, 0])  # noqa: E731
    want = 2.0 / D * (score(alpha * eps) - score(alpha * e))
    np.testing.assert_allclose(terms["adversarial"], want, rtol=1e-4, atol=1e-8)
    critic = model.critic_terms(X, KEY)
    prior = alpha * _np(jax.random.normal(jax.random.split(KEY)[0], (len(X), LATENT)))
    np.testing.assert_allclose(critic["wasserstein"], score(prior) - score(alpha * e), rtol=1e-4,
                               atol=1e-7)  # fmt: skip
    assert np.all(_np(critic["gp"]) >= 0) and np.all(np.isfinite(_np(critic["loss"])))
    # alpha = 1 - exp(-softplus(raw)) = sigmoid(raw), for any raw parameter
    raw = np.array([-3.0, -0.5, 0.0, 4.0], np.float32)
    model.mask_raw[...] = jnp.asarray(raw)
    np.testing.assert_allclose(model.alpha(), scipy.special.expit(raw), rtol=1e-5)


def test_flexae_prior_and_terms_by_hand():
    model = models.build(_spec("flexae", {**CASES["flexae"][1], "weight": 2.0}))
    assert model.noise_dim == 6
    eps = jax.random.normal(KEY, (len(X), 6))
    sample = model.prior_sample(KEY, len(X))
    assert sample.shape == (len(X), LATENT)
    np.testing.assert_allclose(sample, model.prior(eps), rtol=1e-6)
    score = lambda v: _np(model.critic(jnp.asarray(v, jnp.float32))[:, 0])  # noqa: E731
    generated = model.prior(jax.random.normal(KEY, (len(X), 6)))
    prior = model.prior_terms(X, KEY)
    np.testing.assert_allclose(prior["loss"], -2.0 / D * score(generated), rtol=1e-5, atol=1e-8)
    z, terms = model.latent(X, KEY)
    np.testing.assert_allclose(terms["adversarial"], 2.0 / D * score(z), rtol=1e-5, atol=1e-8)
    critic = model.critic_terms(X, KEY)
    fake = model.prior(jax.random.normal(jax.random.split(KEY)[0], (len(X), 6)))
    np.testing.assert_allclose(critic["wasserstein"], score(z) - score(fake), rtol=1e-4,
                               atol=1e-7)  # fmt: skip


# --- each kind's prior ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_prior_sample_is_finite_and_deterministic_for_a_key(case, built):
    model = built(case)
    a, b, c = (np.asarray(model.prior_sample(k, len(X))) for k in (KEY, KEY, KEY2))
    assert a.shape == (len(X), LATENT) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --- bad settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, settings, message",
    [
        ("gmmdae", {"prior_means": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))},
         r"gmmdae prior_means has shape \(2, 3\), not \[K, 4\].*change model\.latent_dim"),
        ("gmmdae", {"prior_means": ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0))},
         r"gmmdae prior_means=.* is not \[K, 4\]: K rows of 4 numbers"),
        ("gmmdae", {"components": 0}, r"gmmdae components=0: .* must be an integer in 1\.\.4"),
        ("gmmdae", {"components": 5}, r"gmmdae components=5: .*raise model\.latent_dim"),
        ("gmmdae", {"components": 3, "prior_std": 0.0},
         r"gmmdae prior_std=0\.0: the components' standard deviation must be a finite number > 0"),
        ("gmmdae", {"prior_means": ((1.0, 0.0, 0.0, 0.0),), "prior_std": -1.0},
         r"gmmdae prior_std=-1\.0"),
        ("gmmdae", {"prior_means": ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0)),
                    "prior_weights": (0.5, 0.6)},
         r"gmmdae prior_weights=\(0\.5, 0\.6\) sum to 1\.1: .*normalise them"),
        ("gmmdae", {"prior_means": ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0)),
                    "prior_weights": (0.5, 0.25, 0.25)},
         r"gmmdae prior_weights=.*one mixture weight per row of prior_means \(2\)"),
        ("gmmdae", {"components": 3, "prior_weights": (0.5, 0.5)},
         r"gmmdae prior_weights need prior_means"),
        ("gmmdae", {"components": 3, "use_cov": False, "use_ks": False},
         r"gmmdae use_cov and use_ks are both off.*turn one on"),
        ("gmmdae", {"components": 3, "weight_batch": 1}, r"gmmdae weight_batch=1: .* >= 2"),
        ("rae", {"regularizer": "l1"}, r"rae regularizer 'l1': choose 'l2' .*'gp' .* or 'sn'"),
        ("aae", {"critic_steps": 0}, r"aae critic_steps=0: .*critic ratio.* integer >= 1"),
        ("maskaae", {"critic_steps": 0}, r"maskaae critic_steps=0: .*set maskaae\.critic_steps"),
        ("flexae", {"critic_steps": 0}, r"flexae critic_steps=0: .*integer >= 1"),
        ("aae", {"critic_steps": 2.5}, r"aae critic_steps=2\.5: .*must be an integer"),
        ("flexae", {"prior_noise": 3},
         r"flexae prior_noise=3: the generator's input needs m' >= K = 4 .*set "
         r"flexae\.prior_noise to 0"),
        ("maskaae", {"mask_init": 0.0}, r"maskaae mask_init must be > 0"),
        ("aae", {"critic_width": 0}, r"aae critic_width=0: the critic's hidden width"),
        ("wae", {"kernel_scale": 0.0}, r"wae kernel_scale=0\.0: .* > 0"),
        ("wae", {"wieght": 1.0}, r"model kind 'wae': unknown setting\(s\) \['wieght'\]"),
    ],
    ids=["means-width", "means-ragged", "components-0", "components-above-K", "std-0",
         "std-negative", "weights-sum", "weights-count", "weights-without-means", "no-term",
         "weight-batch", "rae-regularizer", "aae-critic-steps", "maskaae-critic-steps",
         "flexae-critic-steps", "critic-steps-float", "prior-noise", "mask-init", "critic-width",
         "kernel-scale", "unknown-setting"],
)  # fmt: skip
def test_bad_settings_are_named(kind, settings, message):
    small = CASES[kind][1] if kind in GROUPS else {}  # small critics: quick to build
    with pytest.raises(ValueError, match=message):
        models.build(_spec(kind, {**small, **settings}))


# Every loss weight: (kind, setting, whether 0 is allowed: a term switched off, the model still an
# autoencoder). MaskAAE's mask and FlexAE's prior train through their weight only, a WGAN critic
# needs its gradient penalty, and the GMM-DAE's regularizer is divided by its reconstruction weight.
WEIGHTS = [("wae", "weight", True), ("rae", "code_weight", True), ("rae", "decoder_weight", True),
           ("aae", "weight", True), ("maskaae", "weight", False), ("maskaae", "gp_weight", False),
           ("flexae", "weight", False), ("flexae", "gp_weight", False),
           ("gmmdae", "recon_weight", False)]  # fmt: skip


@pytest.mark.parametrize("kind, name, zero", WEIGHTS, ids=[f"{k}-{n}" for k, n, _ in WEIGHTS])
def test_every_loss_weight_is_finite_and_not_negative(kind, name, zero):
    """A negative weight would maximise its term (WAE: the MMD): refused, as are NaN and inf,
    and 0 where it leaves no working model; where 0 switches the term off, it builds."""
    small = CASES.get(kind, (kind, {}))[1]
    for value in (-1.0, float("nan"), float("inf"), *(() if zero else (0.0,))):
        bound = r">= 0 \(0: " if zero else "> 0"
        with pytest.raises(ValueError, match=rf"{kind} {name}={value!r}: .* finite number {bound}"):
            models.build(_spec(kind, {**small, name: value}))
    if zero:
        models.build(_spec(kind, {**small, name: 0.0}))


def test_an_override_of_another_kinds_settings_is_one_line(monkeypatch, capsys):
    """`--config.wae.kernel_scale=2` on an RAE config: one line from `config.validate`, exit
    status 2, not ml_collections' KeyError traceback (`experiments.train.parse_flags`)."""
    from absl import flags

    config = Path(__file__).parents[1] / "experiments" / "configs" / "rae.py"
    argv = ["train", "--config", f"{config}:mnist,cpu", "--workdir", "w",
            "--config.wae.kernel_scale=2"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
    try:
        with pytest.raises(SystemExit) as e:
            etrain.parse_flags(argv)
    finally:
        flags.FLAGS.unparse_flags()
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --config.wae.kernel_scale=2: config section 'wae' holds the settings of model "
        "kind 'wae', but model.kind='rae': remove the section, or build the config with "
        "jaxae.config.default('wae')"
    ]


@pytest.mark.parametrize("name", sorted(jconfig.CONFIG_FILES))
def test_a_config_file_name_is_not_a_model_kind(name):
    """`config.default('betavae')` says betavae.py is a config of kind 'vae', and it is."""
    import importlib

    kind = jconfig.CONFIG_FILES[name]
    message = rf"'{name}' is not a model kind: experiments/configs/{name}\.py is a config of kind"
    with pytest.raises(ValueError, match=rf"{message} '{kind}'"):
        jconfig.default(name)
    assert importlib.import_module(f"experiments.configs.{name}").get_config().model.kind == kind


def test_an_unknown_setting_in_the_config_is_named():
    d = jconfig.default("wae").to_dict()
    d["wae"]["wieght"] = 1.0
    with pytest.raises(ValueError, match=r"unknown config field 'wae\.wieght': did you mean "
                       r"'wae\.weight'\?"):  # fmt: skip
        jconfig.validate(d)


def test_a_config_holds_a_user_given_mixture_prior():
    """gmmdae.prior_means is a tuple of rows in the config (a user-given GMM, as the appendix's
    Figure 3 uses), checked by `config.validate`; a row that is not numbers is refused."""
    from jaxae import config as jconfig

    c = jconfig.default("gmmdae")
    c.model.latent_dim = 2
    c.gmmdae.update(prior_means=((3.0, 3.0), (-3.0, -3.0)), prior_weights=(0.25, 0.75))
    jconfig.validate(c)
    c.gmmdae.prior_means = ((3.0, 3.0), (-3.0, {"x": 1}))
    with pytest.raises(ValueError, match=r"gmmdae.prior_means=.*must be a tuple"):
        jconfig.validate(c)
