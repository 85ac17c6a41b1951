"""One training step of an MoE transformer on the fabric, GPU by GPU.

Every GPU carries its own clock (``ready``, seconds). Compute advances it by the roofline time of
that GPU's work; communication goes through the fabric: a GPU's flows start when it is ready and
it continues when all its incoming flows have arrived. Per MoE layer, forward:
attention (+ norms + router GEMM) -> dispatch All-to-All (slots per (GPU, expert) from the
routing plan) -> expert FFNs on the tokens received -> combine All-to-All (the reverse).
Backward mirrors it with twice the compute (combine-backward, experts, dispatch-backward,
attention). Gradients are reduced by pipelined ring AllReduce: dense weights over all GPUs,
expert weights over each expert's replicas; with ``overlap_grad_reduce`` each layer's
reduction starts as soon as the last GPU has finished that layer's backward, else all of it
after the backward pass.
The step ends when the last GPU is done and every reduction has finished.

GPUs that become ready for an exchange within ``START_MERGE`` x (spread of the ready times) of
each other start it together, at the latest of their times (never early): a few batches per
exchange instead of one per GPU, which is what keeps large steps fast.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from sim.collectives.algorithms import ring_all_reduce_groups, ring_order, staggered_transfer
from sim.compute import backward_time_s, dense_layer_time_s, expert_ffn_time_s
from sim.metrics import NullRecorder
from sim.moe.layout import Layout
from sim.moe.plan import LayerRouting
from sim.network.fabric import Fabric

START_MERGE = 0.05


@dataclass(frozen=True)
class StepInputs:
    """What the step needs besides the fabric: model sizes, layout and the routing plan."""

    hidden: int
    ffn_hidden: int
    moe_ffn_hidden: int
    heads: int
    kv_heads: int
    seq_len: int
    tokens: int  # per GPU
    gated: bool
    moe_layers: list[bool]
    experts: int
    dtype_bytes: int
    grad_dtype_bytes: int
    overlap_grad_reduce: bool
    layout: Layout
    routing: list[LayerRouting]  # one per MoE layer, in order


@dataclass
class StepTimes:
    """Results of one step: end time, per-GPU clocks, per-layer phase times, traffic counters."""

    step_time_s: float = 0.0
    ready_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layer_times: list[dict] = field(default_factory=list)
    inter_node_bytes: float = 0.0
    intra_node_bytes: float = 0.0
    allreduce_exposed_s: float = 0.0


def expert_params(inp: StepInputs) -> int:
    """Weights of one expert."""
    return (3 if inp.gated else 2) * inp.hidden * inp.moe_ffn_hidden


def dense_params(inp: StepInputs, moe: bool) -> int:
    """Weights of one layer outside its experts: attention (+ router, or + dense FFN)."""
    d, kv = inp.hidden, inp.hidden * inp.kv_heads // inp.heads
    attn = d * (d + 2 * kv) + d * d
    return attn + (d * inp.experts if moe else (3 if inp.gated else 2) * d * inp.ffn_hidden)


def training_step(fabric: Fabric, inp: StepInputs, recorder=None, progress=None) -> Generator:
    """SimPy process: simulate one step; returns StepTimes. ``progress(stage, done, total)`` is
    called after each layer of the forward and backward passes when given."""
    rec = recorder or NullRecorder()
    env, cluster, lay = fabric.env, fabric.cluster, inp.layout
    spec = cluster.gpu
    p = lay.gpus
    node = cluster.node_of
    out = StepTimes()
    ready = np.zeros(p)
    gpus = np.arange(p)
    act = inp.hidden * inp.dtype_bytes  # bytes per token slot
    dest = lay.expert_gpu(gpus)  # (P, E)

    def spans(cat, phase, layer, start, end):
        for g in gpus:
            rec.span(g, cat, phase, layer, start[g], end[g])

    cross = node[:, None] != node[None, :]

    def count(matrix):  # bytes between GPUs of different servers / of one server
        np.fill_diagonal(matrix, 0.0)
        out.inter_node_bytes += float(matrix[cross].sum())
        out.intra_node_bytes += float(matrix[~cross].sum())

    def dispatch_matrix(r: LayerRouting) -> np.ndarray:
        m = np.zeros(p * p)
        np.add.at(m, (gpus[:, None] * p + dest).ravel(), r.slots.ravel() * float(act))
        return m.reshape(p, p)

    def exchange(matrix, phase_span, phase, layer):
        nonlocal ready
        start = ready.copy()
        span = max(start.max() - start.min(), 0.0)
        recv, _ = yield from staggered_transfer(fabric, matrix, ready, START_MERGE * span)
        ready = np.maximum(ready, recv)
        spans(phase_span, phase, layer, start, ready)
        count(matrix.copy())
        return float((ready - start).max())

    def compute(cat, phase, layer, seconds):
        nonlocal ready
        start = ready.copy()
        ready = ready + seconds
        spans(cat, phase, layer, start, ready)
        return float(np.max(seconds))

    moe_index = np.cumsum(inp.moe_layers) - 1
    dense_fwd = {}
    for moe in (False, True):
        dense_fwd[moe] = float(dense_layer_time_s(
            inp.tokens, inp.seq_len, inp.hidden, inp.heads, spec,
            ffn_hidden=None if moe else inp.ffn_hidden, gated=inp.gated,
            num_experts=inp.experts if moe else None, kv_heads=inp.kv_heads,
            dtype_bytes=inp.dtype_bytes))
    matrices, expert_fwd = {}, {}
    for layer, moe in enumerate(inp.moe_layers):
        if moe:
            r = inp.routing[moe_index[layer]]
            matrices[layer] = dispatch_matrix(r)
            recv_slots = np.zeros((p, inp.experts))
            np.add.at(recv_slots, (dest.ravel(), np.tile(np.arange(inp.experts), p)),
                      r.slots.ravel())
            per_expert = expert_ffn_time_s(recv_slots, inp.hidden, inp.moe_ffn_hidden, spec,
                                           gated=inp.gated, dtype_bytes=inp.dtype_bytes)
            expert_fwd[layer] = per_expert.sum(axis=1)  # experts with no token cost nothing

    # ---- forward
    for layer, moe in enumerate(inp.moe_layers):
        row = {"layer": layer, "moe": moe}
        row["attention_s"] = compute("attention", "fwd", layer, np.full(p, dense_fwd[moe]))
        if moe:
            m = matrices[layer]
            row["dispatch_s"] = yield from exchange(m, "dispatch", "fwd", layer)
            row["expert_s"] = compute("expert", "fwd", layer, expert_fwd[layer])
            row["combine_s"] = yield from exchange(m.T.copy(), "combine", "fwd", layer)
        out.layer_times.append(row)
        if progress is not None:
            progress("forward", layer + 1, len(inp.moe_layers))

    # ---- backward (+ gradient reduction)
    reductions = []
    all_ranks = ring_order(cluster)[None, :]
    expert_groups = lay.expert_dp_groups()

    def reduce(layers):
        dense = sum(dense_params(inp, inp.moe_layers[i]) for i in layers)
        expert = sum(expert_params(inp) * lay.experts_per_gpu for i in layers
                     if inp.moe_layers[i])
        procs = []
        for groups, nbytes in ((all_ranks, dense), (expert_groups, expert)):
            nbytes *= inp.grad_dtype_bytes
            n = groups.shape[1]
            if n > 1 and nbytes > 0:
                ring = np.zeros((p, p))
                ring[groups.ravel(), np.roll(groups, -1, axis=1).ravel()] = 2 * (n - 1) / n * nbytes
                count(ring)
                procs.append(env.process(
                    ring_all_reduce_groups(fabric, groups, nbytes, pipelined=True)))
        return procs

    def reducer(layers, at):
        yield env.timeout(max(at - env.now, 0.0))
        t0 = env.now
        yield env.all_of(reduce(layers))
        for g in gpus:
            rec.span(g, "allreduce", "step", layers[0] if len(layers) == 1 else -1, t0, env.now)

    for layer in reversed(range(len(inp.moe_layers))):
        moe = inp.moe_layers[layer]
        if moe:
            m = matrices[layer]
            yield from exchange(m, "combine", "bwd", layer)
            compute("expert", "bwd", layer, backward_time_s(expert_fwd[layer]))
            yield from exchange(m.T.copy(), "dispatch", "bwd", layer)
        compute("attention", "bwd", layer, np.full(p, backward_time_s(dense_fwd[moe])))
        if inp.overlap_grad_reduce:
            reductions.append(env.process(reducer([layer], float(ready.max()))))
        if progress is not None:
            progress("backward", len(inp.moe_layers) - layer, len(inp.moe_layers))
    if not inp.overlap_grad_reduce:
        reductions.append(env.process(reducer(list(range(len(inp.moe_layers))),
                                              float(ready.max()))))
    backward_end = float(ready.max())
    yield env.all_of(reductions)
    out.step_time_s = max(env.now, backward_end)
    out.allreduce_exposed_s = out.step_time_s - backward_end
    out.ready_s = ready
    return out
