"""The exact solver: the path-form ILP in PuLP (CBC or HiGHS), lexicographic by levels."""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pulp

from sim.errors import UserError
from sim.solve.pfar.answer import Answer, _answer, _exact, _loads, _objective
from sim.solve.pfar.paths import _index
from sim.solve.pfar.problem import CHECK_RTOL, Problem
from sim.solve.pfar.repair import _Arrays


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
        with contextlib.nullcontext() if msg else _stdout_silenced():
            self.prob.solve(solver)  # highspy prints a banner even when told to be quiet
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


@contextlib.contextmanager
def _stdout_silenced():
    """Send file descriptor 1 to /dev/null meanwhile (C libraries write there directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
