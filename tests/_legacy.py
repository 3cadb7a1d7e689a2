"""Checkpoints in the earlier release's layout (one `state` item), written as it wrote them."""

import os

import numpy as np
import orbax.checkpoint as ocp

from jaxae import checkpoint


def save_legacy(run_dir, step, state, meta):
    """A checkpoint as the earlier release wrote it: items state, meta, checksum (a list)."""
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "checksum": ocp.JsonCheckpointHandler()}  # fmt: skip
    mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"), item_handlers=handlers)
    try:
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta),
            checksum=ocp.args.JsonSave(np.asarray(checkpoint._fingerprint(state)).tolist()),
        ))  # fmt: skip
        mngr.wait_until_finished()
    finally:
        mngr.close()
