"""Sphinx configuration: the API reference, the design, the command line and the notebooks.

Builds offline (no intersphinx) and never executes a notebook: myst-nb renders the
outputs stored in them. ``python -m pip install -e ".[docs]"``, then
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lagrangian_ad  # noqa: E402
from lagrangian_ad.building import _parse  # noqa: E402
from lagrangian_ad.using import _cli  # noqa: E402

project = "lagrangian_ad"
author = "the lagrangian_ad authors"
copyright = f"2026, {author}"
release = version = lagrangian_ad.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_generated", "**/.ipynb_checkpoints"]
root_doc = "index"

# Autodoc and numpydoc: the public API as __init__ and lagrangian_ad.testing export it.
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
autodoc_default_options = {"members": True, "undoc-members": False}
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# Notebooks: rendered from their stored outputs, never executed.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "alabaster"
html_title = f"lagrangian_ad {release}"
html_static_path: list[str] = []


def _write_generated() -> None:
    """Text the pages include, taken from the code so that it cannot drift from it."""
    out = Path(__file__).resolve().parent / "_generated"
    out.mkdir(exist_ok=True)
    parser = _cli._parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = [parser.format_help()]
    parts += [sub.choices[name].format_help() for name in sub.choices]
    (out / "cli_help.txt").write_text("\n".join(parts), encoding="utf-8")
    names = sorted(_parse.FUNCTIONS, key=str.lower)
    lines = [", ".join(f"``{n}``" for n in names), ""]
    (out / "functions.rst").write_text("\n".join(lines), encoding="utf-8")
    constants = ", ".join(f"``{n}``" for n in _parse.CONSTANTS)
    (out / "constants.rst").write_text(constants + "\n", encoding="utf-8")


_write_generated()
