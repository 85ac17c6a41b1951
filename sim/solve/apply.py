"""The solver entry points the CLI and runs call: problems built from a scenario, solved by
name, and a scenario's own ``placement:`` resolved to an answer. Solvers build problems and
return answers; running a step with an answer is the training run kind's
(``sim.runs.training``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sim.errors import UserError


def placement_problem(scenario, cluster):
    """The placement problem of a training scenario (its first expert-parallel group)."""
    from sim.solve.placement import from_scenario

    return from_scenario(scenario, cluster)


def solve_placement_problem(problem, solver: str, time_limit_s: float, seed: int):
    """Solve with a registered placement solver (``ilp``, ``ga``, ``greedy``); returns the
    PlacementAnswer."""
    from sim.solve.registry import PLACEMENT_SOLVERS

    return PLACEMENT_SOLVERS.get(solver)(problem, time_limit_s, seed)


def solve_admission_problem(problem, solver: str, time_limit_s: float, seed: int,
                            backend: str = "cbc"):
    """Solve a flow admission problem with a registered admission solver (``ilp``, ``ga``,
    ``greedy``); returns the Answer."""
    from sim.solve.registry import ADMISSION_SOLVERS

    return ADMISSION_SOLVERS.get(solver)(problem, time_limit_s, seed, backend=backend)


def admission_problem(scenario, cluster, layer: int = 0, window_s: float | None = None,
                      source: str = ""):
    """One dispatch All-to-All of a training scenario as a flow admission problem; returns
    ``(problem, window_s)``.

    Flows: the inter-node chunks of the dispatch of MoE layer ``layer`` (0-based; bytes from
    the scenario's own routing), one per (source GPU, destination GPU), priority 1, demand
    ``bytes / window_s`` (bytes/s) on the cluster's arcs (see ``pfar.from_cluster``). The
    question it answers: which chunks go within the window, and on which spine path.
    ``window_s`` defaults to the shortest window in which every GPU could send and receive its
    own inter-node bytes at the bottleneck rate of its paths, so only contention beyond the
    GPU's own links rejects a chunk.
    """
    from sim.moe.run import step_inputs
    from sim.moe.work import dispatch_matrix
    from sim.solve import pfar

    where = f"{source}: " if source else ""
    inp = step_inputs(scenario, cluster, source)
    if not 0 <= layer < len(inp.routing):
        raise UserError(f"{where}--layer: {layer}; the scenario has {len(inp.routing)} MoE "
                        f"layers (0 to {len(inp.routing) - 1})")
    dest = inp.layout.expert_gpu(np.arange(inp.layout.gpus), layer)
    matrix = dispatch_matrix(inp.routing[layer].slots, dest, inp.shape.hidden * inp.dtype_bytes)
    rates = pfar.from_cluster(cluster, matrix, 1.0)  # demands in bytes per window second
    if not rates.flows:
        raise UserError(f"{where}the dispatch of MoE layer {layer} sends nothing between "
                        "servers; there is nothing to admit")
    if window_s is None:
        window_s = _busiest_endpoint_s(rates)
    if not (window_s > 0 and np.isfinite(window_s)):
        raise UserError(f"{where}--window-us: must be a number > 0 (got {window_s * 1e6})")
    return pfar.from_cluster(cluster, matrix, window_s), float(window_s)


def _busiest_endpoint_s(problem) -> float:
    """Seconds the busiest endpoint needs for its flows at the bottleneck capacity of its
    flows' first candidate paths (demands read as bytes, capacities as bytes/s)."""
    cap = {(u, v): c for u, v, c in problem.links}
    need: dict[str, float] = {}
    for f, paths in zip(problem.flows, problem.candidate_paths(), strict=True):
        if not paths:
            continue
        rate = min(cap[a] for a in zip(paths[0], paths[0][1:], strict=False))
        for end in (f.src, "to " + f.dst):
            need[end] = need.get(end, 0.0) + f.demand / rate
    return max(need.values(), default=0.0)


def read_assign(path: str | Path) -> np.ndarray:
    """The ``assign`` array (MoE layers x experts) of a placement answer file."""
    from sim.inputs import read_json

    path = Path(path)
    data = read_json(path)
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
