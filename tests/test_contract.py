"""One contract for every plug-in: each registered router and each registered solver (placement
and flow admission) passes the same checks. A new plug-in is covered by registering it."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from sim.errors import UserError
from sim.moe.capacity import apply_capacity
from sim.routing import ROUTERS, RouterContext, route
from sim.solve import pfar
from sim.solve.placement import (
    PlacementAnswer,
    PlacementProblem,
    brute_force,
    check,
)
from sim.solve.registry import ADMISSION_SOLVERS, PLACEMENT_SOLVERS

T, E = 256, 16
EXPERT_GPU = np.arange(E) // 2      # 2 experts per GPU, 8 GPUs
GPU_NODE = np.arange(8) // 4        # 4 GPUs per server, 2 servers


def _context(seed: int = 1, **params) -> RouterContext:
    rng = np.random.default_rng(seed)
    return RouterContext(topk=2, rng=rng, token_ids=np.arange(T) * 7919 % 32000,
                         expert_gpu=EXPERT_GPU, gpu_node=GPU_NODE,
                         token_gpu=np.arange(T) % 8, params=params)


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(T, E)) + np.linspace(1.0, 0.0, E)


def _arrays(a) -> tuple:
    return tuple(np.asarray(x) for x in (a.token, a.expert, a.weight, a.score, a.choice))


@pytest.mark.parametrize("name", ROUTERS.names())
def test_router_contract(name):
    a = route(name, _logits(), _context())
    token, expert, weight, score, choice = _arrays(a)
    assert (a.num_tokens, a.num_experts) == (T, E)
    assert len(token) == len(expert) == len(weight) == len(score) == len(choice) > 0
    assert token.min() >= 0 and token.max() < T and expert.min() >= 0 and expert.max() < E
    pairs = set(zip(token.tolist(), expert.tolist(), strict=True))
    assert len(pairs) == len(token)  # no (token, expert) pair twice
    assert np.isfinite(weight).all() and (weight >= 0).all() and np.isfinite(score).all()
    for t in np.unique(token):  # a token's rows rank its choices 0, 1, ...
        assert sorted(choice[token == t].tolist()) == list(range(int((token == t).sum())))
    # same inputs, same seed: the same assignment
    again = route(name, _logits(), _context())
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(again), strict=True))
    # every row is kept or dropped exactly once under capacity, none above it
    kept = apply_capacity(a, 8, "probs", "megatron")
    assert int(kept.load.sum()) + kept.dropped == len(token) and kept.load.max() <= 8
    with pytest.raises(UserError, match=name):
        route(name, _logits(), _context(no_such_parameter=1))


def _placement_problem() -> PlacementProblem:
    rng = np.random.default_rng(3)
    layers, experts, gpus = 2, 4, 4
    return PlacementProblem(
        layers=layers, experts=experts, gpus=gpus, gpu_node=[0, 0, 1, 1],
        load=rng.integers(1, 100, (layers, experts)).astype(float),
        coactivation=rng.integers(0, 50, (layers - 1, experts, experts)).astype(float),
        source_load=rng.integers(0, 30, (layers, gpus, experts)).astype(float),
        expert_bytes=2.0, gpu_memory_bytes=6.0, max_experts_per_gpu=2, bytes_per_token=2.0,
        inter_node_cost=1.0, intra_node_cost=0.25, balance_weight=0.5)


def test_the_scenario_accepts_exactly_the_registered_placement_solvers():
    from sim.scenario.training import Placement

    literal = typing.get_args(Placement.model_fields["solver"].annotation)[0]
    assert set(typing.get_args(literal)) == set(PLACEMENT_SOLVERS.names())


@pytest.mark.parametrize("name", PLACEMENT_SOLVERS.names())
def test_placement_solver_contract(name):
    p = _placement_problem()
    solve = PLACEMENT_SOLVERS.get(name)
    a = solve(p, 20.0, 0)
    assert a.solver == name and a.status in ("optimal", "feasible")
    cost = check(p, a)  # feasible, and its reported cost is its cost
    optimum = brute_force(p).cost["total"]
    assert cost["total"] >= optimum * (1 - 1e-9)
    if a.status == "optimal":
        assert cost["total"] == pytest.approx(optimum, rel=1e-9)
    b = solve(p, 20.0, 0)
    assert np.array_equal(a.assign, b.assign)  # same seed, same answer
    back = PlacementAnswer.from_json(a.to_json())
    assert np.array_equal(back.assign, a.assign) and back.cost == a.cost


@pytest.mark.parametrize("name", ADMISSION_SOLVERS.names())
def test_admission_solver_contract(name):
    p = pfar.generate(8, 40, seed=2)
    solve = ADMISSION_SOLVERS.get(name)
    a = solve(p, 20.0, 0)
    assert a.solver.startswith(name) and a.status in pfar.STATUSES
    objective = pfar.check(p, a)  # feasible paths, capacities kept, objective as reported
    optimum = pfar.solve_ilp(p).objective
    assert objective <= optimum * (1 + 1e-9)
    assert 0 < a.admitted <= len(p.flows)
    b = solve(p, 20.0, 0)
    assert b.path_index == a.path_index  # same seed, same answer
    assert pfar.Answer.from_json(a.to_json()).path_index == a.path_index


@pytest.mark.parametrize("registry", [PLACEMENT_SOLVERS, ADMISSION_SOLVERS])
def test_an_unknown_solver_lists_the_registered_ones(registry):
    with pytest.raises(UserError, match=f"unknown {registry.kind} 'nope'; available: "
                                        f"{', '.join(registry.names())}"):
        registry.get("nope")
