"""The greedy baseline: construction by load, then move and exchange local search."""

from __future__ import annotations

import time

import numpy as np

from sim.solve.placement.answer import PlacementAnswer, _answer
from sim.solve.placement.cost import _counts, _Tables, _tables, _terms
from sim.solve.placement.problem import PlacementProblem


def greedy(problem: PlacementProblem) -> PlacementAnswer:
    """Layer by layer, experts in descending load, each on the feasible GPU that adds the least
    cost (its dispatch, its traffic from the previous layer's experts, the straggler increase),
    keeping the rest completable; then swap/move local search to a local optimum."""
    t0 = time.perf_counter()
    t = _tables(problem)
    a = _improve(problem, t, _construct(problem, t))
    return _answer(problem, a, "greedy", t0)


def _construct(p: PlacementProblem, t: _Tables) -> np.ndarray:
    L, E, P, K, M = p.layers, p.experts, p.gpus, p.max_experts_per_gpu, p.memory_slots
    a = np.full((L, E), -1, dtype=np.int64)
    cnt, tot = np.zeros((L, P), dtype=np.int64), np.zeros(P, dtype=np.int64)
    for li in range(L):
        per_gpu = np.zeros(P)
        pull = t.dispatch[li].copy()
        if li > 0:
            pull += p.bytes_per_token * p.coactivation[li - 1].T @ t.cost[a[li - 1]]
        for placed, e in enumerate(np.argsort(-p.load[li], kind="stable")):
            ok = (cnt[li] < K) & (tot < M)
            ok &= _completable(M - tot, K - cnt[li], E - placed - 1, L - li - 1, K, E)
            top = per_gpu.max()
            score = pull[e] + p.balance_weight * (np.maximum(top, per_gpu + p.load[li, e]) - top)
            g = int(np.argmin(np.where(ok, score, np.inf)))
            a[li, e], per_gpu[g] = g, per_gpu[g] + p.load[li, e]
            cnt[li, g] += 1
            tot[g] += 1
    return a


def _completable(room, caps, left, future, K, E) -> np.ndarray:
    """(P,) whether, after one more expert on GPU g, the ``left`` experts of this layer (at most
    ``caps - [g]`` per GPU) and ``future`` full layers (K per GPU) still fit in ``room``.

    Max-flow / min-cut: for every c in {0, 1} and j future layers, c*left + j*E <= sum_h
    min(room_h, c*caps_h + j*K); the layers' symmetry makes these the only cuts to check."""
    c = np.array([0, 1])[:, None, None]
    j = np.arange(future + 1)[None, :, None]
    base = np.minimum(room, c * caps + j * K)  # (2, J, P)
    after = np.minimum(room - 1, c * (caps - 1) + j * K)
    cap = base.sum(axis=2, keepdims=True) - base + after
    need = c * left + j * E
    return np.all(cap >= need, axis=(0, 1))


def _pull(p: PlacementProblem, t: _Tables, a: np.ndarray, li: int) -> np.ndarray:
    """(E, P): dispatch plus inter-layer cost of each expert of layer l on each GPU, with the
    neighbouring layers where ``a`` has them."""
    x = t.dispatch[li].copy()
    if li > 0:
        x += p.bytes_per_token * p.coactivation[li - 1].T @ t.cost[a[li - 1]]
    if li < p.layers - 1:
        x += p.bytes_per_token * p.coactivation[li] @ t.cost[:, a[li + 1]].T
    return x


def _max_without(v: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """max of ``v`` over indices other than g and h (elementwise over g, h; 0 if none)."""
    order = np.argsort(-v, kind="stable")[:3]
    idx = np.concatenate([order, -np.ones(3 - order.size, dtype=np.int64)])
    val = np.concatenate([v[order], np.zeros(3 - order.size)])
    out = np.where((idx[2] != g) & (idx[2] != h), val[2], 0.0)
    out = np.where((idx[1] != g) & (idx[1] != h), val[1], out)
    return np.where((idx[0] != g) & (idx[0] != h), val[0], out)


def _improve(p: PlacementProblem, t: _Tables, a: np.ndarray, max_moves: int = 100_000):
    """Best-improvement local search: per layer, swap two experts or move one to a GPU with
    room; when none helps, exchange everything two GPUs hold. Until no move lowers the total
    (or ``max_moves``). Keeps feasibility."""
    a = a.copy()
    L, E, P, K, M = p.layers, p.experts, p.gpus, p.max_experts_per_gpu, p.memory_slots
    cnt = _counts(p, a)
    tot = cnt.sum(axis=0)
    tol = 1e-12 * max(float(_terms(p, t, a[None])["total"][0]), 1e-300)
    rows, gpus, moves, improved = np.arange(E), np.arange(P), 0, True
    while improved and moves < max_moves:
        improved = False
        for li in range(L):
            while moves < max_moves:
                x, pos, ld = _pull(p, t, a, li), a[li], p.load[li]
                per_gpu = np.bincount(pos, ld, P)
                top, own = per_gpu.max(), x[rows, pos]
                g, h = pos[:, None], pos[None, :]
                new_g = per_gpu[g] - ld[:, None] + ld[None, :]
                new_h = per_gpu[h] - ld[None, :] + ld[:, None]
                peak = np.maximum(np.maximum(_max_without(per_gpu, g, h), new_g), new_h)
                swap = x[:, pos] + x[:, pos].T - own[:, None] - own[None, :]
                swap = swap + p.balance_weight * (peak - top)
                swap[g == h] = np.inf
                room = (cnt[li] < K) & (tot < M)
                dest = per_gpu[None, :] + ld[:, None]
                peak = np.maximum(_max_without(per_gpu, g, gpus[None, :]), dest)
                peak = np.maximum(peak, (per_gpu[pos] - ld)[:, None])
                move = x - own[:, None] + p.balance_weight * (peak - top)
                move[~np.broadcast_to(room, move.shape) | (g == gpus[None, :])] = np.inf
                i, j = np.unravel_index(np.argmin(swap), swap.shape)
                e, d = np.unravel_index(np.argmin(move), move.shape)
                if min(swap[i, j], move[e, d]) >= -tol:
                    break
                if swap[i, j] <= move[e, d]:
                    a[li, i], a[li, j] = a[li, j], a[li, i]
                else:
                    cnt[li, a[li, e]] -= 1
                    tot[a[li, e]] -= 1
                    a[li, e] = d
                    cnt[li, d] += 1
                    tot[d] += 1
                moves += 1
                improved = True
        if not improved and moves < max_moves:
            better = _best_exchange(p, t, a, tol)
            if better is not None:
                a, moves, improved = better, moves + 1, True
                cnt = _counts(p, a)
                tot = cnt.sum(axis=0)
    return a


def _best_exchange(p: PlacementProblem, t: _Tables, a: np.ndarray, tol: float):
    """The best improving exchange of everything two GPUs hold (all layers), or None."""
    if p.gpus < 2:
        return None
    now = _terms(p, t, a[None])["total"][0]
    g, h = np.triu_indices(p.gpus, 1)
    best, best_a = now - tol, None
    for lo in range(0, g.size, 64):
        rows = np.arange(min(64, g.size - lo))
        perm = np.tile(np.arange(p.gpus), (rows.size, 1))
        perm[rows, g[lo:lo + 64]] = h[lo:lo + 64]
        perm[rows, h[lo:lo + 64]] = g[lo:lo + 64]
        cand = perm[:, a]  # (n, L, E)
        total = _terms(p, t, cand)["total"]
        k = int(np.argmin(total))
        if total[k] < best:
            best, best_a = total[k], cand[k]
    return best_a
