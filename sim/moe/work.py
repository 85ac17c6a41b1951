"""What each layer of a training step moves and computes, before anything is timed.

Per layer: the forward compute seconds of its attention (+ router or dense FFN) block on each
GPU, the sequence-parallel AllGather matrix around TP-split blocks, and for MoE layers the
dispatch matrix (from the routing plan), each GPU's expert FFN seconds, the expert-unit
AllGather (expert tensor parallelism) and Rectify-IR's local expert seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.compute import kernels
from sim.moe.dispatchers import deepep_loads, deepep_matrix, token_bytes


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


@dataclass
class StepWork:
    """Per-layer work of one step. Keys of the dicts are layer indices (MoE layers only where
    the work is MoE's); ``dense_fwd`` and ``tp_gather`` are keyed by ``moe`` (True/False)."""

    dense_fwd: dict = field(default_factory=dict)
    """Forward seconds of the attention block (+ router or dense FFN), one rank's 1/tp share."""
    tp_gather: dict = field(default_factory=dict)
    """(P, P) sequence-parallel AllGather bytes before TP-split blocks, None without TP."""
    dispatch: dict = field(default_factory=dict)
    """(P, P) dispatch bytes of each MoE layer."""
    combine: dict = field(default_factory=dict)
    """(P, P) combine bytes of each MoE layer (the dispatch's transpose, in the combine's
    precision)."""
    deepep: dict = field(default_factory=dict)
    """deepep dispatcher: per MoE layer, the DeepEP loads (``sim.moe.clocks``) of the dispatch
    and of the combine: ((forwarded, received) bytes per GPU, the same for the combine)."""
    expert_fwd: dict = field(default_factory=dict)
    """(P,) forward expert-FFN seconds of each GPU."""
    unit_gather: dict = field(default_factory=dict)
    """(P, P) AllGather of received tokens inside expert units (expert tensor parallel only)."""
    local_fwd: dict = field(default_factory=dict)
    """(P,) forward seconds of the tokens each GPU rectified onto its own experts (IR)."""
    shared_fwd: float = 0.0
    """Forward seconds of an MoE layer's shared experts on one rank (its TP group's tokens,
    the width split over TP)."""


def step_work(inp, spec) -> StepWork:
    """The work of every layer of ``inp`` (a :class:`sim.moe.step.StepInputs`) on GPUs of
    ``spec``."""
    work = StepWork()
    lay, s = inp.layout, inp.shape
    p, tp = lay.gpus, lay.tp
    act = s.hidden * inp.dtype_bytes  # bytes per token slot
    for moe in (False, True):
        # the TP group's micro-batch, one rank's 1/tp share of its compute (the kernel model
        # with the profile's compute section, else the roofline)
        work.dense_fwd[moe] = kernels.dense_layer_time_s(
            inp.tokens * tp, inp.seq_len, s.hidden, s.heads, spec, inp.compute, tp=tp,
            ffn_hidden=None if moe else s.ffn_hidden, gated=s.gated,
            num_experts=s.experts if moe else None, kv_heads=s.kv_heads,
            dtype_bytes=inp.dtype_bytes, gemm_dtype=inp.gemm_dtype, mla=inp.mla)
        # sequence-parallel AllGather before the TP-split blocks (ReduceScatter after: .T);
        # a dense-FFN layer has two such blocks, attention and MLP
        blocks = 1 if moe else 2
        work.tp_gather[moe] = (group_matrix(lay.tp_groups(), np.full(p, blocks * inp.tokens * act))
                               if tp > 1 else None)
    if inp.shared_ffn:
        work.shared_fwd = float(np.sum(kernels.experts_time_s(
            np.array([float(inp.tokens * tp)]), s.hidden, inp.shared_ffn / tp, spec,
            inp.compute, gated=s.gated, dtype_bytes=inp.dtype_bytes,
            gemm_dtype=inp.gemm_dtype)))
    units = lay.unit_groups()
    moe_index = np.cumsum(s.moe_layers) - 1
    gpus = np.arange(p)
    for layer, moe in enumerate(s.moe_layers):
        if moe:
            _moe_layer(work, inp, spec, layer, int(moe_index[layer]), gpus, units, act)
    return work


def _exchanges(work: StepWork, inp, layer: int, r, m: np.ndarray,
               act: float) -> tuple[np.ndarray, np.ndarray]:
    """(dispatch, combine) byte matrices of one MoE layer under ``inp.dispatcher``; ``m`` is
    the all-to-all dispatch (one copy per token slot)."""
    lay = inp.layout
    if inp.dispatcher == "allgather":  # every token to every GPU of its EP group, and back
        g = group_matrix(np.arange(lay.gpus).reshape(-1, lay.ep), np.full(lay.gpus,
                                                                          inp.tokens * act))
        return g, g.T.copy()
    if inp.dispatcher != "deepep":
        if inp.fp8_dispatch:  # FP8 tokens with their scales; the combine stays in dtype_bytes
            return m * (token_bytes(inp.shape.hidden, "fp8") / act), m.T.copy()
        return m, m.T.copy()
    p, hidden = lay.gpus, inp.shape.hidden
    units = lay.unit_gpu(np.arange(p))  # (P, ep)
    gpu_tokens = np.zeros((p, p))
    gpu_tokens[np.arange(p)[:, None], units] = r.unit_tokens
    first = inp.gpu_node[units].min(axis=1)  # each GPU's EP group's first server
    node_tokens = np.zeros((p, int(inp.gpu_node.max()) + 1))
    rel = np.arange(r.node_tokens.shape[1])
    node_tokens[np.arange(p)[:, None], first[:, None] + rel[None, :]] = r.node_tokens
    base = deepep_matrix(gpu_tokens, node_tokens, inp.gpu_node, inp.local_rank, 1.0)
    fwd, recv = deepep_loads(gpu_tokens, node_tokens)
    d_b, c_b = token_bytes(hidden, "fp8"), token_bytes(hidden, "bf16")
    work.deepep[layer] = ((fwd * d_b, recv * d_b), (fwd * c_b, recv * c_b))
    return base * d_b, base.T * c_b


def _moe_layer(work: StepWork, inp, spec, layer: int, li: int, gpus, units, act) -> None:
    lay, s = inp.layout, inp.shape
    r = inp.routing[li]
    dest = lay.expert_gpu(gpus, li)  # (P, E)
    m = dispatch_matrix(r.slots, dest, act)
    work.dispatch[layer], work.combine[layer] = _exchanges(work, inp, layer, r, m, act)
    recv_slots = np.zeros((lay.gpus, s.experts))
    np.add.at(recv_slots, (dest.ravel(), np.tile(np.arange(s.experts), lay.gpus)),
              r.slots.ravel())
    # each rank of an expert unit computes its 1/etp shard on all the unit's tokens
    unit_slots = recv_slots[units].sum(axis=1)
    # (a grouped GEMM per projection with the profile's compute section, else per-expert
    # rooflines); idle experts are free
    per_unit = kernels.experts_time_s(unit_slots, s.hidden, s.moe_ffn_hidden / lay.etp, spec,
                                      inp.compute, gated=s.gated, dtype_bytes=inp.dtype_bytes,
                                      gemm_dtype=inp.gemm_dtype)
    work.expert_fwd[layer] = np.repeat(per_unit, lay.etp)
    if lay.etp > 1:
        work.unit_gather[layer] = group_matrix(units, m.sum(axis=0))
    if r.local.any():  # Rectify IR: each GPU's own experts take its unrouted tokens
        work.local_fwd[layer] = kernels.experts_time_s(
            r.local, s.hidden, s.moe_ffn_hidden, spec, inp.compute, gated=s.gated,
            dtype_bytes=inp.dtype_bytes, gemm_dtype=inp.gemm_dtype)
