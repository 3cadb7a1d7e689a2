"""Issue 24: a model trains by its own declaration of its parameter groups and settings.

A tiny MLP autoencoder with a latent critic (`CriticAE`, registered here under a kind of its own
and removed from `models.KINDS` after the module) is trained by `experiments.train`: the critic
is stepped by its own optimizer (its learning-rate override) and steps; the log has each
group's loss and no total, one line per epoch, each group's metrics the mean over its inner
steps. The kind's settings are a config section, saved and compared on resume; bad sections,
keys and kinds are named; `eval_fn` values must be scalars.
"""

import contextlib
import io
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import train as etrain
from jaxae import checkpoint, models, objectives, plots, train
from jaxae import config as jconfig
from jaxae import data as jdata

KIND, OTHER = "groups_test_critic_ae", "groups_test_other"
SHAPE, LATENT, BATCH = (8, 8, 1), 4, 16
SETTINGS = {"weight": 0.5, "critic_steps": 2, "critic_learning_rate": 1e-2}


class CriticAE(models.Autoencoder):
    """An MLP autoencoder whose codes a linear critic tells from N(0, I) draws (an AAE's shape):
    the autoencoder's loss adds ``weight`` softplus(-critic(z)), the critic's is the GAN loss."""

    settings = SETTINGS

    def __init__(self, head, arch="mlp", latent_dim=LATENT, *, seed=0, weight=0.5,
                 critic_steps=2, critic_learning_rate=1e-2):  # fmt: skip
        super().__init__(head, arch, latent_dim, seed=seed)
        self.critic = nnx.Linear(latent_dim, 1, rngs=nnx.Rngs(params=seed + 1))
        self.weight, self.critic_steps, self.critic_lr = weight, critic_steps, critic_learning_rate

    def latent(self, x, key=None):
        z = self.encode(x)
        return z, {"adversarial": self.weight * jax.nn.softplus(-self.critic(z))[:, 0]}

    def critic_terms(self, x, key):
        """The critic's per-example loss: codes are 'fake', N(0, I) draws 'real'."""
        z = self.encode(x)
        prior = jax.random.normal(jax.random.PRNGKey(0) if key is None else key, z.shape)
        loss = jax.nn.softplus(-self.critic(prior)) + jax.nn.softplus(self.critic(z))
        return {"loss": loss[:, 0]}

    def groups(self):
        lr = (("learning_rate", self.critic_lr),)
        return {
            "autoencoder": models.ParamGroup(),  # every parameter but the critic's
            "critic": models.ParamGroup(("critic",), "critic_terms", self.critic_steps, lr),
        }


class OtherAE(models.Autoencoder):
    """Another kind with settings, whose section does not belong in a CriticAE's config."""

    settings = {"weight": 1.0}

    def __init__(self, head, arch="mlp", latent_dim=LATENT, *, seed=0, weight=1.0):
        super().__init__(head, arch, latent_dim, seed=seed)


@pytest.fixture(scope="module")
def kinds():
    """Register the two kinds for this module; KINDS is global, so remove them after."""
    models.register(KIND)(CriticAE)
    models.register(OTHER)(OtherAE)
    yield
    for kind in (KIND, OTHER):
        models.KINDS.pop(kind, None)


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _dataset():
    return jdata.Dataset("synthetic", jdata.from_arrays(_images(64, 0)), None,
                         jdata.from_arrays(_images(32, 1)))  # fmt: skip


def _config(**settings):
    c = jconfig.default(KIND)
    c.model.latent_dim = LATENT
    # the autoencoder's rate so small that its Adam steps vanish: what moves the critic is the
    # critic's own optimizer (its override, 1e-2)
    c.optimizer.learning_rate = 1e-30
    c.training.update(batch_size=BATCH, epochs=2, steps_per_call=2)
    c[KIND].update(settings)
    return c


@pytest.fixture(scope="module")
def run(kinds, tmp_path_factory):
    """Two epochs of 4 steps in chunks of 2 through `experiments.train.train_and_evaluate`:
    (workdir, summary, the final train state, the initial parameters, printed lines)."""
    workdir = tmp_path_factory.mktemp("groups") / "run"
    got = {}
    mp = pytest.MonkeyPatch()
    mp.setattr(etrain.jdata, "load", lambda *a, **k: _dataset())
    real_fit = train.fit

    def fit(*args, **kw):
        got["params0"] = jax.tree.map(np.array, kw["params"])
        got["result"] = real_fit(*args, **kw)
        return got["result"]

    mp.setattr(etrain.train, "fit", fit)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            summary = etrain.train_and_evaluate(_config(), workdir, progress=False)
    finally:
        mp.undo()
    return workdir, summary, got["result"].state, got["params0"], out.getvalue().splitlines()


def _log(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _max_change(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


# --- the update comes from the model's groups ------------------------------------------------


def test_the_critic_moves_by_its_own_optimizer_only(run):
    _, _, state, params0, _ = run
    params = jax.tree.map(np.asarray, state["params"])
    ae = {k: v for k, v in params.items() if k != "critic"}
    # the autoencoder's Adam at 1e-30 moves nothing visibly; the critic's at 1e-2 does
    assert _max_change(ae, {k: params0[k] for k in ae}) < 1e-25
    assert _max_change(params["critic"], params0["critic"]) > 1e-3
    opt = state["opt_state"]
    assert set(opt) == {"autoencoder", "critic"}
    assert set(opt["critic"][0].mu) == {"critic"}  # the critic's Adam holds the critic alone
    assert "critic" not in opt["autoencoder"][0].mu
    assert int(opt["critic"][0].count) == 2 * 8  # critic_steps=2 per iteration, 8 iterations
    assert int(opt["autoencoder"][0].count) == 8


def test_the_log_has_each_groups_loss_one_line_per_epoch(run):
    workdir, summary, _, _, printed = run
    lines = _log(workdir)
    # steps_per_call=2 cuts each epoch of 4 steps into 2 chunks
    assert [x["step"] for x in lines] == [4, 8] and [x["epoch"] for x in lines] == [1.0, 2.0]
    for line in lines:
        assert "loss" not in line  # no sum of the critic's and the autoencoder's losses
        terms = ("loss", "mse", "adversarial", "grad_norm")
        assert {*(f"autoencoder/{k}" for k in terms), "critic/loss", "critic/grad_norm"} <= set(
            line
        )
        assert {"eval_loss", "eval_mse", "eval_adversarial"} <= set(line)
    np.testing.assert_allclose(
        lines[0]["autoencoder/loss"],
        lines[0]["autoencoder/mse"] + lines[0]["autoencoder/adversarial"], rtol=1e-5,
    )  # fmt: skip
    last = lines[-1]
    assert summary["train_loss_last"] == {"autoencoder": last["autoencoder/loss"],
                                          "critic": last["critic/loss"]}  # fmt: skip
    # --noprogress prints each group's loss, one line per epoch
    epochs = [x for x in printed if x.startswith("epoch ")]
    assert len(epochs) == 2 and "  autoencoder/loss " in epochs[0] and "  critic/loss " in epochs[0]
    # the curves draw one panel per group loss, then the held-out metrics
    panels = [m for _, m in plots._curve_panels(lines)]
    assert panels[:2] == ["autoencoder/loss", "critic/loss"]
    assert sorted(panels[2:]) == ["adversarial", "loss", "mse"]
    assert (workdir / summary["curves"]).is_file()


def test_a_groups_metrics_are_the_mean_over_its_inner_steps():
    """Three SGD steps on (w - 1)^2 from w = 0: losses 1, 0.64, 0.4096 (w = 0, 0.2, 0.36)."""
    params = nnx.State({"a": {"w": jnp.zeros(1)}, "b": {"w": jnp.zeros(1)}})

    def loss(params, batch, key):
        return {"loss": jnp.broadcast_to((params["a"]["w"][0] - 1.0) ** 2, (batch["x"].shape[0],))}

    update = train.grouped({"g": train.Group(None, train.stateless(loss), optax.sgd(0.1), 3)})
    new, _, _, metrics = update.step(params, nnx.State({}), update.init(params),
                                     {"x": jnp.zeros(2)}, jax.random.PRNGKey(0))  # fmt: skip
    np.testing.assert_allclose(metrics["g/loss"], (1 + 0.64 + 0.4096) / 3, rtol=1e-6)
    np.testing.assert_allclose(new["a"]["w"], 0.488, rtol=1e-6)  # 0.36 + 0.2 * 0.64
    assert set(metrics) == {"g/loss", "g/grad_norm"} and set(new) == {"a", "b"}


def test_model_update_picks_single_or_grouped(kinds):
    spec = {"kind": "ae", "arch": "mlp", "latent_dim": LATENT, "image_shape": list(SHAPE)}
    opt = jconfig.default().optimizer
    ae = models.build(spec)
    graphdef, params, _ = objectives.split(ae)
    # one group owning everything: single, today's path, with today's optimizer state
    state = train.model_update(ae, graphdef, opt, 4).init(params)
    assert jax.tree.structure(state) == jax.tree.structure(optax.adam(1e-3).init(params))
    critic = models.build({**spec, "kind": KIND})
    graphdef, params, _ = objectives.split(critic)
    assert set(train.model_update(critic, graphdef, opt, 4).init(params)) == {"autoencoder",
                                                                             "critic"}  # fmt: skip


def test_bad_groups_are_named(kinds):
    model = models.build({"kind": KIND, "arch": "mlp", "latent_dim": LATENT,
                          "image_shape": list(SHAPE)})  # fmt: skip
    graphdef, params, _ = objectives.split(model)
    opt = jconfig.default().optimizer
    lf = objectives.loss_fn(graphdef)
    with pytest.raises(ValueError, match=r"groups \['a', 'b'\] all have params=None"):
        train.grouped(
            {"a": train.Group(None, lf, optax.adam(1)), "b": train.Group(None, lf, optax.adam(1))}
        )
    every = tuple(params)
    with pytest.raises(ValueError, match="group 'rest' .* owns nothing"):
        train.grouped({"all": train.Group(every, lf, optax.adam(1)),
                       "rest": train.Group(None, lf, optax.adam(1))}).init(params)  # fmt: skip

    def with_groups(groups):
        m = models.build({"kind": KIND, "arch": "mlp", "latent_dim": LATENT,
                          "image_shape": list(SHAPE)})  # fmt: skip
        m.groups = lambda: groups
        return m

    bad_loss = with_groups({"c": models.ParamGroup(("critic",), "critic_loss")})
    with pytest.raises(ValueError, match="group 'c': loss 'critic_loss' is not a method"):
        train.model_update(bad_loss, graphdef, opt, 4)
    bad_opt = with_groups({"c": models.ParamGroup(optimizer=(("beta1", 0.5),))})
    with pytest.raises(ValueError, match=r"group 'c': optimizer override of \['beta1'\]"):
        train.model_update(bad_opt, graphdef, opt, 4)
    bad_b1 = with_groups({"c": models.ParamGroup(optimizer=(("b1", 1.0),))})
    with pytest.raises(ValueError, match=r"group 'c': optimizer\.b1=1\.0: must be a number in"):
        train.model_update(bad_b1, graphdef, opt, 4)


def test_adam_betas_in_the_config():
    with pytest.raises(
        ValueError, match=r"config optimizer\.b1=1\.0: must be a number in \(0, 1\)"
    ):
        jconfig.make(optimizer=dict(b1=1.0))
    opt = jconfig.make(optimizer=dict(b1=0.5, b2=0.99)).optimizer
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.3, 0.1])}
    ours = train.make_optimizer(opt, 10)
    want = optax.adam(1e-3, b1=0.5, b2=0.99)
    s1, s2 = ours.init(params), want.init(params)
    for _ in range(2):  # the second step differs where the betas do
        got, s1 = ours.update(grads, s1, params)
        expected, s2 = want.update(grads, s2, params)
        np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6)


# --- settings: a config section of the kind --------------------------------------------------


def test_settings_round_trip_through_the_checkpoint(run):
    workdir = run[0]
    restored = checkpoint.restore_params(workdir)
    assert restored.config[KIND].to_dict() == SETTINGS
    assert restored.meta["config"][KIND] == SETTINGS
    assert restored.spec["settings"] == SETTINGS and restored.model.options == SETTINGS
    assert restored.spec["module"] == CriticAE.__module__  # defined outside jaxae
    assert dict(restored.model._settings) == SETTINGS and restored.model.critic_steps == 2


def test_a_changed_setting_refuses_to_resume(run, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    monkeypatch.setattr(etrain.jdata, "load", lambda *a, **k: _dataset())
    config = _config(critic_learning_rate=2e-2)
    config.training.epochs = 3
    with pytest.raises(ValueError, match=rf"cannot resume.*{KIND}\.critic_learning_rate: "
                       r"0\.01 -> 0\.02"):  # fmt: skip
        etrain.train_and_evaluate(config, workdir, progress=False)


def test_config_sections_of_kinds(kinds):
    c = jconfig.default(KIND)
    assert c.model.kind == KIND and c[KIND].to_dict() == SETTINGS
    assert jconfig.default("ae").to_dict() == jconfig.default().to_dict()  # no settings: as before
    assert jconfig.flatten(c)[f"{KIND}.critic_steps"] == 2
    made = jconfig.make(model=dict(kind=KIND), **{KIND: dict(weight=2)})
    assert made[KIND].weight == 2.0
    # an old checkpoint's config (no section) loads with the kind's defaults
    old = {k: v for k, v in c.to_dict().items() if k != KIND}
    assert jconfig.from_dict(old)[KIND].to_dict() == SETTINGS
    saved = json.loads(json.dumps(c.to_dict()))
    assert jconfig.flatten(jconfig.from_dict(saved)) == jconfig.flatten(c)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop(KIND), rf"no section '{KIND}': build the config with "
         rf"jaxae\.config\.default\('{KIND}'\)"),
        (lambda d: d[KIND].pop("weight"), rf"section '{KIND}' lacks \['weight'\]: build the "
         rf"config with jaxae\.config\.default\('{KIND}'\)"),
        (lambda d: d.update({OTHER: {"weight": 1.0}}), rf"section '{OTHER}' holds the settings of "
         rf"model kind '{OTHER}', but model\.kind='{KIND}'"),
        (lambda d: d[KIND].update(critic_learnin_rate=1.0), rf"unknown config field "
         rf"'{KIND}\.critic_learnin_rate': did you mean '{KIND}\.critic_learning_rate'\?"),
        (lambda d: d.update(trainer={"epochs": 1}), r"unknown config field 'trainer': did you "
         r"mean 'training'\?"),
        (lambda d: d[KIND].update(critic_steps=2.5), rf"config {KIND}\.critic_steps=2\.5: must be "
         "a int like its default 2"),
        (lambda d: d[KIND].update(weight="x"), rf"{KIND}\.weight='x': must be a float"),
        (lambda d: d["model"].update(width=-1), r"config model\.width=-1: must be a non-negative"),
        (lambda d: d["model"].update(kind="groups_test_nope"), r"config model\.kind="
         r"'groups_test_nope': model kind 'groups_test_nope' is not registered: import the module "
         r"that registers it first \(the kinds registered now: ae, "),
    ],
    ids=["no-section", "missing-key", "other-kind", "unknown-key", "unknown-section", "int",
         "float", "width", "unknown-kind"],
)  # fmt: skip
def test_bad_sections_keys_and_kinds_are_named(kinds, edit, message):
    d = jconfig.default(KIND).to_dict()
    edit(d)
    with pytest.raises(ValueError, match=message):
        jconfig.validate(d)


def test_unregistered_kinds_name_the_module_to_import(kinds):
    saved = jconfig.default(KIND).to_dict()
    saved["model"]["kind"] = "my_aae"
    want = r"kind 'my_aae' is not registered: import the module that registers it first \(`import "
    with pytest.raises(ValueError, match=want + r"experiments\.examples\.my_aae`\)"):
        jconfig.from_dict(saved, module="experiments.examples.my_aae")
    with pytest.raises(ValueError, match=r"default\('my_aae'\): model kind 'my_aae' is not"):
        jconfig.default("my_aae")
    # the command line's misspelt override knows every registered kind's settings
    assert f"did you mean '{KIND}.weight'" in jconfig.unknown_field(f"{KIND}.weigth")


def test_build_passes_and_records_the_settings(kinds):
    spec = {"kind": KIND, "arch": "mlp", "latent_dim": LATENT, "image_shape": list(SHAPE)}
    model = models.build({**spec, "settings": {"critic_steps": 3, "weight": 2}})
    assert model.critic_steps == 3 and model.weight == 2
    assert model.options == {**SETTINGS, "critic_steps": 3, "weight": 2}
    assert model.spec["settings"] == model.options and models.build(model.spec).spec == model.spec
    assert models.build(spec).options == SETTINGS  # the class defaults
    with pytest.raises(
        ValueError, match=rf"model kind '{KIND}': unknown setting\(s\) \['wieght'\]"
    ):
        models.build({**spec, "settings": {"wieght": 1.0}})
    with pytest.raises(ValueError, match=r"model kind 'ae': unknown setting\(s\) \['weight'\]"):
        models.build({**spec, "kind": "ae", "settings": {"weight": 1.0}})
    with pytest.raises(ValueError, match="settings are numbers, bools, strings or tuples"):
        models.register("groups_test_bad")(type("Bad", (CriticAE,), {"settings": {"w": [1]}}))
    assert "groups_test_bad" not in models.KINDS


def test_width_reaches_the_network_only_when_set(monkeypatch):
    calls = []
    real = models.nets.make

    def make(*args, **kw):
        calls.append(kw.pop("width", None))
        return real(*args, **kw)

    monkeypatch.setattr(models.nets, "make", make)
    spec = {"kind": "ae", "arch": "mlp", "latent_dim": LATENT, "image_shape": list(SHAPE)}
    assert "width" not in models.build({**spec, "width": 0}).spec
    assert models.build({**spec, "width": 8}).spec["width"] == 8
    assert calls == [None, 8]


# --- the trainer's log -----------------------------------------------------------------------


def _tiny_fit(workdir, eval_fn=None, **training):
    model = models.build({"kind": "ae", "arch": "mlp", "latent_dim": LATENT,
                          "image_shape": list(SHAPE)})  # fmt: skip
    graphdef, params, model_state = objectives.split(model)
    config = jconfig.make(training=dict(batch_size=BATCH, epochs=2, **training))
    pre = jdata.Preprocess("unit")
    return train.fit(config, workdir, params=params, model_state=model_state,
                     update=train.model_update(model, graphdef, config.optimizer, 4),
                     train={"image": _images(64, 0)}, eval_fn=eval_fn, progress=False,
                     prepare=lambda b, k: {**b, "image": pre(b["image"])})  # fmt: skip


def test_eval_fn_must_return_scalars(tmp_path):
    with pytest.raises(ValueError, match=r"eval_fn returned 'mse' of shape \(2,\): .* scalar"):
        _tiny_fit(tmp_path / "run", eval_fn=lambda state: {"mse": [0.1, 0.2]})


def test_chunks_of_an_epoch_are_one_line(tmp_path):
    """steps_per_call=1: four chunks per epoch, one line each epoch, its values their means."""
    result = _tiny_fit(tmp_path / "run", steps_per_call=1)
    lines = _log(tmp_path / "run")
    assert [x["step"] for x in lines] == [4, 8] and lines == result.history
    per_step = _tiny_fit(tmp_path / "whole")  # the same run, one chunk per epoch
    for a, b in zip(lines, per_step.history, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        assert a["seconds"] > 0 and a["examples_per_s"] > 0


def test_a_grouped_log_without_a_total_loss_is_checked_and_drawn():
    """The PAE's flow is one group: its loss is the run's loss, and its nll is the same curve."""
    flow = [{"step": e, "epoch": float(e), "flow/loss": -e, "flow/nll": -e, "flow/grad_norm": 1.0,
             "eval_loss": 1 - e, "eval_nll": 1 - e} for e in (1, 2)]  # fmt: skip
    assert plots._curve_panels(flow) == [("nll (= loss)", "nll")]
    metrics = {"critic/loss": np.array([1.0, np.nan]), "critic/grad_norm": np.array([1.0, 2.0]),
               "autoencoder/mse": np.array([1.0, np.inf])}  # fmt: skip
    with pytest.raises(
        train.NonFiniteLossError, match="in autoencoder/mse, critic/loss at step 12"
    ):
        train._check_finite(metrics, 10, None)
