"""Figures of the validation against measurements (``benchmarks/validate.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.report.plots import line_colour


def measured_vs_predicted(rows: Sequence[Mapping], title: str) -> go.Figure:
    """Time against message size, one panel per collective: the measurement (markers), the
    calibrated prediction (solid) and the ideal model's (dashed); log axes. Rows carry
    ``collective``, ``size_bytes``, ``measured_s``, ``calibrated_s``, ``ideal_s``."""
    collectives = list(dict.fromkeys(r["collective"] for r in rows))
    cols = min(len(collectives), 3)
    nrows = -(-len(collectives) // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=collectives)
    series = (("measured_s", "measured", dict(mode="markers")),
              ("calibrated_s", "calibrated", dict(mode="lines")),
              ("ideal_s", "ideal", dict(mode="lines", line=dict(dash="dash"))))
    for i, c in enumerate(collectives):
        mine = sorted((r for r in rows if r["collective"] == c), key=lambda r: r["size_bytes"])
        for j, (key, name, style) in enumerate(series):
            fig.add_trace(go.Scatter(
                x=[r["size_bytes"] for r in mine], y=[r[key] * 1e6 for r in mine], name=name,
                legendgroup=name, showlegend=i == 0, marker_color=line_colour(j),
                hovertemplate=f"{name}: %{{y:.1f}} us at %{{x}} B<extra>{c}</extra>", **style),
                row=i // cols + 1, col=i % cols + 1)
        fig.update_xaxes(type="log", title_text="size (B)", row=i // cols + 1, col=i % cols + 1)
        fig.update_yaxes(type="log", title_text="time (us)", row=i // cols + 1,
                         col=i % cols + 1)
    fig.update_layout(title=title, height=360 * nrows)
    return fig
