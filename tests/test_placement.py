"""Expert placement (sim.solve.placement): cost, exact and heuristic solvers, JSON, scenarios."""

import functools
import json
import random

import numpy as np
import pytest
import yaml
from deap import creator

from sim.errors import UserError
from sim.moe.layout import Layout
from sim.moe.plan import plan_step
from sim.scenario.load import load_scenario
from sim.solve.placement import (
    PlacementAnswer,
    PlacementProblem,
    brute_force,
    check,
    cost,
    from_scenario,
    greedy,
    solve_ga,
    solve_ilp,
)
from sim.topology import load_topology


def problem(seed=0, layers=2, experts=4, gpus=4, per_gpu=2, slots=3, balance=0.5,
            density=0.5, **changes) -> PlacementProblem:
    """A random instance on two servers (first half of the GPUs on server 0)."""
    rng = np.random.default_rng(seed)
    co = rng.integers(0, 50, (layers - 1, experts, experts)) * (
        rng.random((layers - 1, experts, experts)) < density)
    fields = dict(
        layers=layers, experts=experts, gpus=gpus,
        gpu_node=[g * 2 // gpus for g in range(gpus)],
        load=rng.integers(1, 100, (layers, experts)).astype(float),
        coactivation=co.astype(float),
        source_load=rng.integers(0, 30, (layers, gpus, experts)).astype(float),
        expert_bytes=2.0, gpu_memory_bytes=2.0 * slots, max_experts_per_gpu=per_gpu,
        bytes_per_token=2.0, inter_node_cost=1.0, intra_node_cost=0.25, balance_weight=balance)
    return PlacementProblem(**{**fields, **changes})


#: Tiny instances: (seed, gpus, max experts per GPU per layer, memory slots, balance weight).
TINY = [(0, 4, 2, 3, 0.5), (1, 3, 3, 4, 0.5), (2, 4, 2, 2, 3.0), (3, 2, 2, 4, 0.0),
        (4, 4, 3, 2, 0.5), (5, 3, 2, 3, 3.0)]


@functools.cache
def solved(case):
    seed, gpus, per_gpu, slots, balance = case
    p = problem(seed, gpus=gpus, per_gpu=per_gpu, slots=slots, balance=balance)
    return p, brute_force(p), solve_ilp(p)


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


# ------------------------------------------------------------------------------------ cost
def hand_problem(**changes):
    """2 layers x 2 experts on 3 GPUs; GPUs 0, 1 on server 0, GPU 2 on server 1."""
    fields = dict(
        layers=2, experts=2, gpus=3, gpu_node=[0, 0, 1],
        load=[[10, 20], [30, 5]], coactivation=[[[3, 7], [0, 20]]],
        source_load=[[[4, 0], [6, 5], [0, 15]],     # layer 0: [source GPU][expert]
                     [[10, 0], [10, 0], [10, 5]]],  # layer 1
        expert_bytes=1.0, gpu_memory_bytes=2.0, max_experts_per_gpu=1, bytes_per_token=2.0,
        inter_node_cost=4.0, intra_node_cost=1.0, balance_weight=0.5)
    return PlacementProblem(**{**fields, **changes})


def test_cost_terms_match_hand_arithmetic():
    p = hand_problem()
    c = cost(p, [[0, 2], [1, 2]])
    # dispatch, bytes_per_token 2: layer 0: e0 on GPU 0 gets 6 tokens from GPU 1 (intra 1) = 6;
    # e1 on GPU 2 gets 5 from GPU 1 (inter 4) = 20. Layer 1: e0 on GPU 1 gets 10 from GPU 0
    # (intra) + 10 from GPU 2 (inter) = 50; e1 on GPU 2 only from GPU 2 = 0. 2 * 76 = 152.
    assert c["dispatch"] == pytest.approx(152.0)
    # interlayer: a0 (GPU 0) -> b0 (GPU 1): 3 * 1; a0 -> b1 (GPU 2): 7 * 4; a1 (GPU 2) -> b1
    # (GPU 2): 20 * 0. 2 * 31 = 62.
    assert c["interlayer"] == pytest.approx(62.0)
    # balance: busiest GPU per layer: 20 (layer 0), 30 (layer 1); 0.5 * 50 = 25.
    assert c["balance"] == pytest.approx(25.0)
    assert c["total"] == pytest.approx(152 + 62 + 25)
    # no source_load: each expert's tokens come evenly from the 3 GPUs; the summed cost per byte
    # from all sources is 5 to GPU 0 or 1 and 8 to GPU 2: 2 * (10*5 + 20*8 + 30*5 + 5*8) / 3.
    even = cost(hand_problem(source_load=None), [[0, 2], [1, 2]])
    assert even["dispatch"] == pytest.approx(800 / 3)


# ------------------------------------------------------------------------------------ solvers
@pytest.mark.parametrize("case", TINY)
def test_ilp_proves_the_brute_force_optimum(case):
    p, bf, ilp = solved(case)
    assert bf.status == ilp.status == "optimal"
    assert close(ilp.cost["total"], bf.cost["total"])
    assert ilp.bound == ilp.cost["total"] and ilp.gap == 0.0
    # CBC's own objective (constant added back, scale undone) is the cost function's total
    assert close(ilp.info["cbc_objective"], ilp.cost["total"])
    check(p, ilp)


@pytest.mark.parametrize("case", TINY)
def test_ga_and_greedy_are_feasible_and_the_ga_reaches_the_optimum(case):
    p, bf, ilp = solved(case)
    g, ga = greedy(p), solve_ga(p, seed=0)
    for answer in (g, ga):
        check(p, answer)
        assert answer.cost["total"] >= ilp.cost["total"] - 1e-9 * ilp.cost["total"]
    assert ga.cost["total"] <= g.cost["total"]
    assert close(ga.cost["total"], bf.cost["total"])


def test_ilp_stopped_by_its_time_limit_is_only_feasible_with_a_bound():
    p = problem(1, layers=3, experts=16, gpus=8, per_gpu=3, slots=7, density=0.3)
    a = solve_ilp(p, time_limit_s=1)
    assert a.info["cbc_result"] == "Stopped on time limit"
    assert a.status == "feasible"
    assert a.bound is not None and a.bound < a.cost["total"] and 0 < a.gap < 1
    check(p, a)
    ga = solve_ga(p, seed=0, generations=30)
    b = solve_ilp(p, time_limit_s=1, warm_start=ga.assign)  # never worse than its start
    assert b.cost["total"] <= ga.cost["total"] * (1 + 1e-12)
    check(p, b)


def test_ilp_without_warm_start_and_with_a_bad_one():
    p, bf, _ = solved(TINY[1])
    assert close(solve_ilp(p, warm_start=False).cost["total"], bf.cost["total"])
    with pytest.raises(UserError, match="warm_start: infeasible"):
        solve_ilp(p, warm_start=np.zeros((p.layers, p.experts), dtype=int))


def test_strong_coactivation_makes_the_ilp_colocate_the_pair():
    # expert 1 of layer 0 only gets tokens from GPU 0, expert 2 of layer 1 only from GPU 3
    # (another server); one expert per layer per GPU. Without coactivation they stay apart.
    source = np.ones((2, 4, 4))
    source[0, :, 1] = [10, 0, 0, 0]
    source[1, :, 2] = [0, 0, 0, 10]
    base = dict(layers=2, experts=4, gpus=4, gpu_node=[0, 0, 1, 1], load=source.sum(axis=1),
                source_load=source, expert_bytes=1.0, gpu_memory_bytes=8.0,
                max_experts_per_gpu=1, bytes_per_token=1.0, inter_node_cost=4.0,
                intra_node_cost=1.0, balance_weight=0.0)
    apart = solve_ilp(PlacementProblem(coactivation=np.zeros((1, 4, 4)), **base)).assign
    assert (apart[0, 1], apart[1, 2]) == (0, 3)
    co = np.zeros((1, 4, 4))
    co[0, 1, 2] = 1000.0
    together = solve_ilp(PlacementProblem(coactivation=co, **base))
    assert together.status == "optimal"
    assert together.assign[0, 1] == together.assign[1, 2]


def test_ga_same_seed_same_answer_whatever_the_global_random_state():
    # an instance and a budget small enough that the answer depends on every draw
    p = problem(7, layers=3, experts=16, gpus=8, per_gpu=3, slots=7, density=0.3)
    answers = []
    for global_seed in (123, 456):
        random.seed(global_seed)
        np.random.seed(global_seed)  # noqa: NPY002 (the legacy global state must not matter)
        state, np_state = random.getstate(), np.random.get_state()
        answers.append(solve_ga(p, seed=5, generations=3))
        assert random.getstate() == state  # neither global state is touched
        assert np.array_equal(np.random.get_state()[1], np_state[1])
    a, b = answers
    assert np.array_equal(a.assign, b.assign) and a.cost == b.cost
    assert a.info["generations"] == 3
    others = [solve_ga(p, seed=s, generations=3).cost["total"] for s in (6, 7)]
    assert len({a.cost["total"], *others}) == 3  # the GA's seed does matter


def test_two_ga_calls_in_one_process_leave_deap_creator_alone():
    before = set(vars(creator))
    small = solve_ga(problem(0), seed=1, generations=20)
    other = problem(3, layers=3, experts=5, gpus=3, per_gpu=2, slots=5)
    big = solve_ga(other, seed=1, generations=20)
    assert set(vars(creator)) == before
    check(problem(0), small)
    check(other, big)


def test_brute_force_refuses_big_problems():
    with pytest.raises(UserError, match="brute_force: .* use solve_ilp"):
        brute_force(problem(0, layers=2, experts=8, gpus=4, per_gpu=2, slots=4))


# ------------------------------------------------------------------------------------ errors
def test_too_many_experts_per_gpu_is_infeasible():
    with pytest.raises(UserError, match=r"max_experts_per_gpu: infeasible: 5 experts .* 2 GPUs"):
        problem(0, experts=5, gpus=2, per_gpu=2, slots=8)


def test_too_little_memory_is_infeasible():
    with pytest.raises(UserError, match=r"gpu_memory_bytes: infeasible: .*3 experts per GPU, "
                                        r"8 needed"):
        problem(0, experts=4, gpus=2, per_gpu=4, slots=3)


def good_json():
    return json.loads(hand_problem().to_json())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(load=[[1, 2]]), r"load: must have shape \(layers, experts\)"),
    (lambda d: d.update(lod=1), "lod: unknown field"),
    (lambda d: d.pop("gpus"), "gpus: required field is missing"),
    (lambda d: d.update(coactivation=[[[1, -1], [0, 0]]]), "coactivation: must hold finite"),
    (lambda d: d.update(gpu_node=[0, 0]), r"gpu_node: must have shape \(gpus,\)"),
    (lambda d: d.update(layers="two"), "layers: must be an integer >= 1"),
    (lambda d: d.update(inter_node_cost=0.5), "inter_node_cost: must be a number >= 1.0"),
])
def test_bad_problem_file_names_the_file_and_field(tmp_path, edit, message):
    data = good_json()
    edit(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"^{path}: {message}"):
        PlacementProblem.load_file(path)


def test_not_json_is_a_user_error(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{layers: 2")
    with pytest.raises(UserError, match=f"^{path}: line 1, column 2: invalid JSON"):
        PlacementProblem.load_file(path)
    with pytest.raises(UserError, match="no such file"):
        PlacementProblem.load_file(tmp_path / "missing.json")


def test_problem_and_answer_round_trip_through_json(tmp_path):
    p = problem(2)
    p.save(tmp_path / "p.json")
    q = PlacementProblem.load_file(tmp_path / "p.json")
    for name in ("load", "coactivation", "source_load"):
        assert np.array_equal(getattr(p, name), getattr(q, name))
    assert q.gpu_node == p.gpu_node and q.balance_weight == p.balance_weight
    a = greedy(q)
    a.save(tmp_path / "a.json")
    b = PlacementAnswer.load_file(tmp_path / "a.json")
    assert np.array_equal(a.assign, b.assign) and b.cost == a.cost and b.solver == "greedy"
    assert check(q, b) == a.cost
    bad = json.loads(a.to_json())
    bad["status"] = "best"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="bad.json: status: must be optimal or feasible"):
        PlacementAnswer.load_file(tmp_path / "bad.json")


def test_check_rejects_an_infeasible_or_mispriced_answer():
    p, _, ilp = solved(TINY[0])
    crowded = PlacementAnswer(np.zeros_like(ilp.assign), ilp.cost, "feasible", None, None, 0.0,
                              "x")
    with pytest.raises(UserError, match="answer: assign: infeasible: GPU 0 holds 4 experts"):
        check(p, crowded)
    wrong = PlacementAnswer(ilp.assign, {**ilp.cost, "balance": 0.0}, "optimal", None, None,
                            0.0, "x")
    with pytest.raises(UserError, match="answer: cost.balance: stored 0.0"):
        check(p, wrong)


# ------------------------------------------------------------------------------------ scenario
def test_from_scenario_matches_the_routing_plan(tmp_path):
    data = {
        "name": "place", "seed": 3, "topology": {"name": "h100-leaf-spine", "nodes": 2},
        "model": {"hidden_size": 256, "ffn_hidden_size": 512, "num_layers": 3,
                  "num_attention_heads": 4, "seq_length": 256},
        "moe": {"num_experts": 16, "moe_router_topk": 2},
        "parallel": {"expert_model_parallel_size": 16},
        "gating": {"popularity_skew": 0.8, "affinity": 2.0},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    sc = load_scenario(path)
    cl = load_topology(sc.topology.name, sc.topology.overrides)
    p = from_scenario(sc, cl)
    assert (p.layers, p.experts, p.gpus, p.max_experts_per_gpu) == (3, 16, 16, 1)
    assert p.gpu_node == [0] * 8 + [1] * 8
    assert p.source_load.shape == (3, 16, 16) and p.coactivation.shape == (2, 16, 16)
    routed = plan_step(sc, Layout.build(16, 16, 16), cl.node_of)
    for li, r in enumerate(routed):
        assert np.array_equal(p.source_load[li], r.routed)
    tokens = 256 * 16
    assert np.all(p.load.sum(axis=1) == 2 * tokens)  # top-2 pairs of every token
    assert np.all(p.coactivation.sum(axis=(1, 2)) == tokens)  # each token's top-1 once
    assert p.expert_bytes == 2 * 256 * 512 * 2 and p.bytes_per_token == 256 * 2
    assert p.intra_node_cost == pytest.approx(1 / 450e9)
    assert p.inter_node_cost == pytest.approx(1 / 50e9)
    assert p.gpu_memory_bytes == 80 * 2**30
    check(p, greedy(p))
