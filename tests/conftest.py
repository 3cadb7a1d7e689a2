"""The suite's settings, made before JAX initialises its backend: 4 CPU devices, LLVM's -O0,
one XLA compilation cache per session, NumPy's BLAS on one thread; and the child processes of the
collected tests started in the background (`_child.py`).

Most of the suite's time is XLA compiling small programs that then run once on tiny arrays; the
machine (and CI's) has 2 cores, of which this process keeps about one busy."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXAE_NO_TFDS", "1")  # never reach for the network in tests
# NumPy's OpenBLAS on one thread: with the background children on the other core its threads
# wait on each other (an FID's 2048 x 2048 eigh: 17 s on two threads, 2.7 s on one, here).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Most of the compile time is LLVM optimising the machine code of programs that then run once on
# tiny arrays (an initialiser per kernel shape, a test's one jitted check). At -O0 (XLA's own HLO
# optimisations still run) every test file measured took less CPU time, most a fifth to a half
# less (test_nets.py 107 -> 42 s, test_flows 62 -> 45, test_vpae_table 51 -> 38, test_evaluate
# 28 -> 25, with Inception's forward passes). The goldens and the README and docs examples run
# in children at XLA's defaults (`_child.py` drops this flag), as they were made and as a reader
# runs them. A level already in XLA_FLAGS is kept: XLA_FLAGS=--xla_backend_optimization_level=2
# tests at XLA's default.
TEST_XLA_FLAG = "--xla_backend_optimization_level=0"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAG}".strip()
    os.environ["JAXAE_TESTS_ADDED_XLA_FLAG"] = TEST_XLA_FLAG  # for `_child.py` to drop

# Many programs are compiled more than once: a resumed run's step and the uninterrupted run's, the
# same model in several tests. A persistent cache in a fresh folder per session, removed at exit,
# compiles each once (the background children keep their own beside it: `_child.child_env`).
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
    """Start the background children of the collected tests (`_child.py`, ``BACKGROUND``)."""
    import _child  # tests/: on the path under pytest only

    _child.start(_child.jobs(session.items))


def pytest_sessionfinish(session):
    import _child

    _child.stop()
