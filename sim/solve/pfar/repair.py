"""Compiled repair and local search over path choices, and the greedy built on them."""

from __future__ import annotations

import time
from functools import cached_property

import numba
import numpy as np

from sim.solve.pfar.answer import Answer, _answer
from sim.solve.pfar.paths import _Index, _index
from sim.solve.pfar.problem import _FIT_RTOL, Problem


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
        """Every (flow, path) pair, flows in admission order; path -1 (reject the flow and refill
        without it) for every routable flow."""
        n = self.n_paths[self.add_order] + (self.n_paths[self.add_order] > 0)
        f = np.repeat(self.add_order, n)
        p = np.concatenate([np.arange(-1, k - 1) for k in n] or [[]])
        return np.stack([f, p.astype(np.int64)], axis=1) if len(f) else np.zeros((0, 2), np.int64)


@numba.njit(cache=True, nogil=True)
def _repair(genes, kernel):  # pragma: no cover - compiled; covered through greedy and solve_ga
    load = np.zeros(kernel[4].shape[0])
    for r in range(genes.shape[0]):
        _repair_row(genes[r], -1, -1, load, kernel)


@numba.njit(cache=True, nogil=True)
def _repair_row(g, keep, ban, load, kernel):  # pragma: no cover
    """Drop admitted flows on overloaded arcs in drop order (flow ``keep`` last) until no arc is
    over capacity (one pass suffices: loads only fall), then admit rejected flows other than
    ``ban`` in admission order on a candidate path that fits (the first, or the least
    congested). ``load`` is scratch space."""
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
        if g[f] >= 0 or f == ban:
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
    repairs around it (f dropped last) and refills, or with p = -1 rejects f and refills
    without it; it is kept if the score (per column
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
        _repair_row(trial, f if p >= 0 else -1, f if p < 0 else -1, load, kernel)
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
