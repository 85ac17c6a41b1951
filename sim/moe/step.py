"""One training step of an MoE transformer on the fabric, GPU by GPU.

Every GPU carries its own clock (``ready``, seconds). Compute advances it by the roofline time of
that GPU's work; communication goes through the fabric: a GPU's flows start when it is ready and
it continues when all its incoming flows have arrived. Per MoE layer, forward:
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
Gradients are reduced by pipelined ring AllReduce: dense weight shards over the data-parallel
ranks, expert shards over each expert's replicas; with ``overlap_grad_reduce`` each layer's
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

from sim.collectives.algorithms import (
    hierarchical_stages,
    ring_all_reduce_groups,
    ring_orders,
    staggered_transfer,
)
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
    tokens: int  # per GPU: the sequence-parallel shard of the micro-batch when tp > 1
    gated: bool
    moe_layers: list[bool]
    experts: int
    dtype_bytes: int
    grad_dtype_bytes: int
    overlap_grad_reduce: bool
    layout: Layout
    routing: list[LayerRouting]  # one per MoE layer, in order
    a2a_algorithm: str = "direct"  # or "hierarchical", "bilevel"


@dataclass
class StepTimes:
    """Results of one step: end time, per-GPU clocks, per-layer phase times, traffic counters."""

    step_time_s: float = 0.0
    ready_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layer_times: list[dict] = field(default_factory=list)
    inter_node_bytes: float = 0.0
    a2a_inter_node_bytes: float = 0.0  # of which dispatch and combine
    intra_node_bytes: float = 0.0
    allreduce_exposed_s: float = 0.0


def expert_params(inp: StepInputs) -> int:
    """Weights of one expert (all its shards)."""
    return (3 if inp.gated else 2) * inp.hidden * inp.moe_ffn_hidden


def dense_params(inp: StepInputs, moe: bool) -> int:
    """Weights of one layer outside its experts: attention (+ router, or + dense FFN)."""
    d, kv = inp.hidden, inp.hidden * inp.kv_heads // inp.heads
    attn = d * (d + 2 * kv) + d * d
    return attn + (d * inp.experts if moe else (3 if inp.gated else 2) * d * inp.ffn_hidden)


def group_matrix(groups: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """(P, P) bytes: every rank sends ``nbytes[rank]`` to each other rank of its row of
    ``groups`` (a direct AllGather; its transpose is the matching ReduceScatter)."""
    p = groups.size
    m = np.zeros((p, p))
    n = groups.shape[1]
    src = np.repeat(groups, n, axis=1).ravel()
    dst = np.tile(groups, (1, n)).ravel()
    m[src, dst] = np.asarray(nbytes, dtype=float)[src]
    np.fill_diagonal(m, 0.0)
    return m


def dispatch_matrix(slots: np.ndarray, dest: np.ndarray, bytes_per_slot: float) -> np.ndarray:
    """(P, P) dispatch bytes from GPU s to GPU d: ``slots[s, e]`` token slots of ``bytes_per_slot``
    bytes each go from s to expert e's GPU ``dest[s, e]`` (both (P, E))."""
    p = slots.shape[0]
    m = np.zeros(p * p)
    np.add.at(m, (np.arange(p)[:, None] * p + dest).ravel(), slots.ravel() * float(bytes_per_slot))
    return m.reshape(p, p)


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
    moe_index = np.cumsum(inp.moe_layers) - 1
    dests = [lay.expert_gpu(gpus, i) for i in range(len(inp.routing))]  # (P, E) per MoE layer

    def spans(cat, phase, layer, start, end):
        for g in gpus:
            rec.span(g, cat, phase, layer, start[g], end[g])

    cross = node[:, None] != node[None, :]

    def count(matrix, a2a=False):  # bytes between GPUs of different servers / of one server
        np.fill_diagonal(matrix, 0.0)
        inter = float(matrix[cross].sum())
        out.inter_node_bytes += inter
        out.intra_node_bytes += float(matrix[~cross].sum())
        if a2a:
            out.a2a_inter_node_bytes += inter


    def stages(matrix, a2a):
        if not a2a or inp.a2a_algorithm == "direct":
            return [matrix]
        relay = "destination" if inp.a2a_algorithm == "hierarchical" else "source"
        out = []
        for src, dst, nbytes in hierarchical_stages(cluster, matrix, relay):
            m = np.zeros((p, p))
            m[src, dst] = nbytes
            out.append(m)
        return out

    def exchange(matrix, phase_span, phase, layer, a2a=True):
        nonlocal ready
        start = ready.copy()
        for m in stages(matrix, a2a):
            span = max(ready.max() - ready.min(), 0.0)
            recv, _ = yield from staggered_transfer(fabric, m, ready, START_MERGE * span)
            ready = np.maximum(ready, recv)
            count(m.copy(), a2a)
        spans(phase_span, phase, layer, start, ready)
        return float((ready - start).max())

    def compute(cat, phase, layer, seconds):
        nonlocal ready
        start = ready.copy()
        ready = ready + seconds
        spans(cat, phase, layer, start, ready)
        return float(np.max(seconds))

    tp, etp = lay.tp, lay.etp
    dense_fwd, tp_gather = {}, {}
    for moe in (False, True):
        # the TP group's micro-batch, 1/tp of its compute on each rank
        dense_fwd[moe] = float(dense_layer_time_s(
            inp.tokens * tp, inp.seq_len, inp.hidden, inp.heads, spec,
            ffn_hidden=None if moe else inp.ffn_hidden, gated=inp.gated,
            num_experts=inp.experts if moe else None, kv_heads=inp.kv_heads,
            dtype_bytes=inp.dtype_bytes)) / tp
        # sequence-parallel AllGather before the TP-split blocks (ReduceScatter after: .T);
        # a dense-FFN layer has two such blocks, attention and MLP
        blocks = 1 if moe else 2
        tp_gather[moe] = (group_matrix(lay.tp_groups(), np.full(p, blocks * inp.tokens * act))
                          if tp > 1 else None)
    units = lay.unit_groups()
    matrices, expert_fwd, unit_gather, local_fwd = {}, {}, {}, {}
    for layer, moe in enumerate(inp.moe_layers):
        if moe:
            r = inp.routing[moe_index[layer]]
            dest = dests[moe_index[layer]]
            m = dispatch_matrix(r.slots, dest, act)
            matrices[layer] = m
            recv_slots = np.zeros((p, inp.experts))
            np.add.at(recv_slots, (dest.ravel(), np.tile(np.arange(inp.experts), p)),
                      r.slots.ravel())
            # each rank of an expert unit computes its 1/etp shard on all the unit's tokens
            unit_slots = recv_slots[units].sum(axis=1)
            per_expert = expert_ffn_time_s(unit_slots, inp.hidden, inp.moe_ffn_hidden / etp,
                                           spec, gated=inp.gated, dtype_bytes=inp.dtype_bytes)
            expert_fwd[layer] = np.repeat(per_expert.sum(axis=1), etp)  # idle experts: free
            if etp > 1:
                unit_gather[layer] = group_matrix(units, m.sum(axis=0))
            if r.local.any():  # Rectify IR: each GPU's own experts take its unrouted tokens
                local_fwd[layer] = expert_ffn_time_s(
                    r.local, inp.hidden, inp.moe_ffn_hidden, spec, gated=inp.gated,
                    dtype_bytes=inp.dtype_bytes).sum(axis=1)

    # ---- forward
    def tp_framed(cat, phase, layer, seconds, gather):
        """AllGather -> compute -> ReduceScatter (just the compute when there is no group)."""
        t = 0.0
        if gather is not None:
            t += yield from exchange(gather, "tp", phase, layer, a2a=False)
        c = compute(cat, phase, layer, seconds)
        if gather is not None:
            t += yield from exchange(gather.T.copy(), "tp", phase, layer, a2a=False)
        return c, t

    for layer, moe in enumerate(inp.moe_layers):
        row = {"layer": layer, "moe": moe}
        row["attention_s"], row["tp_s"] = yield from tp_framed(
            "attention", "fwd", layer, np.full(p, dense_fwd[moe]), tp_gather[moe])
        if moe:
            m = matrices[layer]
            row["dispatch_s"] = yield from exchange(m, "dispatch", "fwd", layer)
            row["expert_s"], t = yield from tp_framed(
                "expert", "fwd", layer, expert_fwd[layer], unit_gather.get(layer))
            row["tp_s"] += t
            row["combine_s"] = yield from exchange(m.T.copy(), "combine", "fwd", layer)
            if layer in local_fwd:
                row["expert_s"] += compute("expert", "fwd", layer, local_fwd[layer])
        out.layer_times.append(row)
        if progress is not None:
            progress("forward", layer + 1, len(inp.moe_layers))

    # ---- backward (+ gradient reduction)
    reductions = []
    rings = ring_orders(cluster)  # NCCL-style channels: one ring per rail across servers
    dense_groups = np.vstack([lay.dense_dp_groups(order) for order in rings])
    expert_groups = lay.expert_dp_groups()

    def reduce(layers):
        dense = sum(dense_params(inp, inp.moe_layers[i]) for i in layers) / tp
        expert = sum(expert_params(inp) / etp * lay.experts_per_gpu for i in layers
                     if inp.moe_layers[i])
        procs = []
        for groups, nbytes in ((dense_groups, dense / len(rings)), (expert_groups, expert)):
            nbytes *= inp.grad_dtype_bytes
            n = groups.shape[1]
            if n > 1 and nbytes > 0:
                ring = np.zeros((p, p))  # rings share hops inside a server: accumulate
                np.add.at(ring, (groups.ravel(), np.roll(groups, -1, axis=1).ravel()),
                          2 * (n - 1) / n * nbytes)
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
            if layer in local_fwd:
                compute("expert", "bwd", layer, backward_time_s(local_fwd[layer]))
            yield from exchange(m, "combine", "bwd", layer)
            yield from tp_framed("expert", "bwd", layer, backward_time_s(expert_fwd[layer]),
                                 unit_gather.get(layer))
            yield from exchange(m.T.copy(), "dispatch", "bwd", layer)
        yield from tp_framed("attention", "bwd", layer,
                             np.full(p, backward_time_s(dense_fwd[moe])), tp_gather[moe])
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
