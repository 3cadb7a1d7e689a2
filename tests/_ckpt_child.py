"""Run by tests/test_checkpoint.py: save step 1, start saving step 2, SIGKILL ourselves mid-save.

Usage: python tests/_ckpt_child.py DIRECTORY. The state is 3 x 24 MB of float32, so the
background write of step 2 takes a few hundred ms, while the kill comes about a millisecond after
`save` returns. We print whether step 2 was already committed at the kill, so that the test
fails loudly rather than passes vacuously if the write ever wins the race.
"""

import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.checkpoint import Checkpointer

SIZE = 6_000_000  # float32 elements per leaf: 24 MB


def make_state(step):
    rng = np.random.default_rng(step)  # numpy: ten times faster than jax.random on CPU here
    params = {f"w{i}": jnp.asarray(rng.random(SIZE, dtype=np.float32)) for i in range(3)}
    model_state = {"count": jnp.int32(step)}  # a model state leaf: saved in the `model` item
    return {"params": params, "model_state": model_state, "step": jnp.int32(step),
            "key": jax.random.PRNGKey(step)}  # fmt: skip


def init_state():
    params = {f"w{i}": jnp.zeros(SIZE, jnp.float32) for i in range(3)}
    return {"params": params, "model_state": {"count": jnp.int32(0)}, "step": jnp.int32(0),
            "key": jax.random.PRNGKey(0)}  # fmt: skip


def main(directory):
    # keep=1: committing step 2 would delete step 1, which must survive a kill before that.
    ckpt = Checkpointer(directory, save_every=1, keep=1, async_save=True)
    ckpt.save(1, make_state(1), {"step": 1})
    ckpt.wait()
    state = jax.block_until_ready(make_state(2))
    ckpt.save(2, state, {"step": 2})
    committed = os.path.exists(ckpt.path(2))
    print(
        f"killing mid-save: step 2 committed={committed} listing={sorted(os.listdir(directory))}",
        flush=True,
    )
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
