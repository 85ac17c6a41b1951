"""Sweeps: many runs of one base scenario (a grid and/or a list of overrides, seeds) on a local
process pool or a Dask cluster, one table row per run. Never imported by the engine."""

from sim.runs.sweep.runner import SweepResult, run_sweep
from sim.runs.sweep.spec import RunSpec, SweepSpec, load_sweep_spec
from sim.runs.sweep.table import format_table

__all__ = ["RunSpec", "SweepResult", "SweepSpec", "format_table", "load_sweep_spec",
           "run_sweep"]
