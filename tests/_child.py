"""Run a test module's ``main()`` in a child process and read the JSON line it prints last.

The README, docs and golden examples run this way: in a child with the devices a reader's
session has (or one device, for the goldens), not this suite's four CPU devices.

These children take minutes of the suite's time while this process mostly keeps one of the
machine's cores busy, so `start` (called by conftest.py once the tests are collected) runs the
children of the collected tests one after another in a background thread, and
`last_json_line` waits for that run's line. A child started in the background runs exactly as
it would have in the foreground: its own process, environment and devices; only when it runs
changes.
"""

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).parent.parent

# The suite's children, in the order their tests run (alphabetical): (module run by
# ``python -m``, JAX_NUM_CPU_DEVICES for it, the fixture of its test module that reads its line).
CHILDREN = [
    ("tests.test_docs", None, "ran"),
    ("tests.test_golden", 1, "recomputed"),
    ("tests.test_readme", None, "ran"),
]

_started: dict[str, Future] = {}  # module -> its line, once the background run has reached it
_procs: list[subprocess.Popen] = []
_stopping = threading.Event()


def _env(devices: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    if devices is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    if "JAX_COMPILATION_CACHE_DIR" in env:  # conftest's cache: the children keep their own,
        # never written by this process while a child reads it (a half-written entry)
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(env["JAX_COMPILATION_CACHE_DIR"], "kids")
    return env


def _run(module: str, devices: int | None, timeout: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", module], env=_env(devices), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _procs.append(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def start(modules: list[str], timeout: int = 600) -> None:
    """Run the children of `modules` (names in `CHILDREN`, run in that order) one after
    another in a background thread; `last_json_line` of each then waits for its result."""
    todo = [(m, d) for m, d, _ in CHILDREN if m in modules and m not in _started]
    futures = {m: Future() for m, _ in todo}
    _started.update(futures)

    def work():
        for module, devices in todo:
            future = futures[module]
            if _stopping.is_set():
                future.set_exception(RuntimeError("the test session ended first"))
                continue
            try:
                future.set_result(_run(module, devices, timeout))
            except BaseException as e:  # reported by the test that reads it
                future.set_exception(e)

    threading.Thread(target=work, name="test-children", daemon=True).start()


def stop() -> None:
    """Kill the background children still running (the session ended without them)."""
    _stopping.set()
    for proc in _procs:
        if proc.poll() is None:
            proc.kill()


def last_json_line(module: str, devices: int | None = None, timeout: int = 600):
    """``python -m <module>`` from the repository root; its last stdout line, parsed as JSON.
    `devices`: JAX_NUM_CPU_DEVICES for the child (None: JAX's default, the variable unset).
    A module `start`ed in the background: that run's line."""
    if module in _started:
        assert (module, devices) in [(m, d) for m, d, _ in CHILDREN], (module, devices)
        return _started[module].result()
    return _run(module, devices, timeout)
