"""The moesim CLI: one-line errors with exit status 2, list/validate, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from sim.cli import main
from sim.errors import UserError
from sim.runs.benchmark import table as format_benchmark_table
from sim.runs.rundir import write_run
from sim.scenario import load_scenario
from tests.conftest import REPO

SHIPPED = sorted((REPO / "scenarios").glob("*.yaml"))

GOOD = """\
topology: dgx-h100
benchmark:
  collective: all_to_all
  sizes: [1MiB]
"""


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


BAD_FILES = {
    "unknown_key": (GOOD + "fabirc: {}\n", "fabirc: unknown field"),
    "wrong_enum": (GOOD + "fabric: {ecmp: random}\n", "fabric.ecmp: must be one of"),
    "bad_size": (GOOD.replace("1MiB", "1 MeB"), "benchmark.sizes[0]"),
    "algorithm": (GOOD + "  algorithm: ring\n", "benchmark.algorithm"),
    "malformed": (GOOD + " - oops: [\n", "line 5"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=str)
def test_bad_scenario_file(moesim, tmp_path, case):
    text, fragment = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    proc = moesim("run", path, "--out", out)
    assert_one_line_error(proc, str(path), fragment)
    assert proc.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--set", "fabric.foo=1"], "fabric.foo: unknown field"),
    (["--set", "seed=abc"], "seed: must be an integer (got 'abc') [from --set seed=abc]"),
    (["--set", "benchmark.sizes"], "--set benchmark.sizes: expected KEY=VALUE"),
], ids=["unknown", "type", "syntax"])
def test_bad_set(moesim, tmp_path, args, fragment):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    out = tmp_path / "out"
    assert_one_line_error(moesim("run", path, "--out", out, *args), str(path), fragment)
    assert not out.exists()


def test_missing_file(moesim, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / "nope.yaml"
    assert_one_line_error(moesim("run", path, "--out", out), f"{path}: no such file")
    assert not out.exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["run", "scenarios/a2a-dgx-h100.yaml", "--bogus"], "--bogus"),
    (["run"], "Missing argument 'SCENARIO'"),
    (["frobnicate"], "frobnicate"),
    (["validate"], "Missing argument"),
])
def test_usage_errors(moesim, args, fragment):
    assert_one_line_error(moesim(*args), fragment)


def test_nonempty_out_dir_is_not_touched(moesim, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = moesim("run", SHIPPED[0], "--out", out)
    assert_one_line_error(proc, str(out), "not an empty directory")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_validate_neither_kind(moesim, tmp_path):
    path = tmp_path / "what.yaml"
    path.write_text("hello: world\n")
    assert_one_line_error(moesim("validate", path), str(path), "neither a scenario")


def test_no_arguments_prints_help(moesim):
    proc = moesim()
    assert proc.returncode == 0 and "validate" in proc.stdout and "run" in proc.stdout


# -- need the topology package and files -----------------------------------------------------


def test_list(moesim):
    proc = moesim("list")
    assert proc.returncode == 0, proc.stderr
    assert "h100-leaf-spine" in proc.stdout
    assert "all_to_all" in proc.stdout and "hierarchical" in proc.stdout
    assert "node_limited" in proc.stdout and "expert_choice" in proc.stdout


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_validate_shipped_scenarios(moesim, path):
    proc = moesim("validate", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ok: {path} (scenario {path.stem}:")


def test_validate_topology_file(moesim):
    path = REPO / "topologies" / "dgx-h100.yaml"
    proc = moesim("validate", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ok: {path} (topology dgx-h100: 8 GPUs on 1 node)"


def test_validate_unknown_topology_names_scenario(moesim, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(GOOD.replace("dgx-h100", "no-such-topology"))
    assert_one_line_error(moesim("validate", path), f"{path}: topology:", "no-such-topology")


# -- run wiring with stand-ins for the engine (the real run is in test_cli_run.py) ------------


class FakeCluster:
    name, num_gpus, num_nodes, comm_profile = "fake", 8, 1, "ideal"

    class gpu:  # noqa: N801 (stands in for a GpuSpec)
        name = "fake_gpu"


def fake_results(scenario, cluster, profile=None):
    b = scenario.benchmark
    return [
        {"collective": b.collective, "algorithm": b.algorithm, "bytes_per_rank": s,
         "time_s": 1e-3, "algbw_gbps": 80.0, "busbw_gbps": 70.0, "flows": 56, "recomputes": 1}
        for s in b.sizes
    ]


@pytest.fixture
def fake_engine(monkeypatch):
    """Replace sim.topology and sim.collectives for in-process runs."""
    topo = types.SimpleNamespace(load_topology=lambda name, overrides=None: FakeCluster())
    bench = types.SimpleNamespace(run_benchmark=fake_results)
    monkeypatch.setitem(sys.modules, "sim.topology", topo)
    monkeypatch.setitem(sys.modules, "sim.collectives", bench)
    return bench


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def test_run_writes_summary(tmp_path, fake_engine, capsys):
    out = tmp_path / "run"
    assert run_main(["run", str(SHIPPED[0]), "--out", str(out),
                     "--set", "benchmark.sizes=[1KiB, 2KiB]"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"kind", "scenario", "cluster", "comm_profile", "results"}
    assert summary["kind"] == "benchmark"
    assert summary["cluster"] == {"name": "fake", "gpus": 8, "nodes": 1, "gpu": "fake_gpu"}
    assert summary["scenario"]["benchmark"]["sizes"] == [1024, 2048]
    assert [r["bytes_per_rank"] for r in summary["results"]] == [1024, 2048]
    assert (out / "summary.json").read_text().endswith("}\n")
    table = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in table if not line.startswith("#")]
    assert rows == [["1024", "1000.00", "10.00", "8.75"], ["2048", "1000.00", "10.00", "8.75"]]


def test_run_default_out_dir(tmp_path, fake_engine, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(["run", str(SHIPPED[0])]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith(SHIPPED[0].stem + "-")
    assert (run_dir / "summary.json").is_file()


def test_failed_run_leaves_no_directory(tmp_path, fake_engine, monkeypatch, capsys):
    def broken(scenario, cluster, profile=None):
        raise UserError("scenario needs more GPUs than the cluster has")

    monkeypatch.setattr(fake_engine, "run_benchmark", broken)
    out = tmp_path / "out"
    assert run_main(["run", str(SHIPPED[0]), "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: scenario needs more GPUs than the cluster has\n"
    assert list(tmp_path.iterdir()) == []


# -- output helpers --------------------------------------------------------------------------


def test_write_run_is_atomic(tmp_path):
    out = write_run(tmp_path / "r", {"a.json": {"x": 1}, "sub/b.txt": "hi", "c.bin": b"\0"})
    assert (out / "a.json").read_text() == '{\n  "x": 1\n}\n'
    assert (out / "sub" / "b.txt").read_text() == "hi"
    with pytest.raises(TypeError):  # fails half-way: nothing is left behind
        write_run(tmp_path / "s", {"ok.txt": "fine", "bad.json": {"x": object()}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    with pytest.raises(UserError, match="not an empty directory"):
        write_run(tmp_path / "r", {"a.json": {}})


def test_table_shows_gigabytes(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(GOOD)
    sc = load_scenario(path)
    results = [{"bytes_per_rank": 1048576, "time_s": 2e-5, "algbw_gbps": 400.0,
                "busbw_gbps": 350.0}]
    table = format_benchmark_table(sc, FakeCluster(), results)
    assert "algbw(GB/s)" in table and "busbw(GB/s)" in table
    assert table.splitlines()[-1].split() == ["1048576", "20.00", "50.00", "43.75"]


def test_progress_line_draws_a_bar_with_an_estimate():
    from sim.cli import progress_line

    half = progress_line("runs", 3, 6, 12.0, width=10)
    assert half == "    runs [#####.....] 3/6  12 s, ~12 s left"
    assert progress_line("runs", 6, 6, 30.4, width=10).endswith("[##########] 6/6  30 s")
    assert "left" not in progress_line("routing", 0, 64, 0.0)  # no estimate before the first
