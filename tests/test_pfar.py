"""Priority flow admission and routing: exact ILP vs brute force, GA and greedy vs the ILP,
strict vs linear weights, file errors, time limits, and instances built from a cluster."""

import itertools
import json
import random
import sys

import numpy as np
import pytest

from sim.collectives.traffic import uniform
from sim.errors import UserError
from sim.solve import pfar
from sim.solve.pfar import Answer, Flow, Problem, check
from sim.topology import load_topology

TINY_SEEDS = range(6)


def brute_force(p: Problem) -> float:
    """Best objective over every assignment of each flow to one candidate path or rejection."""
    paths = p.candidate_paths()
    cap = {(u, v): c for u, v, c in p.links}
    w = p.weights()
    best = 0
    for choice in itertools.product(*[range(-1, len(ps)) for ps in paths]):
        load = dict.fromkeys(cap, 0.0)
        for f, c in enumerate(choice):
            if c >= 0:
                path = paths[f][c]
                for arc in zip(path, path[1:], strict=False):
                    load[arc] += p.flows[f].demand
        if all(load[a] <= cap[a] * (1 + 1e-9) for a in cap):
            best = max(best, sum(w[f] for f, c in enumerate(choice) if c >= 0))
    return float(best)


def tiny(seed: int, weighting: str = "linear") -> Problem:
    """Six flows, at most two candidate paths each, on five nodes and six 10-unit links;
    one to three flows must go."""
    return pfar.generate(5, 6, seed, k_paths=2, degree=2.4, load=0.5, capacities=(10.0,),
                         capacity_p=(1.0,), weighting=weighting, demand_sigma=0.8)


@pytest.mark.parametrize("weighting", ["linear", "strict"])
@pytest.mark.parametrize("seed", TINY_SEEDS)
def test_ilp_equals_brute_force_and_heuristics_never_beat_it(seed, weighting):
    p = tiny(seed, weighting)
    assert all(len(ps) <= 2 for ps in p.candidate_paths())
    exact = brute_force(p)
    ilp = pfar.solve_ilp(p)
    assert ilp.status == "optimal" and ilp.gap == 0.0
    assert check(p, ilp) == pytest.approx(exact) == ilp.objective
    assert 0 < ilp.admitted < len(p.flows)  # the instance is really congested
    for ans in (pfar.greedy(p), pfar.solve_ga(p, seed=seed, generations=60, population=20)):
        assert check(p, ans) <= exact
    assert pfar.solve_ga(p, seed=seed, generations=60, population=20).objective == exact


def test_highs_backend_matches_brute_force_or_says_how_to_install(monkeypatch):
    p = tiny(0)
    pytest.importorskip("highspy")
    ans = pfar.solve_ilp(p, backend="highs")
    assert ans.status == "optimal" and check(p, ans) == brute_force(p)
    monkeypatch.setitem(sys.modules, "highspy", None)  # as if not installed
    with pytest.raises(UserError, match="pip install highspy"):
        pfar.solve_ilp(p, backend="highs")
    with pytest.raises(UserError, match="allowed: cbc, highs"):
        pfar.solve_ilp(p, backend="gurobi")


def test_medium_instance_heuristics_below_proven_optimum():
    p = pfar.generate(8, 60, seed=4)
    ilp = pfar.solve_ilp(p, time_limit_s=20)
    assert ilp.status == "optimal"
    assert ilp.admitted < len(p.flows)
    greedy, ga = pfar.greedy(p), pfar.solve_ga(p, seed=1, generations=80)
    assert check(p, greedy) <= check(p, ga) <= check(p, ilp)
    assert ga.objective >= 0.97 * ilp.objective


def test_ga_same_seed_same_answer_and_no_global_random_state():
    p, q = pfar.generate(12, 150, seed=2), pfar.generate(6, 40, seed=3, weighting="strict")
    random.seed(1)
    np.random.seed(1)
    state, np_state = random.getstate(), np.random.get_state()
    a = pfar.solve_ga(p, seed=7, generations=15)
    assert random.getstate() == state  # neither global stream is read or reseeded
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state,
                                                     strict=True))
    random.seed(123)
    np.random.seed(5)
    other = pfar.solve_ga(q, seed=7, generations=15)  # another problem, same process
    b = pfar.solve_ga(p, seed=7, generations=15)
    assert a.path_index == b.path_index and a.objective == b.objective
    assert check(p, a) == check(p, b)
    check(q, other)


def conflict(weighting: str) -> Problem:
    """One priority-5 flow needing the whole a->b arc, against six priority-1 flows that fit
    together (9 of 10) but not beside it; a->c->b exists only for nobody (capacity 0)."""
    flows = [Flow("a", "b", 10.0, 5)] + [Flow("a", "b", 1.5, 1) for _ in range(6)]
    links = [("a", "b", 10.0), ("a", "c", 0.0), ("c", "b", 0.0)]
    return Problem(["a", "b", "c"], links, flows, weighting=weighting)


@pytest.mark.parametrize("weighting, high_admitted", [("strict", True), ("linear", False)])
def test_strict_weighting_prefers_one_high_priority_flow(weighting, high_admitted):
    p = conflict(weighting)
    for ans in (pfar.solve_ilp(p), pfar.solve_ga(p, seed=0, generations=30)):
        check(p, ans)
        assert (ans.path_index[0] >= 0) is high_admitted
        assert ans.admitted == (1 if high_admitted else 6)
    if weighting == "strict":
        assert pfar.solve_ilp(p).objective == 8**5  # W = 7 flows + 1


def test_strict_ilp_on_generated_instance_is_lexicographically_best():
    p = pfar.generate(6, 9, seed=11, k_paths=2, load=3.0, weighting="strict")
    ilp = pfar.solve_ilp(p)
    assert ilp.status == "optimal" and check(p, ilp) == brute_force(p)


def test_flow_without_path_is_rejected_not_an_error():
    p = Problem(["a", "b", "z"], [("a", "b", 5.0), ("b", "a", 5.0)],
                [Flow("a", "b", 1.0, 2), Flow("a", "z", 1.0, 5)])
    assert p.candidate_paths()[1] == []
    for ans in (pfar.solve_ilp(p), pfar.greedy(p), pfar.solve_ga(p, seed=0, generations=3)):
        assert ans.path_index == [0, -1] and ans.paths == [["a", "b"], []]
        assert check(p, ans) == 2


GOOD = {"nodes": ["a", "b"], "links": [["a", "b", 1.0]],
        "flows": [{"src": "a", "dst": "b", "demand": 1.0, "priority": 1}]}


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.pop("flows"), "missing field 'flows'"),
    (lambda d: d.update(extra=1), "unknown field 'extra'"),
    (lambda d: d["links"].append(["a", "x", 1.0]), "links[1]: unknown node 'x'"),
    (lambda d: d["links"].append(["b", "a"]), "links[1]: must be [src, dst, capacity]"),
    (lambda d: d["links"].__setitem__(0, ["a", "b", -1]), "links[0]: capacity -1"),
    (lambda d: d["flows"][0].update(dst="q"), "flows[0]: unknown node 'q'"),
    (lambda d: d["flows"][0].update(dst="a"), "flows[0]: src == dst"),
    (lambda d: d["flows"][0].update(demand=-2.0), "flows[0]: demand -2.0"),
    (lambda d: d["flows"][0].update(priority=0), "flows[0]: priority 0; must be an integer >= 1"),
    (lambda d: d["flows"][0].pop("demand"), "flows[0]: must be an object with src, dst, demand"),
    (lambda d: d.update(weighting="log"), "weighting: 'log'; allowed: linear, strict"),
    (lambda d: d.update(k_paths=0), "k_paths: 0"),
])
def test_bad_problem_file_is_a_one_line_user_error(tmp_path, edit, words):
    d = json.loads(json.dumps(GOOD))
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError) as e:
        Problem.from_json(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and words in msg and "\n" not in msg


def test_unreadable_or_non_json_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing.json: no such file"):
        Problem.from_json(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{nodes: oops")
    with pytest.raises(UserError, match="x.json: line 1, column 2: invalid JSON"):
        Problem.from_json(tmp_path / "x.json")


def test_json_round_trips():
    p = pfar.generate(6, 20, seed=1, weighting="strict")
    assert Problem.from_json(p.to_json()) == p
    a = pfar.solve_ilp(p)
    assert Answer.from_json(a.to_json()) == a
    check(p, Answer.from_json(a.to_json()))


def test_check_catches_overload_and_false_objective():
    p = conflict("linear")
    a = pfar.solve_ilp(p)
    bad = Answer(**{**a.__dict__, "path_index": [0] * 7, "paths": [["a", "b"]] * 7})
    with pytest.raises(ValueError, match="over|capacity"):
        check(p, bad)
    with pytest.raises(ValueError, match="objective"):
        check(p, Answer(**{**a.__dict__, "objective": a.objective + 1}))


@pytest.mark.parametrize("backend", ["cbc", "highs"])
def test_time_limited_ilp_status_agrees_with_its_gap(backend):
    if backend == "highs":
        pytest.importorskip("highspy")
    p = pfar.generate(30, 1500, seed=5)
    greedy = pfar.greedy(p)
    ans = pfar.solve_ilp(p, time_limit_s=2.0, backend=backend)
    assert check(p, ans) >= greedy.objective
    assert ans.status in ("optimal", "feasible")
    if ans.status == "optimal":
        assert ans.gap == 0.0 and ans.bound == ans.objective
    else:  # no proof: either no bound, or a bound whose integer part is above the objective
        assert ans.gap is None or (ans.gap > 0 and np.floor(ans.bound) > ans.objective)
        assert ans.wall_s >= 1.9
    assert ans.wall_s < 10.0
    tiny_limit = pfar.solve_ilp(p, time_limit_s=0.01, backend=backend)  # no time to solve at all
    assert tiny_limit.status == "feasible" and tiny_limit.gap is None
    assert check(p, tiny_limit) >= greedy.objective


def test_generated_instances_are_congested_and_reproducible():
    p = pfar.generate(20, 400, seed=9)
    assert p == pfar.generate(20, 400, seed=9)
    assert all(f.src != f.dst for f in p.flows)
    assert {f.priority for f in p.flows} == {1, 2, 3, 4, 5}
    g = pfar.greedy(p)
    assert 0.3 < g.admitted / len(p.flows) < 0.95


def test_from_cluster_all_to_all():
    cluster = load_topology("h100-leaf-spine", {"nodes": 2})
    m = uniform(16, 16e9)  # 1 GB from every rank to every rank
    ample = pfar.from_cluster(cluster, m, duration_s=1.0)
    assert len(ample.flows) == 2 * 8 * 8
    node = {cluster.node_names[r]: cluster.node_of[r] for r in range(16)}
    assert all(node[f.src] != node[f.dst] for f in ample.flows)
    kinds = dict(cluster.graph.nodes(data="kind"))
    for f, paths in zip(ample.flows, ample.candidate_paths(), strict=True):
        assert paths, f
        for path in paths:
            assert path[0] == f.src and path[-1] == f.dst
            assert all(kinds[n] != "gpu" for n in path[1:-1])
    a = pfar.solve_ilp(ample)
    assert check(ample, a) and a.admitted == len(ample.flows) and a.status == "optimal"
    tight = pfar.from_cluster(cluster, m, duration_s=0.1, priority_of=lambda s, d: 1 + s % 2)
    t = pfar.solve_ilp(tight, time_limit_s=20)
    check(tight, t)
    assert 0 < t.admitted < len(tight.flows)
    with pytest.raises(UserError, match="matrix_bytes has shape"):
        pfar.from_cluster(cluster, m[:4, :4], 1.0)
