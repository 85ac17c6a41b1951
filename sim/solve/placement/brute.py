"""Exhaustive search over tiny problems, the reference the tests hold the ILP to."""

from __future__ import annotations

import time

import numpy as np

from sim.errors import UserError
from sim.solve.placement.answer import PlacementAnswer, _answer
from sim.solve.placement.cost import _tables, _terms, cost
from sim.solve.placement.problem import PlacementProblem

#: Most assignments :func:`brute_force` enumerates (P ** (L * E)).
BRUTE_FORCE_LIMIT = 1_000_000


def brute_force(problem: PlacementProblem) -> PlacementAnswer:
    """Enumerate all P ** (L * E) assignments (at most BRUTE_FORCE_LIMIT): the proven optimum,
    first in enumeration order among equals."""
    t0 = time.perf_counter()
    p = problem
    n_genes = p.layers * p.experts
    n = p.gpus ** n_genes
    if n > BRUTE_FORCE_LIMIT:
        raise UserError(f"brute_force: gpus ** (layers x experts) = {p.gpus} ** {n_genes} "
                        f"assignments, more than {BRUTE_FORCE_LIMIT:,}; use solve_ilp")
    t = _tables(p)
    powers = p.gpus ** np.arange(n_genes, dtype=np.int64)
    best, best_a = np.inf, None
    for start in range(0, n, 1 << 16):
        idx = np.arange(start, min(n, start + (1 << 16)), dtype=np.int64)
        a = ((idx[:, None] // powers) % p.gpus).reshape(-1, p.layers, p.experts)
        onehot = a[..., None] == np.arange(p.gpus)
        cnt = onehot.sum(axis=2)  # (B, L, P)
        ok = np.all(cnt <= p.max_experts_per_gpu, axis=(1, 2))
        ok &= np.all(cnt.sum(axis=1) <= p.memory_slots, axis=1)
        if not ok.any():
            continue
        total = _terms(p, t, a[ok])["total"]
        k = int(np.argmin(total))
        if total[k] < best:
            best, best_a = total[k], a[ok][k]
    c = cost(p, best_a)["total"]
    return _answer(p, best_a, "brute_force", t0, "optimal", c, 0.0, {"assignments": n})
