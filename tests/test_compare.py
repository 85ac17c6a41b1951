"""``moesim compare``: variant parsing, the comparison rows, the command's files and errors."""

from __future__ import annotations

import json

import pytest

from sim.errors import UserError
from sim.runs.compare import compare, parse_sweep, parse_variant, split_variants
from tests.conftest import TWO_SERVERS


def test_parse_variants():
    v = parse_variant("switch")
    assert (v.router, v.params, v.sets) == ("switch", {}, ())
    v = parse_variant("topk+ir+fr")
    assert v.router == "topk"
    assert v.sets == ("moe.rectify.intra_gpu=true", "moe.rectify.fill_in=true")
    v = parse_variant("locmoe(locality_bias=2.5, training.a2a_algorithm=bilevel)")
    assert v.params == {"locality_bias": 2.5}
    assert v.sets == ("training.a2a_algorithm=bilevel",)
    assert "moe.router.params={locality_bias: 2.5}" in v.overrides()
    got = [x.label for x in split_variants("switch, node_limited(group_topk=1,group_by=node),hash")]
    assert got == ["switch", "node_limited(group_topk=1,group_by=node)", "hash"]
    assert parse_sweep("moe.moe_expert_capacity_factor=0.5,1,2") == (
        "moe.moe_expert_capacity_factor", [0.5, 1, 2])


@pytest.mark.parametrize(("spec", "match"), [
    ("switch+xx", r"unknown modifier \+xx"),
    ("topk(k)", "is not KEY=VALUE"),
    ("(x=1)", "expected NAME"),
    ("switch,switch", "listed twice"),
    (" , ", "at least one variant"),
])
def test_bad_variants_are_user_errors(spec, match):
    with pytest.raises(UserError, match=match):
        split_variants(spec)


@pytest.fixture
def small(training_file):
    return training_file(moe={"moe_router_topk": 1, "moe_expert_capacity_factor": 1.0},
                         gating={"popularity_skew": 1.5})


def test_compare_rows_match_single_runs(small):
    rows = compare(small, split_variants("switch,switch+ir,hash"))
    assert [r["variant"] for r in rows] == ["switch", "switch+ir", "hash"]
    switch, ir, hsh = rows
    assert switch["speedup"] == 1.0
    assert ir["speedup"] == pytest.approx(switch["step_time_s"] / ir["step_time_s"])
    assert ir["drop_fraction"] == switch["drop_fraction"] > 0
    assert ir["local_rectified_fraction"] == pytest.approx(switch["drop_fraction"])
    assert switch["local_rectified_fraction"] == 0.0
    assert hsh["drop_fraction"] != switch["drop_fraction"]  # a different router really ran


def test_compare_sweep_runs_every_pair(small):
    rows = compare(small, split_variants("switch,switch+fr"),
                   sweep="moe.moe_expert_capacity_factor=0.5,2.0")
    assert [(r["sweep"], r["variant"]) for r in rows] == [
        (0.5, "switch"), (0.5, "switch+fr"), (2.0, "switch"), (2.0, "switch+fr")]
    low, high = rows[0], rows[2]
    assert low["drop_fraction"] > high["drop_fraction"]
    assert rows[1]["fill_in_fraction"] > 0 and rows[1]["drop_fraction"] == low["drop_fraction"]


def test_compare_command_writes_table_and_files(moesim, small, tmp_path):
    out = tmp_path / "cmp"
    proc = moesim("compare", small, "--routers", "switch,switch+ir", "--out", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["variant", "step", "ms"]
    assert [line.split()[0] for line in lines[1:]] == ["switch", "switch+ir"]
    rows = json.loads((out / "compare.json").read_text())
    assert [r["variant"] for r in rows] == ["switch", "switch+ir"]
    csv = (out / "compare.csv").read_text().splitlines()
    assert csv[0].startswith("kind,variant,speedup,step_time_s") and len(csv) == 3
    assert all(line.startswith("training,") for line in csv[1:])
    html = (out / "compare.html").read_text()
    assert "plotly" in html.lower() and "switch+ir" in html


@pytest.mark.parametrize(("args", "match"), [
    (["--routers", "nosuch"], "router"),
    (["--routers", "switch", "--sweep", "moe.nofield=1,2"], "nofield"),
    (["--routers", "switch+zz"], "unknown modifier"),
])
def test_compare_bad_input_is_one_line_and_writes_nothing(moesim, small, tmp_path, args, match):
    out = tmp_path / "cmp"
    proc = moesim("compare", small, *args, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert match in proc.stderr
    assert not out.exists()


def _row(variant, sweep, step, drop):
    return {"kind": "training", "variant": variant, "sweep": sweep, "step_time_s": step,
            "a2a_fraction": 0.2,
            "drop_fraction": drop, "padding_fraction": 0.1, "local_rectified_fraction": 0.0,
            "a2a_inter_node_bytes": 2e9, "breakdown_s": {"attention": step / 2,
                                                         "dispatch": step / 2, "tp": 0.0}}


def test_comparison_figure_without_sweep():
    from sim.report.compare import comparison

    fig = comparison([_row("a", None, 0.010, 0.1), _row("b", None, 0.008, 0.2)])
    bars = [t for t in fig.data if t.name in ("attention", "dispatch")]
    assert [t.name for t in bars] == ["attention", "dispatch"]  # zero categories left out
    assert list(bars[0].x) == ["a", "b"] and list(bars[0].y) == pytest.approx([5.0, 4.0])
    drops = [t for t in fig.data if t.hovertemplate and "dropped" in t.hovertemplate]
    assert list(drops[0].y) == pytest.approx([10.0, 20.0])
    assert fig.layout.barmode == "stack"


def test_comparison_figure_with_sweep():
    from sim.report.compare import comparison

    rows = [_row(v, cf, 0.01 * cf, 0.5 / cf) for cf in (0.5, 1.0) for v in ("a", "b")]
    fig = comparison(rows, "moe.moe_expert_capacity_factor")
    step = [t for t in fig.data if "step time" in t.hovertemplate]
    assert [t.name for t in step] == ["a", "b"]
    assert list(step[0].x) == [0.5, 1.0] and list(step[0].y) == pytest.approx([5.0, 10.0])
    assert sum(t.showlegend for t in fig.data) == 2  # one legend entry per variant
    assert "moe.moe_expert_capacity_factor" in fig.layout.title.text


def test_sweep_lines_one_panel_per_metric_one_line_per_variant():
    from sim.report.compare import panels, sweep_lines

    rows = [{**_row(v, cf, 0.01 * cf, 0.5 / cf), "expert_load_imbalance": 1 + cf}
            for cf in (0.5, 1.0, 2.0) for v in ("a", "b")]
    fig = sweep_lines(rows, "moe.moe_expert_capacity_factor")
    routing = panels("training", "routing")
    assert len(fig.data) == 2 * len(routing)
    drop = [t for t in fig.data if "dropped" in t.hovertemplate]
    assert [t.name for t in drop] == ["a", "b"]
    assert list(drop[0].x) == [0.5, 1.0, 2.0]
    assert list(drop[0].y) == pytest.approx([100.0, 50.0, 25.0])  # percent
    imbalance = [t for t in fig.data if "imbalance" in t.hovertemplate]
    assert list(imbalance[1].y) == pytest.approx([1.5, 2.0, 3.0])
    step = [t for t in fig.data if "step time" in t.hovertemplate]
    assert list(step[0].y) == pytest.approx([5.0, 10.0, 20.0])  # ms
    assert sum(t.showlegend for t in fig.data) == 2
    assert drop[0].line.color == step[0].line.color != drop[1].line.color
    one = sweep_lines(rows, "x", routing[:1])
    assert len(one.data) == 2 and one.layout.xaxis.title.text == "x"


def _serving_row(variant, sweep, block_s, mem):
    return {"kind": "serving", "variant": variant, "sweep": sweep, "moe_block_mean_s": block_s,
            "tokens_per_s": 1.0 / block_s, "latency_p95_s": 100 * block_s,
            "decode_peak_memory_bytes": mem}


def test_serving_figure_names_bars_by_swept_value_and_logs_wide_panels():
    from sim.report.compare import comparison

    rows = [_serving_row("base", m, b, g * 2**30) for m, b, g in
            (("gpu_only", 0.001, 14), ("on_demand", 0.002, 0.4), ("prefetch_all", 0.1, 5))]
    fig = comparison(rows, "serving.offload.mode")
    panel = {t.hovertemplate.split("<extra>")[1].split(" (")[0]: (i, t)
             for i, t in enumerate(fig.data)}
    i, block = panel["MoE block, decode"]
    assert list(block.x) == ["gpu_only", "on_demand", "prefetch_all"]
    assert list(block.y) == pytest.approx([1.0, 2.0, 100.0])  # ms
    assert len(set(block.marker.color)) == 3  # one colour per mode
    j, memory = panel["peak GPU memory, decode"]
    assert list(memory.y) == pytest.approx([14, 0.4, 5])  # GiB
    # block times span 100x: log axis; memory spans 35x: log
    axis = [fig.layout[f"yaxis{k + 1 if k else ''}"].type for k in range(len(fig.data))]
    assert axis[i] == axis[j] == "log"
    rows = [_serving_row(v, None, b, 2**30) for v, b in (("a", 0.001), ("b", 0.002))]
    fig = comparison(rows)
    assert list(fig.data[0].x) == ["a", "b"] and fig.layout.yaxis.type != "log"


def test_compare_honours_placement_like_run(moesim, training_file, tmp_path):
    """compare goes through the same path as run: a scenario's placement: gives the same step
    time in both (compare used to drop it and time the default blocks)."""
    path = training_file("placed.yaml", **TWO_SERVERS, placement={"solver": "greedy"})
    run = moesim("run", path, "--out", tmp_path / "run")
    cmp = moesim("compare", path, "--out", tmp_path / "cmp")
    assert run.returncode == 0 and cmp.returncode == 0, run.stderr + cmp.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (row,) = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert row["kind"] == "training" and row["variant"] == "base"
    assert row["step_time_s"] == summary["step_time_s"]
    assert summary["placement_speedup"] != 1.0  # the placement does change the step
    assert summary["baseline_step_time_s"] != summary["step_time_s"]
