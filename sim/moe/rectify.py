"""Rectify-Router (Zeng et al., EMNLP 2024; reference papers.md section 3): after capacity.

Two independent corrections on top of any top-k router, applied per routing group:

* **Intra-GPU rectification (IR)**: a token that lost its slots to capacity is processed by the
  best expert on its own GPU (highest routing probability among the experts that GPU hosts),
  uncapped and with no communication. ``unrouted = "all"`` (the paper code's default, and the
  only meaning for top-1) rectifies tokens that lost all their top-k slots; ``"any"`` those that
  lost at least one. Only the top-k rows count: losing the fill-in choice never triggers IR
  (the code's ``ignore_kth`` when IR and FR are combined).
* **Fill-in rectification (FR)**: each token's next-best expert (its (k+1)-th choice by routing
  probability) is a fill-in candidate; candidates take, in token order, only the slots the top-k
  rows left empty. The capacity stays the top-k budget, so FR replaces padding and never
  displaces a top-k token. Without a capacity (dropless) there is nothing to fill.
"""

from __future__ import annotations

import numpy as np

from sim.moe.capacity import Kept
from sim.routing import Assignment


def next_choice(assignment: Assignment, probs: np.ndarray) -> np.ndarray:
    """(T,) each token's best expert among those it did not choose (by ``probs`` (T, E))."""
    masked = probs.copy()
    masked[assignment.token, assignment.expert] = -np.inf
    return np.argmax(masked, axis=1)


def fill_in(assignment: Assignment, kept: Kept, probs: np.ndarray,
            capacity: int | None) -> np.ndarray:
    """(E,) fill-in tokens each expert takes into the slots its top-k rows left empty."""
    e = assignment.num_experts
    if capacity is None:
        return np.zeros(e, dtype=np.int64)
    free = np.maximum(capacity - kept.load, 0)
    candidate = next_choice(assignment, probs)  # token order = position order
    counts = np.bincount(candidate, minlength=e)
    return np.minimum(counts, free).astype(np.int64)


def intra_gpu(assignment: Assignment, kept: Kept, probs: np.ndarray, local: np.ndarray,
              unrouted: str = "all") -> np.ndarray:
    """(E,) tokens each local expert processes for IR; ``local`` (E,) bool marks the experts
    on the tokens' own GPU (zeros when it hosts none)."""
    t, e = assignment.num_tokens, assignment.num_experts
    if not np.any(local) or not len(assignment):
        return np.zeros(e, dtype=np.int64)
    rows = np.bincount(assignment.token, minlength=t)
    lost = np.bincount(assignment.token, weights=~kept.kept, minlength=t)
    tokens = (lost >= rows) if unrouted == "all" else (lost > 0)
    tokens &= rows > 0
    best = np.argmax(np.where(local[None, :], probs, -np.inf), axis=1)
    return np.bincount(best[tokens], minlength=e).astype(np.int64)
