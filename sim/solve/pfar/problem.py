"""PFAR problems: flows on a capacitated directed graph, validated, as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sim.errors import UserError
from sim.inputs import json_object, text_or_file

WEIGHTINGS = ("linear", "strict")
STATUSES = ("optimal", "feasible", "infeasible", "heuristic")
CHECK_RTOL = 1e-9  # relative capacity tolerance of check()
_FIT_RTOL = 1e-12  # tolerance the constructive codes use, well inside CHECK_RTOL
_PROBLEM_KEYS = {"nodes", "links", "flows", "k_paths", "weighting", "endpoint_only"}
_FLOW_KEYS = {"src", "dst", "demand", "priority"}


@dataclass
class Flow:
    """A request to carry ``demand`` (rate units, as the capacities) from ``src`` to ``dst``."""

    src: str
    dst: str
    demand: float
    priority: int = 1


@dataclass
class Problem:
    """A PFAR instance. ``links``: directed arcs ``(u, v, capacity)``; validated on creation."""

    nodes: list[str]
    links: list[tuple[str, str, float]]
    flows: list[Flow]
    k_paths: int = 4
    weighting: str = "linear"
    endpoint_only: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.links = [tuple(a) for a in self.links]
        self.flows = [f if isinstance(f, Flow) else Flow(**f) for f in self.flows]
        msg = _invalid(self)
        if msg:
            raise UserError(f"Problem: {msg}")

    def weights(self) -> list[int]:
        """Objective weight of each flow (exact integers)."""
        if self.weighting == "linear":
            return [f.priority for f in self.flows]
        w = len(self.flows) + 1
        return [w**f.priority for f in self.flows]

    def candidate_paths(self) -> list[list[list[str]]]:
        """Per flow, up to ``k_paths`` shortest simple paths (node lists); cached on the problem."""
        from sim.solve.pfar.paths import _index

        return _index(self).paths

    def to_json(self) -> str:
        d = asdict(self)
        d["links"] = [list(a) for a in self.links]
        return json.dumps(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Problem:
        """Read a problem from JSON text or a ``.json`` file; mistakes raise one-line UserErrors."""
        text, where = text_or_file(text_or_path)
        d = json_object(text, where)
        missing = sorted({"nodes", "links", "flows"} - d.keys())
        if missing:
            raise UserError(f"{where}: missing field {missing[0]!r} (need nodes, links, flows)")
        extra = sorted(d.keys() - _PROBLEM_KEYS)
        if extra:
            raise UserError(f"{where}: unknown field {extra[0]!r}; allowed: "
                            f"{', '.join(sorted(_PROBLEM_KEYS))}")
        for key in ("nodes", "links", "flows", "endpoint_only"):
            if key in d and not isinstance(d[key], list):
                raise UserError(f"{where}: {key}: must be a list")
        for i, a in enumerate(d["links"]):
            if not isinstance(a, list | tuple) or len(a) != 3:
                raise UserError(f"{where}: links[{i}]: must be [src, dst, capacity]")
        flows = []
        for i, f in enumerate(d["flows"]):
            if not isinstance(f, dict) or not {"src", "dst", "demand"} <= f.keys():
                raise UserError(f"{where}: flows[{i}]: must be an object with src, dst, demand "
                                "and optionally priority")
            if f.keys() - _FLOW_KEYS:
                bad = sorted(f.keys() - _FLOW_KEYS)[0]
                raise UserError(f"{where}: flows[{i}]: unknown field {bad!r}; allowed: "
                                "src, dst, demand, priority")
            flows.append(Flow(**f))
        try:
            return cls(**{**d, "flows": flows})
        except UserError as e:
            raise UserError(f"{where}: {str(e).removeprefix('Problem: ')}") from None


def _invalid(p: Problem) -> str | None:
    """The first thing wrong with ``p`` as a one-line message, or None."""
    if not all(isinstance(n, str) for n in p.nodes):
        return "nodes: every node must be a string"
    names = set(p.nodes)
    if len(names) != len(p.nodes):
        return "nodes: names must be unique"
    seen = set()
    for i, a in enumerate(p.links):
        if len(a) != 3:
            return f"links[{i}]: must be (src, dst, capacity)"
        u, v, c = a
        for n in (u, v):
            if not isinstance(n, str) or n not in names:
                return f"links[{i}]: unknown node {n!r}; links may only join listed nodes"
        if u == v:
            return f"links[{i}]: self-loop at {u!r}; src and dst must differ"
        if (u, v) in seen:
            return f"links[{i}]: duplicate arc {u!r} -> {v!r}; give one arc per direction"
        seen.add((u, v))
        if not _number(c) or c < 0:
            return f"links[{i}]: capacity {c!r}; must be a finite number >= 0"
    for i, f in enumerate(p.flows):
        for n in (f.src, f.dst):
            if not isinstance(n, str) or n not in names:
                return f"flows[{i}]: unknown node {n!r}; flows may only join listed nodes"
        if f.src == f.dst:
            return f"flows[{i}]: src == dst == {f.src!r}; a flow must join two nodes"
        if not _number(f.demand) or f.demand < 0:
            return f"flows[{i}]: demand {f.demand!r}; must be a finite number >= 0"
        if isinstance(f.priority, bool) or not isinstance(f.priority, int) or f.priority < 1:
            return f"flows[{i}]: priority {f.priority!r}; must be an integer >= 1"
    if isinstance(p.k_paths, bool) or not isinstance(p.k_paths, int) or p.k_paths < 1:
        return f"k_paths: {p.k_paths!r}; must be an integer >= 1"
    if p.weighting not in WEIGHTINGS:
        return f"weighting: {p.weighting!r}; allowed: {', '.join(WEIGHTINGS)}"
    top = max((f.priority for f in p.flows), default=1)
    if p.weighting == "strict" and top * math.log10(len(p.flows) + 1) > 300:
        most = int(300 / math.log10(len(p.flows) + 1))
        return (f"weighting: strict weights (flows + 1)**priority overflow a float at priority "
                f"{top}; with {len(p.flows)} flows use priorities up to {most}")
    for n in p.endpoint_only:
        if not isinstance(n, str) or n not in names:
            return f"endpoint_only: unknown node {n!r}"
    return None


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
