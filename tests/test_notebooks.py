"""Execute every notebook in ``notebooks/`` so they never rot (issues 7 and 11).

Each notebook runs top to bottom in a fresh ``python3`` kernel, with the notebooks folder
as its working directory and this checkout's ``lagrangian_ad`` first on the kernel's path;
any cell that raises (the notebooks assert their comparisons against JAX and SymPy) fails
the test. The committed outputs are not touched.

The kernel runs with ``LAGRANGIAN_AD_CI=1``: a slow notebook reads it in its first code
cell into one variable, ``LARGE = os.environ.get("LAGRANGIAN_AD_CI") != "1"``, and runs
small here; run by hand (Jupyter, ``jupyter nbconvert --execute``) it runs large.

The notebooks are documents, and the test holds them to it (issue 11, item 16):

- every figure they draw is checked as it is rendered: each visible axis labelled (or
  sharing the label of a panel it is shared with), each panel with a legend of its own or
  one for the whole figure, and each legend label drawn in one colour throughout the
  notebook (so a class or an implementation keeps its colour from plot to plot);
- a markdown cell, which is typed by hand, never states a comparison of speed or
  accuracy: such a sentence must be formatted by code from the numbers of the run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SLOW = ("02_cyclic_programs.ipynb", "04_performance.ipynb")  # each sized by LARGE
KERNEL = "python3"
SINGLE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
CELL_TIMEOUT = 600  # seconds per cell
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in kernel tracebacks

# Words that state a comparison. In a markdown cell they would be typed by hand, not
# computed from the run, so they may appear only in text that code formats.
_COMPARISON = re.compile(
    r"\b(faster|fastest|slower|slowest|quicker|outperforms?|wins?|beats?|ahead of|"
    r"more accurate|less accurate|times (?:the|their|its) accuracy)\b",
    re.IGNORECASE,
)

# Run first in the kernel: every figure is checked when it is rendered (IPython renders
# inline figures through FigureCanvasBase.print_figure, and savefig goes there too). A
# formatter's exception would only be printed, so problems are collected and the last
# cell (_CHECK) raises them.
_SETUP = r"""
import matplotlib.backend_bases as _mb
import matplotlib.colors as _mc

_figure_problems, _legend_colour = [], {}


def _handle_colour(handle):
    if hasattr(handle, "get_linestyle") and hasattr(handle, "get_markerfacecolor"):
        if handle.get_linestyle() in ("None", "none", "", " "):
            face = handle.get_markerfacecolor()
            return handle.get_markeredgecolor() if _mc.to_rgba(face)[3] == 0 else face
        return handle.get_color()
    if hasattr(handle, "get_facecolor"):
        face = handle.get_facecolor()
        if getattr(face, "ndim", 1) == 2:
            face = face[0] if len(face) else handle.get_edgecolor()[0]
        return face
    return None


def _check_figure(fig):
    where = fig._suptitle.get_text() if fig._suptitle is not None else ""
    legends = list(fig.legends)
    for k, ax in enumerate(fig.axes):
        if not ax.axison:
            continue  # a diagram drawn with the axes off
        name = repr(ax.get_title() or where or f"panel {k}")
        if getattr(ax, "_colorbar", None) is not None:
            if not (ax.get_ylabel() or ax.get_xlabel()):
                _figure_problems.append(f"the colour bar of {name} has no label")
            continue
        for axis in ("x", "y"):
            shared = getattr(ax, f"get_shared_{axis}_axes")().get_siblings(ax)
            if not any(getattr(a, f"get_{axis}label")() for a in shared):
                _figure_problems.append(f"{name}: the {axis} axis has no label")
        if ax.get_legend() is None and not fig.legends:
            _figure_problems.append(f"{name}: no legend (on the panel or for the figure)")
        elif ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for legend in legends:
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
            colour = _handle_colour(handle)
            if colour is None:
                continue
            colour = _mc.to_hex(colour)
            label = text.get_text()
            seen = _legend_colour.setdefault(label, (colour, where))
            if seen[0] != colour:
                _figure_problems.append(
                    f"legend label {label!r} is {colour} in {where or 'a figure'!r} "
                    f"but {seen[0]} in {seen[1] or 'an earlier figure'!r}"
                )


_print_figure = _mb.FigureCanvasBase.print_figure


def _checked_print_figure(self, *args, **kwargs):
    _check_figure(self.figure)
    return _print_figure(self, *args, **kwargs)


_mb.FigureCanvasBase.print_figure = _checked_print_figure
"""

_CHECK = r"""
assert not _figure_problems, "figures that do not read as documents:\n" + "\n".join(
    dict.fromkeys(_figure_problems)
)
if "LARGE" in globals():
    assert LARGE is False, "the notebook ignored LAGRANGIAN_AD_CI=1 and ran large"
"""


def _notebook_client():
    """nbformat and nbclient's NotebookClient, or skip saying what to install."""
    try:
        import nbformat
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
        from nbclient import NotebookClient
    except ImportError as err:
        pytest.skip(
            f"executing notebooks needs nbclient, nbformat and ipykernel ({err}); "
            "install them with: pip install -e '.[test]'"
        )
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.skip(
            f"no Jupyter kernel named {KERNEL!r}; install one with: "
            "pip install ipykernel && python -m ipykernel install --user"
        )
    return nbformat, NotebookClient


def _cells(path: Path, kind: str) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == kind]


def test_notebooks_exist():
    # Guards the parametrization below against silently running over nothing.
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    assert {p.name for p in NOTEBOOKS} >= set(SLOW)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_markdown_states_no_comparison(path: Path):
    typed = [
        (k, m.group(0), cell[max(0, m.start() - 60) : m.end() + 60].replace("\n", " "))
        for k, cell in enumerate(_cells(path, "markdown"))
        for m in _COMPARISON.finditer(cell)
    ]
    assert not typed, (
        f"{path.name}: markdown cells state comparisons by hand (format them from the "
        "run's numbers in a code cell instead):\n"
        + "\n".join(f"  markdown cell {k}: {word!r} in …{around}…" for k, word, around in typed)
    )


@pytest.mark.parametrize("name", SLOW)
def test_slow_notebook_is_sized_by_one_variable(name: str):
    first = _cells(NOTEBOOK_DIR / name, "code")[0]
    assert re.search(
        r'^LARGE = os\.environ\.get\("LAGRANGIAN_AD_CI"\) != "1"', first, re.MULTILINE
    ), f"{name}: the first code cell must set LARGE from LAGRANGIAN_AD_CI"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat, NotebookClient = _notebook_client()
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this environment: the small size, this checkout's code, and one
    # thread for BLAS and XLA (the notebooks ask for it too, but this file's first cell
    # imports NumPy before theirs runs; on a shared machine, spinning BLAS threads made
    # notebook 03 four times slower).
    monkeypatch.setenv("LAGRANGIAN_AD_CI", "1")
    for var, value in SINGLE_THREAD.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(path, as_version=4)
    nb.cells = [nbformat.v4.new_code_cell(_SETUP), *nb.cells, nbformat.v4.new_code_cell(_CHECK)]
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        message = _ANSI.sub("", str(err))
        pytest.fail(f"{path.name} failed to execute:\n{message}", pytrace=False)
