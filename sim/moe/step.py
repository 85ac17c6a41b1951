"""One training step of an MoE transformer on the fabric, GPU by GPU.

Every GPU carries its own clock (``sim.moe.clocks``). Compute advances it by the roofline time of
that GPU's work (``sim.moe.work``); communication goes through the fabric. Per MoE layer, forward:
attention (+ norms + router GEMM) -> dispatch All-to-All (slots per (GPU, expert) from the
routing plan) -> expert FFNs on the tokens received -> combine All-to-All (the reverse).
Backward mirrors it with twice the compute (combine-backward, experts, dispatch-backward,
attention). Rectify-Router's intra-GPU rectification adds, after the combine, each GPU's own expert
FFNs on the tokens it rectified (no traffic). With tensor parallelism (``Layout.tp`` > 1, sequence
parallel) attention and dense FFNs take 1/tp of the TP group's compute, framed by an AllGather
before and a ReduceScatter after (two pairs for a dense-FFN layer), each rank sending its shard
straight to the other ranks of its group; with expert tensor parallelism the ranks of an expert
unit AllGather the tokens they received, each computes its 1/etp shard of every expert on all of
them, and a ReduceScatter returns the outputs before the combine. ``a2a_algorithm``
``hierarchical`` (gather to the destination's local rank, exchange on that rail, scatter) and
``bilevel`` (SMILE: straight to the source's local rank on the destination node, then inside that
node) send dispatch and combine in stages (``sim.collectives.hierarchical_stages``), each GPU
moving on to the next stage when it has received everything of the previous one.
Gradients are reduced by pipelined ring AllReduce, or ReduceScatter under the distributed
optimizer (``sim.moe.gradients``): with
``overlap_grad_reduce`` each layer's reduction starts as soon as the last GPU has finished that
layer's backward, else all of it after the backward pass.
The step ends when the last GPU is done and every reduction has finished.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from sim.compute import backward_time_s
from sim.compute.profile import ComputeProfile
from sim.model import Shape
from sim.moe.clocks import GpuClocks
from sim.moe.gradients import GradientReduction
from sim.moe.layout import Layout
from sim.moe.plan import LayerRouting
from sim.moe.work import StepWork, step_work
from sim.network.fabric import Fabric


@dataclass(frozen=True)
class StepInputs:
    """What the step needs besides the fabric: model shape, layout and the routing plan."""

    shape: Shape
    seq_len: int
    tokens: int  # per GPU: the sequence-parallel shard of the micro-batch when tp > 1
    dtype_bytes: int
    grad_dtype_bytes: int
    overlap_grad_reduce: bool
    layout: Layout
    routing: list[LayerRouting]  # one per MoE layer, in order
    a2a_algorithm: str = "direct"  # or "hierarchical", "bilevel"
    dispatcher: str = "alltoall"  # or "deepep", "allgather" (sim.moe.dispatchers)
    gpu_node: np.ndarray | None = None  # (P,) server of each GPU (deepep)
    local_rank: np.ndarray | None = None  # (P,) rank inside its server (deepep)
    compute: ComputeProfile | None = None  # the profile's kernel model; None: the roofline
    gemm_dtype: str = "bf16"  # or "fp8" (needs compute)
    shared_ffn: int = 0  # shared experts' width summed (0: none)
    shared_overlap: bool = False  # shared experts computed while the dispatch is in flight
    mla: object | None = None  # sim.training.dims.MlaDims: multi-head latent attention
    fp8_dispatch: bool = False  # alltoall dispatcher: dispatch in FP8 (+ scales)
    grad_collective: str = "all_reduce"  # "reduce_scatter" under the distributed optimizer


@dataclass
class StepTimes:
    """Results of one step: end time, per-GPU clocks, per-layer phase times, traffic counters."""

    step_time_s: float = 0.0
    ready_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layer_times: list[dict] = field(default_factory=list)
    inter_node_bytes: float = 0.0
    a2a_inter_node_bytes: float = 0.0  # of which dispatch and combine
    intra_node_bytes: float = 0.0
    a2a_intra_node_bytes: float = 0.0  # of which dispatch and combine
    allreduce_exposed_s: float = 0.0


def training_step(fabric: Fabric, inp: StepInputs, recorder=None, progress=None,
                  model=None) -> Generator:
    """SimPy process: simulate one step; returns StepTimes. ``progress(stage, done, total)`` is
    called after each layer of the forward and backward passes when given; ``model`` (a
    ``sim.comm.model.Model``) adds the collective library's costs to every exchange and
    gradient reduction (None: the fluid model alone)."""
    clocks = GpuClocks(fabric, inp.layout.gpus, recorder, inp.a2a_algorithm, model)
    work = step_work(inp, fabric.cluster.gpu)
    out = StepTimes()
    out.layer_times = yield from forward(clocks, inp, work, progress)
    grads = GradientReduction(clocks, inp, inp.grad_collective)
    reductions = yield from backward(clocks, inp, work, grads, progress)
    backward_end = float(clocks.ready.max())
    yield fabric.env.all_of(reductions)
    out.step_time_s = max(fabric.env.now, backward_end)
    out.allreduce_exposed_s = out.step_time_s - backward_end
    out.ready_s = clocks.ready
    out.inter_node_bytes = clocks.inter_node_bytes
    out.intra_node_bytes = clocks.intra_node_bytes
    out.a2a_inter_node_bytes = clocks.a2a_inter_node_bytes
    out.a2a_intra_node_bytes = clocks.a2a_intra_node_bytes
    return out


def forward(clocks: GpuClocks, inp: StepInputs, work: StepWork, progress=None) -> Generator:
    """The forward pass, layer by layer; returns one row of phase times (s) per layer."""
    p, rows = inp.layout.gpus, []
    for layer, moe in enumerate(inp.shape.moe_layers):
        row = {"layer": layer, "moe": moe}
        row["attention_s"], row["tp_s"] = yield from clocks.tp_framed(
            "attention", "fwd", layer, np.full(p, work.dense_fwd[moe]), work.tp_gather[moe])
        if moe:
            disp, comb = work.deepep.get(layer, (None, None))
            before = clocks.ready.copy()
            row["dispatch_s"] = yield from clocks.exchange(work.dispatch[layer], "dispatch",
                                                           "fwd", layer, deepep=disp)
            row["shared_s"] = shared_experts(clocks, inp, work.shared_fwd, "fwd", layer, before)
            row["expert_s"], t = yield from clocks.tp_framed(
                "expert", "fwd", layer, work.expert_fwd[layer], work.unit_gather.get(layer))
            row["tp_s"] += t
            row["combine_s"] = yield from clocks.exchange(work.combine[layer], "combine",
                                                          "fwd", layer, deepep=comb)
            if layer in work.local_fwd:
                row["expert_s"] += clocks.compute("expert", "fwd", layer, work.local_fwd[layer])
        rows.append(row)
        if progress is not None:
            progress("forward", layer + 1, len(inp.shape.moe_layers))
    return rows


def shared_experts(clocks: GpuClocks, inp: StepInputs, seconds: float, phase: str, layer: int,
                   before: np.ndarray) -> float:
    """The shared experts' ``seconds`` on every GPU: after the dispatch (``clocks.ready``), or,
    with ``inp.shared_overlap``, from ``before`` it (under the exchange in flight); returns
    ``seconds``."""
    if seconds <= 0:
        return 0.0
    start = clocks.ready.copy()
    end = np.maximum(start, before + seconds) if inp.shared_overlap else start + seconds
    clocks.ready = end
    clocks.spans("expert", phase, layer, np.minimum(start, end - seconds), end)
    return seconds


def backward(clocks: GpuClocks, inp: StepInputs, work: StepWork,
             grads: GradientReduction | None, progress=None) -> Generator:
    """The backward pass from the last layer; returns the gradient reduction processes (none
    when ``grads`` is None: a pipeline's micro-batch before its last)."""
    p, moe_layers, reductions = inp.layout.gpus, inp.shape.moe_layers, []
    for layer in reversed(range(len(moe_layers))):
        moe = moe_layers[layer]
        if moe:
            # gradients go back the way the combine came and return the way the dispatch
            # went, in the combine's precision
            comb = work.deepep.get(layer, (None, None))[1]
            if layer in work.local_fwd:
                clocks.compute("expert", "bwd", layer, backward_time_s(work.local_fwd[layer]))
            yield from clocks.exchange(work.combine[layer].T.copy(), "combine", "bwd", layer,
                                       deepep=comb)
            yield from clocks.tp_framed("expert", "bwd", layer,
                                        backward_time_s(work.expert_fwd[layer]),
                                        work.unit_gather.get(layer))
            before = clocks.ready.copy()
            yield from clocks.exchange(work.combine[layer], "dispatch", "bwd", layer,
                                       deepep=comb)
            shared_experts(clocks, inp, backward_time_s(work.shared_fwd), "bwd", layer, before)
        yield from clocks.tp_framed("attention", "bwd", layer,
                                    np.full(p, backward_time_s(work.dense_fwd[moe])),
                                    work.tp_gather[moe])
        if inp.overlap_grad_reduce and grads is not None:
            reductions.append(grads.start([layer], float(clocks.ready.max())))
        if progress is not None:
            progress("backward", len(moe_layers) - layer, len(moe_layers))
    if not inp.overlap_grad_reduce and grads is not None:
        reductions.append(grads.start(list(range(len(moe_layers))), float(clocks.ready.max())))
    return reductions
