"""Every notebook in notebooks/ runs top to bottom, headless, and still shows its figures.

Each notebook executes in a fresh ``python3`` kernel with ``notebooks/`` as its working
directory (as JupyterLab runs it). The kernel must be this interpreter, so that it imports
the package under test: jupyter_client starts the ``python3`` kernelspec (ipykernel's, whose
argv begins with ``python``) with ``sys.executable``, and the test checks it did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FILES = sorted(NOTEBOOKS.glob("*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"
#: Plotly figures each notebook displays (one fewer is a failure).
MIN_FIGURES = {"01-quickstart": 5, "02-routing-policies": 3, "03-placement": 2,
               "04-serving-pregating": 2}
#: Seconds one cell may take before the test gives up.
CELL_TIMEOUT_S = 180
_PROBE = "import sys; print(sys.prefix)"


def test_the_four_notebooks_are_there():
    assert [f.stem for f in FILES] == sorted(MIN_FIGURES)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_notebook_runs_and_shows_its_figures(path):
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is stored with outputs; clear them before committing")
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PROBE))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell raised:\n{e}", pytrace=False)
    prefix = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), (
        f"the kernel ran in {prefix}, not in this environment ({sys.prefix})")
    figures = [o for c in nb.cells for o in c.get("outputs", ())
               if o.get("output_type") in ("display_data", "execute_result")
               and PLOTLY in o.get("data", {})]
    assert len(figures) >= MIN_FIGURES[path.stem], (
        f"{path.name} showed {len(figures)} plotly figures, expected at least "
        f"{MIN_FIGURES[path.stem]}")
    for fig in figures:  # every figure has data in it, not an empty frame
        traces = fig["data"][PLOTLY].get("data", [])
        assert traces, f"{path.name}: a figure without traces"
