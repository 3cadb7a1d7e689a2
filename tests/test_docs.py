"""The documentation site builds offline in strict mode, and its checks catch what they should.

- The strict build (`make docs`' command) into a tmp folder, with every socket refused.
- `docs/hooks.py`: the docstring check names each undocumented public object of a package (on a
  synthetic one), and the API pages cover every jaxae module.
- The examples of the pages marked ``<!-- test: run -->`` run as written, in a child process
  with JAX's default devices, as `tests/test_readme.py` runs the README's.
"""

import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

try:
    import _child  # tests/: on the path under pytest
except ImportError:  # `python -m tests.<this module>`: the child itself, which needs none
    _child = None

ROOT = Path(__file__).parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
# (page, marked to run, code) of every ```python block of the pages
BLOCKS = [
    (page.stem, bool(marked), code)
    for page in PAGES
    for marked, code in re.findall(
        r"(<!-- test: run -->\n)?```python\n(.*?)```", page.read_text(), re.S
    )
]
RUNNABLE = {f"{page}:{i}": code for i, (page, marked, code) in enumerate(BLOCKS) if marked}

# Any attempt to open a connection fails the build and leaves a mark in its output.
OFFLINE_BUILD = """
import socket, sys

def refuse(*args, **kwargs):
    print("NETWORK ACCESS:", args[:2], file=sys.stderr)
    raise OSError("the documentation build must not reach the network")

socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
from mkdocs.__main__ import cli
cli(["build", "--strict", "--site-dir", sys.argv[1], "--config-file", sys.argv[2]])
"""


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def _build_site():
    """The strict offline build into a scratch folder: (the folder, the finished process)."""
    site = _child.scratch() / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    argv = [sys.executable, "-c", OFFLINE_BUILD, str(site), str(ROOT / "mkdocs.yml")]
    return site, _child.run(argv, 300, env=env, cwd=ROOT)


# The children, started in the background when the tests are collected (tests/_child.py): the
# build, and the marked examples run by `main`.
BACKGROUND = {
    "test_the_site_builds_offline_in_strict_mode": _build_site,
    "ran": lambda: _child.last_json_line("tests.test_docs"),
}


def test_the_site_builds_offline_in_strict_mode():
    site, run = _child.result(__file__, "test_the_site_builds_offline_in_strict_mode", BACKGROUND)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    assert "NETWORK ACCESS" not in out, out[-5000:]
    pages = ["index.html", "results/notes/index.html"]
    pages += [f"{p.stem}/index.html" for p in PAGES if p.stem != "index"]
    pages += [f"api/{m.stem}/index.html" for m in (ROOT / "jaxae").glob("[!_]*.py")]
    missing = [p for p in pages if not (site / p).is_file()]
    assert not missing, missing
    # the API reference is rendered from the docstrings, the figures come from experiments/results
    assert 'id="jaxae.pae.score"' in (site / "api/pae/index.html").read_text()
    assert (site / "results/pae_ood_cpu_fig5.png").is_file()
    assert "results/figures/" in (site / "vpae/index.html").read_text()


SYNTHETIC = {
    "__init__.py": '"""A package."""\n\nfrom .mod import documented as alias  # noqa: F401\n',
    "mod.py": '''"""A module."""

from os.path import join  # imported: not this package's to document


def documented():
    """Has one."""


def undocumented_function():
    return 1


def _private():
    return 2


class Documented:
    """Has one."""

    def method(self):
        """Has one."""

    def undocumented_method(self):
        return 3

    @property
    def undocumented_property(self):
        return 4

    def _private_method(self):
        return 5


class UndocumentedClass:
    def method(self):
        """Has one."""
''',
    "_hidden.py": "def not_public():\n    return 6\n",
}


def test_the_docstring_check_names_every_undocumented_public_object(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name, text in SYNTHETIC.items():
        (pkg / name).write_text(text)
    hooks = load_hooks()
    assert hooks.undocumented("pkg", [tmp_path]) == [
        "pkg.mod.Documented.undocumented_method",
        "pkg.mod.Documented.undocumented_property",
        "pkg.mod.UndocumentedClass",
        "pkg.mod.undocumented_function",
    ]


def test_an_undocumented_function_fails_the_strict_build(tmp_path, monkeypatch, caplog):
    # on_config logs a WARNING per object, and mkdocs --strict aborts on any warning
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A package."""\n\n\ndef f(x):\n    return x\n')
    hooks = load_hooks()
    check = hooks.undocumented
    monkeypatch.setattr(hooks, "undocumented", lambda: check("pkg", [tmp_path]))
    with caplog.at_level(logging.WARNING, logger="mkdocs"):
        hooks.on_config({})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("pkg.f is public but has no docstring")


def test_every_jaxae_module_has_an_api_page():
    hooks = load_hooks()
    assert hooks.missing_api_pages({"api/data.md"}) == sorted(
        m.stem for m in (ROOT / "jaxae").glob("[!_]*.py") if m.stem != "data"
    )
    pages = {f"api/{p.stem}.md" for p in (ROOT / "docs" / "api").glob("*.md")}
    assert hooks.missing_api_pages(pages) == []


@pytest.fixture(scope="module")
def ran(fashion_mnist):
    """{'page:i': 'ok' or the error} from running every marked example in a child process."""
    return _child.result(__file__, "ran", BACKGROUND)


def test_every_python_example_of_the_pages_is_run_somewhere():
    # marked: run below; a README example verbatim: run by tests/test_readme.py; `--8<-- "file"`:
    # a file of the repository (the build fails if it is missing)
    readme = (ROOT / "README.md").read_text()
    unchecked = [
        f"docs/{page}.md: {code[:70]!r}"
        for page, marked, code in BLOCKS
        if not (marked or code.strip() in readme or code.startswith("--8<--"))
    ]
    assert not unchecked, unchecked
    assert {name.split(":")[0] for name in RUNNABLE} >= {"research", "pae"}


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_docs_example_runs(name, ran):
    assert ran[name] == "ok", ran[name]


def main():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tempfile.tempdir = tmp  # what the examples write under tempfile goes when they are done
        for name, code in RUNNABLE.items():
            try:
                exec(compile(code, f"docs/{name}", "exec"), {"__name__": "__docs_example__"})
                out[name] = "ok"
            except Exception as e:  # reported by the test of that example
                out[name] = f"{type(e).__name__}: {e}"
        tempfile.tempdir = None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
