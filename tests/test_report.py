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
        "kind": "training", "step_time_s": 0.0123456, "tokens_per_s": 1234567.0,
        "a2a_time_s": 0.004,
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


def test_step_breakdown_shows_every_category_zero_ones_too(run):
    summary = run[0]
    assert any(v == 0 for v in summary["breakdown_s"].values())  # e.g. gate: 0
    fig = step_breakdown(summary)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == list(CATEGORIES)
    for t in fig.data:
        assert t.orientation == "h"
        assert t.x[0] == pytest.approx(summary["breakdown_s"].get(t.name, 0.0) * 1e3)
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
    # bars are named by their ends; hover carries src, dst, tier and bytes
    busiest = max(links, key=lambda r: r["utilisation"])
    assert bars.x[0].startswith(f"{busiest['src']} → {busiest['dst']}")
    assert not any(str(x).startswith("#") for x in bars.x)
    assert len(set(bars.x)) == len(bars.x)  # parallel links keep distinct names
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
    assert "bytes between servers (GB)" in page and ">3.5<" in page
    assert "n_steps" not in page  # only the catalogue's metrics are shown
    assert "breakdown_s" not in page and "critical GPU&#x27;s time" not in page


def test_summary_rows_units_in_headers(run):
    rows = dict(summary_rows(run[0]))
    assert rows["All-to-All share of the step (%)"] == "32.4"
    assert rows["dropped pairs (%)"] == "1.25"
    assert rows["expert load imbalance"] == "1.37"
    assert rows["bytes inside servers (GB)"] == "0.125"


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
        "import sys, sim.report, sim.report.compare, sim.report.placement, sim.report.serving; "
        "print(','.join(m for m in sys.modules if m.startswith(('sim.network', 'sim.moe', "
        "'sim.collectives', 'sim.topology', 'simpy', 'sim.solve', 'pulp', 'deap'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -------------------------------------------------------------------- per-link heat map


def _link(i, src, dst, tier, util):
    return {"link": i, "src": src, "dst": dst, "tier": tier, "capacity_gbps": 400.0,
            "bytes": util * 1e6, "utilisation": util}


def _tiny_fabric():
    """Two GPUs per leaf, two leaves, two spines (bipartite tiers), plus a 3-GPU mesh (not)."""
    rng = np.random.default_rng(1)
    pairs = [("g0", "leaf0", "nic"), ("g1", "leaf0", "nic"), ("g2", "leaf1", "nic"),
             ("g3", "leaf1", "nic")]
    pairs += [(f"leaf{a}", f"spine{b}", "leaf-spine") for a in range(2) for b in range(2)]
    pairs += [(a, b, "mesh") for a, b in (("g0", "g1"), ("g1", "g2"), ("g2", "g0"))]
    links = []
    for src, dst, tier in pairs:  # both directions of each full-duplex link
        links.append(_link(len(links), src, dst, tier, float(rng.uniform(0, 1))))
        links.append(_link(len(links), dst, src, tier, float(rng.uniform(0, 1))))
    return links


def test_two_sides_splits_bipartite_tiers_and_refuses_odd_cycles():
    from sim.report.links import two_sides

    links = _tiny_fabric()
    assert two_sides([r for r in links if r["tier"] == "nic"]) == (
        ["g0", "g1", "g2", "g3"], ["leaf0", "leaf1"])
    assert two_sides([r for r in links if r["tier"] == "leaf-spine"]) == (
        ["leaf0", "leaf1"], ["spine0", "spine1"])
    assert two_sides([r for r in links if r["tier"] == "mesh"]) is None


def test_link_heatmap_cells_are_the_link_utilisations():
    from sim.report import link_heatmap

    links = _tiny_fabric()
    fig = link_heatmap(links)
    assert [(t.meta["tier"], t.meta["direction"]) for t in fig.data] == [
        ("nic", "forward"), ("nic", "reverse"), ("leaf-spine", "forward"),
        ("leaf-spine", "reverse"), ("mesh", "square")]
    seen = 0
    for t in fig.data:
        z = np.asarray(t.z, dtype=float)
        rows, cols = list(t.y), list(t.x)
        for r in links:
            if r["tier"] != t.meta["tier"]:
                continue
            a, b = r["src"], r["dst"]
            if t.meta["direction"] == "reverse":
                a, b = b, a
            if a in rows and b in cols:
                assert z[rows.index(a), cols.index(b)] == pytest.approx(r["utilisation"] * 100)
                seen += 1
        assert np.isnan(z).sum() == z.size - np.isfinite(z).sum()
    assert seen == len(links)  # every directed link in exactly one cell
    cells = sum(int(np.isfinite(np.asarray(t.z, dtype=float)).sum()) for t in fig.data)
    assert cells == len(links)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 100.0)
    assert [t.meta["tier"] for t in link_heatmap(links, tiers=["mesh"]).data] == ["mesh"]
    with pytest.raises(ValueError, match="no links of tier"):
        link_heatmap(links, tiers=["core"])


def test_link_heatmap_of_a_run_covers_every_link_and_none_is_over_full(training_scenario):
    from sim.moe.run import run_training
    from sim.report import link_heatmap
    from sim.topology import load_topology

    sc = training_scenario(topology={"name": "h100-leaf-spine", "nodes": 2},
                  parallel={"expert_model_parallel_size": 16})
    result = run_training(sc, load_topology("h100-leaf-spine", {"nodes": 2}))
    fig = link_heatmap(result.links)
    z = np.concatenate([np.asarray(t.z, dtype=float).ravel() for t in fig.data])
    z = z[np.isfinite(z)]
    assert len(z) == len(result.links)
    assert z.max() <= 100.0 + 1e-9 and z.min() >= 0.0
    assert sorted(z) == pytest.approx(sorted(r["utilisation"] * 100 for r in result.links))


# -------------------------------------------------------------------- placements, serving


def test_placement_load_colours_each_gpus_share_of_its_layer():
    from sim.report.placement import gpu_loads, placement_load

    load = np.array([[10.0, 30.0, 20.0, 20.0], [5.0, 5.0, 50.0, 20.0]])
    blocks = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    spread = np.array([[0, 1, 0, 1], [0, 1, 1, 0]])
    tokens, experts = gpu_loads(load, spread, 2)
    assert tokens.tolist() == [[30.0, 50.0], [25.0, 55.0]]
    assert experts.tolist() == [[2, 2], [2, 2]]
    fig = placement_load(load, {"blocks": blocks, "spread": spread}, gpus=2)
    assert [t.meta["placement"] for t in fig.data] == ["blocks", "spread"]
    assert np.allclose(np.asarray(fig.data[0].z), [[1.0, 1.0], [0.25, 1.75]])
    assert np.allclose(np.asarray(fig.data[1].z), [[0.75, 1.25], [0.625, 1.375]])
    assert np.asarray(fig.data[1].customdata).tolist() == tokens.tolist()
    assert fig.layout.coloraxis.cmid == 1.0
    # the title gives the mean over layers of the busiest GPU's ratio
    assert "straggler 1.38x" in fig.layout.annotations[0].text
    assert "straggler 1.31x" in fig.layout.annotations[1].text


def test_placement_summary_bars():
    from sim.report.placement import placement_summary

    rows = [{"placement": name, "status": "feasible", "dispatch_s": d, "interlayer_s": 0.001,
             "balance_s": 0.002, "wall_s": w, "step_time_s": step, "speedup": 0.010 / step}
            for name, d, w, step in (("layout", 0.003, 0.0, 0.010), ("greedy", 0.002, 0.1,
                                                                       0.008))]
    fig = placement_summary(rows)
    terms = [t for t in fig.data if t.name in ("dispatch", "inter-layer", "balance (straggler)")]
    assert [list(t.y) for t in terms] == [pytest.approx([3.0, 2.0]), pytest.approx([1.0, 1.0]),
                                         pytest.approx([2.0, 2.0])]
    step = next(t for t in fig.data if t.name == "step")
    assert list(step.y) == pytest.approx([10.0, 8.0]) and list(step.text) == ["1.00x", "1.25x"]
    assert fig.layout.barmode == "stack"


def test_cache_hit_rates_one_line_per_policy():
    from sim.report.serving import cache_hit_rates

    rows = [{"capacity": c, "policy": p, "hit_rate": h, "steps": 100}
            for c in (3, 2) for p, h in (("lru", 0.2 * c), ("belady", 0.25 * c))]
    fig = cache_hit_rates(rows)
    assert [t.name for t in fig.data] == ["lru", "belady"]
    assert list(fig.data[0].x) == [2, 3]  # sorted by capacity
    assert list(fig.data[0].y) == pytest.approx([40.0, 60.0])
    assert fig.data[1].line.dash == "dash" and fig.data[0].line.dash == "solid"
    assert "100 decode steps" in fig.layout.title.text


def test_link_names_number_parallel_links():
    from sim.report.plots import link_names

    rows = [{"src": "a", "dst": "b"}, {"src": "a", "dst": "c"}, {"src": "a", "dst": "b"}]
    assert link_names(rows) == ["a → b", "a → c", "a → b (2)"]


def test_links_csv_names_every_link_by_its_ends(training_file):
    from sim.moe.run import run_training
    from sim.scenario import load_scenario
    from sim.topology import load_topology

    sc = load_scenario(training_file())
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    names = cluster.node_names
    for r in run_training(sc, cluster).links:
        i = r["link"]
        assert r["name"] == f"{names[cluster.links.src[i]]} -> {names[cluster.links.dst[i]]}"
