"""Forward and backward times of one model chunk for one micro-batch, simulated on the fabric.

Every pipeline stage is the same block of GPUs on the same kind of servers, so a chunk is
simulated on the first stage's GPUs (the first gpus / pp of the cluster): its layers' forward
pass as a training step runs them (``sim.moe.step``: attention, dispatch, experts, combine, TP
exchanges), the GPUs then synchronised (the next stage's gradient arrives at once), then its
backward pass. The chunk holding the last layer adds the output layer's logits GEMM (forward,
and twice that backward); recomputation adds the re-run forward to the backward (``full``: the
whole chunk's forward, ``selective``: its attention cores). With ``grads`` the backward also
reduces the chunk's gradients over the data-parallel groups as the step does (each layer's as
soon as its backward is done with ``overlap_grad_reduce``); ``reduce_tail_s`` is how long they
run past the backward.

The times of a pass are split into the critical GPU's compute, expert-parallel (dispatch and
combine) and tensor-parallel seconds, which the schedule needs to overlap one pass's
communication under another's compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import simpy

from sim.comm.model import Model
from sim.compute import kernels, roofline
from sim.metrics import ListRecorder
from sim.moe.clocks import GpuClocks
from sim.moe.gradients import GradientReduction
from sim.moe.step import StepInputs, backward, forward
from sim.moe.work import step_work
from sim.network import Fabric

#: Span categories of each part of a pass.
PARTS = {"compute": ("attention", "gate", "expert"), "ep": ("dispatch", "combine"),
         "tp": ("tp",)}


@dataclass
class PassTime:
    """One pass (forward or backward) of a chunk: seconds, and the critical GPU's seconds by
    part (``compute``, ``ep``, ``tp``)."""

    seconds: float
    parts: dict = field(default_factory=dict)


@dataclass
class ChunkTime:
    """A chunk's forward and backward for one micro-batch; ``reduce_tail_s``: the gradient
    reduction's time past the backward (0 without ``grads``); bytes that crossed servers and
    stayed inside them."""

    fwd: PassTime
    bwd: PassTime
    reduce_tail_s: float = 0.0
    inter_node_bytes: float = 0.0
    intra_node_bytes: float = 0.0
    a2a_inter_node_bytes: float = 0.0
    a2a_intra_node_bytes: float = 0.0


def chunk_inputs(base: StepInputs, layers: tuple[int, ...], routing: list) -> StepInputs:
    """``base`` restricted to ``layers`` (indices into the model's layers); ``routing``: the
    micro-batch's LayerRouting of every MoE layer of the model."""
    moe_flags = base.shape.moe_layers
    index = np.cumsum(moe_flags) - 1
    shape = replace(base.shape, moe_layers=tuple(moe_flags[i] for i in layers))
    return replace(base, shape=shape,
                   routing=[routing[int(index[i])] for i in layers if moe_flags[i]])


def _parts(spans, gpu: int, phase: str) -> dict:
    out = dict.fromkeys(PARTS, 0.0)
    for s in spans:
        if s.gpu == gpu and s.phase == phase:
            for part, cats in PARTS.items():
                if s.category in cats:
                    out[part] += s.end_s - s.start_s
    return out


def time_chunk(fabric_factory, inp: StepInputs, profile, *, logits_s: float = 0.0,
               recompute: str = "none", core_s: float = 0.0, grads: str | None = None,
               grad_bytes: int | None = None) -> ChunkTime:
    """Simulate one chunk (``inp`` restricted by :func:`chunk_inputs`) for one micro-batch.

    ``fabric_factory(env) -> Fabric`` builds a fresh fabric; ``profile`` the communication
    profile (ideal: no library model); ``logits_s``: the output layer's forward seconds (last
    chunk); ``core_s``: the forward seconds of one layer's attention core (selective recompute);
    ``grads``: ``"all_reduce"`` or ``"reduce_scatter"`` to reduce the gradients in the
    backward, None not to."""
    env = simpy.Environment()
    fabric: Fabric = fabric_factory(env)
    model = None if profile.is_ideal else Model(fabric.cluster, profile, routes=fabric.routes)
    rec = ListRecorder()
    p = inp.layout.gpus
    clocks = GpuClocks(fabric, p, rec, inp.a2a_algorithm, model)
    work = step_work(inp, fabric.cluster.gpu)
    proc = env.process(_passes(clocks, inp, work, logits_s, recompute, core_s, grads,
                               grad_bytes))
    env.run()
    ends = proc.value
    f_end, b_start, b_end = ends["fwd_end"], ends["bwd_start"], ends["bwd_end"]
    crit_f, crit_b = int(np.argmax(f_end)), int(np.argmax(b_end))
    fwd = PassTime(float(f_end.max()), _parts(rec.spans, crit_f, "fwd"))
    bwd = PassTime(float(b_end.max() - b_start), _parts(rec.spans, crit_b, "bwd"))
    tail = max(float(env.now) - float(b_end.max()), 0.0) if grads else 0.0
    return ChunkTime(fwd, bwd, tail, clocks.inter_node_bytes, clocks.intra_node_bytes,
                     clocks.a2a_inter_node_bytes, clocks.a2a_intra_node_bytes)


def _passes(clocks: GpuClocks, inp: StepInputs, work, logits_s: float, recompute: str,
            core_s: float, grads: str | None, grad_bytes: int | None):
    """SimPy process: forward, synchronise, backward (+ recompute, + reductions); returns the
    forward's end, the backward's start and end per GPU."""
    yield from forward(clocks, inp, work)
    if logits_s:
        clocks.compute("attention", "fwd", -1, logits_s)
    f_end = clocks.ready.copy()
    start = float(f_end.max())
    clocks.ready = np.full(clocks.p, start)
    layers = len(inp.shape.moe_layers)
    if recompute == "full":  # each layer's forward again, from its saved input
        spans = clocks.rec.spans
        first = len(spans)
        yield from forward(clocks, inp, work)
        spans[first:] = [replace(s, phase="bwd") for s in spans[first:]]  # backward time
    elif recompute == "selective" and core_s:
        clocks.compute("attention", "bwd", -1, core_s * layers)
    if logits_s:
        clocks.compute("attention", "bwd", -1, 2 * logits_s)
    reducer = None
    if grads:
        g_inp = inp if grad_bytes is None else replace(inp, grad_dtype_bytes=grad_bytes)
        reducer = GradientReduction(clocks, g_inp, grads)
    reductions = yield from backward(clocks, inp, work, reducer)
    b_end = clocks.ready.copy()
    if reductions:
        yield clocks.fabric.env.all_of(reductions)
    return {"fwd_end": f_end, "bwd_start": start, "bwd_end": b_end}


def gather_time_s(fabric_factory, inp: StepInputs, profile, param_bytes: int = 2) -> float:
    """Seconds of the distributed optimizer's parameter AllGather of ``inp``'s layers over the
    data-parallel groups, alone on the fabric."""
    env = simpy.Environment()
    fabric = fabric_factory(env)
    model = None if profile.is_ideal else Model(fabric.cluster, profile, routes=fabric.routes)
    clocks = GpuClocks(fabric, inp.layout.gpus, None, inp.a2a_algorithm, model)
    g = GradientReduction(clocks, replace(inp, grad_dtype_bytes=param_bytes), "all_gather")
    proc = g.start(list(range(len(inp.shape.moe_layers))), 0.0)
    env.run(proc)
    return float(env.now)


def logits_time_s(tokens: int, hidden: int, vocab: int, tp: int, spec, compute,
                  gemm_dtype: str = "bf16") -> float:
    """Forward seconds of the output layer on one rank: [tokens, hidden] x [hidden, vocab / tp]
    (vocabulary-parallel; the logits stay BF16 in DeepSeek-V3's FP8 recipe, as here)."""
    n = -(-vocab // tp)
    if compute is None:
        return float(roofline.gemm_time_s(tokens, n, hidden, spec))
    return float(kernels.gemm_time_s(tokens, n, hidden, spec, compute, "bf16"))


def core_time_s(inp: StepInputs, spec) -> float:
    """Forward seconds of one layer's attention core on one rank (selective recompute)."""
    s, tp = inp.shape, inp.layout.tp
    tokens = inp.tokens * tp
    if inp.compute is None:
        flops, nbytes, _ = roofline.attention_core_work(tokens, inp.seq_len, s.hidden // tp,
                                                        s.heads // tp)
        return float(roofline.roofline_time_s(flops, nbytes, spec))
    heads_r = s.heads // tp
    width = s.hidden // s.heads
    if s.mla is not None:
        width = kernels.mla_core_width(s.mla)
    return float(kernels.attention_core_time_s(tokens, inp.seq_len, heads_r * width, heads_r,
                                               spec, inp.compute))


def blocks(layers: tuple[int, ...], size: int | None) -> list[tuple[int, ...]]:
    """``layers`` cut into consecutive blocks of at most ``size`` (None: one block)."""
    n = size or len(layers)
    return [layers[i:i + n] for i in range(0, len(layers), n)]


def combine(parts: list[ChunkTime], overlap: bool = True) -> ChunkTime:
    """A chunk's times from its blocks' (in layer order): passes and bytes add up; the
    gradient tail is what the blocks' reductions leave after the chunk's backward, which runs
    the blocks last to first, each block's leftover (``reduce_tail_s``) queued behind the
    previous one's (one stream) and, with ``overlap``, starting at its own block's end."""
    if len(parts) == 1:
        return parts[0]

    def add(passes):
        keys = passes[0].parts
        return PassTime(sum(p.seconds for p in passes),
                        {key: sum(p.parts[key] for p in passes) for key in keys})

    fwd, bwd = add([p.fwd for p in parts]), add([p.bwd for p in parts])
    finish, end = 0.0, 0.0
    for p in reversed(parts):
        end += p.bwd.seconds
        finish = max(finish, end if overlap else bwd.seconds) + p.reduce_tail_s
    return ChunkTime(fwd, bwd, max(finish - bwd.seconds, 0.0),
                     sum(p.inter_node_bytes for p in parts),
                     sum(p.intra_node_bytes for p in parts),
                     sum(p.a2a_inter_node_bytes for p in parts),
                     sum(p.a2a_intra_node_bytes for p in parts))
