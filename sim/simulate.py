"""Run one validated scenario of any kind on its cluster: the files of its run directory and
the lines the terminal shows. Used by ``moesim run`` and by each run of a sweep.

Imports the engine lazily, by kind, so a benchmark never loads the MoE code and vice versa.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Simulated:
    """One simulated scenario: ``files`` of its run directory (``summary.json`` among them, as
    a dict) and ``text``, a few lines for the terminal."""

    files: dict
    text: str

    @property
    def summary(self) -> dict:
        """The ``summary.json`` content (SI units; rates ``*_gbps`` in Gbit/s)."""
        return self.files["summary.json"]


def simulate(scenario: Any, cluster: Any, source: str = "", progress: Callable | None = None,
             reports: bool = True) -> Simulated:
    """Simulate ``scenario`` (training, serving or benchmark) on ``cluster``.

    ``source`` names the scenario file in messages; ``progress(stage, done, total)`` is called
    by training runs; ``reports=False`` leaves out a training run's report.html and trace.json
    (megabytes each; sweeps skip them). Raises ``UserError`` for problems found at run time.
    """
    from sim import output

    if scenario.kind == "training":
        from sim.moe.run import run_training

        if scenario.placement is not None:
            from sim.solve.apply import run_with_placement

            result = run_with_placement(scenario, cluster, source, progress)
        else:
            result = run_training(scenario, cluster, source, progress)
        return Simulated(output.training_files(scenario, cluster, result, reports),
                         output.format_training_summary(scenario, cluster, result.summary))
    if scenario.kind == "serving":
        from sim.serving.engine import run_serving

        result = run_serving(scenario, cluster, source)
        return Simulated(output.serving_files(scenario, cluster, result),
                         output.format_serving_summary(scenario, cluster, result.summary))
    from sim.collectives import run_benchmark

    results = run_benchmark(scenario, cluster)
    return Simulated({"summary.json": output.benchmark_summary(scenario, cluster, results)},
                     output.format_benchmark_table(scenario, cluster, results))
