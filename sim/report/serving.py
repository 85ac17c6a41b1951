"""Figures of serving studies: the expert-cache hit rates of ``sim.serving.study.cache_study``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from sim.report.plots import line_colour


def cache_hit_rates(rows: Sequence[Mapping]) -> go.Figure:
    """Hit rate (%) against cached experts per layer, one line per eviction policy (rows with
    ``capacity``, ``policy``, ``hit_rate`` 0..1). Belady, which knows the future (pre-gating
    reveals it), is dashed: the ceiling the other policies are measured against."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig = go.Figure()
    for i, p in enumerate(policies):
        mine = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["capacity"])
        fig.add_trace(go.Scatter(
            x=[r["capacity"] for r in mine], y=[float(r["hit_rate"]) * 100 for r in mine],
            name=p, mode="lines+markers", line=dict(color=line_colour(i),
                                                    dash="dash" if p == "belady" else "solid"),
            hovertemplate=f"{p}: %{{y:.1f}}% hits with %{{x}} cached<extra></extra>"))
    steps = rows[0].get("steps") if rows else None
    fig.update_layout(
        title="Expert cache hit rate by eviction policy"
              + (f" ({steps:,} decode steps)" if steps else ""),
        xaxis_title="cached experts per layer", yaxis_title="hit rate (%)",
        legend_title_text="policy", height=420)
    fig.update_xaxes(dtick=1)
    return fig
