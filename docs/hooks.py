"""mkdocs hooks of jaxae's documentation site (``hooks:`` in mkdocs.yml).

- `on_config`: walk jaxae's public API and log a warning for every public function, class,
  method or property that has no docstring. mkdocstrings renders such an object as nothing and
  says nothing, so without this check `mkdocs build --strict` would pass with holes in the API
  reference; a logged warning makes the strict build fail and names the object.
- `on_files`: warn for a jaxae module without an API page (``docs/api/<module>.md``), and add
  the committed results (``experiments/results/*.png``, ``figures/*.png``, the tables ``*.md``
  and the results notes, ``README.md``) to the site under ``results/``, read in place, so the
  pages show what the experiments wrote without copies in ``docs/``.
- `on_page_markdown`: ``<!-- results: NAME.md -->`` in a page is replaced by the table file
  ``experiments/results/NAME.md``, its headings moved under the section it stands in (the tables
  stay where the experiment scripts write them; a missing file is a warning, so the strict build
  fails).

Nothing here reaches the network: griffe reads the sources statically, without importing jaxae.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
PACKAGE = "jaxae"

log = logging.getLogger("mkdocs.hooks.jaxae")


def _public(name: str) -> bool:
    return not name.startswith("_")


def _modules(module) -> Iterator:
    """`module` and its public submodules, depth first."""
    yield module
    for name, sub in module.modules.items():
        if _public(name):
            yield from _modules(sub)


def undocumented(package: str = PACKAGE, search_paths=(ROOT,)) -> list[str]:
    """The public objects of `package` that have no docstring, as dotted paths.

    Public: a module-level function or class whose name has no leading underscore, defined in
    the package (names imported from elsewhere are skipped), in a module whose name has no
    leading underscore; and each public method and property such a class defines itself.

    Args:
      package: the import name of the package (or single module) to walk.
      search_paths: folders to find it in (the package is read statically, never imported).
    Returns:
      sorted dotted paths, e.g. ``['jaxae.data.Split', 'jaxae.models.Model.encode']``; empty
      when everything public is documented.
    """
    import griffe

    root = griffe.load(package, search_paths=[str(p) for p in search_paths])
    missing = []
    for module in _modules(root):
        for name, obj in module.members.items():
            if not _public(name) or obj.is_alias or not (obj.is_function or obj.is_class):
                continue
            if not obj.docstring:
                missing.append(obj.path)
            if not obj.is_class:
                continue
            for member_name, member in obj.members.items():
                if not _public(member_name) or member.is_alias:
                    continue
                is_property = member.is_attribute and "property" in member.labels
                if (member.is_function or is_property) and not member.docstring:
                    missing.append(member.path)
    return sorted(missing)


def on_config(config):
    """Warn once per undocumented public object of jaxae (fails `mkdocs build --strict`)."""
    for path in undocumented():
        log.warning(
            f"{path} is public but has no docstring: add one (Args/Returns with shapes) or make "
            "it private with a leading underscore"
        )
    return config


def result_files() -> list[Path]:
    """The committed result files the site shows: PNGs of experiments/results and of its
    sub-folders (figures/, an example's --out folder), their tables (*.md) and the results notes
    (README.md)."""
    pngs = sorted(RESULTS.glob("*.png")) + sorted(RESULTS.glob("*/*.png"))
    return pngs + sorted(RESULTS.glob("*.md")) + sorted(RESULTS.glob("*/*.md"))


def missing_api_pages(src_uris) -> list[str]:
    """The public modules of jaxae (``jaxae/<name>.py``) without an API page ``api/<name>.md``
    among `src_uris` (the site's source paths): sorted names."""
    pages = set(src_uris)
    modules = (p.stem for p in (ROOT / PACKAGE).glob("*.py") if _public(p.stem))
    return sorted(m for m in modules if f"api/{m}.md" not in pages)


def on_files(files, config):
    """Warn for each jaxae module without an API page, then add `result_files` under
    ``results/`` (the notes as ``results/notes.md``)."""
    from mkdocs.structure.files import File

    for name in missing_api_pages(f.src_uri for f in files):
        log.warning(
            f"jaxae.{name} has no API page: add docs/api/{name}.md holding '::: jaxae.{name}' "
            "and list it under 'API reference' in mkdocs.yml"
        )
    from mkdocs.structure.files import InclusionLevel

    for path in result_files():
        rel = path.relative_to(RESULTS).as_posix()
        uri = "results/notes.md" if rel == "README.md" else f"results/{rel}"
        # The tables are pages of their own too, outside the navigation, so that a link to one
        # (from the notes, as on GitHub) resolves; the paper pages show them inline.
        table = path.suffix == ".md" and uri != "results/notes.md"
        level = InclusionLevel.NOT_IN_NAV if table else InclusionLevel.UNDEFINED
        files.append(File.generated(config, uri, abs_src_path=str(path), inclusion=level))
    return files


_RESULTS_MARK = re.compile(r"<!--\s*results:\s*(\S+?)\s*-->")
_HEADING = re.compile(r"^(#{1,4}) ", re.M)
_FENCED = re.compile(r"^```.*?^```", re.M | re.S)  # code blocks: their "# ..." are no headings


def on_page_markdown(markdown, page, config, files):
    """Replace ``<!-- results: NAME.md -->`` by that table file, its headings moved under the
    page's section the mark stands in (its title one level below that section's heading)."""

    def include(match):
        path = RESULTS / match.group(1)
        if not path.is_file():
            log.warning(f"{page.file.src_uri}: no {path} (was a results table renamed?)")
            return match.group(0)
        above = _HEADING.findall(_FENCED.sub("", markdown[: match.start()]))
        shift = len(above[-1]) if above else 1
        return _HEADING.sub(lambda h: "#" * min(len(h.group(1)) + shift, 6) + " ", path.read_text())

    return _RESULTS_MARK.sub(include, markdown)
