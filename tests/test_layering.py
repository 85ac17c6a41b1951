"""The engine stays small: importing it pulls in no plotting or solver library."""

import subprocess
import sys


def test_engine_imports_no_plotting_or_solvers():
    code = (
        "import sys, sim.network, sim.collectives, sim.topology, sim.moe.run, sim.routing; "
        "bad = [m for m in ('plotly', 'pulp', 'deap', 'dask', 'distributed', 'sim.sweep', "
        "'sim.report', 'sim.results') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
