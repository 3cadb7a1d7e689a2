"""Child processes of the suite, run in the background while the tests go on.

The README, docs and golden examples run as ``python -m <test module>``, whose ``main()`` prints
one JSON line: in a child with the devices a reader's session has (or one device, for the
goldens), not this suite's four CPU devices, at XLA's default compile settings. Other tests start
children too: training runs that SIGKILL themselves mid-save, a two-process cluster, the docs
build.

Those children take minutes of the suite's time while this process mostly keeps one of the
machine's two cores busy. So a test module declares the child part of a test in ``BACKGROUND``,
``{name: function}``, where the name is a test's (``test_x[param]``) or a fixture's; conftest.py
calls `start` once the tests are collected, which runs the functions of the collected tests one
after another, in collection order, in a background thread; the test (or fixture) takes the
result with `result`, waiting for it if need be, and does the rest in this process. A child runs
the same whether started early or not: its own process, environment and devices; only when it
runs changes. Background children keep their own compilation cache (a folder beside this
session's): never written by a child while this process reads it.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).parent.parent

_futures: dict[str, Future] = {}  # "<module stem>::<name>" -> the function's result
_procs: list[subprocess.Popen] = []
_stopping = threading.Event()
_scratch: list[Path] = []


def scratch() -> Path:
    """A new empty folder for a background child's files, removed when the session ends."""
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="jaxae-tests-children-")))
        atexit.register(shutil.rmtree, _scratch[0], ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=_scratch[0]))


def child_env(env: dict | None = None) -> dict:
    """`env` (default: this process's) with the children's own compilation cache."""
    env = dict(os.environ if env is None else env)
    if "JAX_COMPILATION_CACHE_DIR" in env and "JAXAE_TESTS_CHILD" not in env:
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(env["JAX_COMPILATION_CACHE_DIR"], "kids")
        env["JAXAE_TESTS_CHILD"] = "1"
    return env


def run(argv: list[str], timeout: int, env: dict | None = None, **kwargs):
    """`subprocess.run(argv, capture_output=True, text=True)` that `stop` can kill."""
    proc = subprocess.Popen(argv, env=child_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip
    _procs.append(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _json_env(devices: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    if devices is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    added = env.pop("JAXAE_TESTS_ADDED_XLA_FLAG", None)  # conftest's compile-time flag: these
    if added:  # children compile at XLA's defaults, as the goldens were made, as a reader runs
        flags = [f for f in env.get("XLA_FLAGS", "").split() if f != added]
        if flags:
            env["XLA_FLAGS"] = " ".join(flags)
        else:
            env.pop("XLA_FLAGS", None)
    return env


def last_json_line(module: str, devices: int | None = None, timeout: int = 600):
    """``python -m <module>`` from the repository root; its last stdout line, parsed as JSON.
    `devices`: JAX_NUM_CPU_DEVICES for the child (None: JAX's default, the variable unset)."""
    proc = run([sys.executable, "-m", module], timeout, env=_json_env(devices), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start(jobs: list[tuple[str, Callable]]) -> None:
    """Run `jobs`, (key, function) pairs, one after another in a background thread; `result`
    of each key then waits for its function's result (or exception)."""
    todo = [(key, fn) for key, fn in jobs if key not in _futures]
    _futures.update({key: Future() for key, _ in todo})

    def work():
        for key, fn in todo:
            future = _futures[key]
            if _stopping.is_set():
                future.set_exception(RuntimeError("the test session ended first"))
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # raised by `result`, in the test that reads it
                future.set_exception(e)

    threading.Thread(target=work, name="test-children", daemon=True).start()


def build(module_file: str, function: str, timeout: int = 600) -> Path:
    """Run ``function(folder)`` of the test module `module_file` in a child process, on a new
    scratch folder, and return the folder: a fixture that trains a run does so in the
    background (its module's ``BACKGROUND``) while other tests go on."""
    folder = scratch()
    module = Path(module_file)
    code = (f"import sys, pathlib; sys.path.insert(0, {str(module.parent)!r}); "
            f"import {module.stem} as m; m.{function}(pathlib.Path({str(folder)!r}))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run([sys.executable, "-c", code], timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{module.stem}.{function} failed in its child process "
                           f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")  # fmt: skip
    return folder


def jobs(items) -> list[tuple[str, Callable]]:
    """The (key, function) of every ``BACKGROUND`` entry that a collected test uses (by its
    name or a fixture's), in the order the tests run."""
    out = {}
    for item in items:
        background = getattr(getattr(item, "module", None), "BACKGROUND", {})
        for name in (item.name, *getattr(item, "fixturenames", ())):
            if name in background:
                out.setdefault(f"{item.path.stem}::{name}", background[name])
    return list(out.items())


def result(module_file: str, name: str, background: dict):
    """The result of ``background[name]`` of the test module `module_file`: the background
    run's, or (the module's tests not collected through conftest.py) a run now."""
    key = f"{Path(module_file).stem}::{name}"
    if key not in _futures:
        start([(key, background[name])])
    return _futures[key].result()


def stop() -> None:
    """Kill the background children still running (the session ended without them)."""
    _stopping.set()
    for proc in _procs:
        if proc.poll() is None:
            proc.kill()
