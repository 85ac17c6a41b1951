"""Figure of a router comparison (``moesim compare``): rows from :func:`sim.compare.compare`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.report.plots import category_colour, ordered_categories

_PANELS = (("step_time_s", "step time (ms)", 1e3), ("a2a_fraction", "All-to-All share (%)", 100),
           ("drop_fraction", "dropped (%)", 100),
           ("a2a_inter_node_bytes", "All-to-All inter-node (GB)", 1e-9))
_SWEEP_PANELS = _PANELS[:3] + (("padding_fraction", "padding (%)", 100),
                               ("local_rectified_fraction", "rectified on own GPU (%)", 100),
                               _PANELS[3])


_SERVING_PANELS = (("moe_block_mean_s", "MoE block, decode (ms)", 1e3),
                   ("tokens_per_s", "throughput (tokens/s)", 1.0),
                   ("latency_p95_s", "p95 latency (s)", 1.0),
                   ("decode_peak_memory_bytes", "decode peak memory (GiB)", 2.0**-30))


def comparison(rows: Sequence[Mapping], sweep_key: str | None = None) -> go.Figure:
    """Without a sweep: the step breakdown of each variant as stacked bars, plus A2A share, drop
    fraction and inter-node bytes. With a sweep: each metric against the swept value, one line
    per variant."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    if rows and "moe_block_mean_s" in rows[0]:
        return _serving(rows, variants, sweep_key)
    if sweep_key:
        fig = make_subplots(rows=3, cols=2, subplot_titles=[p[1] for p in _SWEEP_PANELS])
        for i, v in enumerate(variants):
            mine = [r for r in rows if r["variant"] == v]
            for j, (key, title, scale) in enumerate(_SWEEP_PANELS):
                fig.add_trace(go.Scatter(
                    x=[r["sweep"] for r in mine], y=[r[key] * scale for r in mine], name=v,
                    legendgroup=v, showlegend=j == 0, mode="lines+markers",
                    line_color=_colour(i), hovertemplate=f"{v}: %{{y:.4g}}<extra>{title}</extra>"),
                    row=j // 2 + 1, col=j % 2 + 1)
        for j in range(len(_SWEEP_PANELS)):
            fig.update_xaxes(title_text=sweep_key, row=j // 2 + 1, col=j % 2 + 1)
        fig.update_layout(title="Routing variants against " + sweep_key, height=900)
        return fig
    titles = ["step time (ms), slowest GPU"] + [p[1] for p in _PANELS[1:]]
    fig = make_subplots(rows=1, cols=4, column_widths=[0.4, 0.2, 0.2, 0.2], subplot_titles=titles)
    cats = ordered_categories({c for r in rows for c in r.get("breakdown_s", {})})
    for cat in cats:
        ms = [r.get("breakdown_s", {}).get(cat, 0.0) * 1e3 for r in rows]
        if any(ms):
            fig.add_trace(go.Bar(x=variants, y=ms, name=cat, marker_color=category_colour(cat),
                                 hovertemplate=f"{cat}: %{{y:.3f}} ms<extra></extra>"),
                          row=1, col=1)
    for j, (key, title, scale) in enumerate(_PANELS[1:], start=2):
        fig.add_trace(go.Bar(x=variants, y=[r[key] * scale for r in rows], showlegend=False,
                             marker_color="#888",
                             hovertemplate=f"%{{y:.4g}}<extra>{title}</extra>"), row=1, col=j)
    fig.update_layout(title="Routing variants", barmode="stack", height=420,
                      legend_title_text="category")
    return fig


def _colour(i: int) -> str:
    palette = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B",
               "#9D755D", "#FF9DA6", "#BAB0AC")
    return palette[i % len(palette)]


def _serving(rows: Sequence[Mapping], variants: list, sweep_key: str | None) -> go.Figure:
    """Serving rows: one panel per metric, bars per run (variant and swept value)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in _SERVING_PANELS])
    labels = [f"{r['variant']}" + (f" {r['sweep']}" if sweep_key else "") for r in rows]
    for j, (key, title, scale) in enumerate(_SERVING_PANELS):
        fig.add_trace(go.Bar(x=labels, y=[r[key] * scale for r in rows], showlegend=False,
                             marker_color=[_colour(variants.index(r["variant"])) for r in rows],
                             hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{title}</extra>"),
                      row=j // 2 + 1, col=j % 2 + 1)
    fig.update_layout(title="Serving variants" + (f" against {sweep_key}" if sweep_key else ""),
                      height=640)
    return fig
