"""Streaming input (`jaxae.stream`): the same batches as in memory, exact resume after a kill,
record sources, the memory budget and the named errors."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxae import config as jconfig
from jaxae import parallel, stream, train

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402
import _train_child as child  # noqa: E402

BACKGROUND = {"test_streamed_run_killed_during_save_resumes_exactly":
              lambda: child.killed_run("stream")}  # fmt: skip


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _fit(workdir, model="ae", data=None, max_steps=12):
    _, params, model_state, update = child.setup("ae")
    return train.fit(
        child.config(model, max_steps=max_steps), workdir, params=params,
        model_state=model_state, update=update,
        train=data if data is not None else {"image": child.images()}, progress=False,
    )  # fmt: skip


def _meta(workdir) -> dict:
    last = max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))
    return json.loads((last / "meta" / "metadata").read_text())


class Records:
    """A record source: len() and source[i] -> {'image': [8, 8, 1]}, read on demand."""

    def __init__(self, images):
        self.images, self.reads = images, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return {"image": self.images[i]}


def test_streamed_equals_in_memory_and_records_its_position(tmp_path):
    in_memory = _fit(tmp_path / "mem")
    streamed = _fit(tmp_path / "stream", "stream")
    for a, b in zip(_leaves(in_memory.state), _leaves(streamed.state), strict=True):
        np.testing.assert_array_equal(a, b)  # same batches, same order, same steps
    data = _meta(tmp_path / "stream")["data"]
    assert data["streamed"] is True and data["pipeline"] == {"next_index": 12}
    assert _meta(tmp_path / "mem")["data"]["streamed"] is False
    # a record source streams whatever the budget, to the same parameters
    records = Records(child.images())
    from_records = _fit(tmp_path / "records", data=records)
    assert records.reads >= 12 * 16
    for a, b in zip(_leaves(in_memory.state), _leaves(from_records.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_streamed_run_killed_during_save_resumes_exactly(tmp_path):
    killed = _child.result(__file__, "test_streamed_run_killed_during_save_resumes_exactly",
                           BACKGROUND)  # fmt: skip
    resumed, full = child.kill_then_resume(killed, tmp_path, "stream")
    for a, b in zip(_leaves(full.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _meta(killed[0])["data"]["pipeline"] == {"next_index": 24}


def test_pipeline_position_that_disagrees_with_the_step_is_refused():
    mesh = parallel.data_mesh()
    images = {"image": child.images()}
    order = lambda epoch: np.arange(96)  # noqa: E731
    kw = dict(batch_size=16, steps_per_epoch=6, total=12, start=3, mesh=mesh)
    batches = stream.Batches(images, order, **kw, state={"next_index": 3})
    got = np.asarray(batches.take(2)["image"])
    np.testing.assert_array_equal(got.reshape(32, 8, 8, 1), images["image"][48:80])
    assert batches.state == {"next_index": 5}
    with pytest.raises(ValueError, match="pipeline position .* does not match its step 3"):
        stream.Batches(images, order, **kw, state={"next_index": 5})


def test_budget():
    assert stream.budget_bytes(2.5) == int(2.5 * 2**20)
    auto = stream.budget_bytes(0)  # CPU devices report no limit: a quarter of host memory
    assert 0 < auto < 2**50
    assert stream.nbytes({"image": np.zeros((4, 8, 8, 3), np.uint8)}) == 768
    with pytest.raises(ValueError, match="memory_budget_mb=-1.0: must be a number of MiB >= 0"):
        jconfig.validate(jconfig.make(data=dict(memory_budget_mb=-1.0)))


@pytest.mark.parametrize(
    "source, error, message",
    [
        (Records(np.zeros((0, 8, 8, 1), np.float32)), ValueError, "no records: an empty"),
        ([1, 2, 3], ValueError, r"source\[0\] must be a dict"),
        (object(), TypeError, "a training source is a dict of arrays or has len"),
        ({"image": np.zeros((4, 2)), "label": np.zeros(3)}, ValueError, "one shared leading"),
    ],
)
def test_bad_sources_are_named(source, error, message):
    with pytest.raises(error, match=message):
        stream.check_source(source)
