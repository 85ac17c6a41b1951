"""Solvers by name: expert placement and flow admission, each registered once as
``solve(problem, time_limit_s, seed, **options) -> answer`` (a ``PlacementAnswer`` or an
admission ``Answer``). The CLI's ``--solver`` and a scenario's ``placement: {solver: ...}`` look
them up here; an unknown name is a one-line error listing the registered ones."""

from __future__ import annotations

from sim.registry import Registry

#: name -> solve(PlacementProblem, time_limit_s, seed) -> PlacementAnswer
PLACEMENT_SOLVERS: Registry = Registry("placement solver")
#: name -> solve(pfar.Problem, time_limit_s, seed, backend) -> pfar.Answer
ADMISSION_SOLVERS: Registry = Registry("admission solver")


@PLACEMENT_SOLVERS.register("ilp")
def _placement_ilp(problem, time_limit_s: float | None = 60.0, seed: int = 0):
    """Exact: PuLP + CBC, proven optimal or feasible with its bound and gap."""
    from sim.solve.placement import solve_ilp

    return solve_ilp(problem, time_limit_s=time_limit_s)


@PLACEMENT_SOLVERS.register("ga")
def _placement_ga(problem, time_limit_s: float | None = 60.0, seed: int = 0):
    """Heuristic: a seeded memetic genetic algorithm (DEAP toolbox, numpy operators)."""
    from sim.solve.placement import solve_ga

    return solve_ga(problem, seed=seed, time_limit_s=time_limit_s)


@PLACEMENT_SOLVERS.register("greedy")
def _placement_greedy(problem, time_limit_s: float | None = None, seed: int = 0):
    """Heuristic: heaviest experts first onto the GPU that adds the least cost, then swap/move
    local search."""
    from sim.solve.placement import greedy

    return greedy(problem)


@ADMISSION_SOLVERS.register("ilp")
def _admission_ilp(problem, time_limit_s: float | None = 60.0, seed: int = 0,
                   backend: str = "cbc"):
    """Exact: the path-form ILP (PuLP with CBC or HiGHS); strict weights level by level."""
    from sim.solve.pfar import solve_ilp

    return solve_ilp(problem, time_limit_s=time_limit_s, backend=backend)


@ADMISSION_SOLVERS.register("ga")
def _admission_ga(problem, time_limit_s: float | None = 60.0, seed: int = 0,
                  backend: str = "cbc"):
    """Heuristic: a seeded memetic GA over path choices with repair and local search."""
    from sim.solve.pfar import solve_ga

    return solve_ga(problem, seed=seed, time_limit_s=time_limit_s)


@ADMISSION_SOLVERS.register("greedy")
def _admission_greedy(problem, time_limit_s: float | None = None, seed: int = 0,
                      backend: str = "cbc"):
    """Heuristic: flows by priority, each on its first candidate path that fits."""
    from sim.solve.pfar import greedy

    return greedy(problem)
