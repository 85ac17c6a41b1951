"""Figure of a comparison (``moesim compare``): rows from :func:`sim.runs.compare.compare`;
panels, labels and units from the metric catalogue (its ``figure`` view)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.metrics import catalogue
from sim.metrics.records import CATEGORIES
from sim.report.plots import category_colour, line_colour, ordered_categories

_LOG_SPAN = 20.0  # a serving panel whose values span more than this factor gets a log axis


def panels(kind: str, name: str = "figure") -> list[tuple[str, str, float]]:
    """(row key, axis title with unit, scale) of the catalogue's metrics in view ``name``."""
    return [(m.key, m.heading, m.scale) for m in catalogue.view(kind, name)]


def comparison(rows: Sequence[Mapping], sweep_key: str | None = None) -> go.Figure:
    """Without a sweep: the step breakdown of each variant as stacked bars, plus A2A share, drop
    fraction and inter-node bytes. With a sweep: each metric against the swept value, one line
    per variant."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    kind = rows[0]["kind"] if rows else "training"
    if kind == "serving":
        return _serving(rows, variants, sweep_key)
    figure = panels(kind)
    if sweep_key:
        fig = sweep_lines(rows, sweep_key, figure, cols=2)
        fig.update_layout(title="Routing variants against " + sweep_key,
                          height=300 * -(-len(figure) // 2))
        return fig
    others = figure[1:]  # the first (the step time) is the stacked breakdown
    titles = [f"{figure[0][1]}, slowest GPU"] + [p[1] for p in others]
    fig = make_subplots(rows=1, cols=1 + len(others),
                        column_widths=[0.4] + [0.6 / len(others)] * len(others),
                        subplot_titles=titles)
    for cat in ordered_categories(CATEGORIES):  # every category has its legend entry
        ms = [r.get("breakdown_s", {}).get(cat, 0.0) * 1e3 for r in rows]
        fig.add_trace(go.Bar(x=variants, y=ms, name=cat, marker_color=category_colour(cat),
                             hovertemplate=f"{cat}: %{{y:.3f}} ms<extra></extra>"),
                      row=1, col=1)
    for j, (key, title, scale) in enumerate(others, start=2):
        fig.add_trace(go.Bar(x=variants, y=[(r.get(key) or 0.0) * scale for r in rows],
                             showlegend=False, marker_color="#888",
                             hovertemplate=f"%{{y:.4g}}<extra>{title}</extra>"), row=1, col=j)
    fig.update_layout(title="Routing variants", barmode="stack", height=420,
                      legend_title_text="category")
    return fig


def _serving(rows: Sequence[Mapping], variants: list, sweep_key: str | None) -> go.Figure:
    """Serving rows: one panel per metric, one bar per run (variant and swept value), its value
    printed on it. With a single variant and a sweep the bars are named and coloured by the
    swept value. A panel whose values span more than ``_LOG_SPAN`` x gets a log axis, so that
    one very slow run (e.g. ``prefetch_all``) does not flatten the others."""
    figure = panels("serving")
    cols = 2
    fig = make_subplots(rows=-(-len(figure) // cols), cols=cols,
                        subplot_titles=[p[1] for p in figure])
    by_value = bool(sweep_key) and len(variants) == 1
    labels = [str(r["sweep"]) if by_value else
              f"{r['variant']}" + (f" {r['sweep']}" if sweep_key else "") for r in rows]
    colours = [line_colour(i if by_value else variants.index(r["variant"]))
               for i, r in enumerate(rows)]
    for j, (key, title, scale) in enumerate(figure):
        y = [float(r[key]) * scale for r in rows]
        fig.add_trace(go.Bar(x=labels, y=y, showlegend=False, marker_color=colours,
                             text=[f"{v:.3g}" for v in y], textposition="outside",
                             hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{title}</extra>"),
                      row=j // 2 + 1, col=j % 2 + 1)
        positive = [v for v in y if v > 0]
        if positive and max(positive) > _LOG_SPAN * min(positive):
            fig.update_yaxes(type="log", title_text="log scale", row=j // 2 + 1, col=j % 2 + 1)
    if by_value:
        fig.update_xaxes(title_text=sweep_key)
    fig.update_layout(title="Serving variants" + (f" against {sweep_key}" if sweep_key else ""),
                      height=640)
    return fig


def sweep_lines(rows: Sequence[Mapping], sweep_key: str,
                metrics: Sequence[tuple[str, str, float]] | None = None,
                cols: int | None = None) -> go.Figure:
    """Each metric against the swept value (``row["sweep"]``), one line per variant, one panel
    per metric; ``metrics`` are (row key, axis title with unit, scale), by default what a
    routing policy costs (the catalogue's ``routing`` view of training). A variant keeps its
    colour (its order of first appearance) and has one legend entry; ``cols`` panels per row
    (default: all in one row)."""
    metrics = panels("training", "routing") if metrics is None else metrics
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cols = cols or len(metrics)
    nrows = -(-len(metrics) // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[m[1] for m in metrics])
    for i, v in enumerate(variants):
        mine = [r for r in rows if r["variant"] == v]
        for j, (key, title, scale) in enumerate(metrics):
            fig.add_trace(go.Scatter(
                x=[r["sweep"] for r in mine], y=[r[key] * scale for r in mine], name=v,
                legendgroup=v, showlegend=j == 0, mode="lines+markers",
                line_color=line_colour(i), hovertemplate=f"{v}: %{{y:.4g}}<extra>{title}</extra>"),
                row=j // cols + 1, col=j % cols + 1)
    for j in range(len(metrics)):
        fig.update_xaxes(title_text=sweep_key, row=j // cols + 1, col=j % cols + 1)
    fig.update_layout(title=f"{', '.join(m[1] for m in metrics)} against {sweep_key}",
                      height=380 * nrows, legend_title_text="variant")
    return fig
