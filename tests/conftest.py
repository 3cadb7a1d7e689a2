"""Tests run on 4 CPU devices, set before JAX initialises its backend."""

import os

import pytest

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXAE_NO_TFDS", "1")  # never reach for the network in tests


@pytest.fixture(scope="session")
def fashion_mnist():
    """Skip a test that needs the real Fashion-MNIST where it is not installed."""
    from jaxae import data

    try:
        return data.load_raw("fashion_mnist", "test")
    except data.DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")
