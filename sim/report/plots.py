"""Figures of one run: pure functions from run records to ``plotly.graph_objects.Figure``.

Nothing here shows, writes or opens anything; the caller decides where a figure goes.
Inputs are the plain records of a run (summary dict, per-layer dicts, per-link dicts, spans);
times are seconds in, milliseconds on the axes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.metrics.records import CATEGORIES, Span

#: One fixed colour per span category, shared by every figure.
CATEGORY_COLOURS: dict[str, str] = {
    "attention": "#4C78A8",
    "gate": "#B279A2",
    "dispatch": "#F58518",
    "expert": "#54A24B",
    "combine": "#E45756",
    "tp": "#EECA3B",
    "allreduce": "#72B7B2",
}
_OTHER_COLOUR = "#9D9D9D"

#: Colours of link tiers (cycled in order of first appearance; unknown tiers get the next one).
_TIER_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#B279A2", "#72B7B2", "#9D755D")

_MS = 1e3  # seconds -> milliseconds


def category_colour(category: str) -> str:
    """The fixed colour of a span category (grey for unknown categories)."""
    return CATEGORY_COLOURS.get(category, _OTHER_COLOUR)


def line_colour(i: int) -> str:
    """The ``i``-th colour of a fixed palette for lines and variants (cycles after 10)."""
    palette = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B",
               "#9D755D", "#FF9DA6", "#BAB0AC")
    return palette[i % len(palette)]


def ordered_categories(names: Iterable[str]) -> list[str]:
    """CATEGORIES order first, then any unknown categories alphabetically."""
    names = set(names)
    known = [c for c in CATEGORIES if c in names]
    return known + sorted(names - set(CATEGORIES))


# --------------------------------------------------------------------------- step breakdown


def step_breakdown(summary: Mapping) -> go.Figure:
    """Horizontal stacked bar of ``summary["breakdown_s"]`` (ms), one trace per category: every
    category of CATEGORIES (and any other the summary has) has its legend entry, a zero one too,
    so a reader sees that it is zero rather than missing.

    The step time (``summary["step_time_s"]``) is drawn as a dashed line and annotated.
    """
    breakdown: Mapping[str, float] = summary.get("breakdown_s") or {}
    step_ms = float(summary.get("step_time_s", 0.0)) * _MS
    fig = go.Figure()
    for cat in ordered_categories({*CATEGORIES, *breakdown}):
        ms = float(breakdown.get(cat, 0.0)) * _MS
        share = ms / step_ms * 100.0 if step_ms > 0 else float("nan")
        fig.add_trace(go.Bar(
            name=cat, y=["slowest GPU"], x=[ms], orientation="h",
            marker_color=category_colour(cat),
            customdata=[[share]],
            hovertemplate=f"{cat}: %{{x:.3f}} ms (%{{customdata[0]:.1f}}% of step)<extra></extra>",
        ))
    if step_ms > 0:
        fig.add_vline(x=step_ms, line_dash="dash", line_color="black")
        fig.add_annotation(x=step_ms, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"step {step_ms:.3f} ms")
    fig.update_layout(
        title="Step time breakdown (slowest GPU)",
        barmode="stack", height=260, legend_title_text="category",
        xaxis_title="time (ms)", yaxis_title="",
    )
    return fig


# --------------------------------------------------------------------------- expert load


def _moe_layers(layers: Sequence[Mapping]) -> list[Mapping]:
    return [row for row in layers if row.get("moe") and len(row.get("expert_load") or ()) > 0]


def expert_load(layers: Sequence[Mapping]) -> go.Figure:
    """Heat map of routed tokens, one row per MoE layer and one column per expert.

    Dense layers are left out. Layers with fewer experts than the widest are padded with gaps.
    Hover shows the tokens and the ratio to that layer's mean load.
    """
    moe = _moe_layers(layers)
    n_exp = max((len(row["expert_load"]) for row in moe), default=0)
    z = np.full((len(moe), n_exp), np.nan)
    for i, row in enumerate(moe):
        load = np.asarray(row["expert_load"], dtype=float)
        z[i, : len(load)] = load
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(z, axis=1, keepdims=True) if len(moe) and n_exp else z
        ratio = z / mean
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_exp)), y=[f"L{row['layer']}" for row in moe],
        customdata=ratio, colorscale="Viridis", colorbar_title="tokens",
        hovertemplate=("layer %{y}, expert %{x}<br>%{z:.0f} tokens"
                       " (%{customdata:.2f}x layer mean)<extra></extra>"),
    ))
    fig.update_layout(
        title="Expert load (routed tokens per expert, MoE layers)",
        xaxis_title="expert", yaxis_title="layer",
        height=max(260, 60 + 24 * len(moe)),
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def expert_load_bars(layers: Sequence[Mapping], layer: int) -> go.Figure:
    """Bar chart of routed tokens per expert for one layer, with the mean load as a line."""
    rows = [row for row in layers if row.get("layer") == layer]
    if not rows:
        raise ValueError(f"no layer {layer}; layers are {[row.get('layer') for row in layers]}")
    load = list(rows[0].get("expert_load") or [])
    fig = go.Figure(go.Bar(
        x=list(range(len(load))), y=load, marker_color=category_colour("expert"),
        hovertemplate="expert %{x}: %{y} tokens<extra></extra>", name="tokens",
    ))
    if load:
        fig.add_hline(y=float(np.mean(load)), line_dash="dash", line_color="black",
                      annotation_text="mean", annotation_position="top left")
    fig.update_layout(title=f"Expert load, layer {layer}", xaxis_title="expert",
                      yaxis_title="routed tokens", showlegend=False)
    return fig


# --------------------------------------------------------------------------- links


def link_names(links: Sequence[Mapping]) -> list[str]:
    """Each link named by its ends, ``n0.g3 → n0.nvswitch``; parallel links between the same
    two ends get `` (2)``, `` (3)``... in order."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for r in links:
        name = f"{r.get('src', '?')} → {r.get('dst', '?')}"
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _tier_colours(tiers: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tier in tiers:
        if tier not in out:
            out[tier] = _TIER_PALETTE[len(out) % len(_TIER_PALETTE)]
    return out


def link_utilisation(links: Sequence[Mapping], top: int = 40) -> go.Figure:
    """The ``top`` busiest links (utilisation %, descending) and a per-tier summary.

    Left: one bar per link, named by its ends (:func:`link_names`), coloured by tier, hover with
    tier, capacity and bytes.
    Right: mean bar and max marker of utilisation per tier, hover with link count and bytes.
    Trace 0 is the link bar chart; the tier summary follows.
    """
    names = dict(zip(map(id, links), link_names(links), strict=True))
    ordered = sorted(links, key=lambda r: float(r.get("utilisation", 0.0)), reverse=True)
    busiest = ordered[: max(int(top), 0)]
    colours = _tier_colours(str(r.get("tier", "")) for r in ordered)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.72, 0.28], horizontal_spacing=0.08,
                        subplot_titles=(f"Busiest {len(busiest)} of {len(links)} links",
                                        "Per tier"))
    fig.add_trace(go.Bar(
        x=[names[id(r)] for r in busiest],
        y=[float(r.get("utilisation", 0.0)) * 100.0 for r in busiest],
        marker_color=[colours[str(r.get("tier", ""))] for r in busiest],
        customdata=[[r.get("src", ""), r.get("dst", ""), r.get("tier", ""),
                     float(r.get("capacity_gbps", 0.0)), float(r.get("bytes", 0.0)) / 1e6]
                    for r in busiest],
        hovertemplate=("%{x}<br>"
                       "tier %{customdata[2]}, %{customdata[3]:.0f} Gb/s<br>"
                       "%{customdata[4]:.3f} MB, %{y:.1f}% busy<extra></extra>"),
        name="link", showlegend=False,
    ), row=1, col=1)

    by_tier: dict[str, list[Mapping]] = defaultdict(list)
    for r in links:
        by_tier[str(r.get("tier", ""))].append(r)
    tiers = list(colours)
    util = {t: np.array([float(r.get("utilisation", 0.0)) for r in by_tier[t]]) * 100.0
            for t in tiers}
    tier_bytes = [sum(float(r.get("bytes", 0.0)) for r in by_tier[t]) / 1e6 for t in tiers]
    fig.add_trace(go.Bar(
        x=tiers, y=[float(util[t].mean()) for t in tiers],
        marker_color=[colours[t] for t in tiers], name="mean",
        customdata=[[len(by_tier[t]), b] for t, b in zip(tiers, tier_bytes, strict=True)],
        hovertemplate=("tier %{x}: mean %{y:.1f}% over %{customdata[0]} links<br>"
                       "%{customdata[1]:.3f} MB in total<extra></extra>"),
    ), row=1, col=2)
    fig.add_trace(go.Scatter(
        x=tiers, y=[float(util[t].max()) for t in tiers], mode="markers", name="max",
        marker=dict(symbol="line-ew-open", size=18, color="black", line_width=2),
        hovertemplate="tier %{x}: max %{y:.1f}%<extra></extra>",
    ), row=1, col=2)
    fig.update_layout(title="Link utilisation over the step", bargap=0.15,
                      legend_title_text="per tier")
    fig.update_xaxes(title_text="link", type="category", row=1, col=1)
    fig.update_xaxes(title_text="tier", type="category", row=1, col=2)
    fig.update_yaxes(title_text="utilisation (%)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="utilisation (%)", rangemode="tozero", row=1, col=2)
    return fig


# --------------------------------------------------------------------------- timeline


def select_gpus(spans: Sequence[Span], max_gpus: int) -> list[int]:
    """GPU ranks to show: all when few, else evenly spaced ranks always including the slowest.

    The slowest GPU is the one whose last span ends latest (the critical path). Sorted ascending.
    """
    last_end: dict[int, float] = {}
    for s in spans:
        if s.end_s > last_end.get(s.gpu, -np.inf):
            last_end[s.gpu] = s.end_s
    ranks = sorted(last_end)
    if len(ranks) <= max_gpus:
        return ranks
    if max_gpus <= 0:
        return []
    slowest = max(ranks, key=lambda g: (last_end[g], -g))
    picks = {ranks[int(i)] for i in np.linspace(0, len(ranks) - 1, max_gpus).round()}
    if slowest not in picks:
        # replace the pick closest to the slowest GPU so the count stays max_gpus
        picks.remove(min(picks, key=lambda g: abs(g - slowest)))
        picks.add(slowest)
    return sorted(picks)


def timeline(spans: Sequence[Span], max_gpus: int = 16) -> go.Figure:
    """Gantt chart: one row per GPU (at most ``max_gpus``), one bar per span, coloured by category.

    One horizontal ``go.Bar`` trace per category (``base`` = start, ``x`` = duration, ms) keeps
    the figure small and fast for ~100k spans.
    """
    gpus = select_gpus(spans, max_gpus)
    shown = set(gpus)
    per_cat: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        if s.gpu in shown:
            per_cat[s.category].append(s)
    n_gpus = len({s.gpu for s in spans})
    labels = [f"gpu {g}" for g in gpus]
    fig = go.Figure()
    for cat in ordered_categories(per_cat):
        rows = per_cat[cat]
        start = np.fromiter((s.start_s for s in rows), float, len(rows)) * _MS
        end = np.fromiter((s.end_s for s in rows), float, len(rows)) * _MS
        fig.add_trace(go.Bar(
            name=cat, orientation="h", base=start, x=end - start,
            y=[f"gpu {s.gpu}" for s in rows],
            customdata=[[s.layer, s.phase, t0] for s, t0 in zip(rows, start.tolist(),
                                                                 strict=True)],
            marker=dict(color=category_colour(cat), line_width=0),
            hovertemplate=(f"{cat} L%{{customdata[0]}} %{{customdata[1]}}<br>"
                           "start %{customdata[2]:.3f} ms, %{x:.3f} ms long<extra>%{y}</extra>"),
        ))
    title = "Timeline by GPU"
    if len(gpus) < n_gpus:
        title += f" ({len(gpus)} of {n_gpus} GPUs shown)"
    fig.update_layout(
        title=title, barmode="overlay", bargap=0.2, legend_title_text="category",
        xaxis_title="time (ms)", yaxis_title="GPU",
        height=max(300, 120 + 28 * len(gpus)),
    )
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels,
                     autorange="reversed")
    return fig
