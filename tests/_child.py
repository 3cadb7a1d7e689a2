"""Run a test module's ``main()`` in a child process and read the JSON line it prints last.

The README, docs and golden examples run this way: in a child with the devices a reader's
session has (or one device, for the goldens), not this suite's four CPU devices.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def last_json_line(module: str, devices: int | None = None, timeout: int = 600):
    """``python -m <module>`` from the repository root; its last stdout line, parsed as JSON.
    `devices`: JAX_NUM_CPU_DEVICES for the child (None: JAX's default, the variable unset)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    if devices is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    run = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
