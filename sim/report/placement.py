"""Figures of expert placements: where each GPU's load comes from, and what each solver bought.

Inputs are plain data: the (layers, experts) token loads of a placement problem, the
(layers, experts) GPU index of each expert per placement, and the flat rows of
``sim.runs.placement.placement_rows``. Nothing here imports a solver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.report.plots import line_colour

#: Objective terms of ``placement_rows`` and their bar colours.
TERMS = (("dispatch_s", "dispatch", "#F58518"), ("interlayer_s", "inter-layer", "#B279A2"),
         ("balance_s", "balance (straggler)", "#54A24B"))


def gpu_loads(load: np.ndarray, assign: np.ndarray, gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, experts), each (layers, gpus): the tokens routed to the experts each GPU holds
    in each layer, and how many experts it holds."""
    load = np.asarray(load, dtype=float)
    assign = np.asarray(assign, dtype=np.int64)
    tokens = np.zeros((load.shape[0], gpus))
    experts = np.zeros((load.shape[0], gpus), dtype=np.int64)
    for li in range(load.shape[0]):
        tokens[li] = np.bincount(assign[li], weights=load[li], minlength=gpus)
        experts[li] = np.bincount(assign[li], minlength=gpus)
    return tokens, experts


def placement_load(load: np.ndarray, assigns: Mapping[str, np.ndarray], gpus: int) -> go.Figure:
    """One heat map per placement (stacked): rows MoE layers, columns GPUs, colour = the tokens
    routed to that GPU's experts / the layer's mean over GPUs (1 = a fair share, the row's
    maximum is the straggler), cell text = experts held. One diverging colour scale centred on
    1 for every panel; hover gives tokens, experts and the ratio."""
    names = list(assigns)
    panels = [gpu_loads(load, assigns[n], gpus) for n in names]
    ratios = []
    for tokens, _ in panels:
        mean = tokens.mean(axis=1, keepdims=True)
        ratios.append(np.divide(tokens, mean, out=np.zeros_like(tokens), where=mean > 0))
    top = max([float(r.max()) for r in ratios if r.size] + [2.0])
    layers = np.asarray(load).shape[0]
    fig = make_subplots(rows=max(len(names), 1), cols=1, shared_xaxes=True,
                        vertical_spacing=0.25 / max(len(names), 1),
                        subplot_titles=[f"{n}: straggler {r.max(axis=1).mean():.2f}x the mean"
                                        for n, r in zip(names, ratios, strict=True)])
    for k, (name, (tokens, experts), ratio) in enumerate(
            zip(names, panels, ratios, strict=True), start=1):
        fig.add_trace(go.Heatmap(
            z=ratio, x=list(range(gpus)), y=[f"L{li}" for li in range(layers)],
            text=experts, texttemplate="%{text}", customdata=tokens, coloraxis="coloraxis",
            name=name, meta={"placement": name}, xgap=1, ygap=1,
            hovertemplate=(f"{name}, layer %{{y}}, GPU %{{x}}<br>%{{text}} experts, "
                           "%{customdata:.0f} tokens<br>%{z:.2f}x the layer mean"
                           "<extra></extra>")), row=k, col=1)
        fig.update_yaxes(autorange="reversed", title_text="MoE layer", row=k, col=1)
    fig.update_xaxes(title_text="GPU of the expert-parallel group", row=len(names), col=1)
    fig.update_layout(
        title="Load per GPU and layer / layer mean (cell: experts held)",
        coloraxis=dict(colorscale="RdBu_r", cmin=0.0, cmax=top, cmid=1.0,
                       colorbar=dict(title="load / mean")),
        height=120 + len(names) * (70 + 28 * layers),
    )
    return fig


def placement_summary(rows: Sequence[Mapping]) -> go.Figure:
    """Rows of ``placement_rows`` side by side: the objective terms (ms, stacked), the simulated
    step time (ms, with the speedup over the first row) and the solver's wall time (s)."""
    names = [str(r["placement"]) for r in rows]
    fig = make_subplots(rows=1, cols=3, column_widths=[0.4, 0.35, 0.25],
                        subplot_titles=("objective (ms of link and GPU time)",
                                        "simulated step (ms)", "solve time (s)"))
    for key, label, colour in TERMS:
        fig.add_trace(go.Bar(x=names, y=[float(r[key]) * 1e3 for r in rows], name=label,
                             marker_color=colour,
                             hovertemplate=f"{label}: %{{y:.3f}} ms<extra>%{{x}}</extra>"),
                      row=1, col=1)
    colours = [line_colour(i) for i in range(len(rows))]
    fig.add_trace(go.Bar(
        x=names, y=[float(r["step_time_s"]) * 1e3 for r in rows], marker_color=colours,
        text=[f"{float(r['speedup']):.2f}x" for r in rows], textposition="outside",
        showlegend=False, name="step",
        hovertemplate="%{x}: %{y:.3f} ms (%{text} vs the first)<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Bar(
        x=names, y=[float(r["wall_s"]) for r in rows], marker_color=colours, showlegend=False,
        name="solve", text=[r.get("status", "") for r in rows], textposition="outside",
        textangle=0,
        hovertemplate="%{x}: %{y:.2f} s, %{text}<extra></extra>"), row=1, col=3)
    fig.update_yaxes(title_text="ms", row=1, col=1)
    fig.update_yaxes(title_text="ms", rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="s", row=1, col=3)
    fig.update_layout(title="Placements: objective, simulated step and solve time",
                      barmode="stack", height=420, legend_title_text="objective term")
    return fig
