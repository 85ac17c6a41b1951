"""Forming one batch for the next model step (papers.md section 4a, Read-ME Algorithm 1).

Candidates are the requests waiting for prefill and the requests running (decoding). A prefill
costs the request's ``prompt_tokens`` and is never split; a decode costs 1 token. A batch holds
at most ``max_batch_tokens`` tokens, with one exception so that nothing starves: a single
prefill larger than the whole budget is admitted alone when the batch is otherwise empty.

The caller says which experts each :class:`WorkItem` will use (``experts_of``) and, for
expert-aware batching, its queue key expert (``key_of``: for a decode the expert of its next
token, for a prefill the expert most of its prompt tokens use). Policies (:data:`BATCHERS`):

* ``decode_first``: running decodes, oldest arrival first, while the budget allows; then waiting
  prefills by arrival while they fit, stopping at the first that does not.
* ``prefill_first``: waiting prefills by arrival while they fit (stopping at the first that does
  not), then decodes oldest first while the budget allows.
* ``expert_aware`` (Read-ME Algorithm 1): all candidates go into one FIFO queue per key expert;
  repeatedly take the expert whose queue holds the most tokens (ties: lowest expert id); if the
  whole queue fits in the remaining budget add all of it and continue, otherwise add its items in
  FIFO order while they fit and stop.

"By arrival" and FIFO mean ascending ``(arrival_s, rid)``. Pure functions of the queue state: no
SimPy, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Literal

from sim.errors import UserError
from sim.serving.requests import Request

BATCHERS = ("decode_first", "prefill_first", "expert_aware")


@dataclass(frozen=True)
class WorkItem:
    """One candidate: the prefill of a waiting request or the next decode of a running one."""

    request: Request
    kind: Literal["prefill", "decode"]

    @property
    def rid(self) -> int:
        return self.request.rid

    @property
    def arrival_s(self) -> float:
        return self.request.arrival_s

    @property
    def tokens(self) -> int:
        """Batch tokens this item costs: ``prompt_tokens`` for a prefill, 1 for a decode."""
        return self.request.prompt_tokens if self.kind == "prefill" else 1


@dataclass(frozen=True)
class Batch:
    """The work of one model step.

    decode, prefill: rids admitted for a decode step / for their whole prefill, in admission
    order. tokens: total batch tokens. experts: union of the admitted items' experts.
    """

    decode: list[int]
    prefill: list[int]
    tokens: int
    experts: frozenset[int]

    @property
    def unique_experts(self) -> int:
        return len(self.experts)


ExpertsOf = Callable[[WorkItem], frozenset[int]]
KeyOf = Callable[[WorkItem], int]


def form_batch(
    policy: str,
    waiting: Sequence[Request],
    running: Sequence[Request],
    max_batch_tokens: int,
    experts_of: ExpertsOf,
    key_of: KeyOf | None = None,
) -> Batch:
    """One batch from ``waiting`` (to prefill) and ``running`` (to decode) under ``policy``.

    ``key_of`` is required by ``expert_aware`` and ignored by the others. ``experts_of`` is
    called once per admitted item.
    """
    if policy not in BATCHERS:
        raise UserError(f"batcher: {policy!r} is not one of {', '.join(BATCHERS)}")
    if (
        isinstance(max_batch_tokens, bool)
        or not isinstance(max_batch_tokens, Integral)
        or max_batch_tokens < 1
    ):
        raise UserError(f"max_batch_tokens: {max_batch_tokens!r} is not an integer >= 1")
    prefills = _fifo(WorkItem(r, "prefill") for r in waiting)
    decodes = _fifo(WorkItem(r, "decode") for r in running)
    rids = [item.rid for item in prefills + decodes]
    if len(set(rids)) != len(rids):
        raise ValueError("form_batch: a rid appears twice among the waiting and running requests")
    if policy == "decode_first":
        chosen = _take(decodes, max_batch_tokens, [])
        chosen = _take(prefills, max_batch_tokens, chosen)
    elif policy == "prefill_first":
        chosen = _take(prefills, max_batch_tokens, [])
        chosen = _take(decodes, max_batch_tokens, chosen)
    else:
        if key_of is None:
            raise ValueError("form_batch: expert_aware batching needs key_of")
        chosen = _expert_aware(_fifo(prefills + decodes), max_batch_tokens, key_of)
    return _batch(chosen, experts_of)


def _fifo(items: Iterable[WorkItem]) -> list[WorkItem]:
    return sorted(items, key=lambda item: (item.arrival_s, item.rid))


def _take(queue: list[WorkItem], budget: int, chosen: list[WorkItem]) -> list[WorkItem]:
    """``chosen`` plus the items of ``queue`` in order while they fit; stop at the first misfit.

    An item larger than the whole budget is admitted alone when ``chosen`` is empty.
    """
    chosen = list(chosen)
    used = sum(item.tokens for item in chosen)
    for item in queue:
        if used + item.tokens > budget:
            if not chosen:
                chosen.append(item)
            break
        chosen.append(item)
        used += item.tokens
    return chosen


def _expert_aware(items: list[WorkItem], budget: int, key_of: KeyOf) -> list[WorkItem]:
    """Read-ME Algorithm 1 over ``items`` already in FIFO order."""
    queues: dict[int, list[WorkItem]] = {}
    for item in items:
        queues.setdefault(int(key_of(item)), []).append(item)
    totals = {expert: sum(item.tokens for item in q) for expert, q in queues.items()}
    chosen: list[WorkItem] = []
    used = 0
    while queues:
        expert = min(queues, key=lambda e: (-totals[e], e))
        queue = queues.pop(expert)
        if used + totals[expert] <= budget:
            chosen.extend(queue)
            used += totals[expert]
            continue
        return _take(queue, budget, chosen)
    return chosen


def _batch(chosen: list[WorkItem], experts_of: ExpertsOf) -> Batch:
    experts: set[int] = set()
    for item in chosen:
        experts.update(experts_of(item))
    return Batch(
        decode=[item.rid for item in chosen if item.kind == "decode"],
        prefill=[item.rid for item in chosen if item.kind == "prefill"],
        tokens=sum(item.tokens for item in chosen),
        experts=frozenset(experts),
    )
