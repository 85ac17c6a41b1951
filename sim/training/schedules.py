"""Pipeline-parallel schedules as plug-ins: each turns a layout (``pp`` stages, ``vpp`` virtual
stages, ``m`` micro-batches) into a :class:`Plan`, the per-stage order of forward and backward
ops that :func:`sim.training.timeline.run` times.

Data model:

* A micro-batch's *path* is the model chunks ``0..C-1`` it goes through in order; model chunk
  ``k`` of micro-batch ``mb`` runs on ``plan.paths[mb][k] = (stage, local_chunk)``, the stage's
  ``local_chunk``-th set of parameters (Megatron's ``vp_stage``; DualPipe's two copies).
* An :class:`Op` names one unit of work of a stage. ``chunk`` is always the *model* chunk
  (position on the path), never the local chunk. Kinds:

  - ``'F'``: the forward of (``mb``, ``chunk``);
  - ``'B'``: its full backward (input and weight gradients);
  - ``'I'``: the input-gradient half of a split (zero-bubble) backward; its weight-gradient half
    ``'W'`` (same ``mb`` and ``chunk``) comes later on the same stage. ``I`` + ``W`` = ``B``;
    only ``I`` gates the upstream chunk's backward, nothing waits for ``W``;
  - ``'FB'``: the forward of (``mb``, ``chunk``) and the full backward of (``mb_b``,
    ``chunk_b``) run together, overlapped, on one stage (DualPipe's F&B chunk).

Schedules (``SCHEDULES.get(name)(pp, vpp, m) -> Plan``):

* ``1f1b``: Megatron's non-interleaved 1F1B, C = pp;
* ``interleaved``: Megatron-Core's interleaved 1F1B, C = pp * vpp, model chunk k on stage
  k mod pp as local chunk k // pp;
* ``dualpipe``: DeepSeek-V3's bidirectional DualPipe, C = pp, two local chunks per stage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from sim.errors import UserError
from sim.registry import Registry

KINDS = ("F", "B", "I", "W", "FB")
BACKWARD_KINDS = ("B", "I")  # the backward that produces the input gradient


class Op(NamedTuple):
    """One op of a stage; see the module docstring for ``kind``. ``mb_b``/``chunk_b``: the
    backward half of an ``'FB'`` pair (-1 otherwise)."""

    kind: str
    mb: int
    chunk: int
    mb_b: int = -1
    chunk_b: int = -1

    def __str__(self) -> str:
        if self.kind == "FB":
            return f"FB(F mb={self.mb} chunk={self.chunk}; B mb={self.mb_b} chunk={self.chunk_b})"
        return f"{self.kind}(mb={self.mb}, chunk={self.chunk})"


@dataclass(frozen=True)
class Plan:
    """A schedule's output. ``ops[s]``: stage s's ops, run one at a time in this order;
    ``paths[mb][k]``: (stage, local_chunk) running model chunk k of micro-batch mb (every path
    has the same length C); ``m``: micro-batches; ``local_chunks``: parameter copies per stage
    (1 for 1F1B, vpp for interleaved, 2 for DualPipe)."""

    name: str
    pp: int
    m: int
    ops: tuple[tuple[Op, ...], ...]
    paths: tuple[tuple[tuple[int, int], ...], ...]
    local_chunks: int = 1

    @property
    def num_chunks(self) -> int:
        """C, the model chunks on every micro-batch's path."""
        return len(self.paths[0])

    def check(self) -> None:
        """Raise ValueError unless every (mb, chunk) has exactly one forward and one backward
        (``B``, ``I`` + later ``W``, or inside an ``FB``), each on the stage its path names,
        and every ``W`` follows its ``I`` on that stage."""
        if len(self.ops) != self.pp or len(self.paths) != self.m:
            raise ValueError(f"{self.name}: {len(self.ops)} op lists for pp={self.pp}, "
                             f"{len(self.paths)} paths for m={self.m}")
        c = self.num_chunks
        seen: dict[tuple[str, int, int], int] = {}

        def mark(kind: str, mb: int, k: int, s: int) -> None:
            if not (0 <= mb < self.m and 0 <= k < len(self.paths[mb])):
                raise ValueError(f"{self.name}: stage {s}: {kind}(mb={mb}, chunk={k}) "
                                 "is not on any path")
            if self.paths[mb][k][0] != s:
                raise ValueError(f"{self.name}: stage {s} runs {kind}(mb={mb}, chunk={k}), "
                                 f"which the path puts on stage {self.paths[mb][k][0]}")
            if (kind, mb, k) in seen:
                raise ValueError(f"{self.name}: {kind}(mb={mb}, chunk={k}) runs twice")
            if kind == "W" and ("I", mb, k) not in seen:
                raise ValueError(f"{self.name}: stage {s}: W(mb={mb}, chunk={k}) before its I")
            seen[(kind, mb, k)] = s

        for s, ops in enumerate(self.ops):
            for op in ops:
                if op.kind not in KINDS:
                    raise ValueError(f"{self.name}: stage {s}: unknown op kind {op.kind!r}")
                if op.kind == "FB":
                    mark("F", op.mb, op.chunk, s)
                    mark("B", op.mb_b, op.chunk_b, s)
                else:
                    mark(op.kind, op.mb, op.chunk, s)
        for mb in range(self.m):
            if len(self.paths[mb]) != c:
                raise ValueError(f"{self.name}: paths differ in length")
            for k in range(c):
                if ("F", mb, k) not in seen:
                    raise ValueError(f"{self.name}: no forward of mb={mb} chunk={k}")
                split = ("I", mb, k) in seen
                if split == (("B", mb, k) in seen) or split != (("W", mb, k) in seen):
                    raise ValueError(f"{self.name}: mb={mb} chunk={k} needs exactly one backward "
                                     "(B, or I then W)")


Schedule = Callable[[int, int, int], Plan]
SCHEDULES: Registry[Schedule] = Registry("schedule")


def build(name: str, pp: int, vpp: int, m: int) -> Plan:
    """The plan of schedule ``name``; UserError for an unknown name or a layout it can't run."""
    return SCHEDULES.get(name)(pp, vpp, m)


def _common(name: str, pp: int, vpp: int, m: int) -> None:
    if pp < 1:
        raise UserError(f"schedule {name!r}: pp: must be >= 1 (got {pp})")
    if vpp < 1:
        raise UserError(f"schedule {name!r}: vpp: must be >= 1 (got {vpp})")
    if m < 1:
        raise UserError(f"schedule {name!r}: micro-batches: must be >= 1 (got {m})")


def _one_f_one_b_order(warmup: int, total: int, fwd: list, bwd: list) -> list[Op]:
    """Megatron's three phases over ``total`` virtual micro-batches: ``warmup`` forwards, then
    (forward, backward) pairs, then the remaining backwards."""
    ops = [fwd[k] for k in range(warmup)]
    for k in range(total - warmup):
        ops.append(fwd[warmup + k])
        ops.append(bwd[k])
    ops.extend(bwd[k] for k in range(total - warmup, total))
    return ops


@SCHEDULES.register("1f1b")
def one_f_one_b(pp: int, vpp: int, m: int) -> Plan:
    """Megatron's ``forward_backward_pipelining_without_interleaving``: stage r runs
    min(pp - r - 1, m) warm-up forwards, then 1F1B, then the cool-down backwards."""
    _common("1f1b", pp, vpp, m)
    if vpp != 1:
        raise UserError(f"schedule '1f1b': vpp: must be 1 (got {vpp}); "
                        "use schedule 'interleaved' for vpp > 1")
    ops = []
    for r in range(pp):
        fwd = [Op("F", i, r) for i in range(m)]
        bwd = [Op("B", i, r) for i in range(m)]
        ops.append(tuple(_one_f_one_b_order(min(pp - r - 1, m), m, fwd, bwd)))
    paths = tuple(tuple((k, 0) for k in range(pp)) for _ in range(m))
    return Plan("1f1b", pp, m, tuple(ops), paths, 1)


@SCHEDULES.register("interleaved")
def interleaved(pp: int, vpp: int, m: int) -> Plan:
    """Megatron-Core's ``forward_backward_pipelining_with_interleaving`` with its default
    ``microbatch_group_size_per_vp_stage`` = pp (depth-first): forwards go through a table of
    groups of pp micro-batches per local chunk (chunk 0 for mbs 0..pp-1, chunk 1 for the same,
    ..., then the next group); backwards through the same table with the local chunks
    reversed. Stage r warms up with min(2 (pp - r - 1) + (vpp - 1) pp, m vpp) forwards, then
    runs (forward, backward) pairs, then the remaining backwards."""
    _common("interleaved", pp, vpp, m)
    if vpp < 2:
        raise UserError(f"schedule 'interleaved': vpp: must be >= 2 (got {vpp}); "
                        "use schedule '1f1b' for vpp == 1")
    if pp < 2:
        raise UserError(f"schedule 'interleaved': pp: must be >= 2 (got {pp})")
    if m % pp:
        raise UserError(f"schedule 'interleaved': micro-batches: must be a multiple of "
                        f"pp={pp} (got {m})")
    group = pp
    table = [(mb, c) for g in range(0, m, group) for c in range(vpp)
             for mb in range(g, min(g + group, m))]
    total = m * vpp
    ops = []
    for r in range(pp):
        fwd = [Op("F", mb, c * pp + r) for mb, c in table]
        bwd = [Op("B", mb, (vpp - 1 - c) * pp + r) for mb, c in table]
        warmup = min(2 * (pp - r - 1) + (vpp - 1) * group, total)
        ops.append(tuple(_one_f_one_b_order(warmup, total, fwd, bwd)))
    paths = tuple(tuple((k % pp, k // pp) for k in range(pp * vpp)) for _ in range(m))
    return Plan("interleaved", pp, m, tuple(ops), paths, vpp)


def _dualpipe_stage(r: int, pp: int, m: int) -> tuple[Op, ...]:
    """Rank r's ops in the order of DeepSeek's reference ``DualPipe.step`` (8 steps).

    The reference's *phase* 0 is the direction that reaches the rank first (direction 0, the
    micro-batches entering at rank 0, on the first half of the ranks; direction 1 on the second
    half); each phase keeps its own forward and backward counters, so micro-batches run in
    order per direction. A backward the reference runs with ``enable_zb`` becomes ``I`` and its
    ``W`` is emitted where the reference pops its weight-gradient store (FIFO)."""
    n, half = pp // 2, m // 2
    h = min(r, pp - 1 - r)
    second = int(r >= n)
    middle = r in (n - 1, n)
    nf, nb = [0, 0], [0, 0]
    store: deque[tuple[int, int]] = deque()
    ops: list[Op] = []

    def chunk(d: int) -> int:
        return r if d == 0 else pp - 1 - r

    def nxt(counter: list[int], phase: int) -> tuple[int, int]:
        d = phase ^ second
        mb = d * half + counter[d]
        counter[d] += 1
        return mb, chunk(d)

    def f(phase: int) -> None:
        ops.append(Op("F", *nxt(nf, phase)))

    def b(phase: int, zb: bool = False) -> None:
        mb, c = nxt(nb, phase)
        if zb:
            ops.append(Op("I", mb, c))
            store.append((mb, c))
        else:
            ops.append(Op("B", mb, c))

    def w() -> None:
        ops.append(Op("W", *store.popleft()))

    def fb(phase_f: int, phase_b: int) -> None:
        ops.append(Op("FB", *nxt(nf, phase_f), *nxt(nb, phase_b)))

    for _ in range((n - h - 1) * 2):  # 1: nF0
        f(0)
    for _ in range(h + 1):  # 2: nF0F1
        f(0)
        f(1)
    for _ in range(n - h - 1):  # 3: nB1W1F1 (zero bubble)
        b(1, zb=True)
        w()
        f(1)
    for i in range(half - pp + h + 1):  # 4 (main): nF0B1F1B0
        if i == 0 and middle:  # the reference does not overlap this pair
            f(0)
            b(1)
        else:
            fb(0, 1)
        fb(1, 0)
    for _ in range(n - h - 1):  # 5: nB1F1B0
        b(1)
        fb(1, 0)
    zb = False
    for i in range(h + 1):  # 6: nB1B0, the second half zero bubble
        if i == (h + 1) // 2 and h % 2 == 1:
            zb = True
        b(1, zb)
        if i == (h + 1) // 2 and h % 2 == 0:
            zb = True
        b(0, zb)
    for _ in range(n - h - 1):  # 7: nWB0 (zero bubble)
        w()
        b(0, zb=True)
    for _ in range(h + 1):  # 8: nW
        w()
    assert not store
    return tuple(ops)


@SCHEDULES.register("dualpipe")
def dualpipe(pp: int, vpp: int, m: int) -> Plan:
    """DeepSeek-V3's DualPipe (``deepseek-ai/DualPipe``, ``dualpipe/dualpipe.py``): micro-batches
    0..m/2-1 enter at rank 0 (path 0, 1, ..., pp-1, local chunk 0), m/2..m-1 enter at rank pp-1
    (path pp-1, ..., 0, local chunk 1: model chunk k on rank pp-1-k), so each rank holds its
    layers twice. Requires even pp, even m >= 2 pp (the reference's asserts) and vpp == 1."""
    _common("dualpipe", pp, vpp, m)
    if vpp != 1:
        raise UserError(f"schedule 'dualpipe': vpp: must be 1 (got {vpp}); DualPipe already "
                        "runs two chunks per stage")
    if pp % 2:
        raise UserError(f"schedule 'dualpipe': pp: must be even (got {pp})")
    if m % 2 or m < 2 * pp:
        raise UserError(f"schedule 'dualpipe': micro-batches: must be even and >= 2 pp = "
                        f"{2 * pp} (got {m})")
    ops = tuple(_dualpipe_stage(r, pp, m) for r in range(pp))
    half = m // 2
    paths = tuple(tuple((k, 0) for k in range(pp)) if mb < half
                  else tuple((pp - 1 - k, 1) for k in range(pp)) for mb in range(m))
    return Plan("dualpipe", pp, m, ops, paths, 2)
