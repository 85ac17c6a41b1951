"""The objective (dispatch + inter-layer + balance), defined once for every solver and test,
and the feasibility of an assignment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import UserError
from sim.solve.placement.problem import PlacementProblem

#: The terms of the objective, in the order :func:`cost` returns them.
TERMS = ("dispatch", "interlayer", "balance", "total")


@dataclass(frozen=True)
class _Tables:
    """Derived arrays: ``cost`` (P, P) per byte; ``dispatch`` (L, E, P) dispatch cost of
    expert e of layer l when it sits on GPU g."""

    cost: np.ndarray
    dispatch: np.ndarray


def _tables(p: PlacementProblem) -> _Tables:
    c = p.pair_cost()
    return _Tables(c, p.bytes_per_token * np.einsum("lse,sg->leg", p.sources(), c))


def _terms(p: PlacementProblem, t: _Tables, a: np.ndarray) -> dict[str, np.ndarray]:
    """The objective's terms for a batch of assignments ``a`` (B, L, E): arrays of shape (B,)."""
    B, L, P = a.shape[0], p.layers, p.gpus
    dispatch = np.take_along_axis(t.dispatch[None], a[..., None], axis=3).sum(axis=(1, 2, 3))
    inter = np.zeros(B)
    if L > 1:
        c = t.cost[a[:, :-1, :, None], a[:, 1:, None, :]]  # (B, L-1, E, E)
        inter = p.bytes_per_token * np.einsum("nlab,lab->n", c, p.coactivation)
    slot = a + P * np.arange(L)[None, :, None] + L * P * np.arange(B)[:, None, None]
    weights = np.broadcast_to(p.load[None], a.shape).ravel()
    per_gpu = np.bincount(slot.ravel(), weights, B * L * P).reshape(B, L, P)
    balance = p.balance_weight * per_gpu.max(axis=2).sum(axis=1)
    return {"dispatch": dispatch, "interlayer": inter, "balance": balance,
            "total": dispatch + inter + balance}


def cost(problem: PlacementProblem, assign) -> dict[str, float]:
    """The objective of ``assign`` (L, E): ``dispatch``, ``interlayer``, ``balance`` and
    ``total`` (see the module docstring; units of the costs times bytes, plus balance)."""
    a = _check_assign(problem, assign, "assign")
    return {k: float(v[0]) for k, v in _terms(problem, _tables(problem), a[None]).items()}


def _check_assign(p: PlacementProblem, assign, where: str) -> np.ndarray:
    try:
        a = np.asarray(assign)
    except (TypeError, ValueError):
        a = np.zeros(0)
    shape = (p.layers, p.experts)
    if a.shape != shape or not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{where}: must be an integer array of shape (layers, experts) = "
                        f"{shape} (got shape {a.shape})")
    if np.any(a != np.round(a)) or a.min() < 0 or a.max() >= p.gpus:
        raise UserError(f"{where}: must hold GPU indices 0..{p.gpus - 1}")
    return a.astype(np.int64)


def _violation(p: PlacementProblem, a: np.ndarray) -> str | None:
    """The first broken constraint of a well-shaped assignment, or None."""
    cnt = _counts(p, a)
    over = np.argwhere(cnt > p.max_experts_per_gpu)
    if over.size:
        li, g = over[0]
        return (f"GPU {g} holds {cnt[li, g]} experts of layer {li}; max_experts_per_gpu is "
                f"{p.max_experts_per_gpu}")
    tot = cnt.sum(axis=0)
    if tot.max() > p.memory_slots:
        g = int(tot.argmax())
        return (f"GPU {g} holds {tot[g]} experts x {p.expert_bytes:.6g} B, more than "
                f"gpu_memory_bytes = {p.gpu_memory_bytes:.6g}")
    return None


def _counts(p: PlacementProblem, a: np.ndarray) -> np.ndarray:
    """(L, P) experts of each layer on each GPU."""
    slot = a + p.gpus * np.arange(p.layers)[:, None]
    return np.bincount(slot.ravel(), minlength=p.layers * p.gpus).reshape(p.layers, p.gpus)
