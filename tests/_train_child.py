"""A training run that can SIGKILL itself in the middle of a checkpoint save.

Used by tests/test_resume_kill.py: ``python tests/_train_child.py WORKDIR MAX_STEPS KILL_AT``.
"""

import os
import signal
import sys

import numpy as np
from flax import nnx

from jaxae import checkpoint, nets, objectives, train
from jaxae.config import TrainConfig

CONFIG = TrainConfig(
    dataset="synthetic",
    latent_dim=4,
    batch_size=16,
    epochs=4,
    learning_rate=1e-2,
    checkpoint_every=3,
)


def run(workdir, max_steps: int):
    model = nets.make_model("mlp", (8, 8, 1), 4, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    images = np.random.default_rng(0).random((96, 8, 8, 1), dtype=np.float32)
    return train.fit(
        CONFIG.replace(max_steps=max_steps),
        workdir,
        params=params,
        loss_fn=objectives.autoencoder_mse(graphdef),
        train={"image": images},
        progress=False,
    )


if __name__ == "__main__":
    workdir, max_steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, meta, **kw):
        started = save(self, step, state, meta, **kw)
        if started and step == kill_at:  # the async write is in flight: die now
            in_flight = any(".orbax-checkpoint-tmp" in n for n in os.listdir(self.directory))
            print(f"killing at step {step}, temporary folder present: {in_flight}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    checkpoint.Checkpointer.save = save_then_die
    run(workdir, max_steps)
