"""A training process SIGKILLed in the middle of a checkpoint save resumes exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from jaxae import checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import _train_child  # noqa: E402


def test_sigkill_during_save_then_resume(tmp_path):
    child = Path(__file__).parent / "_train_child.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, str(child), str(tmp_path / "run"), "24", "12"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "killing at step 12" in proc.stdout
    steps = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints", save_every=3).all_steps()
    assert steps and max(steps) in (9, 12), steps  # step 12 either committed whole or absent

    resumed = _train_child.run(tmp_path / "run", 24)
    assert resumed.resumed_from in (9, 12)
    full = _train_child.run(tmp_path / "full", 24)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(resumed.state["step"]) == 24
    # the log has each step once: lines written after the restored checkpoint were dropped
    logged = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert logged == [x["step"] for x in full.history]
