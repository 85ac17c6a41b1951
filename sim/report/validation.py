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


def measured_vs_predicted_bars(rows: Sequence[Mapping], title: str, unit: str) -> go.Figure:
    """One group of bars per row: the measurement and each prediction. Rows carry ``label``,
    ``measured`` and a mapping ``predicted`` (name -> value), values in ``unit``."""
    labels = [r["label"] for r in rows]
    names = ["measured", *dict.fromkeys(k for r in rows for k in r["predicted"])]
    fig = go.Figure()
    for j, name in enumerate(names):
        ys = [r["measured"] if name == "measured" else r["predicted"].get(name) for r in rows]
        fig.add_trace(go.Bar(x=labels, y=ys, name=name, marker_color=line_colour(j),
                             hovertemplate=f"{name}: %{{y:.1f}} {unit}<extra>%{{x}}</extra>"))
    fig.update_layout(title=title, barmode="group", yaxis_title=unit, height=420)
    return fig


def gemm_measured_vs_predicted(rows: Sequence[Mapping],
                               title: str = "deepgemm-h800-fp8.csv: measured vs predicted"
                               ) -> go.Figure:
    """Throughput of every measured GEMM (one group of bars per row, in the file's order): the
    measurement, the calibrated kernel model and today's roofline, TFLOPS. Rows carry
    ``shape``, ``kind``, ``measured_tflops``, ``calibrated_tflops``, ``roofline_tflops`` and
    ``calibrated_error`` (``sim.calibrate.gemm.errors``)."""
    labels = [f"{r['shape']}" + (" (grouped)" if r["kind"] != "dense" else "") for r in rows]
    fig = go.Figure()
    for j, (key, name) in enumerate((("measured_tflops", "measured"),
                                     ("calibrated_tflops", "calibrated"),
                                     ("roofline_tflops", "roofline"))):
        text = ([f"{r['calibrated_error']:+.1%}" for r in rows] if key == "calibrated_tflops"
                else None)
        fig.add_trace(go.Bar(x=labels, y=[r[key] for r in rows], name=name, text=text,
                             marker_color=line_colour(j),
                             hovertemplate=f"{name}: %{{y:.0f}} TFLOPS<extra>%{{x}}</extra>"))
    fig.update_layout(title=title, barmode="group", height=480,
                      xaxis_title="shape (groups x m x n x k)", yaxis_title="TFLOPS")
    return fig
