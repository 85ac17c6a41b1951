"""The heuristic solver: a seeded DEAP genetic algorithm with repair and Lamarckian climbing."""

from __future__ import annotations

import time

import numpy as np
from deap import base, tools

from sim.errors import UserError
from sim.rng import stream
from sim.solve.placement.answer import PlacementAnswer, _answer
from sim.solve.placement.cost import _counts, _Tables, _tables, _terms
from sim.solve.placement.greedy import _construct, _improve
from sim.solve.placement.problem import PlacementProblem


class _Fitness(base.Fitness):
    weights = (-1.0,)  # minimise the total


class _Individual(list):
    """Genome: the GPU of every (layer, expert), layer-major (L * E genes)."""

    def __init__(self, genes=()):
        super().__init__(genes)
        self.fitness = _Fitness()


def solve_ga(problem: PlacementProblem, seed: int, time_limit_s: float | None = None,
             generations: int = 200, population: int = 60, cx_prob: float = 0.7,
             mut_prob: float = 0.5, elite: int = 2, polish: int = 2) -> PlacementAnswer:
    """Memetic GA over assignments (genome: GPU of each expert, layer-major), on a DEAP toolbox.

    Tournament selection (3), two-point crossover, swap/move mutation, a repair that enforces
    the per-GPU count and memory limits (every individual is feasible), ``elite`` elites, the
    ``polish`` best new children of each generation improved by the greedy's local search
    (Lamarckian), duplicates replaced by random newcomers. Generation 0 is the :func:`greedy`
    answer plus random individuals. Stops after ``generations`` or ``time_limit_s`` seconds.

    Randomness: one numpy Generator, ``sim.rng.stream(seed, "placement_ga")``, handed to our
    own operators (DEAP's draw from Python's global ``random``, so they are not used), so the
    same seed gives the same answer whatever the global random state (unless ``time_limit_s``
    cuts the generations short). No ``deap.creator`` classes are created: two calls in one
    process do not interfere.
    """
    for name, v, lo in (("generations", generations, 0), ("population", population, 2),
                        ("elite", elite, 1), ("polish", polish, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise UserError(f"solve_ga: {name}: must be an integer >= {lo} (got {v!r})")
    if elite >= population:
        raise UserError(f"solve_ga: elite: must be below population = {population} (got {elite})")
    t0 = time.perf_counter()
    a, info = _evolve(problem, t0, time_limit_s, generations, population, cx_prob, mut_prob,
                      elite, polish, stream(int(seed), "placement_ga"))
    return _answer(problem, a, "ga", t0, info=info)


def _evolve(p, t0, time_limit_s, generations, population, cx_prob, mut_prob, elite, polish,
            rng):
    L, E, P = p.layers, p.experts, p.gpus
    t = _tables(p)
    start = _improve(p, t, _construct(p, t))
    fallback = _counts(p, start)
    tb = base.Toolbox()
    tb.register("mate", _two_point, rng=rng)
    tb.register("mutate", _mutate, layers=L, experts=E, gpus=P, rng=rng)
    tb.register("select", _tournament, size=3, rng=rng)

    def settle(inds):  # repair, then evaluate the whole batch at once
        for ind in inds:
            ind[:] = _repair(p, t, np.asarray(ind).reshape(L, E), fallback,
                             rng).ravel().tolist()
        if inds:
            totals = _terms(p, t, np.asarray(inds, dtype=np.int64).reshape(-1, L, E))["total"]
            for ind, v in zip(inds, totals, strict=True):
                ind.fitness.values = (float(v),)

    def climb(inds):  # Lamarckian: the best ``polish`` of them climb to a local optimum
        for ind in sorted(inds, key=lambda i: i.fitness.values[0])[:polish]:
            ind[:] = _improve(p, t, np.asarray(ind).reshape(L, E)).ravel().tolist()
            settle([ind])

    def randoms(n):
        return [_Individual(row) for row in rng.integers(P, size=(n, L * E)).tolist()]

    pop = [_Individual(start.ravel().tolist())] + randoms(population - 1)
    settle(pop)
    hof = tools.HallOfFame(elite)
    hof.update(pop)
    done = 0
    for _ in range(generations):
        if time_limit_s is not None and time.perf_counter() - t0 >= time_limit_s:
            break
        off = [tb.clone(ind) for ind in tb.select(pop, population - elite)]
        for c1, c2 in zip(off[::2], off[1::2], strict=False):
            if L * E > 1 and rng.random() < cx_prob:
                tb.mate(c1, c2)
                del c1.fitness.values, c2.fitness.values
        for ind in off:
            if rng.random() < mut_prob:
                tb.mutate(ind)
                del ind.fitness.values
        new = [ind for ind in off if not ind.fitness.valid]
        settle(new)
        climb(new)
        seen = {tuple(ind) for ind in hof}
        for i, ind in enumerate(off):  # a duplicate makes room for a random newcomer
            if tuple(ind) in seen:
                off[i] = randoms(1)[0]
                settle([off[i]])
            seen.add(tuple(off[i]))
        pop = off + [tb.clone(ind) for ind in hof]
        hof.update(pop)
        done += 1
    best = _improve(p, t, np.asarray(hof[0], dtype=np.int64).reshape(L, E))
    return best, {"generations": done, "population": population,
                  "greedy_total": float(_terms(p, t, start[None])["total"][0])}


def _tournament(individuals, k: int, size: int, rng: np.random.Generator) -> list:
    """``k`` winners (best fitness) of tournaments among ``size`` individuals drawn uniformly
    with replacement."""
    drawn = rng.integers(len(individuals), size=(k, size))
    return [max((individuals[i] for i in row), key=lambda ind: ind.fitness) for row in drawn]


def _two_point(c1, c2, rng: np.random.Generator):
    """Swap the genes between two cut points drawn uniformly (DEAP's two-point crossover)."""
    n = min(len(c1), len(c2))
    a, b = sorted(int(x) for x in rng.choice(np.arange(1, n + 1), 2, replace=n < 2))
    c1[a:b], c2[a:b] = c2[a:b], c1[a:b]
    return c1, c2


def _mutate(ind, layers: int, experts: int, gpus: int, rng: np.random.Generator):
    """1 + Geometric(1/2) changes: swap two experts of a layer (70%) or move one to a random
    GPU."""
    n = 1
    while rng.random() < 0.5:
        n += 1
    for _ in range(n):
        base_ = int(rng.integers(layers)) * experts
        if experts > 1 and rng.random() < 0.7:
            i, j = (int(x) for x in rng.choice(experts, 2, replace=False))
            ind[base_ + i], ind[base_ + j] = ind[base_ + j], ind[base_ + i]
        else:
            ind[base_ + int(rng.integers(experts))] = int(rng.integers(gpus))
    return (ind,)


def _repair(p: PlacementProblem, t: _Tables, a: np.ndarray, fallback: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """A feasible assignment close to ``a``: evict the lightest experts from GPUs over the
    per-layer count, then from GPUs over memory, and put each (heaviest first) on a GPU with
    room: the one of least dispatch cost or (half the time, for diversity) a random one. If that
    gets stuck, keep as many experts in place as the per-(layer, GPU) counts ``fallback`` (a
    feasible count matrix) allow and fill the rest."""
    a = a.copy()
    K, M = p.max_experts_per_gpu, p.memory_slots
    cnt = _counts(p, a)
    if cnt.max() <= K and cnt.sum(axis=0).max() <= M:
        return a
    evicted = []
    for li, g in np.argwhere(cnt > K):
        here = np.flatnonzero(a[li] == g)
        for e in here[np.argsort(p.load[li, here], kind="stable")][:cnt[li, g] - K]:
            evicted.append((li, e))
            cnt[li, g] -= 1
            a[li, e] = -1
    tot = cnt.sum(axis=0)
    for g in np.flatnonzero(tot > M):
        here = np.argwhere(a == g)
        order = np.argsort(p.load[here[:, 0], here[:, 1]], kind="stable")
        for li, e in here[order][:tot[g] - M]:
            evicted.append((li, e))
            cnt[li, g] -= 1
            tot[g] -= 1
            a[li, e] = -1
    evicted.sort(key=lambda le: -p.load[le])
    for li, e in evicted:
        ok = (cnt[li] < K) & (tot < M)
        if not ok.any():
            return _refill(p, a, fallback)
        if rng.random() < 0.5:
            g = int(np.argmin(np.where(ok, t.dispatch[li, e], np.inf)))
        else:
            g = int(rng.choice(np.flatnonzero(ok)))
        a[li, e] = g
        cnt[li, g] += 1
        tot[g] += 1
    return a


def _refill(p: PlacementProblem, a: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per layer, exactly ``counts[l, g]`` experts on GPU g, keeping those of ``a`` in place
    (heaviest first) where the count allows."""
    out = np.full_like(a, -1)
    for li in range(p.layers):
        left = counts[li].copy()
        for e in np.argsort(-p.load[li], kind="stable"):
            g = a[li, e]
            if g >= 0 and left[g] > 0:
                out[li, e] = g
                left[g] -= 1
        free = np.repeat(np.arange(p.gpus), left)
        out[li, out[li] < 0] = free
    return out
