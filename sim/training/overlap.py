"""How long a schedule op takes, from its chunk's simulated passes, and what of it is exposed.

A forward (``F``) or backward (``B``) takes its pass's time. A split backward's weight-gradient
half (``W``) is half the backward's compute; its input-gradient half (``I``) the rest. An
overlapped F&B pair (``FB``: DualPipe's, or 1F1B with Megatron-Core's all-to-all overlap)
hides each pass's expert-parallel exchanges under the other's compute, which runs ``slow``
times longer (SMs / (SMs - communication SMs)); its tensor-parallel exchanges stay exposed:

    FB = max(slow x (compute_F + compute_B), ep_F + ep_B) + tp_F + tp_B + other waits
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from sim.training.chunks import ChunkTime
from sim.training.schedules import Op, Plan

ChunkTimes = Callable[[int, int], ChunkTime]  # (model chunk, micro-batch) -> its times


def op_parts(op: Op, chunk_time: ChunkTimes, slow: float) -> tuple[float, dict]:
    """(seconds, exposed seconds by part: compute, ep, tp) of one schedule op."""
    if op.kind in ("F", "B"):
        t = chunk_time(op.chunk, op.mb)
        p = t.fwd if op.kind == "F" else t.bwd
        return p.seconds, dict(p.parts)
    if op.kind in ("I", "W"):
        b = chunk_time(op.chunk, op.mb).bwd
        w = b.parts["compute"] / 2
        if op.kind == "W":
            return w, {"compute": w, "ep": 0.0, "tp": 0.0}
        return b.seconds - w, {**b.parts, "compute": w}
    f, b = chunk_time(op.chunk, op.mb).fwd, chunk_time(op.chunk_b, op.mb_b).bwd
    compute = slow * (f.parts["compute"] + b.parts["compute"])
    ep = f.parts["ep"] + b.parts["ep"]
    tp = f.parts["tp"] + b.parts["tp"]
    rest = f.seconds + b.seconds - sum(f.parts.values()) - sum(b.parts.values())
    return (max(compute, ep) + tp + max(rest, 0.0),
            {"compute": compute, "ep": max(ep - compute, 0.0), "tp": tp})


def op_time_s(op: Op, chunk_time: ChunkTimes, slow: float) -> float:
    """Seconds of one schedule op (:func:`op_parts`)."""
    return op_parts(op, chunk_time, slow)[0]


def pair_steady_state(plan: Plan) -> Plan:
    """``plan`` with each backward on a stage merged with the next forward after it in the
    stage's order into one overlapped ``FB`` op (Megatron-Core's 1F1B all-to-all overlap,
    which warms up with one forward more so that a pair never holds a forward and the backward
    waiting for it: on the last stage F0, F1&B0, F2&B1, ..., B(m-1)). Backwards with no
    forward left after them stay alone."""
    ops = []
    for stage_ops in plan.ops:
        rest = list(stage_ops)
        out = []
        while rest:
            a = rest.pop(0)
            nxt = next((j for j, o in enumerate(rest) if o.kind == "F"), None)
            if a.kind == "B" and nxt is not None:
                f = rest.pop(nxt)
                out.append(Op("FB", f.mb, f.chunk, a.mb, a.chunk))
            else:
                out.append(a)
        ops.append(tuple(out))
    return replace(plan, ops=tuple(ops))
