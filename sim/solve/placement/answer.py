"""Placement answers: JSON, the feasibility and cost check, and the default block layout."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.inputs import check_fields, json_object, read_text
from sim.solve.placement.cost import TERMS, _check_assign, _violation, cost
from sim.solve.placement.problem import _PREFIX, PlacementProblem


@dataclass(eq=False)
class PlacementAnswer:
    """A placement and how it was found. ``assign`` (L, E) GPU of each expert; ``cost`` the
    dict of :func:`cost`; ``status`` "optimal" (proven) or "feasible"; ``bound`` a proven lower
    bound on the total and ``gap`` = (total - bound) / total, None when unknown; ``wall_s``
    seconds; ``solver`` its name; ``info`` solver statistics (JSON-able)."""

    assign: np.ndarray
    cost: dict
    status: str
    bound: float | None
    gap: float | None
    wall_s: float
    solver: str
    info: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["assign"] = np.asarray(self.assign).tolist()
        return json.dumps(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> PlacementAnswer:
        data = json_object(text, source)
        check_fields(data, [f.name for f in fields(cls)], ("info",), source)
        try:
            assign = np.asarray(data["assign"], dtype=np.int64)
        except (TypeError, ValueError):
            raise UserError(f"{source}: assign: must be a (layers, experts) array of "
                            "GPU indices") from None
        if assign.ndim != 2:
            raise UserError(f"{source}: assign: must be a (layers, experts) array of GPU indices")
        if data["status"] not in ("optimal", "feasible"):
            raise UserError(f"{source}: status: must be optimal or feasible "
                            f"(got {data['status']!r})")
        c = data["cost"]
        if not isinstance(c, dict) or any(not isinstance(c.get(k), int | float) for k in TERMS):
            raise UserError(f"{source}: cost: must map {', '.join(TERMS)} to numbers")
        for key in ("bound", "gap", "wall_s"):
            v = data[key]
            if not (isinstance(v, int | float) or (v is None and key != "wall_s")):
                raise UserError(f"{source}: {key}: must be a number (got {v!r})")
        return cls(assign, {k: float(c[k]) for k in TERMS}, data["status"], data["bound"],
                   data["gap"], float(data["wall_s"]), str(data["solver"]),
                   dict(data.get("info") or {}))

    @classmethod
    def load_file(cls, path: str | Path) -> PlacementAnswer:
        return cls.from_json(read_text(path), str(path))


def check(problem: PlacementProblem, answer: PlacementAnswer) -> dict[str, float]:
    """Verify that ``answer`` is feasible for ``problem`` and that its stored cost and bound are
    right; return the recomputed cost. Any mismatch raises a one-line UserError."""
    a = _check_assign(problem, answer.assign, "answer: assign")
    broken = _violation(problem, a)
    if broken:
        raise UserError(f"answer: assign: infeasible: {broken}")
    c = cost(problem, a)
    tol = 1e-9 * sum(abs(c[k]) for k in TERMS[:3]) + 1e-300
    for k in TERMS:
        stored = answer.cost.get(k)
        if stored is None or abs(stored - c[k]) > tol + 1e-9 * abs(c[k]):
            raise UserError(f"answer: cost.{k}: stored {stored!r}, recomputed {c[k]!r}")
    if answer.bound is not None and answer.bound > c["total"] + 1e-6 * abs(c["total"]) + tol:
        raise UserError(f"answer: bound: {answer.bound!r} is above the total {c['total']!r}")
    return c


def _answer(p, a, solver, t0, status="feasible", bound=None, gap=None, info=None):
    return PlacementAnswer(np.asarray(a, dtype=np.int64), cost(p, a), status, bound, gap,
                           time.perf_counter() - t0, solver, dict(info or {}))


def block_placement(problem: PlacementProblem) -> PlacementAnswer:
    """The simulator's default placement as an answer (solver ``"layout"``): expert e of every
    layer on GPU e // (E / P), the blocks ``sim.moe.layout.Layout`` uses without a placement.
    It may break the problem's own limits (``check`` says so); E not divisible by P is a
    UserError."""
    t0 = time.perf_counter()
    if problem.experts % problem.gpus:
        raise UserError(f"{_PREFIX}: experts: block placement needs experts ({problem.experts}) "
                        f"divisible by gpus ({problem.gpus})")
    per = problem.experts // problem.gpus
    a = np.tile(np.arange(problem.experts) // per, (problem.layers, 1))
    return _answer(problem, a, "layout", t0)
