"""One self-contained HTML page of a run: a summary table and the four figures.

plotly.js is embedded once, inline, with the first figure; the page needs no network.
"""

from __future__ import annotations

import html as _html
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from sim.metrics import catalogue
from sim.metrics.records import Span
from sim.report import plots
from sim.report.links import link_heatmap

#: ``div`` ids of the figures, in page order.
FIGURE_IDS = ("fig-step-breakdown", "fig-expert-load", "fig-link-utilisation", "fig-link-heatmap",
              "fig-timeline")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table.summary { border-collapse: collapse; margin-bottom: 1.5em; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
table.summary th { text-align: left; font-weight: 600; background: #f4f4f4; }
table.summary td { text-align: right; font-variant-numeric: tabular-nums; }
section.figure { margin-bottom: 2em; }
"""


def summary_rows(summary: Mapping) -> list[tuple[str, str]]:
    """(label with unit, formatted value) rows of the summary table: the metrics of the
    catalogue's ``report`` view that the summary has, in catalogue order, in their display
    units (``kind`` says whose; training when absent)."""
    kind = summary.get("kind", "training")
    return [(m.heading, value) for m, value in catalogue.rows(summary, kind, "report")]


def _table(summary: Mapping) -> str:
    body = "\n".join(
        f'<tr><th scope="row">{_html.escape(h)}</th><td>{_html.escape(v)}</td></tr>'
        for h, v in summary_rows(summary)
    )
    head = "<tr><th>quantity (unit)</th><th>value</th></tr>"  # labels from the catalogue
    return f'<table class="summary">\n{head}\n{body}\n</table>'


def render_report(title: str, summary: Mapping, layers: Sequence[Mapping],
                  links: Sequence[Mapping], spans: Sequence[Span],
                  max_gpus: int = 16, top_links: int = 40) -> str:
    """The whole report as one HTML string (the caller writes it).

    Figures: step breakdown, expert load, the busiest links, every link as a heat map by tier,
    and the timeline, in ``<div>``s with the ids in FIGURE_IDS. plotly.js is inlined once, so
    the page works offline (~5 MB).
    """
    figures: list[tuple[str, str, go.Figure]] = [
        (FIGURE_IDS[0], "Step time", plots.step_breakdown(summary)),
        (FIGURE_IDS[1], "Expert load", plots.expert_load(layers)),
        (FIGURE_IDS[2], "Busiest links", plots.link_utilisation(links, top=top_links)),
        (FIGURE_IDS[3], "Every link", link_heatmap(links)),
        (FIGURE_IDS[4], "Timeline", plots.timeline(spans, max_gpus=max_gpus)),
    ]
    sections = []
    for i, (div_id, heading, fig) in enumerate(figures):
        div = fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False,
                          div_id=div_id, config={"displaylogo": False, "responsive": True})
        sections.append(f'<section class="figure">\n<h2>{_html.escape(heading)}</h2>\n{div}\n'
                        "</section>")
    t = _html.escape(title)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{t}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{t}</h1>",
        "<h2>Summary</h2>",
        _table(summary),
        *sections,
        "</body>",
        "</html>",
        "",
    ])
