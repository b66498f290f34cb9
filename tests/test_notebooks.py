"""Execute every notebook in ``notebooks/`` so they never rot (issue 7).

Each notebook runs top to bottom in a fresh ``python3`` kernel, with the notebooks folder
as its working directory; any cell that raises (the notebooks assert their comparisons
against JAX and SymPy) fails the test. The committed outputs are not touched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT = 600  # seconds per cell
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in kernel tracebacks


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


def test_notebooks_exist():
    # Guards the parametrization below against silently running over nothing.
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path):
    nbformat, NotebookClient = _notebook_client()
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
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
