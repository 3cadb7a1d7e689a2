"""The README's examples run as written, its new-model example is the shipped module, and it
stays a short first read (the two commands first, at most 150 lines).

The examples run in a child process with JAX's default devices, as a reader's session would,
not on this suite's four CPU devices: forcing more devices than cores and queueing 100
asynchronous all-reduce steps can starve XLA:CPU's collectives here.
"""

import json
import re
from pathlib import Path

import pytest

try:
    import _child  # tests/: on the path under pytest
except ImportError:  # `python -m tests.<this module>`: the child itself, which needs none
    _child = None

ROOT = Path(__file__).parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
NEW_MODEL = [i for i, code in enumerate(BLOCKS) if "@models.register" in code]


# the examples' child, started in the background when the tests are collected (tests/_child.py)
BACKGROUND = {"ran": lambda: _child.last_json_line("tests.test_readme")}


@pytest.fixture(scope="module")
def ran(fashion_mnist):
    """{block index: 'ok' or the error} from running every example block in a child."""
    return {int(k): v for k, v in _child.result(__file__, "ran", BACKGROUND).items()}


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 3 and len(NEW_MODEL) == 1


def test_the_readme_is_short_and_starts_with_the_two_commands():
    # what a newcomer reads first; the details live in docs/ (make docs)
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move details into docs/"
    first = "\n".join(lines[:6])
    assert "make demo" in first and "make test" in first


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, ran):
    if i in NEW_MODEL:  # the new-model example: the module we ship, verbatim
        shipped = (ROOT / "experiments" / "examples" / "latent_penalty.py").read_text()
        assert BLOCKS[i].strip() in shipped
        return
    assert ran[i] == "ok", ran[i]


def test_the_new_model_example_trains_through_experiments_train(tmp_path, fashion_mnist):
    from experiments import train as main
    from experiments.configs import latent_penalty

    config = latent_penalty.get_config()
    config.training.max_steps = 5
    summary = main.train_and_evaluate(config, tmp_path / "l2", progress=False)
    assert summary["model"]["kind"] == "latent_penalty" and summary["steps"] == 5
    assert summary["test"]["code_penalty"] > 0
    assert summary["test"]["loss"] > summary["test"]["mse"]


def main():
    out = {}
    for i, code in enumerate(BLOCKS):
        if i in NEW_MODEL:
            continue
        try:
            exec(compile(code, f"README.md block {i}", "exec"), {})
            out[i] = "ok"
        except Exception as e:  # reported by the test of that block
            out[i] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
