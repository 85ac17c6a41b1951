"""Group-limited top-k: node- or device-limited routing (Megatron ``group_limited_topk``,
DeepSeek-V2/V3; reference papers.md §6.3 item 6).

Experts are grouped by the node (default) or the GPU that holds them, from ``ctx.expert_gpu``
and ``ctx.gpu_node``. p = softmax over all experts; each group scores the sum of its
max(1, k // group_topk) largest p; a token keeps its ``group_topk`` best groups and takes its
top-k experts inside them, so it reaches at most ``group_topk`` nodes (or GPUs). When
group_topk >= the number of groups this is plain ``topk``. Parameters:

* ``group_topk`` (int >= 1, default 1): groups each token may use; the smallest group_topk
  groups together must hold at least k experts.
* ``group_by`` ("node" or "device", default "node").
* ``normalize`` (bool, default true): renormalise the k weights to sum to 1, as ``topk``.
"""

from __future__ import annotations

import numba
import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import (
    assemble_topk,
    check_topk,
    gate_probs,
    insert_best,
    read_params,
)
from sim.routing.registry import ROUTERS
from sim.routing.topk import topk_weights


def expert_groups(ctx: RouterContext, num_experts: int, group_by: str) -> np.ndarray:
    """(E,) group index 0..G-1 of each expert: its node or its GPU."""
    if group_by not in ("node", "device"):
        raise UserError(f"router 'node_limited': group_by must be node or device, got {group_by!r}")
    if ctx.expert_gpu is None or (group_by == "node" and ctx.gpu_node is None):
        need = "expert_gpu" if group_by == "device" else "expert_gpu and gpu_node"
        raise UserError(f"router 'node_limited' (group_by {group_by}) needs the placement: {need}")
    gpu = np.asarray(ctx.expert_gpu, dtype=np.int64)
    if gpu.shape != (num_experts,):
        raise UserError(f"router 'node_limited': expert_gpu must have shape ({num_experts},), "
                        f"got {gpu.shape}")
    key = gpu if group_by == "device" else np.asarray(ctx.gpu_node, dtype=np.int64)[gpu]
    return np.unique(key, return_inverse=True)[1].reshape(-1)


@ROUTERS.register("node_limited")
def node_limited(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Top-k restricted to each token's ``group_topk`` best nodes (or devices)."""
    params = read_params(ctx, "node_limited", group_topk=1, group_by="node", normalize=True)
    probs = gate_probs(logits)
    t, e = probs.shape
    k = check_topk(ctx.topk, e)
    group = expert_groups(ctx, e, str(params["group_by"]))
    sizes = np.bincount(group)
    n_groups = len(sizes)
    keep = min(int(params["group_topk"]), n_groups)
    if keep < 1 or np.sort(sizes)[:keep].sum() < k:
        raise UserError(f"router 'node_limited': group_topk {params['group_topk']} must be >= 1 "
                        f"and its smallest groups must hold >= k={k} experts (group sizes "
                        f"{sizes.tolist()})")
    order = np.argsort(group, kind="stable")  # the experts group by group, each ascending
    starts = np.r_[0, np.cumsum(sizes)]
    idx = _group_limited_top_k(np.ascontiguousarray(probs), order, starts, max(1, k // keep),
                               keep, k)
    return assemble_topk(idx, topk_weights(probs, idx, bool(params["normalize"])), probs)


@numba.njit(cache=True, nogil=True)
def _group_limited_top_k(probs, order, starts, per_group, keep, k):  # pragma: no cover
    """(T, k) experts, best first: each token's top-k inside its ``keep`` best groups, a group
    scoring the sum of its ``per_group`` largest p (largest first); group g's experts are
    ``order[starts[g]:starts[g + 1]]``. Ties: the lower group, the lower expert first."""
    t = probs.shape[0]
    n_groups = starts.shape[0] - 1
    out = np.empty((t, k), np.int64)
    top = np.empty(per_group)
    score = np.empty(n_groups)
    chosen, chosen_score = np.empty(keep, np.int64), np.empty(keep)
    best = np.empty(k)
    for r in range(t):
        p = probs[r]
        for g in range(n_groups):  # each group's per_group largest, kept sorted
            for i in range(per_group):
                top[i] = 0.0  # p >= 0: a group smaller than per_group adds zeros
            for j in range(starts[g], starts[g + 1]):
                x = p[order[j]]
                for i in range(per_group):  # bubble x down: no branch to mispredict
                    hi = max(top[i], x)
                    x = min(top[i], x)
                    top[i] = hi
            s = 0.0
            for i in range(per_group):
                s += top[i]
            score[g] = s
        n = 0  # the keep best groups
        for g in range(n_groups):
            n = insert_best(chosen_score, chosen, n, score[g], g)
        n = 0  # the top-k experts of those groups
        for jg in range(keep):
            g = chosen[jg]
            for j in range(starts[g], starts[g + 1]):
                n = insert_best(best, out[r], n, p[order[j]], order[j])
    return out
