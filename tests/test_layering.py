"""The layers stay apart: the engine imports no plotting, solver or distribution library and
nothing of the floors above it (runs, solvers, reports, the CLI); inputs and scenarios import
nothing of the engine; reports import no engine module."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[1] / "sim"
ENGINE = ("network", "collectives", "topology", "moe", "routing", "serving", "compute",
          "workload", "model", "metrics", "comm")
ABOVE_ENGINE = ("sim.runs", "sim.solve", "sim.report", "sim.cli", "sim.calibrate")


def imported(package: str) -> set[str]:
    """Every module named by an import statement anywhere in ``sim/<package>`` (lazy imports
    inside functions included)."""
    out = set()
    for f in (SIM / package).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out.add(node.module)
    return out


def test_engine_imports_no_plotting_or_solvers():
    modules = ", ".join(f"sim.{p}" for p in ENGINE)
    code = (
        f"import sys, {modules}, sim.moe.run, sim.serving.engine; "
        "bad = [m for m in ('plotly', 'pulp', 'deap', 'dask', 'distributed', 'sim.runs', "
        "'sim.solve', 'sim.report', 'sim.cli') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("package", ENGINE)
def test_no_engine_package_imports_runs_solvers_reports_or_the_cli(package):
    bad = sorted(m for m in imported(package)
                 if any(m == a or m.startswith(a + ".") for a in ABOVE_ENGINE))
    assert bad == []


@pytest.mark.parametrize("package", ["inputs", "scenario", "report"])
def test_inputs_scenarios_and_reports_import_no_engine_module(package):
    engine = tuple(f"sim.{p}" for p in ENGINE if p != "metrics")  # records and the catalogue
    bad = sorted(m for m in imported(package)
                 if any(m == e or m.startswith(e + ".") for e in engine))
    assert bad == []
