"""``moesim solve`` from the command line, and placements feeding back into runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from sim.moe.run import run_training
from sim.runs import simulate
from sim.scenario.load import load_scenario
from sim.topology import load_topology
from tests.conftest import TRAINING, TWO_SERVERS, merged

TRAIN = merged(TRAINING, **TWO_SERVERS)


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(TRAIN))
    return path


def test_solve_placement_then_run_with_it(moesim, scenario, tmp_path):
    answer = tmp_path / "place.json"
    proc = moesim("solve", "placement", scenario, "--solver", "greedy", "--out", answer)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("solver greedy: feasible, objective ")
    assign = np.array(json.loads(answer.read_text())["assign"])
    assert assign.shape == (2, 16) and assign.min() >= 0 and assign.max() < 16
    # the scenario takes the file; the run reports the step before and after
    data = {**TRAIN, "placement": {"file": str(answer)}}
    placed = tmp_path / "placed.yaml"
    placed.write_text(yaml.safe_dump(data))
    sc = load_scenario(placed)
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    s = simulate(sc, cl, str(placed), reports=False).summary
    assert s["step_time_s"] == run_training(sc, cl, placement=assign).summary["step_time_s"]
    assert s["baseline_step_time_s"] == run_training(sc, cl).summary["step_time_s"]
    assert s["placement_speedup"] == pytest.approx(s["baseline_step_time_s"] / s["step_time_s"])
    assert s["placement"] == {"file": str(answer)}
    out = tmp_path / "run"
    proc = moesim("run", placed, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "placement speedup" in proc.stdout and "step time, default placement" in proc.stdout


def test_scenario_placement_solver_runs_before_the_step(scenario, tmp_path):
    data = {**TRAIN, "placement": {"solver": "greedy"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    s = simulate(load_scenario(path), load_topology("h100-leaf-spine", {"nodes": 2}),
                 str(path), reports=False).summary
    assert s["placement"]["solver"] == "greedy" and s["placement"]["objective"] > 0


@pytest.mark.parametrize(("args", "match"), [
    (["solve", "placement", "nosuch.yaml", "--out", "x.json"], "nosuch.yaml"),
    (["solve", "placement", "{scenario}"], "--out"),
    (["solve", "placement", "{scenario}", "--solver", "sat", "--out", "x.json"], "sat"),
])
def test_solve_bad_input_is_one_line(moesim, scenario, tmp_path, args, match):
    args = [a.replace("{scenario}", str(scenario)) for a in args]
    proc = moesim(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
    assert match in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_bad_placement_file_in_a_scenario(moesim, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"assign": [[0, 1]]}')
    data = {**TRAIN, "placement": {"file": str(bad)}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = moesim("run", path, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "placement: must be 2 MoE layers x 16 experts" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_generate_then_admit_from_the_cli(moesim, tmp_path):
    from sim.solve.pfar import Answer, Problem, check

    prob = tmp_path / "p.json"
    assert moesim("solve", "generate", "--nodes", "8", "--flows", "60", "--seed", "1",
                  "--out", prob).returncode == 0
    problem = Problem.from_json(prob)
    assert len(problem.nodes) == 8 and len(problem.flows) == 60
    objectives = {}
    for solver in ("ilp", "ga", "greedy"):
        out = tmp_path / f"{solver}.json"
        proc = moesim("solve", "admission", prob, "--solver", solver, "--time-limit", "20",
                      "--out", out)
        assert proc.returncode == 0, proc.stderr
        answer = Answer.from_json(out)
        objectives[solver] = json.loads(out.read_text())["objective"]
        assert check(problem, answer) == pytest.approx(objectives[solver])  # feasible, consistent
    assert "optimal" in moesim("solve", "admission", prob, "--out", tmp_path / "x.json").stdout
    assert objectives["ga"] <= objectives["ilp"] and objectives["greedy"] <= objectives["ilp"]
    highs = moesim("solve", "admission", prob, "--backend", "highs", "--out", tmp_path / "h.json")
    assert highs.returncode == 0, highs.stderr
    # one line on stdout: HiGHS's own banner is kept out of it
    assert highs.stdout.splitlines() == [highs.stdout.strip()]
    assert highs.stdout.startswith("solver ilp-highs: optimal, objective ")
    assert json.loads((tmp_path / "h.json").read_text())["objective"] == objectives["ilp"]


def test_bad_admission_problem_is_one_line(moesim, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": ["a"]}')
    proc = moesim("solve", "admission", bad, "--out", tmp_path / "x.json")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "flows" in proc.stderr and not (tmp_path / "x.json").exists()


def test_block_placement_is_the_simulators_default_layout(scenario):
    from sim.solve.apply import placement_problem
    from sim.solve.placement import block_placement, cost

    sc = load_scenario(scenario)
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    p = placement_problem(sc, cl)
    a = block_placement(p)
    assert a.solver == "layout" and a.status == "feasible"
    assert a.cost == cost(p, a.assign)
    # the same step as a run without any placement
    assert (run_training(sc, cl, placement=a.assign).summary["step_time_s"]
            == run_training(sc, cl).summary["step_time_s"])


def test_block_placement_needs_experts_divisible_by_gpus():
    from sim.errors import UserError
    from sim.solve.placement import block_placement
    from tests.test_placement import problem

    with pytest.raises(UserError, match="divisible"):
        block_placement(problem(experts=4, gpus=3, per_gpu=2))


def test_placement_rows_rerun_the_step_with_each_answer(scenario):
    from sim.runs.placement import placement_rows
    from sim.solve.apply import placement_problem
    from sim.solve.placement import block_placement, greedy

    sc = load_scenario(scenario)
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    p = placement_problem(sc, cl)
    answers = {"layout": block_placement(p), "greedy": greedy(p)}
    rows = placement_rows(sc, cl, answers)
    assert [r["placement"] for r in rows] == ["layout", "greedy"]
    layout, placed = rows
    assert layout["speedup"] == 1.0 and layout["bound_s"] is None
    assert layout["step_time_s"] == run_training(sc, cl).summary["step_time_s"]
    greedy_step = run_training(sc, cl, placement=answers["greedy"].assign).summary
    assert placed["step_time_s"] == greedy_step["step_time_s"]
    assert placed["speedup"] == pytest.approx(layout["step_time_s"] / placed["step_time_s"])
    for key in ("dispatch", "interlayer", "balance", "total"):
        assert placed[f"{key}_s"] == answers["greedy"].cost[key]
    assert placed["total_s"] <= layout["total_s"]  # the solver beats the blocks on its objective


def test_admission_problem_is_the_dispatch_between_servers(scenario):
    from sim.moe.run import step_inputs
    from sim.solve import pfar
    from sim.solve.apply import admission_problem

    sc = load_scenario(scenario)
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    prob, window = admission_problem(sc, cl, layer=1)
    # independent count: every routed slot of MoE layer 1 whose expert lives on another server
    inp = step_inputs(sc, cl)
    r = inp.routing[1]
    gpus = np.arange(cl.num_gpus)
    dest = inp.layout.expert_gpu(gpus, 1)
    node = cl.node_of
    cross = node[gpus][:, None] != node[dest]
    expected = float((r.slots * cross).sum()) * inp.shape.hidden * inp.dtype_bytes
    assert sum(f.demand for f in prob.flows) * window == pytest.approx(expected, rel=1e-12)
    names = {str(n) for n in cl.node_names}
    assert all(f.src in names and f.dst in names for f in prob.flows)
    # the default window: the busiest endpoint needs all of it at its own bottleneck rate
    cap = {(u, v): c for u, v, c in prob.links}
    need: dict = {}
    for f, paths in zip(prob.flows, prob.candidate_paths(), strict=True):
        rate = min(cap[a] for a in zip(paths[0], paths[0][1:], strict=False))
        for end in (("s", f.src), ("d", f.dst)):
            need[end] = need.get(end, 0.0) + f.demand / rate
    assert max(need.values()) == pytest.approx(1.0, rel=1e-9)
    # a window four times shorter must reject chunks; the answer stays feasible
    short, _ = admission_problem(sc, cl, layer=1, window_s=window / 4)
    ans = pfar.solve_ilp(short, time_limit_s=20)
    pfar.check(short, ans)
    assert 0 < ans.admitted < len(short.flows)


def test_solve_generate_from_scenario_and_its_errors(moesim, scenario, tmp_path):
    out = tmp_path / "a2a.json"
    proc = moesim("solve", "generate", "--scenario", scenario, "--window-us", "50", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "window 50 us" in proc.stdout
    from sim.solve.pfar import Problem

    prob = Problem.from_json(out)
    assert prob.flows and all(f.priority == 1 for f in prob.flows)
    for args, msg in ((["--scenario", scenario, "--nodes", "5"], "--nodes describes a random"),
                      (["--scenario", scenario, "--layer", "7"], "--layer: 7; the scenario has 2"),
                      (["--window-us", "5"], "need --scenario")):
        bad = tmp_path / "bad.json"
        proc = moesim("solve", "generate", *args, "--out", bad)
        assert proc.returncode == 2 and msg in proc.stderr and proc.stderr.count("\n") == 1
        assert not bad.exists()


def test_placement_problem_counts_the_slots_the_step_sends(scenario):
    """With a binding capacity the problem sees the kept (and padded) slots, not the routed
    pairs, so the solver's placement cannot look better than what the step runs."""
    from sim.moe.layout import Layout
    from sim.moe.plan import plan_step
    from sim.runs.placement import placement_rows
    from sim.solve.apply import placement_problem
    from sim.solve.placement import block_placement, greedy

    sc = load_scenario(scenario, ["moe.moe_expert_capacity_factor=1.0"])
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    p = placement_problem(sc, cl)
    lay = Layout.build(16, 16, sc.moe.num_experts, 1, "", 1, cl.gpus_per_node)
    routing = plan_step(sc, lay, cl.node_of)
    assert any(r.kept.sum() < r.routed.sum() for r in routing)  # the capacity binds
    np.testing.assert_array_equal(p.source_load, np.stack([r.slots for r in routing]))
    rows = placement_rows(sc, cl, {"layout": block_placement(p), "greedy": greedy(p)})
    assert rows[1]["total_s"] < rows[0]["total_s"]
    assert rows[1]["step_time_s"] <= rows[0]["step_time_s"]
