"""The ``serving`` run kind: requests served on one GPU, with expert offloading, prefetch and
caching; summary.json, requests.csv and steps.csv."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sim.metrics import catalogue
from sim.runs.kinds import RunKind, Simulated, register, summary_head
from sim.runs.rundir import csv_text

REQUEST_COLUMNS = ("rid", "arrival_s", "prompt_tokens", "output_tokens", "first_token_s",
                   "finish_s", "ttft_s", "latency_s", "normalized_latency_s")
STEP_COLUMNS = ("start_s", "end_s", "prefill", "decode", "tokens", "unique_experts")


def text(scenario: Any, cluster: Any, summary: Mapping) -> str:
    """What ``moesim run`` prints: a heading, then the catalogue's ``run`` view."""
    head = (f"# {scenario.name}: {summary['requests']} requests on one {cluster.gpu.name} "
            f"(offload {summary['mode']})")
    return "\n".join([head, *catalogue.lines(summary, "serving")])


def _run(scenario: Any, cluster: Any, source: str = "", progress: Callable | None = None,
         reports: bool = True) -> Simulated:
    from sim.serving.engine import run_serving

    result = run_serving(scenario, cluster, source)
    summary = {**summary_head("serving", scenario, cluster), **result.summary}
    out = {"summary.json": summary,
           "requests.csv": csv_text(result.requests, REQUEST_COLUMNS),
           "steps.csv": csv_text(result.steps, STEP_COLUMNS)}
    return Simulated(out, text(scenario, cluster, summary))


SERVING = register(RunKind(
    "serving", "requests served on one GPU (offloading, prefetch, caching)",
    ("requests", "steps"), True, _run))
