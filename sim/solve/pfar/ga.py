"""The heuristic solver: a seeded memetic GA over path choices (DEAP toolbox, numpy operators)."""

from __future__ import annotations

import time

import numpy as np
from deap import base

from sim.errors import UserError
from sim.rng import stream
from sim.solve.pfar.answer import Answer, _answer
from sim.solve.pfar.paths import _index
from sim.solve.pfar.problem import Problem
from sim.solve.pfar.repair import _Arrays


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
    it, repair around it, refill; or reject one admitted flow and refill without it, which
    trades one flow for several smaller or shorter ones; kept if the objective rises). Stops
    after ``generations`` or ``time_limit_s`` wall seconds (checked between generations and
    between local-search chunks).

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
