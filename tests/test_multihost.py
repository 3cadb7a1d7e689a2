"""Two real JAX processes on localhost train like one: the multi-host path of `jaxae.parallel`
(and of `jaxae.stream`: each process streams only its own rows).

Each child (`_multihost_child.py`) joins a 2-process cluster with `jax.distributed.initialize`
(CPU collectives through gloo, 2 CPU devices each), builds the global 4-device mesh and feeds
only its half of every global batch. This process runs the same steps on the full batches over
its own 4 CPU devices (conftest), and the parameters must agree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _child
import _multihost_child as child
import numpy as np

from jaxae import parallel

NUM_PROCESSES = 2
TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, port: int, logs: list[Path]) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("XLA_FLAGS", None)  # a forced host device count would override JAX_NUM_CPU_DEVICES
    env = _child.child_env(env)  # the background children's compilation cache
    script = Path(__file__).with_name("_multihost_child.py")
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the child
            args = [sys.executable, str(script), str(port), str(i), str(NUM_PROCESSES), str(out)]
            procs.append(
                subprocess.Popen(args, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
            )
    return procs


def _wait(procs: list[subprocess.Popen]) -> tuple[list[int | None], bool]:
    """Exit codes and whether all succeeded. Stops at the first failure: its peers would only
    wait for it until their own timeouts. Kills whatever is still running."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if any(codes) or all(c == 0 for c in codes):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes, all(c == 0 for c in codes)


def _run_children(out: Path) -> str:
    """Run the processes until all succeed; return their logs. A port taken between
    `_free_port` and the coordinator's bind is retried on a new port."""
    logs = [out.with_name(f"process_{i}.log") for i in range(NUM_PROCESSES)]
    for _ in range(3):
        codes, ok = _wait(_start(out, _free_port(), logs))
        text = "\n".join(
            f"--- process {i} (exit {c}) ---\n{log.read_text()}"
            for i, (c, log) in enumerate(zip(codes, logs, strict=True))
        )
        if ok or "Failed to start RPC server" not in text:
            break
    assert ok, f"multi-process run failed (or ran past {TIMEOUT_S} s, exit None):\n{text}"
    return text


def _two_processes():
    """The two-process run, in a scratch folder: (its parameters file, the logs)."""
    out = _child.scratch() / "params.npz"
    return out, _run_children(out)


# the two processes, started in the background when the tests are collected (tests/_child.py)
BACKGROUND = {"test_two_processes_match_one": _two_processes}


def test_two_processes_match_one(request):
    out, logs = _child.result(__file__, request.node.name, BACKGROUND)
    assert out.exists(), f"process 0 wrote no parameters:\n{logs}"
    with np.load(out) as f:
        multi = {k: f[k] for k in f.files}
    num_leaves = len(multi) // 3

    mesh = parallel.data_mesh()  # this process's 4 CPU devices
    assert mesh.devices.size == 4
    init = child.flat_params(child.setup(mesh)[1])
    single_step = child.flat_params(child.train_steps(mesh))
    single_chunk = child.flat_params(child.train_chunk(mesh))
    assert len(init) == num_leaves

    for k in range(num_leaves):
        # The test can fail: training moved every leaf (biases start at zero, kernels random).
        assert np.max(np.abs(single_step[k] - init[k])) > 1e-3, f"leaf {k} did not train"
        for name, got, want in [
            ("2-process step", multi[f"step_{k}"], single_step[k]),
            ("2-process scan", multi[f"chunk_{k}"], single_step[k]),
            ("2-process streamed", multi[f"streamed_{k}"], single_step[k]),
            ("1-process scan", single_chunk[k], single_step[k]),
        ]:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name}, leaf {k}")
