"""Sphinx configuration of the uticket_jax API reference.

Build (warnings are errors, as in CI):

    pip install -e '.[docs]'
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import ast
import inspect
import os
import sys

# The docs build never starts an accelerator backend nor needs one.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The package is imported from this checkout, installed or not.
sys.path.insert(0, os.path.abspath(".."))

from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import uticket_jax  # noqa: E402

project = "uticket_jax"
author = "uticket_jax contributors"
copyright = "uticket_jax contributors"
release = version = uticket_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]

exclude_patterns = ["_build", "examples"]
root_doc = "index"
html_theme = "alabaster"
html_title = f"uticket_jax {release}"

# Docstrings write `name` for code and names: link it where it resolves, show it as code otherwise.
default_role = "py:obj"

# Google style (`Args:` / `Returns:` / `Raises:`), as every docstring of the package.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

napoleon_use_ivar = True  # a class's `Attributes:` are fields of its entry, not new objects
napoleon_custom_sections = [("Fields", "Attributes")]  # NamedTuples document theirs as "Fields:"

autodoc_default_options = {"members": True, "member-order": "groupwise"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False  # the tables link to the entries on the same page, no stub pages


def _source_comment(name: str) -> list[str]:
    """The `#:` doc comment of a constant a package re-exports, read in the module that defines
    it (`from uticket_jax.hardware.tables import LayerTables` in `uticket_jax/hardware/__init__.py`
    points to `uticket_jax.hardware.tables`)."""
    modname, _, attr = name.rpartition(".")
    module = sys.modules.get(modname)
    if module is None or not getattr(module, "__file__", None):
        return []
    with open(module.__file__) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if not (isinstance(node, ast.ImportFrom) and node.module):
            continue
        if attr in [a.name for a in node.names]:
            docs = ModuleAnalyzer.for_module(node.module).find_attr_docs()
            return list(docs.get(("", attr), []))
    return []


def _constant_docstring(app, what, name, obj, options, lines):
    """A constant (`DEFAULTS`, a registered `PEMapping`, a type alias) is documented by its `#:`
    comment, never by its type's docstring ("dict() -> new empty dictionary")."""
    own = getattr(obj, "__doc__", None)
    if what != "data" or not lines or not isinstance(own, str):
        return
    if "\n".join(lines).strip() == inspect.cleandoc(own).strip():
        lines[:] = _source_comment(name)


def _skip_field_aliases(app, what, name, obj, skip, options):
    """NamedTuple fields ("Alias for field number 0") are listed by the class's `Fields:`."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _constant_docstring)
    app.connect("autodoc-skip-member", _skip_field_aliases)
