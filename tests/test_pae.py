"""The PAE model and its second stage (`jaxae.models.PAE`, `jaxae.pae`): the noise map of
Eq. 8, the latent density of Eq. 5 with the codes' standardisation, the flow stage's fit, early
stopping, checkpoints and resume, restoring either stage, sampling, scores and bad input."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxae import checkpoint, evaluate, models, objectives, pae, train
from jaxae import config as jconfig
from jaxae import data as jdata

K, SHAPE = 4, (8, 8, 1)


def _spec(**kw):
    return {"kind": "pae", "arch": "mlp", "head": "mse", "latent_dim": K,
            "image_shape": list(SHAPE), "flow": {"layers": 2, "hidden": 8}, **kw}  # fmt: skip


def _images(n, seed=0):
    """Smooth synthetic images: a low-dimensional family, so a K=4 autoencoder fits it."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 8)
    a, b = rng.uniform(0.2, 1, (2, n, 1, 1))
    img = 0.5 + 0.4 * np.sin(6 * a * t[None, :, None] + 4 * b * t[None, None, :])
    return np.round(img[..., None] * 255).astype(np.uint8)


def _config(**flow):
    c = jconfig.default()
    c.data.scale, c.data.val_size = "centered", 64
    c.model.arch, c.model.latent_dim = "mlp", K
    c.training.batch_size, c.training.epochs = 32, 3
    c.flow.update(epochs=6, layers=2, hidden=8, batch_size=32, patience=2, **flow)
    return c


def _dataset():
    return jdata.Dataset(
        "synthetic",
        jdata.from_arrays(_images(256)),
        jdata.from_arrays(_images(64, 1)),
        jdata.from_arrays(_images(64, 2)),
    )


def _train_ae(config, workdir, dataset):
    model = models.build({**config.model.to_dict(), "image_shape": list(SHAPE), "seed": 0})
    graphdef, params, state = objectives.split(model)
    pre = jdata.Preprocess(scale="centered")
    update = train.single(objectives.loss_fn(graphdef), train.make_optimizer(config.optimizer, 8))
    train.fit(config, workdir, params=params, model_state=state, update=update,
              train={"image": dataset.train.images}, progress=False, model=model.spec,
              prepare=lambda b, k: {**b, "image": pre(b["image"])})  # fmt: skip


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pae")
    config, ds = _config(), _dataset()
    _train_ae(config, workdir, ds)
    summary = pae.fit_flow(config, workdir, dataset=ds, progress=False)
    return workdir, config, ds, summary


def test_latent_density_is_eq5_over_the_raw_codes():
    """A new flow is the identity: log p(z) is then the Normal of the standardisation."""
    m = models.build(_spec())
    loc, scale = np.array([0.5, -1.0, 2.0, 0.0]), np.array([2.0, 0.5, 1.0, 3.0])
    m.code_loc[...], m.code_scale[...] = jnp.asarray(loc), jnp.asarray(scale)
    z = np.random.default_rng(0).normal(size=(5, K)).astype(np.float32)
    want = stats.norm.logpdf(z, loc, scale).sum(-1)
    np.testing.assert_allclose(m.latent_log_prob(jnp.asarray(z)), want, rtol=1e-5)
    assert models.build(m.spec).spec == m.spec
    assert m.spec["flow"]["kind"] == "realnvp" and not m.has_density


def test_noise_map_is_the_per_pixel_rms_error():
    ae = models.build({**_spec(), "kind": "ae", "scale": "centered"})
    ae.eval()
    x = _images(20)
    xc = np.asarray(jdata.Preprocess("centered")(x))
    err = np.asarray(ae.decode(ae.encode(jnp.asarray(xc)))) - xc.reshape(20, -1)
    want = np.maximum(np.sqrt(np.mean(err**2, 0)), pae.SIGMA_FLOOR)
    got = pae.noise_map(ae, x, scale="centered", batch_size=7)  # uneven batches
    np.testing.assert_allclose(got, want, rtol=1e-5)
    chex.assert_shape(got, (64,))


def test_flow_stage_fits_stops_early_and_restores(fitted_run):
    workdir, config, ds, summary = fitted_run
    assert 1 <= summary["best_epoch"] <= summary["epochs"] <= config.flow.epochs
    full, ae = checkpoint.restore_params(workdir), checkpoint.restore_params(workdir, stage=1)
    assert isinstance(full.model, models.PAE) and int(full.model.fitted[...]) == 1
    assert type(ae.model) is models.Autoencoder and full.spec["kind"] == "pae"
    # the AE's networks are carried over unchanged
    for a, b in zip(
        jax.tree.leaves(jax.tree.map(np.asarray, ae.model.net)),
        jax.tree.leaves(jax.tree.map(np.asarray, full.model.net)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # the run ends with its best epoch's flow: its validation NLL is the summary's
    z = pae.encode(full.model, ds.val.images, scale="centered")
    nll = -np.mean(np.asarray(full.model.latent_log_prob(jnp.asarray(z))))
    np.testing.assert_allclose(nll, summary["val_nll"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(full.model.sigma[...], pae.noise_map(ae.model, ds.val.images,
                               scale="centered"), rtol=1e-6)  # fmt: skip
    # resuming a finished stage changes nothing
    again = pae.fit_flow(config, workdir, dataset=ds, progress=False)
    assert again["resumed_from"] is not None and again["val_nll"] == summary["val_nll"]
    assert json.loads((workdir / "stage2" / "summary.json").read_text())["best_epoch"] == \
        summary["best_epoch"]  # fmt: skip


def test_scores_samples_and_interpolations(fitted_run):
    workdir, _, ds, _ = fitted_run
    m = checkpoint.restore_params(workdir).model
    x = ds.test.images[:6]
    full = pae.score(m, x, scale="centered", map_steps=5, batch_size=4)
    cheap = pae.score(m, x, scale="centered", laplace_scores=False)
    for k in ("reconstruction", "latent_density", "eq12"):
        np.testing.assert_allclose(full[k], cheap[k], rtol=1e-4, atol=1e-3)
    assert set(pae.SCORES) <= set(full) and full["eq12_map"].shape == (6,)
    assert np.all(full["eq12_map"] >= full["eq12"] - 1e-3)  # the MAP does not lose Eq. 12
    s = pae.sample(m, jax.random.PRNGKey(0), 5, scale="centered")
    assert s.shape == (5, *SHAPE) and s.min() >= 0 and s.max() <= 1
    path = pae.interpolate(m, x[:2], x[2:4], scale="centered", steps=3)
    assert path.shape == (2, 3, *SHAPE)
    xc = jdata.Preprocess("centered")(x[:2])
    recon = np.asarray(m.point(m.decode(m.encode(xc)))[0]) + 0.5
    np.testing.assert_allclose(path[:, 0], np.clip(recon, 0, 1), atol=1e-4)
    pngs = pae.write_figures(m, ds.test.images[:16], workdir / "figs", scale="centered")
    assert [p.name for p in pngs] == ["samples.png", "interpolations.png"]
    fns = evaluate.functions(checkpoint.restore_params(workdir))
    assert "flow" in evaluate.samplers(fns, ds.train.images, model=m)


def test_unfitted_pae_and_bad_images_are_named(fitted_run):
    m = models.build(_spec())
    with pytest.raises(models.NotFittedError, match="scoring needs a fitted PAE"):
        pae.score(m, _images(2), scale="centered")
    with pytest.raises(models.NotFittedError, match="sampling"):
        pae.sample(m, jax.random.PRNGKey(0), 2, scale="centered")
    with pytest.raises(TypeError, match="needs a PAE"):
        pae.score(models.build({**_spec(), "kind": "ae"}), _images(2), scale="centered")
    fitted = checkpoint.restore_params(fitted_run[0]).model
    bad = {
        "shape": (np.zeros((2, 28, 28, 1), np.uint8), "model takes"),
        "range": (np.full((2, 8, 8, 1), 2.0, np.float32), "out of range"),
        "nan": (np.full((2, 8, 8, 1), np.nan, np.float32), "NaN"),
        "dtype": (np.zeros((2, 8, 8, 1), bool), "dtype"),
        "empty": (np.zeros((0, 8, 8, 1), np.uint8), "empty"),
    }
    for images, message in bad.values():
        with pytest.raises((ValueError, TypeError), match=message):
            pae.score(fitted, images, scale="centered")


def test_a_restored_pae_carries_its_pixel_scale(fitted_run):
    """The run's autoencoder was saved without a scale (as before models knew theirs): it and
    the PAE built from it get the config's 'centered', so research code passes images only."""
    workdir, _, ds, _ = fitted_run
    full, ae = checkpoint.restore_params(workdir), checkpoint.restore_params(workdir, stage=1)
    assert "scale" not in ae.spec and ae.model.scale == "centered"
    assert full.spec["scale"] == "centered" and full.model.scale == "centered"
    m, x = full.model, ds.test.images[:4]
    own = pae.score(m, x, laplace_scores=False)
    given = pae.score(m, x, scale="centered", laplace_scores=False)
    for k in own:
        np.testing.assert_array_equal(own[k], given[k])
    np.testing.assert_array_equal(
        pae.sample(m, jax.random.PRNGKey(0), 3),
        pae.sample(m, jax.random.PRNGKey(0), 3, scale="centered"),
    )
    np.testing.assert_array_equal(pae.encode(ae.model, x), pae.encode(ae.model, x,
                                  scale="centered"))  # fmt: skip
    wrong = r"trained on 'centered' pixels .*; scale='unit' does not match"
    calls = [
        lambda: pae.score(m, x, scale="unit", laplace_scores=False),
        lambda: pae.sample(m, jax.random.PRNGKey(0), 2, scale="unit"),
        lambda: pae.interpolate(m, x[:1], x[1:2], scale="unit"),
        lambda: pae.encode(m, x, scale="unit"),
        lambda: pae.noise_map(ae.model, x, scale="unit"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=wrong):
            call()


def test_a_plain_autoencoder_run_says_how_to_fit_its_flow(fitted_run):
    workdir, _, ds, _ = fitted_run
    ae = checkpoint.restore_params(workdir, stage=1).model
    hint = (
        r"plain autoencoder .* latent flow was never fitted, or restored with stage=1: restore "
        r"the run without stage= for the PAE .*; if its flow was never fitted, train a PAE, "
        r"both stages .*`python -m experiments\.train --config experiments/configs/pae\.py:K` "
        r"with the run's own --config\.data\.\* flags .*fit_flow.* restore the run again"
    )
    from jaxae import inpaint

    c = inpaint.corruption("left_half", SHAPE)
    for use, call in {
        "scoring": lambda: pae.score(ae, ds.test.images[:2]),
        "sampling": lambda: pae.sample(ae, jax.random.PRNGKey(0), 2),
        "inpainting": lambda: inpaint.pae_posterior(ae, ds.test.images[:2], c,
                                                    key=jax.random.PRNGKey(0)),
    }.items():  # fmt: skip
        with pytest.raises(TypeError, match=f"{use} needs a PAE .*{hint}"):
            call()


def test_a_restored_run_or_a_bad_count_is_named(fitted_run):
    """Passing `restore_params(run)` itself, or n = 0, gave cryptic errors (a '?' model kind;
    "map() missing 1 required positional argument")."""
    workdir, _, ds, _ = fitted_run
    restored = checkpoint.restore_params(workdir)
    with pytest.raises(TypeError, match=r"got a Restored: pass its \.model"):
        pae.score(restored, ds.test.images[:2])
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n is the number of images to draw"):
            pae.sample(restored.model, jax.random.PRNGKey(0), n)


def test_flow_stage_is_marked_without_a_progress_bar(fitted_run, capsys):
    """`experiments.train --noprogress` printed nothing when the flow stage started."""
    workdir, config, ds, _ = fitted_run
    pae.fit_flow(config, workdir, dataset=ds, progress=False)  # resumes the finished stage
    step = checkpoint.restore_params(workdir, stage=1).step
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        f"flow stage: fitting realnvp on {len(ds.train.images)} codes of the autoencoder at step "
        f"{step} -> {workdir / 'stage2'}"
    )
    resumed = out.splitlines()[1:]  # the finished stage, resumed from its last checkpoint
    assert len(resumed) == 1 and resumed[0].startswith("resumed from step ")
    assert resumed[0].endswith(f"({workdir / 'stage2' / 'checkpoints'})")


def test_a_single_or_channels_first_image_is_named(fitted_run):
    m = checkpoint.restore_params(fitted_run[0]).model
    x = fitted_run[2].test.images[:3]
    with pytest.raises(ValueError, match=r"batch axis is missing: pass images\[None\]"):
        pae.score(m, x[0], laplace_scores=False)
    with pytest.raises(ValueError, match=r"channels-last .* images\.transpose\(0, 2, 3, 1\)"):
        pae.encode(m, x.transpose(0, 3, 1, 2))
    ok = pae.score(m, x[0][None], laplace_scores=False)["eq12"]
    assert ok.shape == (1,)


def test_flow_stage_names_a_k_mismatch_and_missing_validation(fitted_run, tmp_path):
    workdir, config, ds, _ = fitted_run
    other = _config()
    other.model.latent_dim = K + 1
    with pytest.raises(checkpoint.ModelMismatchError, match="K=4 .* K=5"):
        pae.fit_flow(other, workdir, dataset=ds, progress=False)
    with pytest.raises(ValueError, match="validation data"):
        pae.fit_flow(config, workdir, dataset=ds._replace(val=None), progress=False)
    with pytest.raises(FileNotFoundError, match="stage 3"):
        checkpoint.restore_params(workdir, stage=3)


def test_early_stopping_ends_with_the_best_epoch(tmp_path):
    """A scripted validation curve: best at epoch 2, patience 2 -> stops after epoch 4 with the
    parameters of epoch 2; a rerun resumes into the stopped state and trains no further."""
    curve = iter([3.0, 1.0, 2.0, 2.5, 0.5, 0.1])
    seen = {}

    def eval_fn(state):
        seen[int(state["step"])] = np.asarray(state["params"]["w"]).copy()
        return {"nll": next(curve)}

    def loss(params, batch, key):
        del key
        return {"loss": jnp.sum((batch["x"] - params["w"]) ** 2, -1)}

    c = jconfig.default()
    c.training.batch_size, c.training.epochs = 8, 6
    data = {"x": np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)}
    import optax
    from flax import nnx

    params = nnx.State({"w": jnp.zeros(3)})
    update = train.single(train.stateless(loss), optax.sgd(0.1))
    es = train.EarlyStopping("nll", patience=2)
    result = train.fit(c, tmp_path, params=params, update=update, train=data, progress=False,
                       eval_fn=eval_fn, early_stopping=es)  # fmt: skip
    assert int(result.state["step"]) == 4 * 2 and int(result.state["best"]["epoch"]) == 2
    np.testing.assert_array_equal(result.state["params"]["w"], seen[4])
    curve = iter([9.0] * 6)
    again = train.fit(c, tmp_path, params=params, update=update, train=data, progress=False,
                      eval_fn=eval_fn, early_stopping=es)  # fmt: skip
    assert again.history == [] and int(again.state["step"]) == 8
    np.testing.assert_array_equal(again.state["params"]["w"], seen[4])
    with pytest.raises(ValueError, match="needs an eval_fn"):
        train.fit(c, tmp_path / "x", params=params, update=update, train=data, progress=False,
                  early_stopping=es)  # fmt: skip
