"""Tests run on 4 CPU devices, set before JAX initialises its backend, with one XLA compilation
cache per session."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXAE_NO_TFDS", "1")  # never reach for the network in tests

# Most of the suite's time is XLA compiling, and many programs are compiled more than once: the
# same training step in a killed child run, its resumed run and the uninterrupted one; the same
# model in several tests and in the example children. A persistent cache in a fresh folder per
# session, removed at exit, compiles each once; the children inherit it through the environment.
# Nothing carries over between sessions, so a fresh clone (CI) takes the time measured here.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="jaxae-tests-xla-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def fashion_mnist():
    """Skip a test that needs the real Fashion-MNIST where it is not installed."""
    from jaxae import data

    try:
        return data.load_raw("fashion_mnist", "test")
    except data.DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")


def pytest_collection_finish(session):
    """Start the README, docs and golden children of the collected tests in the background."""
    from _child import CHILDREN, start  # tests/: on the path under pytest only

    used = {(item.path.stem, name) for item in session.items for name in item.fixturenames}
    start([m for m, _, fixture in CHILDREN if (m.split(".")[-1], fixture) in used])


def pytest_sessionfinish(session):
    from _child import stop

    stop()
