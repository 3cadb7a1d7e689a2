"""Training runs that can SIGKILL themselves in the middle of a checkpoint save.

Used by tests/test_resume_kill.py and tests/test_update.py:
``python tests/_train_child.py WORKDIR MAX_STEPS KILL_AT [MODEL]`` with MODEL one of `MODELS`:

- ``ae``: the tiny MLP autoencoder (`jaxae.models.Autoencoder`, mse head), `train.single`;
- ``bn``: `BNAutoencoder`, an autoencoder with a BatchNorm layer (model state: running
  statistics), `train.single` on `objectives.loss_fn`;
- ``gan``: `ToyGAN`, a two-group adversarial model (``generator``, ``critic``) trained by
  `train.grouped` with 3 critic steps per generator step;
- ``stream``: ``ae`` with its batches streamed from the host (`jaxae.stream`: the memory
  budget, ``data.memory_budget_mb``, set below the training set's size).

The tests import `run` (and the model builders) to train the same runs in their own process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from jaxae import checkpoint, models, objectives, train
from jaxae import config as jconfig
from jaxae.heads import Head

SHAPE = (8, 8, 1)
LATENT = 4
NUM_EXAMPLES = 96  # 6 steps per epoch of 16
MODELS = ("ae", "bn", "gan", "stream")


@models.register("bn_test_ae")
class BNAutoencoder(models.Autoencoder):
    """Dense -> BatchNorm -> ReLU -> Dense code; a linear decoder into the head's raw values."""

    def __init__(self, head: Head, arch: str = "mlp", latent_dim: int = LATENT, *, seed: int = 0):
        rngs = nnx.Rngs(params=seed)
        self.head, self.arch, self.latent_dim = head, arch, latent_dim
        self.image_shape = head.image_shape
        # no bias before BatchNorm: its gradient would be round-off, which Adam scales up to
        # full steps, so its trajectory would depend on the reduction order (the device count)
        self.hidden = nnx.Linear(head.dim, 16, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.8, rngs=rngs)
        self.code = nnx.Linear(16, latent_dim, rngs=rngs)
        self.out = nnx.Linear(latent_dim, head.num_params, rngs=rngs)

    def features(self, x):
        """The BatchNorm layer's output [B, 16]."""
        return self.bn(self.hidden(x.reshape(x.shape[0], -1)))

    def encode(self, x):
        return self.code(jax.nn.relu(self.features(x)))

    def decode(self, z):
        return self.out(z)


class ToyGAN(nnx.Module):
    """A generator (code -> pixels in (0, 1)) and a critic (pixels -> logit): two groups."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(params=seed)
        dim = int(np.prod(SHAPE))
        self.generator = nnx.Linear(LATENT, dim, rngs=rngs)
        self.critic = nnx.Sequential(
            nnx.Linear(dim, 8, rngs=rngs), jax.nn.relu, nnx.Linear(8, 1, rngs=rngs)
        )

    def generate(self, key, n: int):
        z = jax.random.normal(key, (n, LATENT))
        return jax.nn.sigmoid(self.generator(z))

    def logit(self, x):
        return self.critic(x.reshape(x.shape[0], -1))[:, 0]


def gan_losses(graphdef):
    """(critic_loss, generator_loss): the non-saturating GAN losses, per example [B]."""

    def critic_loss(params, model_state, batch, key):
        gan = nnx.merge(graphdef, params, model_state)
        real = batch["image"]
        fake = gan.generate(key, real.shape[0])
        loss = jax.nn.softplus(-gan.logit(real)) + jax.nn.softplus(gan.logit(fake))
        return {"loss": loss}, model_state

    def generator_loss(params, model_state, batch, key):
        gan = nnx.merge(graphdef, params, model_state)
        fake = gan.generate(key, batch["image"].shape[0])
        return {"loss": jax.nn.softplus(-gan.logit(fake))}, model_state

    return critic_loss, generator_loss


def gan_groups(graphdef) -> dict[str, train.Group]:
    """3 critic steps, then 1 generator step, per iteration; each group with its own Adam."""
    critic_loss, generator_loss = gan_losses(graphdef)
    return {
        "critic": train.Group(("critic",), critic_loss, optax.adam(1e-2), steps=3),
        "generator": train.Group(("generator",), generator_loss, optax.adam(1e-2)),
    }


def setup(model: str = "ae", seed: int = 0):
    """(graphdef, params, model_state, update) of a fresh model, in train mode."""
    if model == "gan":
        graphdef, params, model_state = objectives.split(ToyGAN(seed))
        return graphdef, params, model_state, train.grouped(gan_groups(graphdef))
    kind = {"ae": "ae", "stream": "ae", "bn": "bn_test_ae"}[model]
    spec = {"kind": kind, "arch": "mlp", "head": "mse", "latent_dim": LATENT,
            "image_shape": list(SHAPE), "seed": seed}  # fmt: skip
    graphdef, params, model_state = objectives.split(models.build(spec))
    return (
        graphdef,
        params,
        model_state,
        train.single(objectives.loss_fn(graphdef), optax.adam(1e-2)),
    )


def config(model: str = "ae", **training):
    kind = {"ae": "ae", "stream": "ae", "bn": "bn_test_ae", "gan": "ae"}[model]
    base = dict(batch_size=16, epochs=4, checkpoint_every=3)
    return jconfig.make(
        data=dict(dataset="synthetic", memory_budget_mb=1e-6 if model == "stream" else 0.0),
        model=dict(kind=kind, latent_dim=LATENT),
        optimizer=dict(learning_rate=1e-2),
        training={**base, **training},
    )


def images() -> np.ndarray:
    return np.random.default_rng(0).random((NUM_EXAMPLES, *SHAPE), dtype=np.float32)


def run(workdir, max_steps: int, model: str = "ae", mesh=None, **training):
    _, params, model_state, update = setup(model)
    return train.fit(
        config(model, max_steps=max_steps, **training),
        workdir,
        params=params,
        model_state=model_state,
        update=update,
        train={"image": images()},
        mesh=mesh,
        progress=False,
    )


def killed_run(model: str = "ae", max_steps: int = 24, kill_at: int = 12):
    """A child run of `model` to `max_steps` that SIGKILLs itself during its save at
    `kill_at`, in a scratch folder: (its run folder, the finished process). Run in the
    background while other tests go on (tests/_child.py)."""
    import _child  # tests/: on the path under pytest only

    workdir = _child.scratch() / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, __file__, str(workdir), str(max_steps), str(kill_at), model]
    return workdir, _child.run(argv, 300, env=env)


def kill_then_resume(killed, tmp_path, model: str = "ae", max_steps: int = 24, kill_at: int = 12):
    """Resume the `killed_run` of these arguments, `killed`, here to `max_steps`, and train the
    same run uninterrupted (under tmp_path): (resumed, full) `FitResult`s, after checking the
    kill, the surviving checkpoints and the log."""
    workdir, proc = killed
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert f"killing at step {kill_at}" in proc.stdout
    every = config(model).training.checkpoint_every
    # The committed steps, read from the folder names: a `Checkpointer` opened here would start
    # orbax's background removal of the killed save's tmp folder, racing the resumed run's own.
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    # the step being saved either committed whole or is absent
    assert steps and max(steps) in (kill_at - every, kill_at), steps

    resumed = run(workdir, max_steps, model)
    assert resumed.resumed_from in (kill_at - every, kill_at)
    assert int(resumed.state["step"]) == max_steps
    full = run(tmp_path / "full", max_steps, model)
    # the log has each step once: lines written after the restored checkpoint were dropped
    logged = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").open()]
    assert logged == [x["step"] for x in full.history]
    return resumed, full


if __name__ == "__main__":
    workdir, max_steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = sys.argv[4] if len(sys.argv) > 4 else "ae"
    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, meta, **kw):
        started = save(self, step, state, meta, **kw)
        if started and step == kill_at:  # the async write is in flight: die now
            in_flight = any(".orbax-checkpoint-tmp" in n for n in os.listdir(self.directory))
            print(f"killing at step {step}, temporary folder present: {in_flight}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    checkpoint.Checkpointer.save = save_then_die
    run(workdir, max_steps, model)
