"""Run one validated scenario of any kind: the files of its run directory and the lines the
terminal shows. ``moesim run``, ``moesim compare``, each run of a sweep and the golden tests
come through here, so a scenario field means the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.runs.kinds import RUN_KINDS, Simulated


def simulate(scenario: Any, cluster: Any, source: str = "", progress: Callable | None = None,
             reports: bool = True) -> Simulated:
    """Simulate ``scenario`` on ``cluster`` with the run kind it asks for (``scenario.kind``).

    ``source`` names the scenario file in messages; ``progress(stage, done, total)`` is called
    by kinds that report progress; ``reports=False`` leaves out large report files (a training
    run's report.html and trace.json, megabytes each; sweeps skip them). Raises ``UserError``
    for problems found at run time. The engine is imported by the kind, lazily.
    """
    return RUN_KINDS.get(scenario.kind).simulate(scenario, cluster, source, progress, reports)
