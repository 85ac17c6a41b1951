"""Solver answers feeding back into runs, and the solver entry points the CLI calls.

A training scenario with ``placement: {file: ...}`` or ``placement: {solver: ...}`` is run twice:
once with the default block placement (the baseline) and once with the solver's placement; the
summary gains ``baseline_step_time_s``, ``placement_speedup`` and ``placement`` (where the
answer came from, its objective and status).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sim.errors import UserError


def placement_problem(scenario, cluster):
    """The placement problem of a training scenario (its first expert-parallel group)."""
    from sim.solve.placement import from_scenario

    return from_scenario(scenario, cluster)


def solve_placement_problem(problem, solver: str, time_limit_s: float, seed: int):
    """Solve with ``ilp``, ``ga`` or ``greedy``; returns the PlacementAnswer."""
    from sim.solve import placement

    if solver == "ilp":
        return placement.solve_ilp(problem, time_limit_s=time_limit_s)
    if solver == "ga":
        return placement.solve_ga(problem, seed=seed, time_limit_s=time_limit_s)
    if solver == "greedy":
        return placement.greedy(problem)
    raise UserError(f"solver: {solver!r} is not one of ilp, ga, greedy")


def solve_admission_problem(problem, solver: str, time_limit_s: float, seed: int,
                            backend: str = "cbc"):
    """Solve a flow admission problem with ``ilp``, ``ga`` or ``greedy``; returns the Answer."""
    from sim.solve import pfar

    if solver == "ilp":
        return pfar.solve_ilp(problem, time_limit_s=time_limit_s, backend=backend)
    if solver == "ga":
        return pfar.solve_ga(problem, seed=seed, time_limit_s=time_limit_s)
    if solver == "greedy":
        return pfar.greedy(problem)
    raise UserError(f"solver: {solver!r} is not one of ilp, ga, greedy")


def read_assign(path: str | Path) -> np.ndarray:
    """The ``assign`` array (MoE layers x experts) of a placement answer file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: placement file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a JSON placement answer ({e})") from None
    if not isinstance(data, dict) or "assign" not in data:
        raise UserError(f"{path}: assign: required (MoE layers x experts of GPU indices)")
    try:
        return np.asarray(data["assign"], dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: assign: must be a list of lists of integers") from None


def resolve_placement(scenario, cluster, source: str = "") -> tuple[np.ndarray, dict]:
    """The scenario's placement (from its file or its solver) and a description of it."""
    pl = scenario.placement
    if pl.file is not None:
        return read_assign(pl.file), {"file": pl.file}
    answer = solve_placement_problem(placement_problem(scenario, cluster), pl.solver,
                                     pl.time_limit_s, scenario.seed)
    return np.asarray(answer.assign), {"solver": pl.solver, "status": answer.status,
                                       "objective": answer.cost["total"],
                                       "gap": answer.gap, "wall_s": answer.wall_s}


def run_with_placement(scenario, cluster, source: str = "", progress=None):
    """Run a training scenario with its ``placement`` and without; the placed run's result
    with the comparison added to its summary."""
    from sim.moe.run import run_training

    assign, info = resolve_placement(scenario, cluster, source)
    baseline = run_training(scenario, cluster, source).summary["step_time_s"]
    result = run_training(scenario, cluster, source, progress, placement=assign)
    step = result.summary["step_time_s"]
    result.summary.update(baseline_step_time_s=baseline,
                          placement_speedup=baseline / step if step else 0.0, placement=info)
    return result
