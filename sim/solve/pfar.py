"""Priority flow admission and routing (PFAR): which flows to admit, and on which path.

A reconstruction of López, Labonne, Poletti, Belabed (arXiv 2009.10822, 2020); the paper's body
could not be read, so the model below is the standard admission ILP (papers.md section 5, [U]).

Problem (:class:`Problem`): directed arcs with capacities, flows ``(src, dst, demand, priority)``
in one consistent rate unit (Gbit/s in :func:`generate`, bytes/s in :func:`from_cluster`). Each
flow may use one of its ``k_paths`` shortest simple paths by hop count (networkx, computed once
per problem and cached), or be rejected. Routes are unsplittable; the admitted demand on every
arc must fit its capacity. Nodes listed in ``endpoint_only`` (GPUs) never forward traffic.

Objective: maximise the sum of ``w(priority)`` over admitted flows, where ``weighting`` is

* ``"linear"``: ``w(pi) = pi``;
* ``"strict"``: ``w(pi) = W**pi`` with ``W = len(flows) + 1``, so one flow of priority p outweighs
  all flows of lower priority together (lexicographic). :func:`solve_ilp` solves this exactly as
  a sequence of ILPs, one per priority level from the highest (maximise the admitted count of
  that level with the higher levels' optimal counts fixed), because coefficients up to W**5 are
  beyond double precision in one ILP. Objectives are summed as exact integers, then reported as
  floats.

Solvers, all returning an :class:`Answer` that :func:`check` accepts: :func:`solve_ilp` (path-form
ILP, PuLP with CBC or HiGHS), :func:`solve_ga` (DEAP GA, seeded, repair-decoded, with a local
search on new best individuals) and :func:`greedy`. :func:`generate` draws congested random
instances; :func:`from_cluster` builds one from a moe-sim cluster and an All-to-All matrix.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from itertools import islice
from pathlib import Path

import networkx as nx
import numba
import numpy as np
import pulp
from deap import base

from sim.errors import UserError
from sim.rng import stream
from sim.solve.jsonio import json_object

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
        text, where = _read(text_or_path)
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


def _read(text_or_path: str | Path) -> tuple[str, str]:
    if isinstance(text_or_path, str) and text_or_path.lstrip().startswith(("{", "[")):
        return text_or_path, "<json>"
    path = Path(text_or_path)
    try:
        return path.read_text(), str(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- candidate paths


@dataclass(frozen=True)
class _Index:
    """Candidate paths as arrays: candidate c belongs to flow f for first[f] <= c < first[f+1] and
    uses arcs ``arcs[arc_ptr[c]:arc_ptr[c+1]]`` (indices into ``problem.links``)."""

    paths: list[list[list[str]]]
    first: np.ndarray
    arc_ptr: np.ndarray
    arcs: np.ndarray


def _index(p: Problem) -> _Index:
    key = (tuple(p.nodes), tuple((u, v) for u, v, _ in p.links),
           tuple((f.src, f.dst) for f in p.flows), p.k_paths, tuple(p.endpoint_only))
    cached = p.__dict__.get("_index_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    g = nx.DiGraph()
    g.add_nodes_from(p.nodes)
    g.add_edges_from((u, v) for u, v, _ in p.links)
    arc_id = {(u, v): i for i, (u, v, _) in enumerate(p.links)}
    endpoint = set(p.endpoint_only)
    by_pair: dict[tuple[str, str], list[list[str]]] = {}
    paths, first, arc_ptr, arcs = [], [0], [0], []
    for f in p.flows:
        pair = (f.src, f.dst)
        if pair not in by_pair:
            by_pair[pair] = _k_shortest(g, f.src, f.dst, p.k_paths, endpoint)
        paths.append(by_pair[pair])
        for path in by_pair[pair]:
            arcs.extend(arc_id[a] for a in zip(path, path[1:], strict=False))
            arc_ptr.append(len(arcs))
        first.append(len(arc_ptr) - 1)
    idx = _Index(paths, np.array(first, np.int64), np.array(arc_ptr, np.int64),
                 np.array(arcs, np.int64))
    p.__dict__["_index_cache"] = (key, idx)
    return idx


def _k_shortest(g: nx.DiGraph, s: str, t: str, k: int, endpoint: set) -> list[list[str]]:
    if endpoint:
        g = nx.subgraph_view(g, filter_node=lambda n: n not in endpoint or n in (s, t))
    try:
        return [list(path) for path in islice(nx.shortest_simple_paths(g, s, t), k)]
    except nx.NetworkXNoPath:
        return []


# ----------------------------------------------------------------------------- answers


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
        text, where = _read(text_or_path)
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


# ----------------------------------------------------------------------------- repair and greedy


class _Arrays:
    """Numeric views of a problem for the compiled repair and local search.

    ``order="priority"`` (the plain greedy): admit the highest priority first, then the smallest
    demand, each on its first candidate path that fits. ``order="density"`` (the GA): admit by
    weight per unit of capacity on the shortest path, ``w / (demand * hops)``, highest first
    (linear weighting), or by priority, then the smallest ``demand * hops`` (strict), each on the
    least congested candidate that fits (smallest ``sum over its arcs of demand / residual``).
    Flows are dropped in the reverse of the admission order.
    """

    def __init__(self, p: Problem, idx: _Index, order: str = "priority"):
        self.idx = idx
        self.demand = np.array([f.demand for f in p.flows], float)
        self.priority = np.array([f.priority for f in p.flows], np.int64)
        self.n_paths = np.diff(idx.first)
        n = np.arange(len(p.flows))
        if order == "priority":
            self.add_order = np.lexsort((n, self.demand, -self.priority))
        else:
            hops = np.diff(idx.arc_ptr)[np.minimum(idx.first[:-1], len(idx.arc_ptr) - 2)]
            use = self.demand * np.where(self.n_paths > 0, hops, 1)
            if p.weighting == "linear":
                density = np.divide(self.priority, use, out=np.full(len(n), np.inf),
                                    where=use > 0)
                self.add_order = np.lexsort((n, -density))
            else:
                self.add_order = np.lexsort((n, use, -self.priority))
        cap = np.array([c for _, _, c in p.links], float) * (1 + _FIT_RTOL)
        self.kernel = (idx.first, idx.arc_ptr, idx.arcs, self.demand, cap,
                       self.add_order[::-1].copy(), self.add_order, order == "density")
        if p.weighting == "linear":  # score columns for the local search, most significant first
            self.col, self.wt = np.zeros(len(n), np.int64), self.priority
        else:
            levels = np.unique(self.priority)[::-1]
            self.col = np.searchsorted(-levels, -self.priority).astype(np.int64)
            self.wt = np.ones(len(n), np.int64)

    def repair(self, genes: np.ndarray) -> np.ndarray:
        """Make every row of ``genes`` (individuals x flows) feasible in place, then fill it."""
        _repair(genes, self.kernel)
        return genes

    def climb(self, row: np.ndarray, deadline: float | None, chunk: int = 1000) -> np.ndarray:
        """Local search (:func:`_climb`) on one feasible row, in place, until a full cycle of
        moves brings no gain or ``time.perf_counter()`` passes ``deadline``."""
        n_moves = len(self.moves)
        pos, quiet = 0, 0
        while n_moves and quiet < n_moves:
            if deadline is not None and time.perf_counter() >= deadline:
                break
            pos, kept = _climb(row, self.moves, pos, min(chunk, n_moves), self.col, self.wt,
                               self.kernel)
            quiet = 0 if kept else quiet + min(chunk, n_moves)
        return row

    @cached_property
    def moves(self) -> np.ndarray:
        """Every (flow, path) pair, flows in admission order."""
        f = np.repeat(self.add_order, self.n_paths[self.add_order])
        p = np.concatenate([np.arange(k) for k in self.n_paths[self.add_order]] or [[]])
        return np.stack([f, p.astype(np.int64)], axis=1) if len(f) else np.zeros((0, 2), np.int64)


@numba.njit(cache=True, nogil=True)
def _repair(genes, kernel):  # pragma: no cover - compiled; covered through greedy and solve_ga
    load = np.zeros(kernel[4].shape[0])
    for r in range(genes.shape[0]):
        _repair_row(genes[r], -1, load, kernel)


@numba.njit(cache=True, nogil=True)
def _repair_row(g, keep, load, kernel):  # pragma: no cover
    """Drop admitted flows on overloaded arcs in drop order (flow ``keep`` last) until no arc is
    over capacity (one pass suffices: loads only fall), then admit rejected flows in admission
    order on a candidate path that fits (the first, or the least congested). ``load`` is
    scratch space."""
    first, arc_ptr, arcs, demand, cap, drop_order, add_order, least_congested = kernel
    load[:] = 0.0
    for f in range(g.shape[0]):
        if g[f] >= 0:
            c = first[f] + g[f]
            for j in range(arc_ptr[c], arc_ptr[c + 1]):
                load[arcs[j]] += demand[f]
    for i in range(drop_order.shape[0] + 1):
        f = keep if i == drop_order.shape[0] else drop_order[i]
        if f < 0 or g[f] < 0 or (f == keep and i < drop_order.shape[0]):
            continue
        c = first[f] + g[f]
        over = False
        for j in range(arc_ptr[c], arc_ptr[c + 1]):
            if load[arcs[j]] > cap[arcs[j]]:
                over = True
                break
        if over:
            g[f] = -1
            for j in range(arc_ptr[c], arc_ptr[c + 1]):
                load[arcs[j]] -= demand[f]
    for f in add_order:
        if g[f] >= 0:
            continue
        pick, pick_cost = -1, np.inf
        for c in range(first[f], first[f + 1]):
            fits = True
            cost = 0.0
            for j in range(arc_ptr[c], arc_ptr[c + 1]):
                a = arcs[j]
                if load[a] + demand[f] > cap[a]:
                    fits = False
                    break
                cost += demand[f] / max(cap[a] - load[a], 1e-300)
            if fits:
                if not least_congested:
                    pick = c
                    break
                if cost < pick_cost:
                    pick, pick_cost = c, cost
        if pick >= 0:
            g[f] = pick - first[f]
            for j in range(arc_ptr[pick], arc_ptr[pick + 1]):
                load[arcs[j]] += demand[f]


@numba.njit(cache=True, nogil=True)
def _climb(g, moves, start, count, col, wt, kernel):  # pragma: no cover
    """First-improvement local search on the feasible row ``g``: try ``count`` moves from
    ``moves[start:]`` (cyclically); a move ``(f, p)`` puts flow f on its path p (p != current),
    repairs around it (f dropped last) and refills; it is kept if the score (per column
    ``col[f]`` the sum of ``wt[f]`` over admitted flows, compared lexicographically) rises.
    Returns the position after the last move tried and the number of moves kept."""
    n_cols = col.max() + 1 if col.shape[0] else 1
    load = np.zeros(kernel[4].shape[0])
    trial = g.copy()
    best = np.zeros(n_cols, np.int64)
    for f in range(g.shape[0]):
        if g[f] >= 0:
            best[col[f]] += wt[f]
    score = np.zeros(n_cols, np.int64)
    kept = 0
    pos = start
    for _ in range(count):
        f, p = moves[pos, 0], moves[pos, 1]
        pos = (pos + 1) % moves.shape[0]
        if g[f] == p:
            continue
        trial[:] = g
        trial[f] = p
        _repair_row(trial, f, load, kernel)
        score[:] = 0
        for h in range(g.shape[0]):
            if trial[h] >= 0:
                score[col[h]] += wt[h]
        better = False
        for k in range(n_cols):
            if score[k] != best[k]:
                better = score[k] > best[k]
                break
        if better:
            g[:] = trial
            best[:] = score
            kept += 1
    return pos, kept


def greedy(problem: Problem) -> Answer:
    """Flows by priority (highest first, then smallest demand), each on its first candidate path
    that fits the residual capacities; the rest are rejected."""
    t0 = time.perf_counter()
    a = _Arrays(problem, _index(problem))
    genes = a.repair(np.full((1, len(problem.flows)), -1, np.int64))
    return _answer(problem, a.idx, genes[0], "heuristic", "greedy", t0)


# ----------------------------------------------------------------------------- exact: path-form ILP


def solve_ilp(problem: Problem, time_limit_s: float | None = None, backend: str = "cbc",
              msg: bool = False) -> Answer:
    """The path-form ILP: binary ``y[f, p]``, ``sum_p y[f, p] <= 1``, ``sum d_f y[f, p] <= c_a``
    over the candidates through each arc, maximising the weighted admitted flows.

    ``backend``: ``"cbc"`` (bundled with PuLP) or ``"highs"`` (needs ``highspy``). Both start from
    the greedy answer (CBC as a MIP start; HiGHS's answer is kept only if better) and run with a
    zero relative gap tolerance. ``time_limit_s`` (wall seconds) is shared by all solves.

    Optimality is decided here, not taken from PuLP's status (which says "Optimal" after a time
    limit too): every objective coefficient is an integer, so a solve is proven optimal when the
    solver reports proven optimality (CBC's "Result - Optimal solution found", HiGHS's model
    status kOptimal) or its best bound rounded down equals the incumbent. ``bound`` is the
    solver's best bound (CBC's log "Upper bound", HiGHS's ``mip_dual_bound``) or None when it
    gives none; then the answer is "feasible" with gap None. With strict weighting the levels
    are solved in turn (module docstring); levels below an unproven one contribute all their
    routable flows to the bound.
    """
    t0 = time.perf_counter()
    if backend not in ("cbc", "highs"):
        raise UserError(f"solve_ilp: backend {backend!r}; allowed: cbc, highs")
    if backend == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise UserError("solve_ilp: backend highs needs the highspy package: "
                            "pip install highspy") from None
    idx = _index(problem)
    arr = _Arrays(problem, idx)
    best = arr.repair(np.full((1, len(problem.flows)), -1, np.int64))[0]
    if idx.first[-1] == 0:  # nothing can be routed: rejecting all is optimal
        return _answer(problem, idx, best, "optimal", f"ilp-{backend}", t0, 0.0, 0.0)
    model = _IlpModel(problem, arr)
    levels = [0] if problem.weighting == "linear" else sorted(set(arr.priority), reverse=True)
    proven, open_level, level_bound = True, None, None
    for level in levels:
        left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - t0)
        if left is not None and left <= 0.05:
            proven, open_level = False, level
            break
        choice, ok, level_bound = model.solve(level, best, backend, left, msg)
        if choice is not None and _exact(problem, choice) >= _exact(problem, best):
            best = choice
        if not ok:
            proven, open_level = False, level
            break
        if problem.weighting == "strict":
            model.fix(level, int(np.count_nonzero((best >= 0) & (arr.priority == level))))
    load = _loads(problem, idx, best)
    if np.any(load > np.array([c for _, _, c in problem.links]) * (1 + CHECK_RTOL)):
        best, proven = arr.repair(best[None, :].copy())[0], False  # solver tolerance slipped
    if proven:
        obj = _objective(problem, best)
        return _answer(problem, idx, best, "optimal", f"ilp-{backend}", t0, obj, 0.0)
    best = arr.repair(best[None, :].copy())[0]  # fill any room the time limit left
    bound = _total_bound(problem, arr, best, open_level, level_bound)
    obj = _exact(problem, best)
    gap = None if bound is None else (float(bound - obj) / bound if bound > 0 else 0.0)
    return _answer(problem, idx, best, "feasible", f"ilp-{backend}", t0,
                   None if bound is None else float(bound), gap)


def _total_bound(p: Problem, arr: _Arrays, best, open_level, level_bound) -> int | None:
    """An upper bound on the objective (exact integer) when the solve stopped at ``open_level``."""
    if level_bound is None:
        return None
    if p.weighting == "linear":
        return max(math.floor(level_bound + 1e-6), _exact(p, best))
    w = len(p.flows) + 1
    routable = arr.n_paths > 0
    total = 0
    for q in sorted(set(arr.priority.tolist()), reverse=True):
        at_q = arr.priority == q
        if q > open_level:  # proven levels: their optimal counts are fixed in the model
            n = np.count_nonzero(at_q & (best >= 0))
        elif q == open_level:
            n = max(math.floor(level_bound + 1e-6), np.count_nonzero(at_q & (best >= 0)))
        else:
            n = np.count_nonzero(at_q & routable)
        total += int(n) * w**int(q)
    return total


class _IlpModel:
    """The PuLP model, built once; the objective changes per priority level (strict)."""

    def __init__(self, p: Problem, arr: _Arrays):
        idx = arr.idx
        self.p, self.arr = p, arr
        n_cand = int(idx.first[-1])
        self.flow_of = np.repeat(np.arange(len(p.flows)), arr.n_paths)
        self.prob = pulp.LpProblem("pfar", pulp.LpMaximize)
        self.y = [self.prob.add_variable(f"y{c}", 0, 1, pulp.LpBinary) for c in range(n_cand)]
        for f in np.flatnonzero(arr.n_paths > 1):
            self.prob += pulp.lpSum(self.y[idx.first[f]:idx.first[f + 1]]) <= 1, f"one{f}"
        cand = np.repeat(np.arange(n_cand), np.diff(idx.arc_ptr))
        order = np.argsort(idx.arcs, kind="stable")
        arcs, cand = idx.arcs[order], cand[order]
        cuts = np.flatnonzero(np.diff(arcs)) + 1
        for a_cands in np.split(np.arange(len(arcs)), cuts):
            a = int(arcs[a_cands[0]])
            cs = cand[a_cands]
            flows = np.unique(self.flow_of[cs])
            if arr.demand[flows].sum() <= p.links[a][2]:
                continue  # every flow through this arc fits at once: redundant
            terms = [(self.y[c], float(arr.demand[self.flow_of[c]])) for c in cs]
            self.prob += pulp.LpAffineExpression(terms) <= p.links[a][2], f"cap{a}"

    def fix(self, level: int, count: int) -> None:
        """Keep at least ``count`` flows of priority ``level`` admitted (strict weighting)."""
        ys = [self.y[c] for c in np.flatnonzero(self.arr.priority[self.flow_of] == level)]
        self.prob += pulp.lpSum(ys) >= count, f"level{level}"

    def solve(self, level: int, start, backend: str, time_limit_s: float | None, msg: bool):
        """Returns (choice or None, proven optimal, best bound or None) for this level."""
        w = np.array(self.p.weights() if level == 0 else
                     (self.arr.priority == level).astype(np.int64).tolist())
        cw = w[self.flow_of]
        self.prob.setObjective(pulp.LpAffineExpression(
            [(self.y[c], int(cw[c])) for c in np.flatnonzero(cw)]) if cw.any() else
            pulp.LpAffineExpression([(self.y[0], 0)]))
        first = self.arr.idx.first
        for f, c in enumerate(start):
            for j in range(first[f], first[f + 1]):
                self.y[j].setInitialValue(1 if j - first[f] == c else 0)
        if backend == "cbc":
            said_optimal, bound = self._cbc(time_limit_s, msg)
        else:
            said_optimal, bound = self._highs(time_limit_s, msg)
        choice = self._choice()
        if choice is None:
            return None, False, bound
        obj = int(np.sum(w[choice >= 0]))
        proven = said_optimal or (bound is not None and math.floor(bound + 1e-6) <= obj)
        return choice, proven, bound

    def _cbc(self, time_limit_s, msg):
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "cbc.log")
            with warnings.catch_warnings():  # PuLP 3.3 announces PULP_CBC_CMD's removal in 4.0
                warnings.simplefilter("ignore", DeprecationWarning)
                solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=0.0,
                                           warmStart=True, logPath=log)
            self.prob.solve(solver)
            text = Path(log).read_text() if os.path.exists(log) else ""
        if msg:
            print(text)
        result = re.search(r"^Result - (.*)$", text, re.M)
        upper = re.search(r"^Upper bound:\s*(\S+)", text, re.M)
        said_optimal = bool(result and result.group(1).startswith("Optimal solution found")
                            and self.prob.sol_status == pulp.LpSolutionOptimal)
        return said_optimal, float(upper.group(1)) if upper else None

    def _highs(self, time_limit_s, msg):
        import highspy

        solver = pulp.HiGHS(msg=msg, timeLimit=time_limit_s, gapRel=0.0)
        self.prob.solve(solver)
        model = self.prob.solverModel
        info = model.getInfo()
        said_optimal = model.getModelStatus() == highspy.HighsModelStatus.kOptimal
        bound = -float(info.mip_dual_bound)  # PuLP hands HiGHS the negated (minimising) objective
        return said_optimal, bound if math.isfinite(bound) else None

    def _choice(self) -> np.ndarray | None:
        vals = np.array([v.varValue if v.varValue is not None else np.nan for v in self.y])
        if np.isnan(vals).all():
            return None
        chosen = np.nan_to_num(vals) > 0.5
        choice = np.full(len(self.p.flows), -1, np.int64)
        cs = np.flatnonzero(chosen)
        choice[self.flow_of[cs]] = cs - self.arr.idx.first[self.flow_of[cs]]
        return choice


# ----------------------------------------------------------------------------- heuristic: GA


def solve_ga(problem: Problem, seed: int, time_limit_s: float | None = None,
             generations: int = 200, population: int = 40, *, tournament: int = 3,
             crossover_prob: float = 0.9, mutation_genes: float = 2.0, elite: int = 2) -> Answer:
    """Memetic genetic algorithm over path choices: a gene per flow, its path index or -1.

    Decoding is Lamarckian: every child is repaired in place, so every individual is feasible and
    its fitness is its objective. Repair (:class:`_Arrays`, ``order="density"``): drop admitted
    flows on overloaded arcs, lowest ``w / (demand * hops)`` first (strict weighting: lowest
    priority, then largest ``demand * hops``), then admit rejected flows in the reverse order,
    each on the least congested candidate path that fits. The initial population holds two
    seeds, the repaired empty individual (the density greedy, taken to a local optimum by
    :func:`_climb`) and :func:`greedy`'s answer, plus random individuals (each gene uniform over
    -1 and the flow's paths, then repaired). Each generation keeps the ``elite`` best, breeds the
    rest by ``tournament`` selection, uniform crossover (each child, with ``crossover_prob``) and
    mutation re-drawing each gene with probability ``mutation_genes / flows``; a child that beats
    the best so far is taken to its local optimum (moves: put one flow on another path or admit
    it, repair around it, refill; kept if the objective rises). Stops after ``generations`` or
    ``time_limit_s`` wall seconds (checked between generations and between local-search chunks).

    Randomness: one numpy Generator, ``sim.rng.stream(seed, "ga")``, handed to our own operators,
    which a local ``deap.base.Toolbox`` registers. DEAP's operators (which draw from the global
    ``random`` module) and ``deap.creator`` are not used, so the global random state is never
    touched, calls do not interfere, and the same seed gives the same answer whenever
    ``generations`` (not the clock) ends the run.
    """
    t0 = time.perf_counter()
    if population < 2 or generations < 0 or not 0 <= elite < population or tournament < 1:
        raise UserError("solve_ga: need population >= 2, generations >= 0, "
                        "0 <= elite < population, tournament >= 1")
    rng = stream(int(seed), "ga")
    idx = _index(problem)
    arr = _Arrays(problem, idx, order="density")
    n_flows = len(problem.flows)
    tb = base.Toolbox()
    tb.register("select", _tournament, rng=rng, size=tournament)
    tb.register("mate", _uniform_crossover, rng=rng, prob=crossover_prob)
    tb.register("mutate", _redraw, rng=rng, n_paths=arr.n_paths,
                rate=mutation_genes / max(n_flows, 1))
    tb.register("repair", arr.repair)
    tb.register("climb", arr.climb)
    tb.register("evaluate", _fitness, weighting=problem.weighting, priority=arr.priority)

    deadline = None if time_limit_s is None else t0 + time_limit_s
    empty = np.full((1, n_flows), -1, np.int64)
    seeds = np.vstack([empty, _Arrays(problem, idx).repair(empty.copy())])  # both greedy orders
    randoms = tb.mutate(np.zeros((population - len(seeds), n_flows), np.int64), rate=1.0)
    pop = tb.repair(np.vstack([seeds, randoms]))
    tb.climb(pop[0], deadline)
    keys = tb.evaluate(pop)
    for _ in range(generations):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        rank = _rank(keys)
        keep = np.argsort(rank, kind="stable")[:elite]
        n_kids = population - elite
        parents = tb.select(rank, 2 * n_kids)
        kids = tb.repair(tb.mutate(tb.mate(pop[parents[:n_kids]], pop[parents[n_kids:]])))
        kid_keys = tb.evaluate(kids)
        top = int(np.argmin(_rank(kid_keys)))
        if _rank(np.vstack([keys[keep[:1]], kid_keys[top:top + 1]]))[1] == 0:
            tb.climb(kids[top], deadline)  # a new best: take it to its local optimum
            kid_keys[top] = tb.evaluate(kids[top:top + 1])[0]
        pop = np.vstack([pop[keep], kids])
        keys = np.vstack([keys[keep], kid_keys])
    best = pop[int(np.argmin(_rank(keys)))]
    return _answer(problem, idx, best, "heuristic", "ga", t0)


def _fitness(genes: np.ndarray, weighting: str, priority: np.ndarray) -> np.ndarray:
    """Fitness keys per individual, most significant column first, exact integers: the weighted
    count (linear) or the admitted count per priority level from the highest (strict)."""
    admitted = genes >= 0
    if weighting == "linear":
        return (admitted @ priority)[:, None]
    levels = np.unique(priority)[::-1]
    return np.stack([admitted[:, priority == q].sum(axis=1) for q in levels], axis=1)


def _rank(keys: np.ndarray) -> np.ndarray:
    """Rank of each row (0 = best) under lexicographic comparison of its keys, ties by index."""
    order = np.lexsort(tuple(-keys[:, j] for j in range(keys.shape[1] - 1, -1, -1)))
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys))
    return rank


def _tournament(rank: np.ndarray, n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Indices of ``n`` winners of tournaments among ``size`` uniformly drawn individuals."""
    contestants = rng.integers(len(rank), size=(n, size))
    return contestants[np.arange(n), np.argmin(rank[contestants], axis=1)]


def _uniform_crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                       prob: float) -> np.ndarray:
    """One child per pair: each gene from either parent with probability 1/2 (with ``prob``;
    otherwise a copy of the first parent)."""
    take_b = (rng.random(a.shape) < 0.5) & (rng.random((len(a), 1)) < prob)
    return np.where(take_b, b, a)


def _redraw(genes: np.ndarray, rng: np.random.Generator, n_paths: np.ndarray,
            rate: float) -> np.ndarray:
    """Re-draw each gene with probability ``rate``, uniformly over -1 and the flow's paths."""
    hit = rng.random(genes.shape) < rate
    new = np.floor(rng.random(genes.shape) * (n_paths + 1)).astype(np.int64) - 1
    genes[hit] = new[hit]
    return genes


# ----------------------------------------------------------------------------- instances


def generate(nodes: int, flows: int, seed: int, *, k_paths: int = 4, weighting: str = "linear",
             degree: float = 4.0, capacities: tuple[float, ...] = (10.0, 40.0, 100.0),
             capacity_p: tuple[float, ...] = (0.5, 0.3, 0.2), priorities: int = 5,
             demand_sigma: float = 1.0, load: float = 1.0) -> Problem:
    """A congested semi-random instance (rates in Gbit/s), reproducible from ``seed``.

    Topology: nodes ``v0..v{n-1}``; a uniform random spanning tree (each node in a random order
    joins a uniformly drawn earlier one) plus uniform random extra links up to an average degree
    of ``degree``; every link is two arcs with one capacity drawn from ``capacities`` with
    probabilities ``capacity_p``. Flows: src uniform, dst uniform among the others, priority
    uniform in 1..``priorities``, demand lognormal(0, ``demand_sigma``) (skewed), scaled so that
    the offered load ``sum(demand * shortest hops) / sum(arc capacity)`` equals ``load``. Load
    gathers on the 10 Gbit/s links, so at the default 1.0 the best known answers reject 13-29 %
    of the flows (13 % at 10 nodes and 500 flows, 19 % at 50 nodes and 2,000; see
    ``benchmarks/bench_solvers.py``). Demands are rounded to 1e-4 Gbit/s (at least 1e-4).
    """
    if nodes < 2 or flows < 0:
        raise UserError("generate: need nodes >= 2 and flows >= 0")
    rng = np.random.default_rng(seed)
    order = rng.permutation(nodes)
    edges = {tuple(sorted((int(order[i]), int(order[rng.integers(i)])))) for i in range(1, nodes)}
    target = min(round(degree * nodes / 2), nodes * (nodes - 1) // 2)
    while len(edges) < target:
        u, v = (int(x) for x in rng.choice(nodes, 2, replace=False))
        edges.add((min(u, v), max(u, v)))
    edges_l = sorted(edges)
    caps = rng.choice(np.asarray(capacities, float), size=len(edges_l), p=capacity_p)
    names = [f"v{i}" for i in range(nodes)]
    links = []
    for (u, v), c in zip(edges_l, caps, strict=True):
        links += [(names[u], names[v], float(c)), (names[v], names[u], float(c))]
    src = rng.integers(nodes, size=flows)
    dst = (src + rng.integers(1, nodes, size=flows)) % nodes
    prio = rng.integers(1, priorities + 1, size=flows)
    raw = rng.lognormal(0.0, demand_sigma, size=flows)
    hops = dict(nx.all_pairs_shortest_path_length(nx.Graph(edges_l)))
    h = np.array([hops[int(s)][int(d)] for s, d in zip(src, dst, strict=True)], float)
    total_cap = 2 * caps.sum()
    demand = np.maximum(np.round(raw * load * total_cap / max((raw * h).sum(), 1e-12), 4), 1e-4)
    fl = [Flow(names[s], names[d], float(x), int(q))
          for s, d, x, q in zip(src, dst, demand, prio, strict=True)]
    return Problem(names, links, fl, k_paths=k_paths, weighting=weighting)


def from_cluster(cluster, matrix_bytes, duration_s: float, priority_of=None, k_paths: int = 4,
                 weighting: str = "linear") -> Problem:
    """One All-to-All on a moe-sim cluster as a PFAR instance (rates in bytes/s).

    Nodes: every graph node (names as ``str``); arcs: every directed edge, capacity
    ``bandwidth_Bps``. Flows: one per nonzero ``matrix_bytes[s, d]`` between GPU ranks on
    different servers, demand ``bytes / duration_s`` (the rate that finishes within
    ``duration_s``), priority ``priority_of(s, d)`` or 1. GPUs are endpoint-only: candidate
    paths never transit a GPU.
    """
    m = np.asarray(matrix_bytes, float)
    p = cluster.num_gpus
    if m.shape != (p, p):
        raise UserError(f"from_cluster: matrix_bytes has shape {m.shape}; need ({p}, {p})")
    if not (_number(duration_s) and duration_s > 0):
        raise UserError(f"from_cluster: duration_s {duration_s!r}; must be a number > 0")
    names = [str(n) for n in cluster.node_names]
    gpus = [n for n, d in cluster.graph.nodes(data=True) if d.get("kind") == "gpu"]
    lt = cluster.links
    links = [(names[s], names[d], float(c))
             for s, d, c in zip(lt.src, lt.dst, lt.capacity_Bps, strict=True)]
    node_of = cluster.node_of
    flows = [Flow(names[s], names[d], float(m[s, d] / duration_s),
                  int(priority_of(s, d)) if priority_of else 1)
             for s, d in zip(*np.nonzero(m), strict=True) if node_of[s] != node_of[d]]
    return Problem(names, links, flows, k_paths=k_paths, weighting=weighting,
                   endpoint_only=[str(g) for g in gpus])
