"""The command line the PAE experiments share (`pae_table1`, `pae_ood`, `pae_inpaint`): a CPU
or a paper-scale configuration, where the runs and the results go, a timed log, the exact
command written beside each result, and which runs a script may train.

A script trains (or resumes) only run folders that are new or that it made itself: an existing
run whose saved config differs from the one the script would train it with, in any field, is
left untouched and the script stops, naming the fields (`check_owned`); ``--no-train`` uses the
runs as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from jaxae import checkpoint, pae
from jaxae import config as jconfig

OUT = "runs/pae_results"  # default --out: the committed tables are written with --out explicitly
COMMITTED = "experiments/results"


def parser(doc: str, runs: str, *, module: str, seed: bool = True) -> argparse.ArgumentParser:
    """--cpu, --runs (default ``<runs>`` with --cpu, ``<runs>_paper`` without), --out (default
    `OUT`), --data-dir, --no-train and, with `seed`, --seed; `module` is the script's module
    (``experiments.pae_ood``), for the usage line and the written command (`parse`)."""
    p = argparse.ArgumentParser(description=doc, prog=f"python -m {module}",
                                formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("--cpu", action="store_true", help="the scaled-down CPU configuration")
    p.add_argument(
        "--runs",
        default=None,
        help=f"run folders' root (default: {runs} with --cpu, {runs}_paper without)",
    )
    p.add_argument("--out", default=OUT,
                   help=f"where tables and PNGs go (default: {OUT}); the committed ones: "
                   f"--out {COMMITTED}")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="dataset folder (default: see jaxae.data)")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: use the runs as they are (they must exist)",
    )
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.set_defaults(default_runs=runs, module=module)
    return p


def command(module: str, argv) -> str:
    """The shell command that runs `module` with the arguments `argv`, quoted as needed:
    ``python -m experiments.pae_ood --cpu --extra 'a b=x.npz'``."""
    return shlex.join(["python", "-m", module, *argv])


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p.parse_args(argv)`` (None: the command line), plus ``args.command``: the exact command
    that reproduces the run (`command`), which each script writes into its results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.command = command(args.module, argv)
    return args


class Session(NamedTuple):
    runs: Path
    out: Path
    log: callable  # log(message): one line, prefixed with the seconds since the start


def runs_root(args, needed=(), hint: str = "") -> Path:
    """The runs root of parsed `args` (--runs, or the script's default); with --no-train it is
    checked first: the root, and each ``<root>/<name>`` of `needed`, must be folders, else the
    script exits naming what is missing (before anything is created), `hint` appended."""
    runs = Path(args.runs or (args.default_runs + ("" if args.cpu else "_paper")))
    if args.no_train:
        missing = [runs] if not runs.is_dir() else [runs / n for n in needed]
        missing = [str(m) for m in missing if not m.is_dir()]
        if missing:
            sys.exit(
                f"error: --no-train uses existing runs, but there is no {', '.join(missing)}: "
                "pass --runs ROOT, the folder that holds one run folder per model (a symlink to "
                f"a run works), or leave out --no-train to train them{hint}"
            )
    return runs


def start(args, needed=(), hint: str = "") -> Session:
    """The run and output folders of parsed `args`, and a log that times itself. The runs are
    checked (`runs_root`) before the output folder is made, so a wrong --runs creates nothing."""
    runs = runs_root(args, needed, hint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Session(runs, out, timed_log())


def timed_log() -> callable:
    """log(message): prints one line, prefixed with the seconds since this call."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    return log


def ks(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """--ks '4,8,16' -> (4, 8, 16); None -> `default`."""
    return tuple(int(k) for k in text.split(",")) if text else default


# --- Which runs a script may train -------------------------------------------------------------


class RunNotOwnedError(ValueError):
    """An existing run folder was trained with other settings than the script's: the script
    leaves it untouched. The message names the run and every differing field."""


def _saved_config(stage_dir: Path) -> dict | None:
    """The config saved with the newest readable checkpoint of ``<stage_dir>/checkpoints``."""
    if not (stage_dir / "checkpoints").is_dir():
        return None
    with checkpoint.Checkpointer(stage_dir / "checkpoints", save_every=1, read_only=True) as ckpt:
        for step in ckpt.all_steps()[::-1]:
            try:
                return ckpt.read_meta(step).get("config", {})
            except checkpoint.CheckpointError:
                continue  # an unreadable step: the next older one says how the run was made
    return None


def differences(run, config) -> list[str]:
    """Every field in which the run folder's saved configs differ from `config`, the one a
    script would train it with: ``'training.max_steps: 300 (run) vs 0 (this script)'``. The
    first stage's config is compared with `config`, a latent-flow stage's (``stage2``) with
    `jaxae.pae.stage_config` of it. Empty for a new run."""
    run, out = Path(run), []
    stages = ((run, config, ""), (run / "stage2", pae.stage_config(config), "stage2 "))
    for stage_dir, want, prefix in stages:
        saved = _saved_config(stage_dir)
        if saved is None:
            continue
        try:
            have = jconfig.flatten(jconfig.from_dict(saved))
        except ValueError as e:  # fields this release does not know
            out.append(f"{prefix}config: cannot be read here ({e})")
            continue
        want = jconfig.flatten(jconfig.from_dict(want.to_dict()))
        out += [f"{prefix}{k}: {have.get(k)!r} (run) vs {want.get(k)!r} (this script)"
                for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]  # fmt: skip
    return out


def check_owned(run, config) -> None:
    """Raises `RunNotOwnedError` if the run folder exists with checkpoints saved with any
    other config than `config` (`differences`): a script trains only new runs or its own."""
    diff = differences(run, config)
    if diff:
        raise RunNotOwnedError(
            f"{run} was trained with other settings than this script's, so it is left "
            f"untouched: {'; '.join(diff)}. Pass --no-train to use the runs as they are, or "
            "--runs <another folder> to train the script's own."
        )


def train(configs: dict, runs: Path, args, log) -> None:
    """Trains (or resumes) ``runs/<name>`` with each ``{name: config}``, unless --no-train.

    Every run is checked first (`check_owned`), so a refused run stops the script before any
    training; a refusal or a training error exits with its message.
    """
    if args.no_train:
        return
    from experiments import train as etrain  # the trainer: only experiments import it

    problems = []
    for name, config in configs.items():
        try:
            check_owned(runs / name, config)
        except (RunNotOwnedError, checkpoint.CheckpointError) as e:
            problems.append(str(e))
    if problems:
        sys.exit("error: " + "\n".join(problems))
    for name, config in configs.items():
        log(f"train {name}")
        try:
            etrain.train_and_evaluate(config, runs / name, data_dir=args.data_dir, progress=False)
        except (ValueError, FileNotFoundError, checkpoint.CheckpointError) as e:
            sys.exit(f"error: {e}")


def restore(run, stage: int | None = None) -> checkpoint.Restored:
    """`checkpoint.restore_params`; a missing run or stages that disagree exit with the
    message (`checkpoint.StageMismatchError` says what happened and what to do)."""
    try:
        return checkpoint.restore_params(run, stage=stage)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        sys.exit(f"error: {e}")


# --- Cache keys --------------------------------------------------------------------------------


def images_key(images) -> dict:
    """What identifies a set of images in a cache: the sha256 of its bytes, shape and dtype."""
    x = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{x.shape} {x.dtype}".encode())
    digest.update(x.tobytes())
    return {"sha256": digest.hexdigest(), "shape": list(x.shape), "dtype": str(x.dtype)}


def checkpoint_key(restored: checkpoint.Restored) -> dict:
    """What identifies a restored model in a cache: each stage's step and the sha256 of its
    weights (every parameter and model-state array, with shapes and dtypes)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(nnx.state(restored.model)):
        x = np.ascontiguousarray(leaf)
        digest.update(f"{x.shape} {x.dtype}".encode())
        digest.update(x.tobytes())
    steps = list(restored.stage_steps) or [restored.step]
    return {"stage_steps": steps, "weights_sha256": digest.hexdigest()}
