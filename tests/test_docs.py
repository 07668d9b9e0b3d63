"""The API reference keeps up with the code: every exported name is on its package's page.

The pages (`docs/api/<package>.rst`) list each package's names twice: in `autosummary` tables and
as autodoc entries. These tests read those lists from the source, so a name added to (or dropped
from) an `__all__` fails here until the page follows; CI's `sphinx -W` build then checks that
every entry imports and renders. Docstrings carry no machine timings (BUILD_NOTES.md does).
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re

import pytest

import uticket_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
API = os.path.join(DOCS, "api")
# An entry of a page: `.. autofunction:: name`, `.. autoclass:: name`, `.. class:: name`, ...
_ENTRY = re.compile(r"^\.\. (?:auto)?(?:py:)?(?:function|class|data|exception|attribute)::\s+(\S+)")


def _public_modules() -> list[str]:
    """The top-level packages and modules of `uticket_jax` that declare an `__all__`."""
    names = []
    for info in pkgutil.iter_modules(uticket_jax.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"uticket_jax.{info.name}")
        if getattr(module, "__all__", None) is not None:
            names.append(info.name)
    return sorted(names)


def _page(name: str) -> str:
    with open(os.path.join(API, f"{name}.rst")) as f:
        return f.read()


def _autosummary_names(text: str) -> list[str]:
    """The names of every `autosummary` table of a page, in order."""
    names, inside = [], False
    for line in text.splitlines():
        if line.startswith(".. autosummary::"):
            inside = True
        elif inside and line and not line.startswith(" "):
            inside = False
        elif inside and line.strip() and not line.strip().startswith(":"):
            names.append(line.strip())
    return names


def _entry_names(text: str) -> list[str]:
    """The names documented by an entry directive (dotted names are other modules' extras)."""
    return [m.group(1) for line in text.splitlines() if (m := _ENTRY.match(line))]


PACKAGES = _public_modules()


def test_every_package_with_an_all_is_found():
    # The reference's packages; a new one with an `__all__` must get a page (the tests below).
    expected = {"workload", "hardware", "sparsity", "training", "pipeline", "models", "snn", "ops"}
    assert expected | {"data", "configs", "trees"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_listed_and_documented(package):
    exported = set(importlib.import_module(f"uticket_jax.{package}").__all__)
    assert os.path.exists(os.path.join(API, f"{package}.rst")), f"no page docs/api/{package}.rst"
    text = _page(package)
    assert f".. currentmodule:: uticket_jax.{package}" in text
    listed = _autosummary_names(text)
    documented = [n for n in _entry_names(text) if "." not in n]
    for what, names in (("an autosummary table", listed), ("an autodoc entry", documented)):
        missing, extra = sorted(exported - set(names)), sorted(set(names) - exported)
        assert not missing, f"{package}: exported but not in {what}: {missing}"
        assert not extra, f"{package}: in {what} but not exported: {extra}"
        assert len(names) == len(set(names)), f"{package}: listed twice in {what}"


def test_every_page_is_in_the_index():
    with open(os.path.join(DOCS, "index.rst")) as f:
        index = f.read()
    pages = sorted(n[: -len(".rst")] for n in os.listdir(API) if n.endswith(".rst"))
    assert set(PACKAGES) <= set(pages)
    for page in pages:
        assert re.search(rf"^   api/{page}$", index, re.M), f"api/{page} is not in index.rst"


def test_the_example_page_includes_the_example():
    with open(os.path.join(DOCS, "your_loop.rst")) as f:
        text = f.read()
    assert ".. literalinclude:: examples/uticket_in_your_loop.py" in text
    assert os.path.exists(os.path.join(DOCS, "examples", "uticket_in_your_loop.py"))


# A figure with a unit of time: "3 min", "~0.4 s", "211 ms", "1.2-2.5 s".
_TIMING = re.compile(
    r"(?<![\w.])\d+(?:[.,]\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?\s?"
    r"(?:ms|µs|us|s|sec|seconds?|min|minutes?|h|hours?)(?!\w)"
)


def _docstrings(path: str):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "name", "<module>"), doc


def test_timing_pattern_finds_timings():
    for text in ("3 min 11 s", "~0.4 s on 2 cores", "211 ms", "1.2-2.5 s", "24.8 min"):
        assert _TIMING.search(text), text
    for text in ("T = 4 steps", "24-bit grid", "2x faster", "0.03 pJ", "VGG16 s"):
        assert not _TIMING.search(text), text


def test_docstrings_carry_no_machine_timings():
    found = []
    package = os.path.join(ROOT, "uticket_jax")
    for folder, _, files in os.walk(package):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for where, doc in _docstrings(path):
                    found += [
                        f"{os.path.relpath(path, ROOT)} ({where}): {m.group(0)!r}"
                        for m in _TIMING.finditer(doc)
                    ]
    assert not found, "timings belong in BUILD_NOTES.md, not docstrings:\n" + "\n".join(found)


# A section adornment: one punctuation character repeated (docutils' title underlines).
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+])\1{2,}$")


def _short_underlines(text: str) -> list[str]:
    """The titles of `text` whose underline is shorter than the title (a Sphinx -W error)."""
    lines = text.splitlines()
    return [
        title
        for title, under in zip(lines, lines[1:], strict=False)
        if title.strip()
        and not _ADORNMENT.match(title)
        and _ADORNMENT.match(under)
        and len(under) < len(title)
    ]


def test_short_underline_is_found():
    assert _short_underlines("A title\n-----\n") == ["A title"]
    assert _short_underlines("A title\n-------\n\ntext\n") == []


def test_every_title_underline_is_long_enough():
    # CI builds the pages with warnings as errors; a short underline is the easiest one to make.
    found = []
    for folder, _, files in os.walk(DOCS):
        if "_build" in folder:
            continue
        for name in sorted(files):
            if name.endswith(".rst"):
                with open(os.path.join(folder, name)) as f:
                    found += [f"{name}: {t!r}" for t in _short_underlines(f.read())]
    assert not found, "title underlines shorter than their titles:\n" + "\n".join(found)
