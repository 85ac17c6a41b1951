"""Helpers shared by the routers: checks, softmax, sorted top-k, parameters, assembling rows."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext


def check_logits(logits: np.ndarray) -> np.ndarray:
    """The gate logits as a finite float64 (T, E) array; UserError otherwise."""
    z = _check_shape(np.asarray(logits, dtype=np.float64))
    if not np.all(np.isfinite(z)):
        raise UserError("router logits must be finite")
    return z


def _check_shape(z: np.ndarray) -> np.ndarray:
    if z.ndim != 2 or z.shape[1] == 0:
        raise UserError(f"router logits must have shape (tokens, experts), got {z.shape}")
    return z


def gate_probs(logits: np.ndarray) -> np.ndarray:
    """``softmax(check_logits(logits))``: the same numbers, with the checks, the float64
    conversion and the row shift in one compiled pass."""
    z = _check_shape(np.asarray(logits))
    if z.dtype not in (np.float32, np.float64):
        return softmax(check_logits(z))
    e, finite = _shifted_rows(np.ascontiguousarray(z))
    if not finite:
        raise UserError("router logits must be finite")
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


@numba.njit(cache=True, nogil=True)
def _shifted_rows(z):  # pragma: no cover - compiled; covered via gate_probs
    """(z - its row maximum) in float64, and whether every entry is finite."""
    t, n = z.shape
    e = np.empty((t, n))
    for r in range(t):
        m = -np.inf
        for c in range(n):
            x = np.float64(z[r, c])
            if not np.isfinite(x):
                return e, False
            m = max(m, x)
        for c in range(n):
            e[r, c] = np.float64(z[r, c]) - m
    return e, True


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


#: Up to this k, ``top_k`` runs a compiled insertion pass (one comparison per value in the common
#: case); above it, a stable sort of each row.
SMALL_K = 16


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """(T, k) column indices of the k largest values per row, best first; equal values keep
    the lower column first."""
    v = np.ascontiguousarray(values, dtype=np.float64)
    if k <= SMALL_K:
        return _top_k_small(v, int(k))
    return np.argsort(-v, axis=1, kind="stable")[:, :k]


@numba.njit(cache=True, nogil=True)
def _top_k_small(v, k):  # pragma: no cover - compiled; covered via top_k
    t, e = v.shape
    k = min(k, e)
    out = np.empty((t, k), np.int64)
    best = np.empty(k)
    for r in range(t):
        n = 0
        for c in range(e):
            n = insert_best(best, out[r], n, v[r, c], c)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def insert_best(best, col, n, x, c):  # pragma: no cover - compiled
    """Offer value ``x`` of column ``c`` to the sorted buffers ``best``/``col`` that hold the
    ``n`` best so far (larger first, equal values by lower column) of at most ``len(best)``;
    returns the new count."""
    k = best.shape[0]
    if n == k and not (x > best[k - 1] or (x == best[k - 1] and c < col[k - 1])):
        return n
    i = n if n < k else k - 1
    while i > 0 and (best[i - 1] < x or (best[i - 1] == x and col[i - 1] > c)):
        best[i], col[i] = best[i - 1], col[i - 1]
        i -= 1
    best[i], col[i] = x, c
    return min(n + 1, k)


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
    if not np.all(score[:, :-1] >= score[:, 1:]):
        return assemble(token, idx, weight, score, t, probs.shape[1])
    # rows already in assemble's order (by token, best score first): no sort needed
    return Assignment(token=token, expert=idx.astype(np.int64).ravel(),
                      weight=np.asarray(weight, dtype=np.float64).ravel(),
                      choice=np.tile(np.arange(k, dtype=np.int64), t), score=score.ravel(),
                      num_tokens=int(t), num_experts=int(probs.shape[1]))
