"""Per-link heat map of one run: every directed link's utilisation, laid out by tier.

Input: the link rows of a run (``sim.moe.run.link_rows``: ``src``, ``dst``, ``tier``,
``capacity_gbps``, ``bytes``, ``utilisation`` 0..1). Links of one tier usually join two kinds of
device (GPU -> NVSwitch, GPU -> leaf, leaf -> spine): then the tier is a matrix with one side's
devices as rows and the other's as columns, drawn twice, once per direction, so a hot uplink and
its downlink sit in the same cell of two neighbouring panels::

    nic (row → column)          nic (column → row)
              leaf.r0 leaf.r1             leaf.r0 leaf.r1
    n0.g0     ██                n0.g0     ▓▓
    n0.g1             ░░        n0.g1             ░░

A tier whose devices cannot be split in two sides (a GPU-to-GPU mesh) is one square matrix,
sender rows and receiver columns. Cells without a link are empty; every panel shares one colour
scale, 0-100 % busy over the step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_PX_PER_ROW = 12  # pixels per matrix row
_MIN_PANEL_PX = 130


def two_sides(rows: Sequence[Mapping]) -> tuple[list[str], list[str]] | None:
    """Split the endpoints of ``rows`` (links ``src`` -> ``dst``) into two sides with every link
    between the sides, or None when no such split exists (an odd cycle, e.g. a GPU mesh).

    In each connected group the first link's ``src`` is on the first side; endpoints keep their
    order of first appearance, so builder order (GPUs first, then switches) is preserved.
    """
    adj: dict[str, list[str]] = defaultdict(list)
    order: dict[str, int] = {}
    for r in rows:
        s, d = str(r["src"]), str(r["dst"])
        adj[s].append(d)
        adj[d].append(s)
        order.setdefault(s, len(order))
        order.setdefault(d, len(order))
    side: dict[str, int] = {}
    for r in rows:
        start = str(r["src"])
        if start in side:
            continue
        side[start] = 0
        queue = [start]
        while queue:
            u = queue.pop()
            for v in adj[u]:
                if v not in side:
                    side[v] = 1 - side[u]
                    queue.append(v)
                elif side[v] == side[u]:
                    return None
    ranked = sorted(side, key=order.__getitem__)
    return [n for n in ranked if side[n] == 0], [n for n in ranked if side[n] == 1]


def _matrix(rows: Sequence[Mapping], row_names: list[str], col_names: list[str],
            reverse: bool) -> tuple[np.ndarray, list[list[str]]]:
    """Utilisation (%) of link row -> column (or column -> row when ``reverse``); the busiest
    of parallel links when a pair has several; hover text per cell."""
    ri = {n: i for i, n in enumerate(row_names)}
    ci = {n: j for j, n in enumerate(col_names)}
    z = np.full((len(row_names), len(col_names)), np.nan)
    count = np.zeros(z.shape, dtype=int)
    text = [[""] * len(col_names) for _ in row_names]
    for r in rows:
        a, b = (str(r["dst"]), str(r["src"])) if reverse else (str(r["src"]), str(r["dst"]))
        if a not in ri or b not in ci:
            continue
        i, j = ri[a], ci[b]
        pct = float(r.get("utilisation", 0.0)) * 100.0
        count[i, j] += 1
        if np.isnan(z[i, j]) or pct > z[i, j]:
            z[i, j] = pct
            text[i][j] = (f"{r['src']} → {r['dst']}<br>{r.get('tier', '')}, "
                          f"{float(r.get('capacity_gbps', 0.0)):.0f} Gb/s<br>"
                          f"{float(r.get('bytes', 0.0)) / 1e6:.3f} MB, {pct:.1f}% busy")
    for i, j in zip(*np.nonzero(count > 1), strict=True):
        text[i][j] += f"<br>(busiest of {count[i, j]} parallel links)"
    return z, text


def link_heatmap(links: Sequence[Mapping], tiers: Sequence[str] | None = None) -> go.Figure:
    """Utilisation of every directed link (%, mean over the step), one heat map per tier and
    direction (see the module docstring for the layout).

    ``tiers`` picks and orders the tiers shown (default: all, in order of first appearance).
    Every heat map trace has ``meta = {"tier": ..., "direction": "forward" | "reverse" |
    "square"}``; hover names the link, its capacity, bytes carried and utilisation.
    """
    by_tier: dict[str, list[Mapping]] = defaultdict(list)
    for r in links:
        by_tier[str(r.get("tier", ""))].append(r)
    if tiers is None:
        tiers = list(by_tier)
    unknown = [t for t in tiers if t not in by_tier]
    if unknown:
        raise ValueError(f"no links of tier {unknown}; tiers are {list(by_tier)}")

    panels = []  # (tier, sides or None, row names, column names)
    for t in tiers:
        sides = two_sides(by_tier[t])
        if sides is None:
            names = list(dict.fromkeys(n for r in by_tier[t] for n in (str(r["src"]),
                                                                        str(r["dst"]))))
            panels.append((t, None, names, names))
        else:
            panels.append((t, sides, sides[0], sides[1]))
    heights = [max(_MIN_PANEL_PX, _PX_PER_ROW * len(p[2])) for p in panels]
    titles: list[str] = []
    specs = []
    for t, sides, _, _ in panels:
        if sides is None:
            titles += [f"{t} (row sends to column)"]
            specs.append([{"colspan": 2}, None])
        else:
            titles += [f"{t} (row → column)", f"{t} (column → row)"]
            specs.append([{}, {}])
    fig = make_subplots(rows=max(len(panels), 1), cols=2, specs=specs or None,
                        row_heights=heights or None, subplot_titles=titles,
                        horizontal_spacing=0.12, vertical_spacing=min(0.08, 0.3 / len(panels))
                        if panels else 0.08)
    for k, (t, sides, row_names, col_names) in enumerate(panels, start=1):
        directions = ("square",) if sides is None else ("forward", "reverse")
        for c, direction in enumerate(directions, start=1):
            z, text = _matrix(by_tier[t], row_names, col_names, direction == "reverse")
            fig.add_trace(go.Heatmap(
                z=z, x=col_names, y=row_names, text=text, coloraxis="coloraxis",
                hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1,
                meta={"tier": t, "direction": direction}, name=f"{t} {direction}",
            ), row=k, col=c)
            fig.update_yaxes(autorange="reversed", type="category", row=k, col=c)
            fig.update_xaxes(type="category", row=k, col=c)
    fig.update_layout(
        title="Link utilisation over the step (% busy), by tier and direction",
        coloraxis=dict(colorscale="Viridis", cmin=0.0, cmax=100.0,
                       colorbar=dict(title="busy (%)")),
        height=120 + int(sum(heights) * 1.15),
    )
    return fig
