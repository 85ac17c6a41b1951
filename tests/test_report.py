"""Reports: figures, the HTML page and the Chrome trace, on a small synthetic run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import numpy as np
import plotly.graph_objects as go
import pytest

from sim.metrics.records import CATEGORIES, Span
from sim.report import (
    CATEGORY_COLOURS,
    chrome_trace,
    expert_load,
    expert_load_bars,
    link_utilisation,
    render_report,
    select_gpus,
    step_breakdown,
    summary_rows,
    timeline,
)
from sim.report.html import FIGURE_IDS

N_GPUS, N_LAYERS, N_EXPERTS, GPUS_PER_NODE = 8, 4, 6, 4


def make_spans(n_gpus: int = N_GPUS, n_layers: int = N_LAYERS, seed: int = 0) -> list[Span]:
    """fwd then bwd per layer, per GPU, every category; AllReduce at the end."""
    rng = random.Random(seed)
    spans = []
    for gpu in range(n_gpus):
        t = 0.0
        for phase, order in (("fwd", range(n_layers)), ("bwd", reversed(range(n_layers)))):
            for layer in order:
                for cat in CATEGORIES[:-1]:
                    dur = rng.uniform(1e-5, 1e-4)
                    spans.append(Span(gpu, cat, phase, layer, t, t + dur))
                    t += dur
        spans.append(Span(gpu, "allreduce", "step", -1, t, t + 2e-4))
    return spans


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(0)
    spans = make_spans()
    layers = []
    for layer in range(N_LAYERS):
        moe = layer % 2 == 1
        load = rng.integers(50, 150, N_EXPERTS).tolist() if moe else []
        layers.append({
            "layer": layer, "moe": moe, "attention_s": 1e-4,
            "dispatch_s": 2e-4 if moe else 0.0, "expert_s": 3e-4 if moe else 0.0,
            "combine_s": 2e-4 if moe else 0.0, "drop_fraction": 0.01 if moe else 0.0,
            "padding_fraction": 0.1 if moe else 0.0, "imbalance": 1.3 if moe else 0.0,
            "expert_load": load,
        })
    tiers = ["nvlink", "leaf", "spine"]
    links = [{
        "link": i, "src": f"n{i % 5}", "dst": f"s{i % 3}", "tier": tiers[i % 3],
        "capacity_gbps": 400.0, "bytes": float(rng.uniform(1e6, 1e8)),
        "utilisation": float(rng.uniform(0, 1)),
    } for i in range(60)]
    summary = {
        "step_time_s": 0.0123456, "tokens_per_s": 1234567.0, "a2a_time_s": 0.004,
        "a2a_fraction": 0.324, "compute_time_s": 0.006, "allreduce_time_s": 0.0002,
        "drop_fraction": 0.0125, "padding_fraction": 0.1, "expert_load_imbalance": 1.37,
        "inter_node_bytes": 3.5e9, "intra_node_bytes": 1.25e8, "n_steps": 3,
        "breakdown_s": {"attention": 0.003, "gate": 0.0, "dispatch": 0.002,
                        "expert": 0.005, "combine": 0.002, "allreduce": 0.0002},
    }
    return summary, layers, links, spans


def test_category_colours_fixed_and_distinct():
    assert set(CATEGORY_COLOURS) == set(CATEGORIES)
    assert len(set(CATEGORY_COLOURS.values())) == len(CATEGORIES)


def test_step_breakdown_one_bar_per_nonzero_category(run):
    summary = run[0]
    fig = step_breakdown(summary)
    assert isinstance(fig, go.Figure)
    nonzero = [c for c in CATEGORIES if summary["breakdown_s"].get(c, 0.0) > 0]
    assert [t.name for t in fig.data] == nonzero
    for t in fig.data:
        assert t.orientation == "h"
        assert t.x[0] == pytest.approx(summary["breakdown_s"][t.name] * 1e3)
        assert t.marker.color == CATEGORY_COLOURS[t.name]
    assert fig.layout.barmode == "stack"
    assert fig.layout.title.text
    assert "ms" in fig.layout.xaxis.title.text
    assert any("12.346 ms" in a.text for a in fig.layout.annotations)


def test_expert_load_heatmap_shape(run):
    layers = run[1]
    fig = expert_load(layers)
    assert isinstance(fig, go.Figure)
    (hm,) = fig.data
    assert isinstance(hm, go.Heatmap)
    moe = [row for row in layers if row["moe"]]
    z = np.asarray(hm.z)
    assert z.shape == (len(moe), N_EXPERTS)
    assert z[0].tolist() == moe[0]["expert_load"]
    assert list(hm.y) == [f"L{row['layer']}" for row in moe]
    assert hm.hovertemplate
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_expert_load_without_moe_layers_is_empty():
    fig = expert_load([{"layer": 0, "moe": False, "expert_load": []}])
    assert np.asarray(fig.data[0].z).size == 0


def test_expert_load_bars(run):
    layers = run[1]
    fig = expert_load_bars(layers, 1)
    assert list(fig.data[0].y) == layers[1]["expert_load"]
    with pytest.raises(ValueError, match="no layer 99"):
        expert_load_bars(layers, 99)


@pytest.mark.parametrize("top", [10, 40, 100])
def test_link_utilisation_top_sorted(run, top):
    links = run[2]
    fig = link_utilisation(links, top=top)
    bars = fig.data[0]
    y = list(bars.y)
    assert len(y) == min(top, len(links))
    assert y == sorted(y, reverse=True)
    assert y[0] == pytest.approx(max(r["utilisation"] for r in links) * 100)
    assert "%" in fig.layout.yaxis.title.text
    # hover carries src, dst, tier and bytes
    busiest = max(links, key=lambda r: r["utilisation"])
    assert list(bars.customdata[0][:3]) == [busiest["src"], busiest["dst"], busiest["tier"]]
    # per-tier summary: one entry per tier
    tiers = {r["tier"] for r in links}
    assert set(fig.data[1].x) == tiers
    for tier, mean in zip(fig.data[1].x, fig.data[1].y, strict=True):
        util = [r["utilisation"] * 100 for r in links if r["tier"] == tier]
        assert mean == pytest.approx(np.mean(util))


def test_timeline_rows_and_bars(run):
    spans = run[3]
    fig = timeline(spans, max_gpus=16)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == list(CATEGORIES)
    assert sum(len(t.x) for t in fig.data) == len(spans)
    rows = {y for t in fig.data for y in t.y}
    assert rows == {f"gpu {g}" for g in range(N_GPUS)}
    for t in fig.data:
        assert t.orientation == "h"
        assert t.marker.color == CATEGORY_COLOURS[t.name]
    assert fig.layout.barmode == "overlay"
    assert "ms" in fig.layout.xaxis.title.text
    # bars sit at start and last end - start, in ms
    s = next(s for s in spans if s.category == "expert")
    t = next(t for t in fig.data if t.name == "expert")
    assert t.base[0] == pytest.approx(s.start_s * 1e3)
    assert t.x[0] == pytest.approx((s.end_s - s.start_s) * 1e3)


def test_timeline_caps_gpus_and_keeps_slowest():
    spans = make_spans(n_gpus=40, n_layers=1)
    slowest = max(spans, key=lambda s: s.end_s).gpu
    gpus = select_gpus(spans, 5)
    assert len(gpus) == 5 and slowest in gpus and gpus == sorted(gpus)
    fig = timeline(spans, max_gpus=5)
    rows = {y for t in fig.data for y in t.y}
    assert rows == {f"gpu {g}" for g in gpus}
    assert "5 of 40" in fig.layout.title.text


def test_timeline_fast_for_100k_spans():
    spans = make_spans(n_gpus=256, n_layers=40)  # 256 * (40*2*5 + 1) ~ 103k spans
    assert len(spans) > 100_000
    t0 = time.perf_counter()
    fig = timeline(spans, max_gpus=16)
    assert time.perf_counter() - t0 < 5.0
    assert len({y for t in fig.data for y in t.y}) == 16


def test_render_report(run):
    summary, layers, links, spans = run
    page = render_report("Run <A&B>", summary, layers, links, spans)
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Run &lt;A&amp;B&gt;</title>" in page
    for div_id in FIGURE_IDS:
        assert page.count(f'id="{div_id}"') == 1
    assert page.count("* plotly.js v") == 1          # the bundle's licence header
    assert page.count("Plotly.newPlot(") == len(FIGURE_IDS)
    assert '<meta charset="utf-8">' in page
    for header, value in summary_rows(summary):
        assert f'<th scope="row">{header}</th><td>{value}</td>' in page
    assert "step time (ms)" in page and ">12.35<" in page
    assert ">1,234,567<" in page                       # tokens/s
    assert "inter-node traffic (MB)" in page and ">3500<" in page
    assert ">n_steps<" in page                        # extra numeric keys are kept
    assert "breakdown_s" not in page


def test_summary_rows_units_in_headers(run):
    rows = dict(summary_rows(run[0]))
    assert rows["all-to-all share of step (%)"] == "32.4"
    assert rows["dropped tokens (%)"] == "1.25"
    assert rows["expert load imbalance (max/mean)"] == "1.37"


def test_chrome_trace(run):
    spans = run[3]
    gpu_node = [g // GPUS_PER_NODE for g in range(N_GPUS)]
    trace = chrome_trace(spans, gpu_node=gpu_node)
    text = json.dumps(trace)                         # JSON-serialisable
    assert json.loads(text)["displayTimeUnit"] == "ns"
    events = trace["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    assert len(xs) == len(spans)
    seen = {(e["tid"], e["name"], e["ts"]): e for e in xs}
    assert len(seen) == len(spans)
    for s in spans:
        e = seen[(s.gpu, f"{s.category} L{s.layer} {s.phase}", s.start_s * 1e6)]
        assert e["dur"] == (s.end_s - s.start_s) * 1e6
        assert e["cat"] == s.category
        assert e["pid"] == gpu_node[s.gpu]
    meta = [e for e in events if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert procs == {0: "node 0", 1: "node 1"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert threads == {(g // GPUS_PER_NODE, g): f"gpu {g}" for g in range(N_GPUS)}


def test_chrome_trace_pid_defaults_and_node_names():
    spans = make_spans(n_gpus=4, n_layers=1)
    assert {e["pid"] for e in chrome_trace(spans)["traceEvents"]} == {0}
    by_size = chrome_trace(spans, gpus_per_node=2)["traceEvents"]
    assert {(e["tid"], e["pid"]) for e in by_size if e["ph"] == "X"} == {
        (0, 0), (1, 0), (2, 1), (3, 1)}
    names = {0: "a", 1: "a", 2: "b", 3: "b"}
    named = chrome_trace(spans, gpu_node=names)["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in named if e["name"] == "process_name"}
    assert procs == {0: "a", 1: "b"}


def test_report_does_not_import_engine():
    code = (
        "import sys, sim.report; "
        "print(','.join(m for m in sys.modules if m.startswith(('sim.network', 'sim.moe', "
        "'sim.collectives', 'sim.topology', 'simpy'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
