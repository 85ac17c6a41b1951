"""The results API: run directories and sweep tables loaded back into Python."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.errors import UserError
from sim.runs.results import load_run, load_sweep, load_sweep_frame, parse_cell
from sim.runs.sweep import load_sweep_spec, run_sweep

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "moe-switch-h100.yaml"
SMALL = ["model.num_layers=2", "model.micro_batch_size=2", "topology.nodes=1",
         "parallel.expert_model_parallel_size=8", "moe.num_experts=32"]
CF, EP = "moe.moe_expert_capacity_factor", "parallel.expert_model_parallel_size"


def moesim_in_process(*args) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """4 runs in this process; expert parallel 3 fails at run time (8 GPUs)."""
    base = tmp_path_factory.mktemp("results")
    sets = dict(s.split("=") for s in SMALL)
    path = base / "s.yaml"
    path.write_text(yaml.safe_dump({
        "scenario": str(SCENARIO), "set": {k: yaml.safe_load(v) for k, v in sets.items()},
        "grid": {CF: [0.5, 2.0], EP: [8, 3]}}))
    result = run_sweep(load_sweep_spec(path), base / "out", workers=1)
    assert [r["status"] for r in result.rows] == ["ok", "error", "ok", "error"]
    return base / "out"


def test_load_run_of_moesim_run(tmp_path, capsys):
    out = tmp_path / "run"
    moesim_in_process("run", SCENARIO, "--out", out, *[a for s in SMALL for a in ("--set", s)])
    run = load_run(out)
    assert run.summary == json.loads((out / "summary.json").read_text())
    assert run.row is None and run.tables == ["layers", "links"]
    layers = run.table("layers")
    assert [r["layer"] for r in layers] == [0, 1]
    assert [r["moe"] for r in layers] == [True, False]  # every other layer is MoE
    assert isinstance(layers[0]["dispatch_s"], float) and layers[0]["dispatch_s"] > 0
    loads = layers[0]["expert_load"]
    assert len(loads) == 32 and all(isinstance(v, int) for v in loads)
    assert layers[1]["expert_load"] is None
    links = run.table("links.csv")
    assert links and isinstance(links[0]["capacity_gbps"], float)
    with pytest.raises(UserError, match="no table 'requests'; this run has layers, links"):
        run.table("requests")


def test_load_run_of_a_benchmark(tmp_path, capsys):
    out = tmp_path / "bench"
    moesim_in_process("run", REPO / "scenarios" / "a2a-dgx-h100.yaml", "--out", out,
                      "--set", "benchmark.sizes=[1MiB]")
    run = load_run(out)
    assert run.summary["results"][0]["bytes_per_rank"] == 2**20 and run.tables == []


def test_load_run_of_sweep_runs(sweep_dir):
    runs = sorted(p for p in (sweep_dir / "runs").iterdir())
    run = load_run(runs[0])
    assert run.summary == json.loads((runs[0] / "summary.json").read_text())
    assert run.row == json.loads((runs[0] / "row.json").read_text())
    assert run.row["step_time_s"] == run.summary["step_time_s"]
    assert run.table("layers")[0]["layer"] == 0
    with pytest.raises(UserError, match="this sweep run failed.*must divide"):
        load_run(runs[1])


def test_load_sweep_gives_the_same_rows_from_every_format(sweep_dir):
    rows = load_sweep(sweep_dir)
    assert len(rows) == 4 and [r[EP] for r in rows] == [8, 3, 8, 3]
    for name in ("sweep.jsonl", "sweep.csv", "sweep.parquet"):
        assert load_sweep(sweep_dir / name) == rows, name
    ok = rows[0]
    assert isinstance(ok["step_time_s"], float) and isinstance(ok["cluster.gpus"], int)
    assert ok[CF] == 0.5 and ok["error"] is None and rows[1]["step_time_s"] is None
    assert rows[1]["error"].startswith("UserError:")


def test_load_sweep_of_an_interrupted_sweep_reads_the_run_rows(sweep_dir, tmp_path):
    copy = tmp_path / "copy"
    (copy / "runs").mkdir(parents=True)
    (copy / "sweep.json").write_text((sweep_dir / "sweep.json").read_text())
    first = sorted((sweep_dir / "runs").iterdir())[0]
    os.symlink(first, copy / "runs" / first.name)
    rows = load_sweep(copy)  # no table written yet: the finished run's row.json
    assert rows == load_sweep(sweep_dir)[:1]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "no such sweep directory or table"),
    (lambda p: p, "not a sweep directory (expected sweep.json in it)"),
    (lambda p: (p / "t.txt").write_text("x") and p / "t.txt", "not a sweep table; expected"),
], ids=["missing", "plain_directory", "other_file"])
def test_load_sweep_wrong_path_is_one_line(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(UserError) as info:
        load_sweep(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_load_run_wrong_path(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="no summary.json"):
        load_run(tmp_path)


def test_frames_need_pandas(sweep_dir, monkeypatch):
    if "pandas" in sys.modules or _has_pandas():  # the dev extra installs it
        frame = load_sweep_frame(sweep_dir)
        assert list(frame["run_id"]) == [r["run_id"] for r in load_sweep(sweep_dir)]
        ok = frame["status"] == "ok"  # a failed run's missing numbers are NaN in the frame
        assert frame.loc[ok, "step_time_s"].tolist() == [
            r["step_time_s"] for r in load_sweep(sweep_dir) if r["status"] == "ok"]
        assert frame.loc[~ok, "step_time_s"].isna().all()
        first = load_run(sorted((sweep_dir / "runs").iterdir())[0])
        layers = first.frame("layers")
        assert layers.to_dict("records") == first.table("layers")
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    with pytest.raises(UserError, match="pandas is not installed"):
        load_sweep_frame(sweep_dir)
    run = load_run(sorted((sweep_dir / "runs").iterdir())[0])
    with pytest.raises(UserError, match="pandas is not installed"):
        run.frame("layers")


def _has_pandas() -> bool:
    import importlib.util

    return importlib.util.find_spec("pandas") is not None


def test_parse_cell():
    assert [parse_cell(t) for t in ("", "3", "-2.5e-3", "True", "hash", "1_000", "a;b")] == [
        None, 3, -2.5e-3, True, "hash", "1_000", "a;b"]
    assert parse_cell("1;2.5", lists=True) == [1, 2.5]
