"""Sweeps: expansion and ids, the same rows on a process pool and on Dask, resuming after a
kill, failed runs, bad sweep files, and the figure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.errors import UserError
from sim.runs.results import load_sweep
from sim.runs.sweep import format_table, load_sweep_spec, run_sweep
from sim.runs.sweep.backends import connect
from tests.conftest import REPO

SCENARIO = REPO / "scenarios" / "moe-switch-h100.yaml"
#: One DGX node, 2 layers, 32 experts: ~0.05 s a run.
SMALL = {"model.num_layers": 2, "model.micro_batch_size": 2, "topology.nodes": 1,
         "parallel.expert_model_parallel_size": 8, "moe.num_experts": 32}
GRID = {"moe.moe_expert_capacity_factor": [0.5, 1.0, 2.0], "moe.router.name": ["switch", "hash"]}
CF, ROUTER = GRID


def write_sweep(directory: Path, name: str = "s.yaml", **body) -> Path:
    """A sweep file naming the scenario relative to itself, shrunk by SMALL unless given."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {"scenario": os.path.relpath(SCENARIO, directory), "set": SMALL, **body}
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def without_wall(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("sweep"), grid=GRID, seeds=[1, 2])


@pytest.fixture(scope="module")
def local_rows(grid_file, tmp_path_factory) -> list[dict]:
    """The grid run on a local pool of 2 processes."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = run_sweep(load_sweep_spec(grid_file), out, workers=2)
    assert (result.ran, result.skipped, result.failed) == (12, 0, 0)
    return result.rows


@pytest.fixture(scope="module")
def dask_address():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_grid_expands_to_the_product_with_stable_readable_ids(grid_file):
    spec = load_sweep_spec(grid_file)
    assert spec.name == "s" and spec.fields == (CF, ROUTER)
    assert len(spec.runs) == 3 * 2 * 2
    assert [(r.point[CF], r.point[ROUTER], r.seed) for r in spec.runs[:3]] == [
        (0.5, "switch", 1), (0.5, "switch", 2), (0.5, "hash", 1)]
    assert spec.runs[3].run_id == "0003-moe_expert_capacity_factor=0.5-router.name=hash-seed=2"
    again = load_sweep_spec(grid_file)
    assert [r.run_id for r in again.runs] == [r.run_id for r in spec.runs]
    assert again.spec_hash == spec.spec_hash
    run = spec.runs[7]  # the overrides reach the validated scenario
    sc = run.scenario
    assert (sc.moe.moe_expert_capacity_factor, sc.moe.router.name, sc.seed) == (1.0, "hash", 2)
    assert (sc.model.num_layers, sc.moe.num_experts, run.cluster.num_gpus) == (2, 32, 8)


def test_runs_crossed_with_grid_and_default_seed(tmp_path):
    path = write_sweep(tmp_path, grid={CF: [1.0, 2.0]},
                       runs=[{"gating.popularity_skew": 0.0}, {"gating.popularity_skew": 1.5,
                                                               "training.step": 3}])
    spec = load_sweep_spec(path)
    assert spec.fields == (CF, "gating.popularity_skew", "training.step")
    assert len(spec.runs) == 4 and {r.seed for r in spec.runs} == {0}  # the scenario's seed
    assert spec.runs[1].point == {CF: 1.0, "gating.popularity_skew": 1.5, "training.step": 3}
    assert spec.runs[1].scenario.training.step == 3


def test_rows_reflect_the_points(grid_file, local_rows):
    assert [r["run_id"] for r in local_rows] == [r.run_id for r in load_sweep_spec(grid_file).runs]
    assert list(local_rows[0])[:8] == ["run_id", "status", "error", "kind", "seed", CF, ROUTER,
                                       "wall_s"]
    assert {r["kind"] for r in local_rows} == {"training"}
    for r in local_rows:
        assert r["status"] == "ok" and r["error"] is None and r["wall_s"] > 0
        assert r["cluster.gpus"] == 8 and r["step_time_s"] > 0 and "breakdown_s.expert" in r
    for router in GRID[ROUTER]:
        for seed in (1, 2):
            drops = [r["drop_fraction"] for r in local_rows
                     if r[ROUTER] == router and r["seed"] == seed]
            assert drops[0] > drops[1] > drops[2]  # capacity 0.5 < 1.0 < 2.0
            assert (drops[2] == 0.0) == (router == "switch")  # hash routing is lopsided
    # seeds change the gating: the same point gives different loads under seeds 1 and 2
    by_seed = {r["seed"]: r["expert_load_imbalance"] for r in local_rows[:2]}
    assert by_seed[1] != by_seed[2]


def test_same_rows_on_dask_as_on_the_local_pool(moesim, grid_file, local_rows, dask_address,
                                                tmp_path):
    result = run_sweep(load_sweep_spec(grid_file), tmp_path / "dask", scheduler=dask_address)
    assert result.ran == 12
    assert without_wall(result.rows) == without_wall(local_rows)
    proc = moesim("sweep", grid_file, "--out", tmp_path / "cli", "--scheduler", dask_address)
    assert proc.returncode == 0, proc.stderr
    assert f"on Dask at {dask_address}" in proc.stderr
    assert without_wall(load_sweep(tmp_path / "cli")) == without_wall(local_rows)


def test_in_process_run_gives_the_same_rows(grid_file, local_rows, tmp_path):
    result = run_sweep(load_sweep_spec(grid_file), tmp_path / "serial", workers=1)
    assert without_wall(result.rows) == without_wall(local_rows)


def test_sweep_imports_dask_and_plotly_only_when_used():
    code = ("import sys, sim.runs.sweep, sim.runs.results; print(','.join(m for m in "
            "('distributed', 'dask', 'plotly', 'pandas', 'pyarrow', 'sim.moe.run') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_scheduler_mistakes_are_user_errors(monkeypatch):
    pytest.importorskip("distributed")
    with pytest.raises(UserError, match="cannot reach the Dask scheduler"):
        with connect(scheduler="tcp://127.0.0.1:9", timeout_s=1):
            pass
    with pytest.raises(UserError, match="--workers or --scheduler"):
        with connect(workers=2, scheduler="tcp://127.0.0.1:9"):
            pass
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    with pytest.raises(UserError, match=r"not installed; pip install 'moe-sim\[dask\]'"):
        with connect(scheduler="tcp://127.0.0.1:9"):
            pass


def test_bad_scheduler_leaves_no_output_directory(grid_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(grid_file), "--out", str(tmp_path / "out"), "--workers", "2",
              "--scheduler", "tcp://127.0.0.1:9"])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    assert "--workers or --scheduler" in capsys.readouterr().err


def _finished(out: Path) -> dict[str, tuple[int, str]]:
    """run_id -> (row.json mtime_ns, run.json started_at) of every finished run."""
    runs = out / "runs"
    found = {}
    for d in runs.iterdir() if runs.is_dir() else ():
        if (d / "row.json").is_file():
            meta = json.loads((d / "run.json").read_text())
            found[d.name] = ((d / "row.json").stat().st_mtime_ns, meta["started_at"])
    return found


def _wait_gone(pgid: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} still alive after SIGKILL")


def test_killed_sweep_resumes_without_redoing_finished_runs(moesim, tmp_path):
    # 4 nodes, 2 layers: ~0.5 s a run, so the kill lands half way
    slow = {"model.num_layers": 2, "model.micro_batch_size": 2}
    path = write_sweep(tmp_path, set=slow, grid={CF: [0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
                                                  ROUTER: ["switch"]}, seeds=[1])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "sweep", path, "--out", out,
                             "--workers", "2"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not _finished(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_gone(proc.pid)  # the pool's workers died with it
    before = _finished(out)
    assert 1 <= len(before) < 6, "the kill should land half way"
    assert not (out / "sweep.csv").exists() or len(load_sweep(out / "sweep.csv")) < 6
    # what a kill during a run directory's write leaves: a write_run temporary
    (out / "runs" / ".0005-x.tmp-1-abcd").mkdir()
    (out / "runs" / ".0005-x.tmp-1-abcd" / "row.json").write_text("{}")

    again = moesim("sweep", path, "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert f"6 runs, {len(before)} already done, {6 - len(before)} to run" in again.stderr
    after = _finished(out)
    assert len(after) == 6
    assert {k: after[k] for k in before} == before  # finished runs were not redone
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(after)  # no leftovers
    rows = load_sweep(out)
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert [r[CF] for r in rows] == [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    assert load_sweep(out / "sweep.jsonl") == rows


def test_failing_run_is_recorded_and_the_sweep_goes_on(moesim, tmp_path):
    # expert parallel 3 passes the schema but cannot divide the node's 8 GPUs: a run-time error
    path = write_sweep(tmp_path, grid={"parallel.expert_model_parallel_size": [8, 3, 4]})
    out = tmp_path / "out"
    proc = moesim("sweep", path, "--out", out, "--workers", "1")
    assert proc.returncode == 1, proc.stderr
    assert "error: 1 of 3 runs failed" in proc.stderr and "Traceback" not in proc.stderr
    rows = load_sweep(out / "sweep.csv")
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    bad = rows[1]
    assert bad["error"].startswith("UserError: ") and "must divide" in bad["error"]
    assert bad["step_time_s"] is None and rows[2]["step_time_s"] > 0
    assert bad["error"] in proc.stdout  # the terminal table shows it
    failed_dir = out / "runs" / bad["run_id"]
    assert (failed_dir / "error.txt").is_file() and not (failed_dir / "summary.json").exists()
    assert (out / "sweep.html").is_file() and (out / "sweep.parquet").is_file()

    stamp = _finished(out)
    keep = moesim("sweep", path, "--out", out, "--workers", "1")
    assert keep.returncode == 1 and "3 already done, 0 to run" in keep.stderr
    assert _finished(out) == stamp  # a rerun keeps the error row
    retry = moesim("sweep", path, "--out", out, "--workers", "1", "--retry-failed")
    assert retry.returncode == 1 and "2 already done, 1 to run" in retry.stderr
    redone = _finished(out)
    assert redone[bad["run_id"]] != stamp[bad["run_id"]]
    assert {k: v for k, v in redone.items() if k != bad["run_id"]} == {
        k: v for k, v in stamp.items() if k != bad["run_id"]}


def test_another_sweep_in_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    first = write_sweep(tmp_path, "a.yaml", grid={CF: [1.0]})
    run_sweep(load_sweep_spec(first), out, workers=1)
    second = write_sweep(tmp_path, "b.yaml", grid={CF: [1.0, 2.0]})
    with pytest.raises(UserError, match="holds sweep 'a'.*choose another --out"):
        run_sweep(load_sweep_spec(second), out, workers=1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a sweep directory"):
        run_sweep(load_sweep_spec(first), other, workers=1)


BAD = {
    "unknown_top_level": ({"grid": GRID, "sedes": [1]}, "sedes: unknown field; allowed: name"),
    "unknown_scenario_field": ({"grid": {"moe.capacity": [1.0]}},
                               "grid.moe.capacity: unknown scenario field; allowed: num_experts"),
    "unknown_field_in_runs": ({"runs": [{"gating.skew": 1}]}, "runs[0].gating.skew: unknown"),
    "empty_grid_list": ({"grid": {CF: []}}, f"grid.{CF}: must not be empty"),
    "bad_value": ({"grid": {CF: [1.0, -2.0]}}, "moe.moe_expert_capacity_factor"),
    "seed_in_grid": ({"grid": {"seed": [1, 2]}}, "grid.seed: give seeds with seeds:"),
    "bad_seeds": ({"seeds": [1, -1]}, "seeds[1]: must be >= 0"),
    "repeated_seed": ({"seeds": [1, 1]}, "repeats run"),
    "field_in_grid_and_runs": ({"grid": {CF: [1.0]}, "runs": [{CF: 2.0}]}, "also in grid"),
    "missing_scenario": ({"scenario": "nope.yaml"}, "scenario: "),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_bad_sweep_file_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    body, fragment = BAD[case]
    path = write_sweep(tmp_path, **body)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert fragment in lines[0]
    assert not out.exists()


def test_benchmark_sweep_has_a_column_per_size(tmp_path):
    from sim.report.sweep import sweep_figure

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({
        "scenario": str(REPO / "scenarios" / "a2a-dgx-h100.yaml"),
        "set": {"benchmark.sizes": ["1MiB", "4MiB"]},
        "grid": {"benchmark.algorithm": ["direct", "pairwise"]}}))
    rows = run_sweep(load_sweep_spec(path), tmp_path / "out", workers=1).rows
    for r in rows:
        summary = json.loads((tmp_path / "out" / "runs" / r["run_id"] / "summary.json")
                             .read_text())
        small, large = summary["results"]
        assert (r["time_s@1MiB"], r["busbw_gbps@4MiB"]) == (small["time_s"], large["busbw_gbps"])
        assert (r["bytes_per_rank"], r["time_s"]) == (2**22, large["time_s"])
    assert rows[1]["time_s"] > rows[0]["time_s"]  # pairwise rounds cost more than direct
    fig = sweep_figure(rows, ("benchmark.algorithm",))
    assert [t.name for t in fig.data] == ["runs", "runs"]  # time and busbw panels
    assert list(fig.data[0].x) == ["direct", "pairwise"]


def test_shipped_sweeps_validate():
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_sweep_spec(path)
        assert spec.runs and spec.fields


def test_table_and_figure(local_rows):
    from sim.report.sweep import sweep_figure

    text = format_table(local_rows)
    assert text.splitlines()[0].split() == ["run_id", "status", "step", "time", "(ms)"]
    first = local_rows[0]
    shown = float(text.splitlines()[1].split()[-1])  # five significant digits, in ms
    assert shown == pytest.approx(first["step_time_s"] * 1e3, rel=1e-4)
    fig = sweep_figure(local_rows, (CF, ROUTER))
    lines = [t for t in fig.data if t.legendgroup]
    assert {t.name for t in lines} == {f"{ROUTER}=switch", f"{ROUTER}=hash"}
    steps = next(t for t in fig.data if t.name == f"{ROUTER}=hash" and t.xaxis == "x")
    assert list(steps.x) == GRID[CF]
    rows = [r for r in local_rows if r[ROUTER] == "hash" and r[CF] == 1.0]
    ms = [r["step_time_s"] * 1e3 for r in rows]
    assert steps.y[1] == pytest.approx(sum(ms) / 2)  # mean over the 2 seeds
    assert steps.error_y.array[1] == pytest.approx(max(ms) - sum(ms) / 2)
