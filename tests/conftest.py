"""Tests run on 4 CPU devices, set before JAX initialises its backend."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXAE_NO_TFDS", "1")  # never reach for the network in tests
