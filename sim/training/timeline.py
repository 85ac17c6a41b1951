"""Times a pipeline :class:`~sim.training.schedules.Plan`: every stage runs its ops one at a
time in list order, each as soon as the stage is free and its inputs have arrived.

Dependencies (C = model chunks per path, stage(mb, k) from the plan's paths):

* F(mb, k), k > 0: F(mb, k-1) finished + p2p(stage(mb, k-1), stage(mb, k), mb, k-1, 'F');
* the input-gradient backward (``B``, ``I`` or the backward of an ``FB``) of (mb, k), k < C-1:
  that of (mb, k+1) finished + p2p(stage(mb, k+1), stage(mb, k), mb, k+1, 'B');
  of (mb, C-1): F(mb, C-1) finished (same stage);
* ``FB``: both halves' dependencies; ``W``: only its stage's order (it follows its ``I``).

``p2p``'s ``chunk`` is the model chunk that produced the tensor (the sender's); it is not called
for consecutive chunks on the same stage (0 s). The reference implementations' batching of
sends with the next op's receives is not modelled: a tensor leaves when its op ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from sim.training.schedules import Op, Plan

Duration = Callable[[int, Op], float]
P2p = Callable[[int, int, int, int, str], float]


class TimedOp(NamedTuple):
    stage: int
    op: Op
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Timeline:
    """The timed plan. ``ops``: every op, stage by stage in list order; ``makespan_s``: the
    last op's end (the first starts at 0); ``busy_s[s]``: stage s's summed op durations."""

    plan: Plan
    ops: tuple[TimedOp, ...]
    makespan_s: float
    busy_s: tuple[float, ...]

    @property
    def bubble_fraction(self) -> float:
        """1 - sum(busy) / (pp * makespan): the idle share of the stages' time."""
        if self.makespan_s <= 0:
            return 0.0
        return 1.0 - sum(self.busy_s) / (self.plan.pp * self.makespan_s)

    @cached_property
    def peak_in_flight(self) -> tuple[int, ...]:
        """Per stage, the peak number of (micro-batch, chunk) activations held: forward done,
        input-gradient backward not yet (all local chunks counted alike)."""
        return tuple(int(round(p)) for p in self.in_flight_peak())

    def in_flight_peak(self, weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
                       until: str = "B") -> tuple[float, ...]:
        """Per stage, the peak over time of sum(weight[local_chunk]) over the (mb, chunk)
        whose forward has finished and whose backward has not. ``weights``: one per local chunk
        (e.g. layers per chunk), or one row per stage; None = 1 each. ``until='B'`` frees at
        the end of the input-gradient backward (``B``, ``I``, the backward of ``FB``),
        ``'W'`` at the end of the weight-gradient ``W`` of a split backward (the activations
        the weight gradient reads). A forward and a backward ending at the same instant (an
        ``FB``) free before they allocate."""
        if until not in ("B", "W"):
            raise ValueError(f"until must be 'B' or 'W', got {until!r}")
        plan = self.plan
        w = np.ones((plan.pp, plan.local_chunks)) if weights is None else np.broadcast_to(
            np.asarray(weights, dtype=float), (plan.pp, plan.local_chunks))
        free_kinds = ("B", "I") if until == "B" else ("B", "W")
        times: list[list[float]] = [[] for _ in range(plan.pp)]
        deltas: list[list[float]] = [[] for _ in range(plan.pp)]
        for s, op, _, end in self.ops:
            if op.kind in ("F", "FB"):
                times[s].append(end)
                deltas[s].append(w[s, plan.paths[op.mb][op.chunk][1]])
            if op.kind in free_kinds:
                times[s].append(end)
                deltas[s].append(-w[s, plan.paths[op.mb][op.chunk][1]])
            if op.kind == "FB":
                times[s].append(end)
                deltas[s].append(-w[s, plan.paths[op.mb_b][op.chunk_b][1]])
        out = []
        for t, d in zip(times, deltas, strict=True):
            if not t:
                out.append(0.0)
                continue
            t_arr, d_arr = np.asarray(t), np.asarray(d)
            order = np.lexsort((d_arr, t_arr))
            out.append(float(max(0.0, np.cumsum(d_arr[order]).max())))
        return tuple(out)

    def stage_ops(self, stage: int) -> list[TimedOp]:
        return [t for t in self.ops if t.stage == stage]


def run(plan: Plan, duration: Duration, p2p: P2p) -> Timeline:
    """Time ``plan``: ``duration(stage, op)`` seconds per op (for ``FB`` the overlapped time);
    ``p2p(src_stage, dst_stage, mb, chunk, kind)`` seconds per hop between stages. Raises
    RuntimeError naming a stuck stage and op if the plan deadlocks."""
    plan.check()
    pp, m, c = plan.pp, plan.m, plan.num_chunks
    stage_of = [[st for st, _ in path] for path in plan.paths]
    nan = float("nan")
    f_end = [[nan] * c for _ in range(m)]
    b_end = [[nan] * c for _ in range(m)]

    def hop(src: int, dst: int, mb: int, k: int, kind: str) -> float:
        return 0.0 if src == dst else float(p2p(src, dst, mb, k, kind))

    def f_ready(s: int, mb: int, k: int) -> float:
        if k == 0:
            return 0.0
        t = f_end[mb][k - 1]
        return t if t != t else t + hop(stage_of[mb][k - 1], s, mb, k - 1, "F")

    def b_ready(s: int, mb: int, k: int) -> float:
        if k == c - 1:
            return f_end[mb][k]
        t = b_end[mb][k + 1]
        return t if t != t else t + hop(stage_of[mb][k + 1], s, mb, k + 1, "B")

    ptr = [0] * pp
    free = [0.0] * pp
    busy = [0.0] * pp
    timed: list[list[TimedOp]] = [[] for _ in range(pp)]
    left = sum(len(o) for o in plan.ops)
    while left:
        progressed = False
        for s in range(pp):
            ops, i, t = plan.ops[s], ptr[s], free[s]
            while i < len(ops):
                op = ops[i]
                kind = op.kind
                if kind == "F":
                    ready = f_ready(s, op.mb, op.chunk)
                elif kind in ("B", "I"):
                    ready = b_ready(s, op.mb, op.chunk)
                elif kind == "FB":  # both inputs; nan (not computed yet) if either is
                    fr, br = f_ready(s, op.mb, op.chunk), b_ready(s, op.mb_b, op.chunk_b)
                    ready = nan if fr != fr or br != br else max(fr, br)
                else:  # W: after its I, which is earlier on this stage
                    ready = 0.0
                if ready != ready:  # nan: an input is not computed yet
                    break
                dt = float(duration(s, op))
                start = t if t > ready else ready
                t = start + dt
                busy[s] += dt
                if kind in ("F", "FB"):
                    f_end[op.mb][op.chunk] = t
                if kind in ("B", "I"):
                    b_end[op.mb][op.chunk] = t
                elif kind == "FB":
                    b_end[op.mb_b][op.chunk_b] = t
                timed[s].append(TimedOp(s, op, start, t))
                i += 1
            if i != ptr[s]:
                progressed = True
                left -= i - ptr[s]
                ptr[s], free[s] = i, t
        if not progressed:
            stuck = [f"stage {s} at op {ptr[s]} {plan.ops[s][ptr[s]]}"
                     for s in range(pp) if ptr[s] < len(plan.ops[s])]
            raise RuntimeError(f"pipeline plan {plan.name!r} deadlocks: " + "; ".join(stuck))
    flat = tuple(t for stage in timed for t in stage)
    makespan = max((t.end_s for t in flat), default=0.0)
    return Timeline(plan, flat, makespan, tuple(busy))
