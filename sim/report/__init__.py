"""Reports of a run: plotly figures, a self-contained HTML page and a Chrome trace.

Depends only on run records (:mod:`sim.metrics`), never on the engine.
"""

from sim.report.html import render_report, summary_rows
from sim.report.links import link_heatmap
from sim.report.plots import (
    CATEGORY_COLOURS,
    category_colour,
    expert_load,
    expert_load_bars,
    link_utilisation,
    select_gpus,
    step_breakdown,
    timeline,
)
from sim.report.trace import chrome_trace

__all__ = [
    "CATEGORY_COLOURS",
    "category_colour",
    "chrome_trace",
    "expert_load",
    "expert_load_bars",
    "link_heatmap",
    "link_utilisation",
    "render_report",
    "select_gpus",
    "step_breakdown",
    "summary_rows",
    "timeline",
]
