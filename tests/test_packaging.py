"""What ships with the package: its license, its type marker, its metadata and its design.

Read from the files themselves (pyproject.toml, LICENSE, the package folder), so a
missing file or a stale reference fails here rather than on a user's machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_an_spdx_expression_with_its_file():
    project = _pyproject()["project"]
    assert project["license"] == "MIT"  # the SPDX string, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c)" in text and "the lagrangian_ad authors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text
    requires = _pyproject()["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    version = tuple(int(p) for p in re.search(r">=\s*([\d.]+)", setuptools).group(1).split("."))
    assert version >= (77,)  # the first setuptools that reads license-files and SPDX


def test_typed_marker_ships_as_package_data():
    assert (ROOT / "lagrangian_ad" / "py.typed").is_file()
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["lagrangian_ad"]
    classifiers = _pyproject()["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers


def test_project_urls():
    urls = _pyproject()["project"]["urls"]
    for key in ("Homepage", "Documentation", "Source"):
        assert urls[key].startswith("https://"), key
    assert urls["Source"] == "https://github.com/lagrangian-ad/lagrangian_ad"


def test_references_to_the_design_point_to_a_file_in_the_repository():
    design = ROOT / "docs" / "design.md"
    assert design.is_file()
    stale, pointing = [], []
    for folder in ("lagrangian_ad", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "DESIGN" + ".md" in text:  # split so this file does not match itself
                stale.append(str(path.relative_to(ROOT)))
            if "docs/design.md" in text:
                pointing.append(path.name)
    assert not stale, f"references to a file that is not in the repository: {stale}"
    assert "_program.py" in pointing and "_optimize.py" in pointing
    # The design states the Lagrangian and the three conditions the code implements.
    text = design.read_text(encoding="utf-8")
    assert "L(x, z, λ) = z_N − Σ_i λ_i (z_i − f_i(z_Pa(i)))" in text
    assert "(I − J)ᵀ λ = e_N" in text


def test_every_public_name_is_in_the_api_reference():
    import lagrangian_ad
    import lagrangian_ad.testing

    api = (ROOT / "docs" / "api.rst").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto(?:class|function|exception):: (\w+)", api, re.M))
    assert documented == set(lagrangian_ad.__all__)
    testing = (ROOT / "docs" / "testing.rst").read_text(encoding="utf-8")
    for name in lagrangian_ad.testing.__all__:
        assert f".. autofunction:: lagrangian_ad.testing.{name}" in testing
    extras = _pyproject()["project"]["optional-dependencies"]["docs"]
    assert {e.split(">")[0] for e in extras} >= {"sphinx", "numpydoc", "myst-nb"}
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    assert 'nb_execution_mode = "off"' in conf and "sphinx.ext.intersphinx" not in conf
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "sphinx-build -W --keep-going" in ci


# The layers, top to bottom (docs/design.md, "Layers"): a module imports only modules of
# its own layer or of layers below it. The top-level modules (__init__, __main__,
# testing) sit above them all.
LAYERS = ("using", "building", "symbolic", "compiling", "solving", "core")


def _imported_layers(source: str, package: tuple[str, ...]) -> set[tuple[str, int]]:
    """The layers a module in subpackage ``package`` imports, with the line: every
    ``from .x`` and ``import lagrangian_ad.x`` in ``source``, function bodies included."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            names = [target] if node.module else [[*target, a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lagrangian_ad"):
            names = [node.module.split(".")[1:]]
        elif isinstance(node, ast.Import):
            names = [
                a.name.split(".")[1:] for a in node.names if a.name.startswith("lagrangian_ad")
            ]
        else:
            continue
        for parts in names:
            layer = parts[0] if parts else ""
            found.add((layer if layer in LAYERS else "top", node.lineno))
    return found


def test_imports_point_down_the_layers_only():
    wrong = []
    for path in sorted((ROOT / "lagrangian_ad").rglob("*.py")):
        parts = path.relative_to(ROOT / "lagrangian_ad").parts
        if len(parts) == 1:
            continue  # __init__, __main__, testing: above every layer
        here = LAYERS.index(parts[0])
        source = path.read_text(encoding="utf-8")
        for layer, line in _imported_layers(source, parts[:-1]):
            if layer == "top" or LAYERS.index(layer) < here:
                wrong.append(f"{'/'.join(parts)}:{line} imports {layer}")
    assert not wrong, "imports that point up the layers: " + ", ".join(sorted(wrong))


def test_the_layer_check_sees_an_upward_import():
    """The check itself: lazy, relative and absolute imports are all seen."""
    source = "def f():\n    from ..using import _cli\nimport lagrangian_ad.building._text\n"
    assert _imported_layers(source, ("core",)) == {("using", 2), ("building", 3)}
    assert _imported_layers("from . import _x\nfrom .. import testing\n", ("core",)) == {
        ("core", 1),
        ("top", 2),
    }


def test_every_subpackage_ships():
    """pyproject's package discovery finds every layer (a flat ``packages = [...]`` list
    would silently ship a wheel without them)."""
    from setuptools import find_packages

    found = set(
        find_packages(
            str(ROOT), include=_pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
        )
    )
    assert {f"lagrangian_ad.{layer}" for layer in LAYERS} <= found
