"""Expert capacity per framework convention, which rows overflow drops, and dispatch accounting.

Capacity ``C`` = slots per expert per routing group of ``S`` tokens (``k`` = top-k, ``E`` =
experts, ``cf`` = capacity factor). Formulas follow ``shared/reference/papers.md`` §6.1:

| convention | C | default min | source (read in code, §6.1 [P]) |
|---|---|---|---|
| megatron  | ceil((S*k/E) * cf); cf None = dropless (None) | none | Megatron-LM moe_utils.py |
| deepspeed | max(ceil((S/E) * (k*cf)), min_capacity) | 4 | DeepSpeed sharded_moe.py |
| tutel     | k * int(cf * ceil(S/E)), rounded up to ``alignment`` (*) | none | Tutel |
| gshard    | max(min(S, int(S*cf/E)), min_capacity); no k factor | 4 | Mesh-TF moe.py |

Tutel source: fast_dispatch.py. Mesh-TF: top-1 and top-2 share one buffer of C slots.
(*) Tutel cf = 0 is dynamic, no drop (None); cf < 0 caps at k*int(abs(cf)*ceil(S/E)).

``capacity_factor=None`` means dropless in every convention (Megatron's default; DeepSpeed
``drop_tokens=False``; Tutel ``cf=0``). Arithmetic is in float64 in each framework's operation
order; DeepSpeed does it in float32 tensors, which can differ by one slot at exact boundaries.

Drop order (§6.2), applied by :func:`apply_capacity` per expert:

* ``probs``: keep the C rows with the highest ``score``.
* ``position``: keep the earliest tokens. For ``gshard``, ``tutel`` and ``deepspeed`` with k <= 2
  every first choice goes before any second choice (top-1 over top-2); ``megatron`` and
  ``deepspeed`` top-k (k > 2) rank by token position only.
* ``assignment.priority`` (e.g. DeepSpeed random token selection) overrides the policy: higher
  priority is kept first.

Ties are broken by choice rank, then token index, so results are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import betainc, erfc

from sim.errors import UserError

if TYPE_CHECKING:  # the routers import this module; it needs nothing of theirs at run time
    from sim.routing.assignment import Assignment

CONVENTIONS = ("megatron", "deepspeed", "tutel", "gshard")
DROP_POLICIES = ("probs", "position")

#: Conventions that renormalise the combine weights over the surviving slots (top-k > 1 only).
#: DeepSpeed top-2/top-k divide the gates by their sum over the post-drop mask. Megatron multiplies
#: the probs by the kept mask without renormalising; Tutel (``normalize_gate``) and Mesh-TF
#: (legacy behaviour) normalise before dropping, so a dropped slot's weight is simply lost.
RENORMALISING = frozenset({"deepspeed"})

_DEFAULT_MIN = {"megatron": None, "deepspeed": 4, "tutel": None, "gshard": 4}


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise UserError(
            f"capacity convention {convention!r} is unknown; allowed: {', '.join(CONVENTIONS)}"
        )


def expert_capacity(
    convention: str,
    tokens: int,
    num_experts: int,
    topk: int,
    capacity_factor: float | None,
    min_capacity: int | None = None,
    *,
    alignment: int = 1,
) -> int | None:
    """Slots per expert per routing group, or None when the convention is dropless.

    ``tokens`` (S) is the routing-group size, ``topk`` (k) the experts per token. ``min_capacity``
    None takes the convention's default (4 for deepspeed and gshard, none for megatron and tutel);
    an explicit value is applied as a floor in every convention (Tutel has no floor of its own).
    ``alignment`` (tutel only) rounds C up to a multiple. Tutel ``cf < 0`` returns the cap
    ``k*int(|cf|*ceil(S/E))``; Tutel then shrinks the buffer to the largest actual load when that
    is smaller, which :func:`dispatch_slots` does not model (it pads to the cap).
    """
    _check_convention(convention)
    if tokens < 0 or num_experts < 1 or topk < 1:
        raise UserError(
            f"capacity: need tokens >= 0, num_experts >= 1, topk >= 1; "
            f"got {tokens}, {num_experts}, {topk}"
        )
    if alignment < 1:
        raise UserError(f"capacity: alignment must be >= 1, got {alignment}")
    if capacity_factor is None:
        return None
    cf = float(capacity_factor)
    if convention == "tutel":
        if cf == 0:
            return None
        cap = topk * int(abs(cf) * math.ceil(tokens / num_experts))
        cap = -(-cap // alignment) * alignment
    else:
        if cf <= 0:
            raise UserError(
                f"capacity: {convention} needs capacity_factor > 0 (or none for dropless), got {cf}"
            )
        if convention == "megatron":
            cap = math.ceil((tokens * topk / num_experts) * cf)
        elif convention == "deepspeed":
            cap = math.ceil((tokens / num_experts) * (cf * topk))
        else:  # gshard (Mesh-TF)
            cap = min(tokens, int(tokens * cf / num_experts))
    floor = _DEFAULT_MIN[convention] if min_capacity is None else min_capacity
    return max(cap, floor) if floor is not None else cap


@dataclass(frozen=True)
class Kept:
    """The outcome of capacity dropping for one routing group.

    * ``kept`` (N,) bool: row of the assignment survives
    * ``weight`` (N,) float64: combine weight of each row after dropping (0 for dropped rows)
    * ``load`` (E,) int64: kept rows per expert
    * ``dropped``: number of dropped rows
    """

    kept: np.ndarray
    weight: np.ndarray
    load: np.ndarray
    dropped: int

    @property
    def drop_fraction(self) -> float:
        """Dropped rows / all rows (0 for an empty assignment)."""
        return drop_fraction(self)


def _uses_choice_priority(convention: str, topk: int) -> bool:
    if convention == "megatron":
        return False
    if convention == "deepspeed":
        return topk <= 2
    return True


def _rank_within_expert(expert: np.ndarray, keys: tuple[np.ndarray, ...], num_experts: int):
    """Rank of each row among the rows of its expert under ``keys`` (ascending, last primary)."""
    order = np.lexsort((*keys, expert))
    counts = np.bincount(expert, minlength=num_experts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(expert), dtype=np.int64)
    rank[order] = np.arange(len(expert)) - starts[expert[order]]
    return rank


def apply_capacity(
    assignment: Assignment,
    capacity: int | None,
    policy: str = "probs",
    convention: str = "megatron",
    *,
    renormalize: bool | None = None,
) -> Kept:
    """Keep at most ``capacity`` rows per expert; capacity None keeps everything.

    ``policy`` is ``probs`` or ``position`` (module docstring); ``assignment.priority`` overrides
    it. ``renormalize`` None follows the convention: deepspeed with top-k > 1 divides each token's
    surviving weights by their sum, so they sum to 1; others keep the router's weights on
    surviving rows. Tokens that lose every row get no weight (they pass through the residual).
    """
    _check_convention(convention)
    if policy not in DROP_POLICIES:
        raise UserError(f"drop policy {policy!r} is unknown; allowed: {', '.join(DROP_POLICIES)}")
    n, num_experts = len(assignment), assignment.num_experts
    expert = np.asarray(assignment.expert, dtype=np.int64)
    token = np.asarray(assignment.token, dtype=np.int64)
    choice = np.asarray(assignment.choice, dtype=np.int64)
    topk = int(choice.max()) + 1 if n else 1

    if capacity is None:
        kept = np.ones(n, dtype=bool)
    else:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if assignment.priority is not None:
            keys = (token, choice, -np.asarray(assignment.priority, dtype=np.float64))
        elif policy == "probs":
            keys = (token, choice, -np.asarray(assignment.score, dtype=np.float64))
        elif _uses_choice_priority(convention, topk):
            keys = (token, choice)
        else:
            keys = (choice, token)
        kept = _rank_within_expert(expert, keys, num_experts) < capacity

    weight = np.where(kept, np.asarray(assignment.weight, dtype=np.float64), 0.0)
    if renormalize is None:
        renormalize = convention in RENORMALISING and topk > 1
    if renormalize and n:
        total = np.bincount(token, weights=weight, minlength=assignment.num_tokens)
        denom = total[token]
        weight = np.divide(weight, denom, out=np.zeros_like(weight), where=denom > 0)
    load = np.bincount(expert[kept], minlength=num_experts).astype(np.int64)
    return Kept(kept=kept, weight=weight, load=load, dropped=int(n - kept.sum()))


def dispatch_slots(
    kept_load: np.ndarray, capacity: int | None, pad_to_capacity: bool
) -> np.ndarray:
    """Token slots actually sent to each expert, (E,) int64.

    * padded (``pad_to_capacity`` and a capacity): C for every expert, whatever the load
      (GShard/DeepSpeed/Tutel einsum dispatch);
    * variable-size (not padded): the kept load (Megatron alltoallv, MegaBlocks);
    * dropless-padded (capacity None and padded): the largest load for every expert (DeepSpeed
      ``drop_tokens=False``, Tutel cf=0). Pass the load summed or maxed over the EP group if the
      maximum is group-wide.
    """
    load = np.asarray(kept_load, dtype=np.int64)
    if not pad_to_capacity:
        return load.copy()
    fill = capacity if capacity is not None else (int(load.max()) if load.size else 0)
    return np.full(load.shape, fill, dtype=np.int64)


def drop_fraction(kept: Kept) -> float:
    """Dropped rows / all routed rows, in [0, 1] (0 when nothing was routed)."""
    total = len(kept.kept)
    return kept.dropped / total if total else 0.0


def padding_fraction(kept_load: np.ndarray, slots: np.ndarray) -> float:
    """Slots that carry no token / all slots sent, in [0, 1] (0 when nothing is sent)."""
    sent = float(np.sum(slots))
    if sent == 0:
        return 0.0
    return float(np.sum(np.asarray(slots) - np.asarray(kept_load))) / sent


def load_imbalance(load: np.ndarray) -> float:
    """max / mean of the per-expert load, mean over all experts (idle ones included).

    1.0 is perfect balance; E means one expert took everything. An all-zero load returns 1.0.
    """
    load = np.asarray(load, dtype=np.float64)
    mean = float(load.mean()) if load.size else 0.0
    return float(load.max()) / mean if mean > 0 else 1.0


def routing_group_capacity(moe, hidden_size: int, tokens: int, topk: int) -> int | None:
    """Slots per expert per routing group of ``tokens`` under a scenario's ``moe`` section
    (None = dropless): its convention's formula at ``moe_expert_capacity_factor``, or with
    ``critical``, LocMoE's minimum capacity C = ceil(ec_min) (:func:`critical_capacity_tokens`,
    from ``hidden_size``, the experts and ``critical_capacity_delta``)."""
    cf = moe.moe_expert_capacity_factor
    if cf == "critical":
        ec = critical_capacity_tokens(hidden_size, moe.num_experts, moe.critical_capacity_delta)
        return max(1, math.ceil(ec))
    return expert_capacity(moe.capacity_convention, tokens, moe.num_experts, topk, cf)


def expert_choice_capacity(tokens: int, experts: int, capacity_factor: float,
                           capacity: int | None = None) -> int:
    """Tokens each expert picks under expert choice (Zhou et al. 2022), in 1..T: ``capacity``
    when given, else max(1, round(capacity_factor x T / E))."""
    if capacity is not None:
        c = int(capacity)
        if c < 1:
            raise UserError(f"router 'expert_choice': capacity must be >= 1, got {c}")
    else:
        if not capacity_factor > 0:
            raise UserError(f"router 'expert_choice': capacity_factor must be > 0, got "
                            f"{capacity_factor}")
        c = max(1, round(capacity_factor * tokens / experts))
    return min(c, tokens)


def _check_capacity_args(hidden: int, experts: int, delta: float) -> None:
    if int(hidden) != hidden or hidden < 2:
        raise UserError(f"critical capacity: hidden must be an integer >= 2, got {hidden}")
    if int(experts) != experts or experts < 1:
        raise UserError(f"critical capacity: experts must be an integer >= 1, got {experts}")
    if not 0 < delta < 1:
        raise UserError(f"critical capacity: delta must be in (0, 1), got {delta}")


def critical_capacity_tokens(hidden: int, experts: int, delta: float = 0.03) -> float:
    """LocMoE Theorem 1 (§1.4): ec_min = 1 / (n * (1 - I_{delta^2}(1/2, (d-1)/2))).

    d = ``hidden``, n = ``experts``; I is the regularised incomplete beta function
    (``scipy.special.betainc(a, b, x)`` = I_x(a, b)). A token count, not a capacity factor.
    """
    _check_capacity_args(hidden, experts, delta)
    p_delta = 1.0 - float(betainc(0.5, (hidden - 1) / 2.0, delta * delta))
    return 1.0 / (experts * p_delta)


def critical_capacity_tokens_large_d(hidden: int, experts: int, delta: float = 0.03) -> float:
    """Large-d form of Theorem 1: 1 / (n * erfc(sqrt(delta^2 d / (2 - delta^2))))."""
    _check_capacity_args(hidden, experts, delta)
    x = delta * delta * hidden / (2.0 - delta * delta)
    return 1.0 / (experts * float(erfc(math.sqrt(x))))
