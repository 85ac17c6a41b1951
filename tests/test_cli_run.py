"""End to end: ``moesim run`` on a shipped scenario, through the real topology and fabric."""

from __future__ import annotations

import json

from tests.conftest import REPO

SCENARIO = REPO / "scenarios" / "a2a-dgx-h100.yaml"
RESULT_KEYS = {"collective", "algorithm", "protocol", "bytes_per_rank", "time_s", "algbw_gbps",
               "busbw_gbps", "flows", "recomputes"}


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.strip() and line[0] != "#"]


def test_run_a2a_dgx_h100(moesim, tmp_path):
    out = tmp_path / "x"
    proc = moesim("run", SCENARIO, "--out", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"kind", "scenario", "cluster", "comm_profile", "results"}
    assert summary["comm_profile"] == "h100-nccl"  # what topologies/dgx-h100.yaml names
    assert summary["cluster"] == {"name": "dgx-h100", "gpus": 8, "nodes": 1, "gpu": "h100_sxm"}
    sizes = summary["scenario"]["benchmark"]["sizes"]
    assert sizes == [2**20, 2**22, 2**24, 2**26, 2**28]
    results = summary["results"]
    assert [r["bytes_per_rank"] for r in results] == sizes
    for r in results:
        assert set(r) == RESULT_KEYS
        assert (r["collective"], r["algorithm"]) == ("all_to_all", "direct")
        assert r["time_s"] > 0 and r["algbw_gbps"] > 0 and r["busbw_gbps"] > 0
    times = [r["time_s"] for r in results]
    assert times == sorted(times)  # more bytes never take less time
    rows = table_rows(proc.stdout)
    assert [int(row[0]) for row in rows] == sizes
    # the table shows GB/s (bytes), the JSON Gbit/s
    assert rows[-1][2] == f"{results[-1]['algbw_gbps'] / 8:.2f}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temporary left over


def test_run_with_set_gives_one_row(moesim, tmp_path):
    out = tmp_path / "one"
    proc = moesim("run", SCENARIO, "--out", out, "--set", "benchmark.sizes=[1048576]")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"]["benchmark"]["sizes"] == [1048576]
    assert len(summary["results"]) == 1 and summary["results"][0]["bytes_per_rank"] == 1048576
    assert len(table_rows(proc.stdout)) == 1


def test_run_default_out_dir(moesim, tmp_path):
    proc = moesim("run", SCENARIO, "--set", "benchmark.sizes=[1MiB]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("a2a-dgx-h100-")
    assert (run_dir / "summary.json").is_file()
