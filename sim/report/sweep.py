"""Figure of a sweep table (``moesim sweep``): rows as from :func:`sim.runs.results.load_sweep`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import mean

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.metrics import catalogue
from sim.report.plots import line_colour


def _numeric(values: Sequence) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _label(row: Mapping, fields: Sequence[str]) -> str:
    return ", ".join(f"{f}={row.get(f)}" for f in fields) or "runs"


def sweep_figure(rows: Sequence[Mapping], fields: Sequence[str] = ()) -> go.Figure:
    """The metrics of the catalogue's ``sweep`` view for the run kind (training: step time,
    tokens/s, A2A share, drops; serving: throughput and latencies; benchmark: time and busbw at
    the largest size) against
    the first swept field, one line per value of the other fields. With several seeds a marker
    is their mean and the error bar spans their minimum to maximum. Failed runs are left out.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    kind = next((r["kind"] for r in ok if r.get("kind")), None)
    fig = go.Figure()
    if kind is None:
        return fig.update_layout(title="Sweep: no successful run to plot")
    x_field = fields[0] if fields else "seed"
    panels = [(m.key, m.heading, m.scale) for m in catalogue.view(kind, "sweep")
              if any(r.get(m.key) is not None for r in ok)]
    cols = 2 if len(panels) > 1 else 1
    fig = make_subplots(rows=(len(panels) + 1) // 2, cols=cols,
                        subplot_titles=[p[1] for p in panels])
    xs = list(dict.fromkeys(r.get(x_field) for r in ok))
    numeric = _numeric(xs)
    xs = sorted(xs) if numeric else xs
    lines = list(dict.fromkeys(_label(r, fields[1:]) for r in ok))
    for i, line in enumerate(lines):
        mine = [r for r in ok if _label(r, fields[1:]) == line]
        for j, (column, title, scale) in enumerate(panels):
            pts = _points(mine, x_field, xs, column, scale)
            fig.add_trace(go.Scatter(
                x=[p[0] if numeric else str(p[0]) for p in pts], y=[p[1] for p in pts],
                error_y={"type": "data", "symmetric": False,
                         "array": [p[2] - p[1] for p in pts],
                         "arrayminus": [p[1] - p[3] for p in pts]},
                name=line, legendgroup=line, showlegend=j == 0, mode="lines+markers",
                line_color=line_colour(i),
                hovertemplate=f"{line}: %{{y:.4g}}<extra>{title}</extra>"),
                row=j // cols + 1, col=j % cols + 1)
            fig.update_xaxes(title_text=x_field, row=j // cols + 1, col=j % cols + 1,
                             type=None if numeric else "category")
    fig.update_layout(title=f"Sweep over {', '.join(fields) or 'seeds'}",
                      height=380 * ((len(panels) + 1) // 2))
    return fig


def _points(rows: Sequence[Mapping], x_field: str, xs: Sequence, column: str,
            scale: float) -> list[tuple]:
    """(x, mean, max, min) of ``column`` x ``scale`` over the rows (seeds) at each x."""
    pts = []
    for x in xs:
        ys = [r[column] * scale for r in rows
              if r.get(x_field) == x and isinstance(r.get(column), int | float)]
        if ys:
            pts.append((x, mean(ys), max(ys), min(ys)))
    return pts
