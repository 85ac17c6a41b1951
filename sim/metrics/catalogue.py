"""The metric catalogue: every key of every run kind's summary, named once.

Each :class:`Metric` says what a summary key means (label, SI unit, description), which run
kinds have it, how people read it (display unit, short column head) and where it is shown
(``views``). The terminal summary of ``moesim run``, report.html, the tables and figures of
``moesim compare`` and ``moesim sweep``, and ``docs/metrics.md`` all draw from here; no other list
of metric names exists. A benchmark's per-size rows are the fields ``within="results"``.

Views:

* ``run``: the lines ``moesim run`` prints; ``report``: the summary table of report.html;
* ``compare``: the columns of ``moesim compare`` (terminal, compare.csv, compare.json);
* ``figure``: the panels of the compare figure; ``sweep``: the panels of sweep.html (the
  kind's main metric first); ``routing``: what a routing policy costs (``sweep_lines``).

A view written ``name@kind`` applies to that kind only (a metric several kinds share).

    python -m sim.metrics.catalogue --write docs/metrics.md     # regenerate the document
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("training", "serving", "benchmark", "dispatch")
VIEWS = ("run", "report", "compare", "figure", "sweep", "routing")

#: Display unit -> (the SI unit it shows, factor from the SI value).
DISPLAY: dict[str, tuple[str, float]] = {
    "ms": ("s", 1e3), "us": ("s", 1e6), "s": ("s", 1.0),
    "%": ("1", 100.0), "GB": ("B", 1e-9), "MB": ("B", 1e-6), "GiB": ("B", 2.0**-30),
    "B": ("B", 1.0), "GB/s": ("Gbit/s", 1 / 8), "Gbit/s": ("Gbit/s", 1.0),
    "tokens/s": ("tokens/s", 1.0), "x": ("x", 1.0), "": ("", 1.0),
}


@dataclass(frozen=True)
class Metric:
    """One summary key. ``unit`` is the SI unit of the value in summary.json (``1`` for a
    fraction, ``""`` for a count or a label, ``x`` for a ratio); ``show`` the unit people read
    it in (a key of DISPLAY); ``short`` the head of its terminal table column; ``better``
    ``lower`` or ``higher`` when there is a direction; ``main`` the kinds whose headline it is."""

    key: str
    label: str
    unit: str
    kinds: tuple[str, ...]
    description: str
    show: str = ""
    short: str = ""
    views: tuple[str, ...] = ()
    better: str | None = None
    main: tuple[str, ...] = ()
    within: str | None = None

    @property
    def heading(self) -> str:
        """``label (display unit)``, e.g. ``step time (ms)``."""
        return f"{self.label} ({self.show})" if self.show else self.label

    @property
    def scale(self) -> float:
        """Factor from the SI value to the display unit."""
        return DISPLAY[self.show][1]

    def display(self, value: Any) -> Any:
        """The value in its display unit (numbers only; anything else as it is)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        return value * self.scale

    def format(self, value: Any) -> str:
        """The value for people: display unit, 4 significant digits (:func:`format_number`);
        a mapping as ``key value, ...``; None as ``-``."""
        if value is None:
            return "-"
        if isinstance(value, Mapping):
            return ", ".join(f"{k} {self.format(v)}" for k, v in value.items()
                             if not isinstance(v, int | float) or v)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return str(value)
        return format_number(self.display(value))


def format_number(value: float) -> str:
    """Compact, readable number: 4 significant digits, thousands separators for big values."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v != 0 and abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.4g}"


T, S, B, D = ("training",), ("serving",), ("benchmark",), ("dispatch",)
TS = ("training", "serving")
ALL = KINDS

#: The catalogue, in display order within each kind.
METRICS: tuple[Metric, ...] = (
    # ---- every kind: what the run was
    Metric("kind", "run kind", "", ALL, "Which run kind produced the summary: training, serving "
           "or benchmark.", views=("compare",)),
    Metric("scenario", "scenario", "", ALL, "The scenario as validated, after --set overrides "
           "(a mapping)."),
    Metric("cluster", "cluster", "", ALL, "The cluster: topology name, GPUs, nodes, GPU model "
           "(a mapping)."),
    # ---- dispatch: one MoE dispatch and combine (DeepEP's test)
    Metric("dispatcher", "dispatcher", "", D, "alltoall, deepep or allgather "
           "(sim.moe.dispatchers).", views=("run",)),
    Metric("experts", "experts", "", D, "Experts of the layer: the scenario's rounded down to a "
           "multiple of the GPU count, as DeepEP's test.", views=("run",)),
    Metric("nodes", "servers", "", D, "Servers of the cluster.", views=("run",)),
    Metric("dispatch_time_s", "dispatch time", "s", D, "One dispatch, until the last GPU has "
           "received its tokens.", show="us", short="dispatch us", views=("run", "sweep"),
           better="lower", main=D),
    Metric("combine_time_s", "combine time", "s", D, "One combine (after the dispatch, from a "
           "barrier), until the last GPU has its outputs back.", show="us",
           short="combine us", views=("run", "sweep"), better="lower"),
    Metric("dispatch_rdma_gbps", "dispatch RDMA bandwidth (DeepEP's counting)", "Gbit/s", D,
           "(token, destination node) pairs, the sender's own node included, x bytes per "
           "token / the GPU's dispatch time; mean over GPUs.", show="GB/s",
           views=("run", "sweep"), better="higher"),
    Metric("dispatch_nvl_gbps", "dispatch NVLink bandwidth (DeepEP's counting)", "Gbit/s", D,
           "Tokens a GPU receives, its own included, x bytes per token / its dispatch time; "
           "mean over GPUs.", show="GB/s", views=("run", "sweep"), better="higher"),
    Metric("combine_rdma_gbps", "combine RDMA bandwidth (DeepEP's counting)", "Gbit/s", D,
           "As the dispatch's, with the combine's bytes and time.", show="GB/s",
           views=("run", "sweep"), better="higher"),
    Metric("combine_nvl_gbps", "combine NVLink bandwidth (DeepEP's counting)", "Gbit/s", D,
           "As the dispatch's, with the combine's bytes and time.", show="GB/s",
           views=("run", "sweep"), better="higher"),
    Metric("nodes_per_token", "servers per token", "", D, "Distinct destination servers of a "
           "token (its own included), mean.", views=("run",)),
    Metric("gpus_per_token", "GPUs per token", "", D, "Distinct destination GPUs of a token "
           "(its own included), mean.", views=("run",)),
    # ---- training
    Metric("iteration_time_s", "iteration time", "s", T, "Simulated time of one training "
           "iteration: the pipeline schedule over every micro-batch, the exposed gradient "
           "reduction, the exposed parameter gather and the optimizer step.", show="ms",
           short="iter ms", views=("run", "report"), better="lower"),
    Metric("step_time_s", "step time", "s", T, "The iteration before its optimizer "
           "step: the last GPU done and every gradient reduction finished (one micro-batch on "
           "one stage: the training step).", show="ms", short="step ms",
           views=("run", "report", "compare", "figure", "sweep", "routing"), better="lower",
           main=T),
    Metric("tokens_per_s", "throughput", "tokens/s", TS, "Training: tokens of the iteration "
           "(global batch x sequence) / iteration time. Serving: output tokens / makespan.",
           show="tokens/s", short="tok/s",
           views=("run", "report", "compare", "sweep", "figure@serving"), better="higher",
           main=S),
    Metric("tokens_per_s_per_gpu", "throughput per GPU", "tokens/s", T, "tokens_per_s / GPUs.",
           show="tokens/s", short="tok/s/GPU", views=("run", "report", "compare"),
           better="higher"),
    Metric("tflops_per_gpu", "TFLOP/s per GPU", "", T, "Megatron-LM's logged throughput: "
           "num_floating_point_operations of the global batch / (iteration time x GPUs) / "
           "1e12 (sim/training/flops.py).", short="TFLOP/s", views=("run", "report", "compare"),
           better="higher"),
    Metric("mfu", "MFU", "1", T, "Model FLOP utilisation: TFLOP/s per GPU / the GPU's dense "
           "BF16 tensor peak.", show="%", short="MFU %", views=("run", "report", "compare"),
           better="higher"),
    Metric("iteration_flops", "FLOP per iteration", "", T, "Megatron-LM's FLOP count of the "
           "global batch (forward and backward).", views=("report",)),
    Metric("bubble_fraction", "pipeline bubble", "1", T, "1 - busy / (stages x schedule "
           "time): the idle share of the pipeline stages.", show="%", short="bubble %",
           views=("run", "report", "compare"), better="lower"),
    Metric("pipeline_time_s", "schedule time", "s", T, "The schedule's makespan: the first "
           "forward to the last backward of any stage.", show="ms", views=("report",)),
    Metric("exposed_comm_s", "exposed communication", "s", T, "Communication left on the "
           "critical path, by kind: tp (the busiest stage's tensor-parallel exchanges), ep "
           "(its dispatch and combine not hidden under compute), pp (schedule time gained "
           "with free pipeline sends), dp (gradient reduction past the backward and the "
           "exposed parameter gather).", show="ms", views=("run",)),
    Metric("optimizer_time_s", "optimizer step", "s", T, "The optimizer step on the GPU "
           "updating the most parameters, memory bound (30 bytes of HBM traffic per "
           "parameter).", show="ms", views=("run", "report")),
    Metric("param_gather_time_s", "exposed parameter gather", "s", T, "Distributed optimizer: "
           "the parameter AllGather left exposed (with overlap_param_gather, the first "
           "chunk's).", show="ms", views=("report",)),
    Metric("p2p_time_s", "pipeline send", "s", T, "One stage-to-stage send of a micro-batch's "
           "activations, every GPU of a stage at once.", show="us", views=("report",)),
    Metric("memory_per_gpu_bytes", "memory per GPU", "B", T, "The fullest stage's memory per "
           "GPU by part: params, grads, optimizer, activations (the micro-batches the schedule "
           "holds at its peak), comm_buffers, total.", show="GiB", views=("run",)),
    Metric("memory_stage", "fullest stage", "", T, "The pipeline stage memory_per_gpu_bytes "
           "is of.", views=("report",)),
    Metric("memory_fits", "fits in memory", "", T, "Every stage's total within the GPU's "
           "HBM (a run that does not fit needs training.allow_oom).", views=("run", "report")),
    Metric("hbm_bytes", "GPU memory", "B", T, "The GPU's HBM capacity.", show="GiB",
           views=("report",)),
    Metric("global_batch_size", "global batch", "", T, "Sequences per iteration.",
           views=("report",)),
    Metric("microbatches", "micro-batches", "", T, "Micro-batches per pipeline and "
           "iteration.", views=("run", "report")),
    Metric("pipeline_schedule", "schedule", "", T, "The pipeline schedule.",
           views=("report",)),
    Metric("parallel", "parallel layout", "", T, "tp, pp, vpp, ep, etp, dp and edp sizes.",
           views=("report",)),
    Metric("a2a_time_s", "All-to-All time", "s", T, "Dispatch + combine time per GPU (waiting for "
           "its data included), mean over GPUs.", show="ms", short="A2A ms",
           views=("run", "report", "compare"), better="lower"),
    Metric("a2a_fraction", "All-to-All share of the step", "1", T, "a2a_time_s / step_time_s.",
           show="%", short="A2A %", views=("run", "report", "compare", "figure", "sweep"),
           better="lower"),
    Metric("compute_time_s", "compute time", "s", T, "The critical GPU's attention, gate and "
           "expert compute.", show="ms", views=("run", "report")),
    Metric("tp_time_s", "tensor-parallel communication", "s", T, "The critical GPU's AllGather "
           "and ReduceScatter time of tensor (and expert tensor) parallelism.", show="ms",
           views=("run", "report")),
    Metric("allreduce_time_s", "exposed gradient AllReduce", "s", T, "Gradient reduction time "
           "left after the backward pass (not hidden under it).", show="ms",
           views=("run", "report")),
    Metric("drop_fraction", "dropped pairs", "1", T, "(token, expert) pairs the router chose that "
           "capacity dropped, of all chosen.", show="%", short="drop %",
           views=("run", "report", "compare", "figure", "sweep", "routing"), better="lower"),
    Metric("drop_fraction_by_position", "dropped pairs by position", "1", T, "drop_fraction "
           "of the pairs whose token stands in each tenth of its sequence (of its GPU's "
           "sequence shard under tensor parallelism), first tenth first: OpenMoE's "
           "drop-towards-the-end shows as a rising list.", show="%"),
    Metric("no_expert_fraction", "tokens with no expert", "1", T, "Tokens left with no expert "
           "after capacity (every choice dropped, or with expert choice picked by none); they "
           "pass through the residual.", show="%", short="no-exp %",
           views=("run", "report", "compare"), better="lower"),
    Metric("padding_fraction", "padding", "1", T, "Dispatched slots that carry no token (padded "
           "dispatch), of all slots sent.", show="%", short="pad %",
           views=("run", "report", "compare", "figure")),
    Metric("fill_in_fraction", "fill-in slots (Rectify FR)", "1", T, "Slots the top-k left empty "
           "that Rectify's fill-in gave to a token's next choice, of all slots sent.", show="%",
           short="FR %", views=("report", "compare")),
    Metric("local_rectified_fraction", "rectified on own GPU (Rectify IR)", "1", T, "Tokens that "
           "lost their slots and ran on their own GPU's best expert, of all tokens x MoE "
           "layers.", show="%", short="IR %", views=("report", "compare", "figure")),
    Metric("capacity_slots", "capacity", "", T, "Slots per expert and routing group (the first "
           "MoE layer's); none when dropless.", views=("report",)),
    Metric("expert_load_imbalance", "expert load imbalance", "x", T, "max / mean of the routed "
           "load per expert, mean over MoE layers (1 = balanced).", short="imbal",
           views=("run", "report", "compare", "routing"), better="lower"),
    Metric("node_local_fraction", "pairs on the token's server", "1", T, "Routed (token, expert) "
           "pairs whose expert is on the token's own server.", show="%", short="local %",
           views=("report", "compare")),
    Metric("smile_node_balance", "SMILE node balance", "x", T, "SMILE's node-level balance term "
           "(1 = balanced); only with the smile router.", short="node bal",
           views=("report", "compare")),
    Metric("smile_gpu_balance", "SMILE GPU balance", "x", T, "SMILE's GPU-level balance term "
           "inside a node (1 = balanced); only with the smile router.", short="gpu bal",
           views=("report", "compare")),
    Metric("a2a_inter_node_bytes", "All-to-All bytes between servers", "B", T, "Dispatch and "
           "combine bytes that cross servers, forward and backward.", show="GB",
           short="A2A inter GB", views=("report", "compare", "figure")),
    Metric("a2a_intra_node_bytes", "All-to-All bytes inside servers", "B", T, "Dispatch and "
           "combine bytes between GPUs of one server, forward and backward (the rest of "
           "intra_node_bytes is tensor-parallel and gradient traffic).", show="GB",
           short="A2A intra GB", views=("report", "compare")),
    Metric("inter_node_bytes", "bytes between servers", "B", T + D, "Every byte that crosses "
           "servers (training: All-to-All, tensor parallel, gradients; dispatch: the dispatch "
           "and the combine).", show="GB", short="inter GB",
           views=("run", "report", "compare")),
    Metric("intra_node_bytes", "bytes inside servers", "B", T + D, "Every byte between GPUs of "
           "one server.", show="GB", short="intra GB", views=("run", "report", "compare")),
    Metric("gpus", "GPUs", "", T + D, "GPUs of the step (of the dispatch).",
           views=("report@training", "run@dispatch")),
    Metric("critical_gpu", "critical GPU", "", T, "The GPU that finished its own work last; "
           "breakdown_s is its time.", views=("run", "report")),
    Metric("breakdown_s", "critical GPU's time", "s", T, "The critical GPU's time by category "
           "(attention, gate, dispatch, expert, combine, tp) and the exposed AllReduce.",
           show="ms", views=("run",)),
    Metric("baseline_step_time_s", "step time, default placement", "s", T, "With placement: the "
           "step with the default block placement, for comparison.", show="ms",
           views=("run", "report")),
    Metric("placement_speedup", "placement speedup", "x", T, "With placement: "
           "baseline_step_time_s / step_time_s.", show="x", views=("run", "report"),
           better="higher"),
    Metric("placement", "placement", "", T, "With placement: where it came from (file, or "
           "solver with status, objective, gap and solve time)."),
    Metric("flows", "flows", "", T, "Flows the fabric simulated in the step.",
           views=("report",)),
    Metric("recomputes", "max-min re-solves", "", T, "Times the fabric re-solved its max-min "
           "rates in the step.", views=("report",)),
    # ---- serving
    Metric("mode", "offload mode", "", S, "Where experts live: gpu_only, on_demand, "
           "prefetch_all or pregated."),
    Metric("requests", "requests", "", S, "Requests served.", views=("run", "report")),
    Metric("makespan_s", "makespan", "s", S, "Time from 0 to the last token.", show="s",
           views=("report",)),
    Metric("latency_mean_s", "mean latency", "s", S, "Arrival to last token, mean over "
           "requests.", show="s", short="lat s",
           views=("run", "report", "compare", "sweep"), better="lower"),
    Metric("latency_p50_s", "median latency", "s", S, "50th percentile of the latency.",
           show="s", short="p50 s", views=("run", "report", "compare")),
    Metric("latency_p95_s", "p95 latency", "s", S, "95th percentile of the latency.", show="s",
           short="p95 s", views=("run", "report", "compare", "figure", "sweep"),
           better="lower"),
    Metric("latency_p99_s", "p99 latency", "s", S, "99th percentile of the latency.", show="s",
           views=("run", "report")),
    Metric("ttft_mean_s", "time to first token", "s", S, "Arrival to first token, mean.",
           show="s", short="ttft s", views=("run", "report", "compare", "sweep"),
           better="lower"),
    Metric("normalized_latency_mean_s", "latency per output token", "s", S, "Latency / output "
           "tokens, mean over requests.", show="ms", short="ms/token",
           views=("run", "report", "compare"), better="lower"),
    Metric("steps", "model steps", "", S, "Batches run (each a pass over every layer).",
           views=("report",)),
    Metric("unique_experts_per_batch", "experts per batch", "", S, "Distinct experts a batch "
           "uses, per MoE layer, mean over steps.", short="experts",
           views=("run", "report", "compare")),
    Metric("decode_unique_experts_per_batch", "experts per decode batch", "", S, "The same over "
           "decode-only steps.", views=("report",)),
    Metric("moe_block_mean_s", "MoE block, decode", "s", S, "One MoE block of a decode-only "
           "step: attention + gate + exposed copies + expert FFNs, mean.", show="ms",
           short="block ms", views=("run", "report", "compare", "figure"), better="lower"),
    Metric("expert_copies", "expert copies", "", S, "Experts copied host -> GPU.",
           short="copies", views=("run", "report", "compare")),
    Metric("cache_hit_rate", "cache hit rate", "1", S, "Needed experts found resident, of all "
           "needed (1 when nothing is offloaded).", show="%", short="hit %",
           views=("run", "report", "compare"), better="higher"),
    Metric("peak_memory_bytes", "peak GPU memory", "B", S, "Weights, KV cache, resident and "
           "in-flight experts at their peak over the run.", show="GiB", short="peak GiB",
           views=("run", "report", "compare")),
    Metric("decode_peak_memory_bytes", "peak GPU memory, decode", "B", S, "The same over "
           "decode-only steps.", show="GiB", short="decode GiB",
           views=("run", "report", "compare", "figure")),
    Metric("h2d_bytes", "host-to-GPU bytes", "B", S, "Expert bytes copied over PCIe.",
           show="GB", views=("report",)),
    Metric("expert_bytes", "bytes per expert", "B", S, "Weights of one expert.", show="MB",
           views=("report",)),
    # ---- benchmark: one row per message size (results[])
    Metric("comm_profile", "communication profile", "", ("training", "benchmark", "dispatch"),
           "The "
           "communication profile the run used (the scenario's, else its topology's)."),
    Metric("results", "results", "", B, "One row per message size (the fields below)."),
    Metric("collective", "collective", "", B, "all_reduce, all_gather, reduce_scatter, "
           "all_to_all or sendrecv.", within="results"),
    Metric("algorithm", "algorithm", "", B, "The algorithm run: ring, nvls, direct, pairwise or "
           "hierarchical (the library's choice by size unless the scenario pins one).",
           within="results"),
    Metric("protocol", "protocol", "", B, "The protocol run: LL, LL128 or Simple (Simple under "
           "the ideal profile).", within="results"),
    Metric("bytes_per_rank", "bytes per rank", "B", B, "Message size per rank, as nccl-tests.",
           show="B", short="size", within="results", views=("run",)),
    Metric("time_s", "time", "s", B, "Simulated time of the collective.", show="us",
           short="time", within="results", views=("run", "sweep"), better="lower", main=B),
    Metric("algbw_gbps", "algorithm bandwidth", "Gbit/s", B, "bytes_per_rank / time, as "
           "nccl-tests' algbw.", show="GB/s", short="algbw", within="results", views=("run",),
           better="higher"),
    Metric("busbw_gbps", "bus bandwidth", "Gbit/s", B, "algbw x nccl-tests' bus factor of the "
           "collective.", show="GB/s", short="busbw", within="results", views=("run", "sweep"),
           better="higher"),
    Metric("flows", "flows", "", B, "Flows the fabric simulated for this size.",
           within="results"),
    Metric("recomputes", "max-min re-solves", "", B, "Times the fabric re-solved its max-min "
           "rates for this size.", within="results"),
)

_BY_KEY = {(m.key, m.within): m for m in METRICS}


def metric(key: str, within: str | None = None) -> Metric:
    """The catalogue entry of ``key`` (a field of the ``within`` rows); KeyError for one the
    catalogue does not know."""
    return _BY_KEY[(key, within)]


def keys(kind: str, within: str | None = None) -> list[str]:
    """The summary keys of ``kind`` (or the fields of its ``within`` rows)."""
    return [m.key for m in METRICS if kind in m.kinds and m.within == within]


def view(kind: str, name: str) -> list[Metric]:
    """The metrics of ``kind`` shown in view ``name``, in catalogue order (the main metric
    first in ``sweep``)."""
    out = [m for m in METRICS
           if kind in m.kinds and (name in m.views or f"{name}@{kind}" in m.views)]
    return sorted(out, key=lambda m: kind not in m.main) if name == "sweep" else out


def main_metric(kind: str) -> Metric:
    """The headline metric of ``kind``: step time, serving throughput, collective time."""
    return next(m for m in METRICS if kind in m.main)


def rows(summary: Mapping, kind: str, name: str) -> list[tuple[Metric, str]]:
    """(metric, formatted value) of the metrics of view ``name`` that ``summary`` has."""
    return [(m, m.format(summary[m.key])) for m in view(kind, name) if m.key in summary]


def lines(summary: Mapping, kind: str, name: str = "run") -> list[str]:
    """Aligned ``label  value unit`` lines of view ``name`` for a terminal."""
    found = rows(summary, kind, name)
    width = max((len(m.label) for m, _ in found), default=0)
    vwidth = max((len(v) for m, v in found if not isinstance(summary[m.key], Mapping)),
                 default=0)
    return [f"{m.label:<{width}}  {v:>{0 if isinstance(summary[m.key], Mapping) else vwidth}}"
            f"{' ' + m.show if m.show else ''}" for m, v in found]


def unknown_keys(summary: Mapping, kind: str) -> list[str]:
    """Keys of a ``kind`` summary (and of its per-size rows) without a catalogue entry."""
    out = [k for k in summary if k not in keys(kind)]
    for k in {m.within for m in METRICS if m.within and kind in m.kinds}:
        for row in summary.get(k) or ():
            out += [f"{k}[].{f}" for f in row if f not in keys(kind, k)]
    return sorted(set(out))


def speedup(kind: str, base: float | None, value: float | None) -> float:
    """How many times better ``value`` is than ``base`` on the kind's main metric."""
    if not base or not value:
        return 0.0
    return base / value if main_metric(kind).better == "lower" else value / base


def markdown() -> str:
    """docs/metrics.md: every metric of every kind, with unit, views and meaning."""
    lines = ["# Metrics", "",
             "Every key of a run's `summary.json`, by run kind. Generated from the catalogue "
             "(`sim/metrics/catalogue.py`) by `python -m sim.metrics.catalogue --write "
             "docs/metrics.md`; a test checks that this file matches it.", "",
             "Values in summary.json are SI (the *unit* column; `1` is a fraction, `x` a "
             "ratio); tables and figures show them in the *shown as* unit. Views: `run` the "
             "lines `moesim run` prints, `report` the table of report.html, `compare` the "
             "columns of `moesim compare`, `figure` its figure's panels, `sweep` the panels of "
             "sweep.html, `routing` the routing-cost figure of the notebooks.", ""]
    for kind in KINDS:
        lines += [f"## {kind}", "", "| key | label | unit | shown as | views | meaning |",
                  "|---|---|---|---|---|---|"]
        for m in METRICS:
            if kind in m.kinds:
                key = f"{m.within}[].{m.key}" if m.within else m.key
                star = " (main)" if kind in m.main else ""
                views = [v.split("@")[0] for v in m.views if v.split("@")[-1] in (v, kind)]
                lines.append(f"| `{key}`{star} | {m.label} | {m.unit or '-'} | {m.show or '-'} "
                             f"| {', '.join(views) or '-'} | {m.description} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print or write docs/metrics.md")
    ap.add_argument("--write", metavar="FILE", help="write the document to FILE")
    args = ap.parse_args(argv)
    text = markdown()
    if args.write:
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
