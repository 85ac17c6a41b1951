"""Helpers shared by the routers: checks, softmax, sorted top-k, parameters, assembling rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext


def check_logits(logits: np.ndarray) -> np.ndarray:
    """The gate logits as a finite float64 (T, E) array; UserError otherwise."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise UserError(f"router logits must have shape (tokens, experts), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise UserError("router logits must be finite")
    return z


def check_topk(k: int, num_experts: int) -> int:
    """k itself when 1 <= k <= E; UserError otherwise."""
    if not 1 <= int(k) <= num_experts:
        raise UserError(f"router topk must be in 1..{num_experts} (experts), got {k}")
    return int(k)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (T, E) logits, numerically stable."""
    e = z - z.max(axis=1, keepdims=True)
    if not np.issubdtype(e.dtype, np.floating):
        e = e.astype(np.float64)
    np.exp(e, out=e)  # in place: the same arithmetic, a third of the allocations
    e /= e.sum(axis=1, keepdims=True)
    return e


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """(T, k) column indices of the k largest values per row, best first."""
    if k < values.shape[1]:
        part = np.argpartition(-values, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    picked = np.take_along_axis(values, part, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def read_params(ctx: RouterContext, router: str, **defaults: Any) -> dict[str, Any]:
    """``ctx.params`` over ``defaults``; an unknown key is a UserError naming the allowed ones."""
    unknown = sorted(set(ctx.params) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise UserError(
            f"router {router!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}")
    return {**defaults, **ctx.params}


def assemble(token: np.ndarray, expert: np.ndarray, weight: np.ndarray, score: np.ndarray,
             num_tokens: int, num_experts: int) -> Assignment:
    """Rows sorted by token, then by score (best first); ``choice`` = rank within the token.

    Equal scores keep their input order, so a router lists rows in its own preference order.
    """
    token = np.asarray(token, dtype=np.int64).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    order = np.lexsort((-score, token))
    token = token[order]
    first = np.searchsorted(token, token, side="left")
    return Assignment(
        token=token,
        expert=np.asarray(expert, dtype=np.int64).ravel()[order],
        weight=np.asarray(weight, dtype=np.float64).ravel()[order],
        choice=np.arange(len(token), dtype=np.int64) - first,
        score=score[order],
        num_tokens=int(num_tokens),
        num_experts=int(num_experts),
    )


def assemble_topk(idx: np.ndarray, weight: np.ndarray, probs: np.ndarray) -> Assignment:
    """Rows of a token-choice router: ``idx`` (T, k) experts best first, ``weight`` (T, k)."""
    t, k = idx.shape
    token = np.repeat(np.arange(t, dtype=np.int64), k)
    score = np.take_along_axis(probs, idx, axis=1)
    return assemble(token, idx, weight, score, t, probs.shape[1])
