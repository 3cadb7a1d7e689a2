"""A training process SIGKILLed in the middle of a checkpoint save resumes exactly."""

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402
import _train_child  # noqa: E402

# the killed child run, started in the background when the tests are collected (tests/_child.py)
BACKGROUND = {"test_sigkill_during_save_then_resume": lambda: _train_child.killed_run("ae")}


def test_sigkill_during_save_then_resume(tmp_path):
    killed = _child.result(__file__, "test_sigkill_during_save_then_resume", BACKGROUND)
    resumed, full = _train_child.kill_then_resume(killed, tmp_path, "ae")
    assert resumed.resumed_from in (9, 12)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
