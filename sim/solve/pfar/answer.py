"""PFAR answers: a path (or rejection) per flow, their objective, and the feasibility check."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.inputs import json_object, text_or_file
from sim.solve.pfar.paths import _Index, _index
from sim.solve.pfar.problem import CHECK_RTOL, STATUSES, Problem


@dataclass
class Answer:
    """A decision: per flow the candidate path index (-1 = rejected) and that path's nodes.

    ``objective``: sum of the weights of admitted flows; ``admitted_demand`` in rate units;
    ``status``: ``"optimal"`` (proven), ``"feasible"`` (ILP without proof, e.g. at its time
    limit), ``"heuristic"`` (GA, greedy) or ``"infeasible"`` (kept for the JSON contract; never
    returned here, since rejecting every flow is always feasible); ``bound``: best known upper
    bound on the objective (None if unknown); ``gap``: relative, ``(bound - objective) / bound``;
    ``wall_s``: seconds, including candidate-path computation unless already cached on the
    problem; ``solver``: ``"ilp-cbc"``, ``"ilp-highs"``, ``"ga"`` or ``"greedy"``.
    """

    path_index: list[int]
    paths: list[list[str]]
    objective: float
    admitted_demand: float
    status: str
    bound: float | None = None
    gap: float | None = None
    wall_s: float = 0.0
    solver: str = ""

    @property
    def admitted(self) -> int:
        return sum(1 for i in self.path_index if i >= 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Answer:
        text, where = text_or_file(text_or_path)
        d = json_object(text, where)
        try:
            return cls(**d)
        except TypeError as e:
            raise UserError(f"{where}: {e}") from None


def _loads(p: Problem, idx: _Index, choice: np.ndarray) -> np.ndarray:
    """Admitted demand per arc for the path choice (-1 = rejected)."""
    load = np.zeros(len(p.links))
    demand = np.array([f.demand for f in p.flows], float)
    for f in np.flatnonzero(choice >= 0):
        c = idx.first[f] + choice[f]
        load[idx.arcs[idx.arc_ptr[c]:idx.arc_ptr[c + 1]]] += demand[f]
    return load


def _exact(p: Problem, choice) -> int:
    """Objective of a path choice as an exact integer."""
    w = p.weights()
    return sum(w[f] for f, c in enumerate(choice) if c >= 0)


def _objective(p: Problem, choice) -> float:
    return float(_exact(p, choice))


def check(problem: Problem, answer: Answer) -> float:
    """Verify that ``answer`` is feasible for ``problem`` and return its recomputed objective.

    Raises ValueError naming the first violation: a path that is not the flow's candidate, an arc
    over capacity by more than ``CHECK_RTOL`` relative, or a misreported objective or demand.
    """
    idx = _index(problem)
    if answer.status not in STATUSES:
        raise ValueError(f"status {answer.status!r}; allowed: {', '.join(STATUSES)}")
    if len(answer.path_index) != len(problem.flows) or len(answer.paths) != len(problem.flows):
        raise ValueError(f"answer covers {len(answer.path_index)} flows, problem has "
                         f"{len(problem.flows)}")
    for f, (i, path) in enumerate(zip(answer.path_index, answer.paths, strict=True)):
        n = len(idx.paths[f])
        if not -1 <= i < n:
            raise ValueError(f"flow {f}: path index {i}; it has {n} candidate paths")
        if (i >= 0 and list(path) != idx.paths[f][i]) or (i < 0 and len(path)):
            raise ValueError(f"flow {f}: path {path} is not its candidate {i}")
    choice = np.array(answer.path_index, np.int64)
    load = _loads(problem, idx, choice)
    cap = np.array([c for _, _, c in problem.links], float)
    over = np.flatnonzero(load > cap * (1 + CHECK_RTOL))
    if len(over):
        u, v, c = problem.links[over[0]]
        raise ValueError(f"arc {u} -> {v}: load {load[over[0]]} > capacity {c}")
    obj = _objective(problem, choice)
    if not math.isclose(obj, answer.objective, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"objective reported {answer.objective}, recomputed {obj}")
    demand = sum(problem.flows[f].demand for f in np.flatnonzero(choice >= 0))
    if not math.isclose(demand, answer.admitted_demand, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"admitted_demand reported {answer.admitted_demand}, recomputed {demand}")
    return obj


def _answer(p: Problem, idx: _Index, choice, status: str, solver: str, t0: float,
            bound: float | None = None, gap: float | None = None) -> Answer:
    choice = [int(c) for c in choice]
    return Answer(
        path_index=choice,
        paths=[idx.paths[f][c] if c >= 0 else [] for f, c in enumerate(choice)],
        objective=_objective(p, choice),
        admitted_demand=float(sum(p.flows[f].demand for f, c in enumerate(choice) if c >= 0)),
        status=status, bound=bound, gap=gap, wall_s=time.perf_counter() - t0, solver=solver)
