"""``moesim solve`` from the command line, and placements feeding back into runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from sim.moe.run import run_training
from sim.scenario.load import load_scenario
from sim.solve.apply import run_with_placement
from sim.topology import load_topology
from tests.test_cli_run import moesim
from tests.test_moe_step import BASE

TRAIN = {**BASE, "topology": {"name": "h100-leaf-spine", "nodes": 2},
         "moe": {**BASE["moe"], "moe_router_topk": 1},
         "parallel": {"expert_model_parallel_size": 16},
         "gating": {"popularity_skew": 1.0, "affinity": 2.0}}


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(TRAIN))
    return path


def test_solve_placement_then_run_with_it(scenario, tmp_path):
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
    s = run_with_placement(sc, cl, str(placed)).summary
    assert s["step_time_s"] == run_training(sc, cl, placement=assign).summary["step_time_s"]
    assert s["baseline_step_time_s"] == run_training(sc, cl).summary["step_time_s"]
    assert s["placement_speedup"] == pytest.approx(s["baseline_step_time_s"] / s["step_time_s"])
    assert s["placement"] == {"file": str(answer)}
    out = tmp_path / "run"
    proc = moesim("run", placed, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "vs the default placement" in proc.stdout


def test_scenario_placement_solver_runs_before_the_step(scenario, tmp_path):
    data = {**TRAIN, "placement": {"solver": "greedy"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    s = run_with_placement(load_scenario(path), load_topology("h100-leaf-spine", {"nodes": 2}),
                           str(path)).summary
    assert s["placement"]["solver"] == "greedy" and s["placement"]["objective"] > 0


@pytest.mark.parametrize(("args", "match"), [
    (["solve", "placement", "nosuch.yaml", "--out", "x.json"], "nosuch.yaml"),
    (["solve", "placement", "{scenario}"], "--out"),
    (["solve", "placement", "{scenario}", "--solver", "sat", "--out", "x.json"], "sat"),
])
def test_solve_bad_input_is_one_line(scenario, tmp_path, args, match):
    args = [a.replace("{scenario}", str(scenario)) for a in args]
    proc = moesim(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
    assert match in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_bad_placement_file_in_a_scenario(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"assign": [[0, 1]]}')
    data = {**TRAIN, "placement": {"file": str(bad)}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = moesim("run", path, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "placement: must be 2 MoE layers x 16 experts" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_generate_then_admit_from_the_cli(tmp_path):
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


def test_bad_admission_problem_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": ["a"]}')
    proc = moesim("solve", "admission", bad, "--out", tmp_path / "x.json")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "flows" in proc.stderr and not (tmp_path / "x.json").exists()
