"""The ``training`` run kind: one training step; with a scenario ``placement:``, the step is
run twice (the default block placement, then the solver's or file's placement) and the summary
gains ``baseline_step_time_s``, ``placement_speedup`` and ``placement`` (where the answer came
from, its objective and status)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sim.metrics import catalogue
from sim.runs.kinds import RunKind, Simulated, register, summary_head
from sim.runs.rundir import csv_text

LAYER_COLUMNS = ("layer", "moe", "attention_s", "dispatch_s", "expert_s", "combine_s", "tp_s",
                 "drop_fraction", "padding_fraction", "imbalance", "expert_load")
LINK_COLUMNS = ("link", "name", "src", "dst", "tier", "capacity_gbps", "bytes", "utilisation")
STAGE_COLUMNS = ("stage", "params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes",
                 "comm_buffers_bytes", "total_bytes")
SCHEDULE_COLUMNS = ("stage", "kind", "microbatch", "chunk", "microbatch_b", "chunk_b",
                    "start_s", "end_s")


def run_with_placement(scenario: Any, cluster: Any, source: str = "",
                       progress: Callable | None = None) -> Any:
    """Run ``scenario`` with its ``placement`` and without; the placed run's result with the
    comparison added to its summary."""
    from sim.moe.run import run_training
    from sim.solve.apply import resolve_placement

    assign, info = resolve_placement(scenario, cluster, source)
    baseline = run_training(scenario, cluster, source).summary["step_time_s"]
    result = run_training(scenario, cluster, source, progress, placement=assign)
    step = result.summary["step_time_s"]
    result.summary.update(baseline_step_time_s=baseline,
                          placement_speedup=baseline / step if step else 0.0, placement=info)
    return result


def text(scenario: Any, cluster: Any, summary: Mapping) -> str:
    """What ``moesim run`` prints: a heading, then the catalogue's ``run`` view."""
    head = (f"# {scenario.name}: one training iteration on {cluster.name} "
            f"({cluster.num_gpus} GPUs)")
    return "\n".join([head, *catalogue.lines(summary, "training")])


def files(scenario: Any, cluster: Any, result: Any, reports: bool = True) -> dict:
    """The files of a training run: summary.json, layers.csv, links.csv, stages.csv (memory per
    GPU of each pipeline stage), schedule.csv (a pipelined iteration's ops) and, with
    ``reports``, report.html and trace.json (Chrome trace format; open in Perfetto)."""
    summary = {**summary_head("training", scenario, cluster), **result.summary}
    out = {"summary.json": summary,
           "layers.csv": csv_text(result.layers, LAYER_COLUMNS),
           "links.csv": csv_text(result.links, LINK_COLUMNS)}
    if "stages" in result.tables:
        out["stages.csv"] = csv_text(result.tables["stages"], STAGE_COLUMNS)
    if "schedule" in result.tables:
        out["schedule.csv"] = csv_text(result.tables["schedule"], SCHEDULE_COLUMNS)
    if reports:
        from sim.report import chrome_trace, render_report

        out["report.html"] = render_report(f"{scenario.name} on {cluster.name}", summary,
                                           result.layers, result.links, result.spans)
        out["trace.json"] = chrome_trace(result.spans, gpu_node=cluster.node_of.tolist())
    return out


def _run(scenario: Any, cluster: Any, source: str = "", progress: Callable | None = None,
         reports: bool = True) -> Simulated:
    from sim.moe.run import run_training

    if scenario.placement is not None:
        result = run_with_placement(scenario, cluster, source, progress)
    else:
        result = run_training(scenario, cluster, source, progress)
    out = files(scenario, cluster, result, reports)
    return Simulated(out, text(scenario, cluster, out["summary.json"]))


TRAINING = register(RunKind(
    "training", "one training step of an MoE model", ("layers", "links"), True, _run))
