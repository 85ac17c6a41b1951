"""The front door for input files (sim.inputs): strict readers, finding files, one vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.errors import UserError
from sim.inputs import find_file, json_lines, read_json, read_text, read_yaml
from sim.runs.sweep import load_sweep_spec
from sim.scenario import find_scenario, load_scenario
from sim.serving.requests import load_requests
from sim.solve.pfar import Problem
from sim.solve.placement import PlacementAnswer, PlacementProblem
from sim.topology import load_topology
from sim.workload import load_trace


def message(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_yaml_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    msg = message(read_yaml, path)
    assert msg == f"{path}: line 4, column 3: invalid YAML: key 'c' appears twice in one mapping"


def test_json_key_given_twice_and_nan_are_refused(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a": {"b": 1, "b": 2}}')
    assert message(read_json, path) == (f"{path}: line 1: invalid JSON: key 'b' appears twice "
                                        "in one object")
    path.write_text('{"a": NaN}')
    assert "NaN is not a JSON number" in message(read_json, path)
    path.write_text('{"a": 1,\n "b": }')
    assert message(read_json, path).startswith(f"{path}: line 2, column 7: invalid JSON: ")
    assert read_json(_write(tmp_path, '{"x": [1, 2]}')) == {"x": [1, 2]}


def _write(tmp_path: Path, text: str, name: str = "ok.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_lines_name_the_line_of_the_problem(tmp_path):
    text = '{"a": 1}\n\n{"a": 2, "a": 3}\n'
    lines = json_lines(text, "f.jsonl")
    assert next(lines) == (1, {"a": 1})
    with pytest.raises(UserError, match=r"^f\.jsonl: line 3: invalid JSON: key 'a' appears"):
        next(lines)
    with pytest.raises(UserError, match=r"^f\.jsonl: line 2, column 1: invalid JSON"):
        list(json_lines('{"a": 1}\n}\n', "f.jsonl"))


def test_every_reader_says_the_same_for_a_missing_file(tmp_path):
    readers = {"scenario.yaml": load_scenario, "topology.yaml": load_topology,
               "sweep.yaml": load_sweep_spec, "trace.jsonl": load_trace,
               "trace.npz": load_trace, "requests.csv": load_requests,
               "requests.jsonl": load_requests, "problem.json": PlacementProblem.load_file,
               "answer.json": PlacementAnswer.load_file, "pfar.json": Problem.from_json,
               "plain.txt": read_text}
    for name, reader in readers.items():
        path = tmp_path / name
        msg = message(reader, path)
        if reader is load_topology:  # a path that names no file
            assert msg == f"{path}: topology: file not found (got {str(path)!r})"
        else:
            assert msg == f"{path}: no such file", name


def test_every_json_reader_refuses_a_key_given_twice(tmp_path):
    doubled = '{"assign": [[0]], "assign": [[1]]}'
    for reader in (PlacementProblem.load_file, PlacementAnswer.load_file, Problem.from_json):
        path = _write(tmp_path, doubled, "twice.json")
        assert "key 'assign' appears twice" in message(reader, path)
    path = _write(tmp_path, '{"arrival_s": 0, "arrival_s": 1, "prompt_tokens": 1, '
                  '"output_tokens": 1}\n', "r.jsonl")
    assert message(load_requests, path).startswith(f"{path}: line 1: invalid JSON: key")
    path = _write(tmp_path, json.dumps({"num_experts": 4}) + "\n"
                  '{"layer": 0, "token": 0, "layer": 1, "experts": [1], "scores": [1]}\n',
                  "t.jsonl")
    assert message(load_trace, path).startswith(f"{path}: line 2: invalid JSON: key 'layer'")


def test_scenario_and_topology_mistakes_share_one_vocabulary(tmp_path):
    scenario = _write(tmp_path, "topology: dgx-h100\nbenchmark: {collective: all_reduce, "
                      "sizes: [1MiB], colective: x}\n", "s.yaml")
    topology = _write(tmp_path, "kind: single_node\ngpu: h100_sxm\nintra_node: "
                      "{fabric: nvswitch, latncy_us: 1}\n", "t.yaml")
    s_msg, t_msg = message(load_scenario, scenario), message(load_topology, topology)
    assert s_msg.startswith(f"{scenario}: benchmark.colective: unknown field; allowed: ")
    assert t_msg.startswith(f"{topology}: intra_node.latncy_us: unknown field; allowed: ")
    # where a value came from: a --set override, or the scenario's topology overrides
    scenario.write_text("topology: dgx-h100\nbenchmark: {collective: all_reduce, sizes: [1MiB]}\n")
    s_msg = message(load_scenario, scenario, ["seed=-1"])
    assert s_msg.endswith("(got -1) [from --set seed=-1]")
    t_msg = message(load_topology, "dgx-h100", {"gpus_per_node": 0})
    assert "gpus_per_node: must be >= 1 (got 0) [from topology overrides]" in t_msg


def test_a_bare_name_is_found_in_the_folder_of_the_cwd_a_parent_or_the_repository(
        tmp_path, monkeypatch):
    (tmp_path / "scenarios").mkdir()
    mine = _write(tmp_path / "scenarios", "x: 1\n", "mine.yaml")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_file("mine", "scenarios", "scenario").resolve() == mine.resolve()
    shipped = find_scenario("moe-switch-h100")
    assert shipped.name == "moe-switch-h100.yaml" and shipped.is_file()
    assert find_file("dgx-h100", "topologies", "topology").name == "dgx-h100.yaml"
    msg = message(find_file, "nope", "topologies", "topology")
    assert msg.startswith("topologies/nope.yaml: topology: unknown topology name; available: ")
    assert "dgx-h100" in msg and msg.endswith("(got 'nope')")
    msg = message(find_file, "dir/nope.yaml", "scenarios", "scenario")
    assert msg == "dir/nope.yaml: scenario: file not found (got 'dir/nope.yaml')"
