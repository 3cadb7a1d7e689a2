"""A run's stages agree, and the PAE scripts touch nothing they should not (issue 23).

A tiny PAE run (the 8 x 8 synthetic images of `test_pae`): its flow (stage 2) records the
autoencoder checkpoint it was fitted on; training the autoencoder further is refused by
``experiments/train.py``, keeps the depended-on step whatever ``keep_checkpoints`` says, and
makes restoring the whole PAE a `StageMismatchError`. The scripts train only runs they made
(`pae_cli.check_owned`), write the exact command, and key their score caches on the images and
the checkpoint; `pae_ood` keeps its cache under --out, never in a run folder, and with
--no-train and missing runs it stops before creating anything.
"""

import re
import shlex
import shutil

import numpy as np
import pytest
from test_pae import _config, _dataset, _images, _train_ae

from experiments import pae_cli, pae_inpaint, pae_ood, pae_table1
from experiments import train as etrain
from jaxae import checkpoint, evaluate, pae
from jaxae.checkpoint import Checkpointer, StageMismatchError

AE_STEP = 24  # 3 epochs of 256 images in batches of 32


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A finished two-stage PAE run: (run folder, config, dataset, stage-2 step)."""
    run = tmp_path_factory.mktemp("stages") / "run"
    config, ds = _config(), _dataset()
    _train_ae(config, run, ds)
    pae.fit_flow(config, run, dataset=ds, progress=False)
    with Checkpointer(run / "stage2" / "checkpoints", save_every=1) as ckpt:
        flow_step = ckpt.latest_step()
    return run, config, ds, flow_step


def _copy(fitted, tmp_path, name="run"):
    shutil.copytree(fitted[0], tmp_path / name)
    return tmp_path / name


def _steps(directory):
    with Checkpointer(directory, save_every=1) as ckpt:
        return ckpt.all_steps()


def test_the_flow_records_the_autoencoder_it_was_fitted_on(fitted):
    run, _, _, flow_step = fitted
    with Checkpointer(run / "stage2" / "checkpoints", save_every=1) as ckpt:
        metas = [ckpt.read_meta(s) for s in ckpt.all_steps()]
    with Checkpointer(run / "checkpoints", save_every=1) as ckpt:
        fingerprint = ckpt.fingerprint(AE_STEP)
    want = {"stage": 1, "name": "autoencoder", "step": AE_STEP, "fingerprint": fingerprint}
    assert metas and all(m["stage"]["fitted_on"] == want for m in metas)
    assert checkpoint.restore_params(run).stage_steps == (AE_STEP, flow_step)
    assert checkpoint.restore_params(run, stage=1).stage_steps == (AE_STEP,)
    assert checkpoint.check_stages(run) == (AE_STEP, flow_step)
    assert checkpoint.depended_steps(run) == [AE_STEP]


def test_training_the_autoencoder_past_its_flow_is_refused(fitted, tmp_path, monkeypatch):
    run = _copy(fitted, tmp_path)
    config, ds = _config(), fitted[2]
    config.training.epochs = 5
    monkeypatch.setattr(etrain.jdata, "load", lambda *a, **k: ds)
    with pytest.raises(StageMismatchError, match=f"to step 40: .*stage2.* step {AE_STEP}"):
        etrain.train_and_evaluate(config, run, progress=False)
    assert _steps(run / "checkpoints") == [8, 16, AE_STEP]  # nothing trained


def test_a_newer_autoencoder_checkpoint_is_named_and_the_fitted_one_is_kept(fitted, tmp_path):
    """Train stage 1 further (as a library user may) with keep_checkpoints=1."""
    run, flow_step = _copy(fitted, tmp_path), fitted[3]
    config, ds = _config(), fitted[2]
    config.training.epochs, config.training.keep_checkpoints = 5, 1
    _train_ae(config, run, ds)
    assert _steps(run / "checkpoints") == [AE_STEP, 40]  # 32 went, the flow's step stayed
    message = (f"stage2, step {flow_step}\\) was fitted on the autoencoder at step {AE_STEP}, "
               "but the autoencoder's newest checkpoint is step 40 \\(trained further")  # fmt: skip
    with pytest.raises(StageMismatchError, match=message):
        checkpoint.restore_params(run)
    assert checkpoint.restore_params(run, stage=1).step == 40  # the autoencoder alone
    with pytest.raises(StageMismatchError, match="step 40"):  # nor is the flow resumed on it
        pae.fit_flow(_config(), run, dataset=ds, progress=False)
    with pytest.raises(StageMismatchError, match="step 40"):
        checkpoint.check_stages(run)


def test_an_autoencoder_trained_again_to_the_same_step_is_a_mismatch(fitted, tmp_path):
    run = _copy(fitted, tmp_path)
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.jsonl").unlink()
    config = _config()
    config.training.seed = 1
    _train_ae(config, run, fitted[2])
    with pytest.raises(StageMismatchError, match=f"step {AE_STEP} holds other weights"):
        checkpoint.restore_params(run)


def test_evaluation_names_each_stage_step():
    result = {"run": "runs/x", "step": 3210, "stage_steps": [300, 3210], "samples": {},
              "reconstruction": {"mse": 0.01, "psnr_db": 20.0}, "protocol": "p"}  # fmt: skip
    head = evaluate.markdown(result).splitlines()[0]
    assert head == "# Evaluation of `runs/x` (step 300 (autoencoder), 3210 (flow))"
    assert evaluate.markdown({**result, "stage_steps": [7]}).startswith(
        "# Evaluation of `runs/x` (step 7)"
    )


# --- The scripts -------------------------------------------------------------------------------


def test_a_run_trained_with_other_settings_is_not_the_scripts(fitted, tmp_path):
    run, config = fitted[0], fitted[1]
    assert pae_cli.differences(run, _config()) == []
    assert pae_cli.differences(tmp_path / "new", config) == []  # a new run is the script's
    other = _config()
    other.training.max_steps = 300
    with pytest.raises(pae_cli.RunNotOwnedError, match=r"training.max_steps: 0 \(run\) vs 300 "
                       r"\(this script\).*--no-train.*--runs"):  # fmt: skip
        pae_cli.check_owned(run, other)
    other = _config()
    other.flow.patience = 5
    assert pae_cli.differences(run, other) == [
        "flow.patience: 2 (run) vs 5 (this script)",
        "stage2 flow.patience: 2 (run) vs 5 (this script)",
    ]


def _fake_score(calls):
    """`pae.score` stand-in: deterministic scores from the images, counting the calls."""

    def score(model, images, *, laplace_scores=True, **kw):
        calls.append(len(images))
        x = -np.asarray(images, np.float64).reshape(len(images), -1).mean(1)
        if not laplace_scores:
            return {"reconstruction": x, "latent_density": 2 * x, "eq12": 3 * x}
        return {"eq12_map": x, "log_evidence": x, "map_converged": np.ones(len(x), bool)}

    return score


def test_pae_ood_writes_its_command_and_keys_its_cache_on_the_images(fitted, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    runs = tmp_path / "my runs"
    _copy(fitted, runs, "k4")  # K=4: the tiny run
    extra = tmp_path / "a b" / "x.npz"
    extra.parent.mkdir()
    np.savez(extra, images=np.zeros((3, 28, 28), np.uint8))
    sets = {"fashion_mnist": _images(40, 3), "mnist": _images(40, 4), "omniglot": _images(40, 5),
            "hflip": _images(40, 6), "vflip": _images(40, 7)}  # fmt: skip
    monkeypatch.setattr(pae_ood, "datasets", lambda data_dir, extras: dict(sets))
    calls = []
    monkeypatch.setattr(pae_ood.pae, "score", _fake_score(calls))
    out = tmp_path / "out"
    argv = ["--cpu", "--ks", "4", "--no-baselines", "--no-train", "--laplace-n", "3",
            "--runs", str(runs), "--out", str(out), "--extra", f"x={extra}"]  # fmt: skip
    before = _listing(runs)
    pae_ood.main(argv)
    assert _listing(runs) == before  # nothing written into the user's run folders
    assert sorted(p.name for p in (out / "scores" / "k4").iterdir()) == sorted(
        f"{s}.npz" for s in sets
    )  # the cache is under --out
    md = (out / "pae_ood_cpu.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Command: "))
    assert line == f"Command: `{shlex.join(['python', '-m', 'experiments.pae_ood', *argv])}`"
    assert shlex.split(line[len("Command: `") : -1])[3:] == argv
    assert calls == [40, 3] * 5  # every set: all images, then 3 with Laplace
    pae_ood.main(argv)
    assert len(calls) == 10  # the same images and checkpoint: all cached
    sets["mnist"] = _images(40, 8)  # same name, same size, other images
    pae_ood.main(argv)
    assert calls[10:] == [40, 3]  # only that set is scored again


def _listing(folder):
    """Every path under `folder` with its size and modification time."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_pae_ood_no_train_with_missing_runs_creates_nothing(fitted, tmp_path, monkeypatch):
    monkeypatch.setattr(pae_ood, "datasets", lambda data_dir, extras: {"fashion_mnist": None})
    out = tmp_path / "out"
    argv = ["--cpu", "--ks", "4,8", "--no-baselines", "--no-train", "--out", str(out)]
    with pytest.raises(SystemExit, match=r"--no-train .* no .*nowhere.*--runs ROOT"):
        pae_ood.main([*argv, "--runs", str(tmp_path / "nowhere")])
    runs = tmp_path / "runs"
    _copy(fitted, runs, "k4")
    with pytest.raises(SystemExit, match=r"no [^ ]*k8: .*symlink") as e:
        pae_ood.main([*argv, "--runs", str(runs)])
    assert "k4" not in str(e.value)
    with pytest.raises(SystemExit, match=r"vae_k32, .*vpae_t_diag_k10.*--no-baselines"):
        pae_ood.main([*argv[:3], *argv[4:], "--runs", str(runs)])
    assert not out.exists()


def test_pae_ood_leaves_a_run_of_other_settings_untouched(fitted, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run = _copy(fitted, runs, "k4")
    monkeypatch.setattr(pae_ood, "datasets", lambda data_dir, extras: {"fashion_mnist": None})
    match = f"{re.escape(str(run))} was trained with other settings.*--no-train"
    with pytest.raises(SystemExit, match=match):
        pae_ood.main(["--cpu", "--ks", "4", "--no-baselines", "--runs", str(runs),
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert _steps(run / "checkpoints") == [8, 16, AE_STEP]


@pytest.mark.parametrize("script", [pae_ood, pae_table1, pae_inpaint])
def test_every_flag_the_scripts_name_exists_and_outputs_default_under_runs(script):
    p = script.make_parser()
    named = set(re.findall(r"--[a-z][a-z0-9-]*", script.__doc__))
    assert named and named <= set(p._option_string_actions), named
    assert p.parse_args([]).out == "runs/pae_results"
    assert "default: runs/pae_results" in " ".join(p.format_help().split())


def test_the_written_command_quotes_what_the_shell_needs():
    argv = ["--cpu", "--extra", "a b=/tmp/it's.npz", "--out", "experiments/results"]
    cmd = pae_cli.command("experiments.pae_ood", argv)
    assert cmd.startswith("python -m experiments.pae_ood --cpu --extra ")
    assert shlex.split(cmd) == ["python", "-m", "experiments.pae_ood", *argv]
    args = pae_cli.parse(pae_ood.make_parser(), argv[:1])
    assert args.command == "python -m experiments.pae_ood --cpu"


def test_reading_another_stage_touches_nothing(fitted, tmp_path):
    run = _copy(fitted, tmp_path)
    tmp = run / "checkpoints" / "32.orbax-checkpoint-tmp"  # a save in flight elsewhere
    tmp.mkdir()
    assert checkpoint.check_stages(run) == (AE_STEP, fitted[3])
    assert tmp.is_dir()
    with Checkpointer(run / "checkpoints", save_every=1, read_only=True) as ckpt:
        with pytest.raises(checkpoint.CheckpointError, match="read_only"):
            ckpt.save(32, {}, {})
    assert not (tmp_path / "absent" / "checkpoints").exists()
    assert checkpoint.check_stages(tmp_path / "absent") == (None,)
    assert not (tmp_path / "absent").exists()  # a new run is not created by looking at it
