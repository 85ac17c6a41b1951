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

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import (
    assemble_topk,
    check_logits,
    check_topk,
    read_params,
    softmax,
    top_k,
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
    probs = softmax(check_logits(logits))
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
    # (T, G, max group size) of probabilities, zero-padded (p >= 0, so padding never wins)
    slot = np.empty(e, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    slot[order] = np.arange(e) - np.searchsorted(group[order], group[order], side="left")
    grid = np.zeros((t, n_groups, sizes.max()))
    grid[:, group, slot] = probs
    per_group = max(1, k // keep)
    # each group's per_group largest, summed largest first
    top = np.partition(grid, grid.shape[2] - per_group, axis=2)[:, :, grid.shape[2] - per_group:]
    group_score = -np.sort(-top, axis=2).sum(axis=2)
    best = top_k(group_score, keep)  # (T, keep)
    allowed = np.zeros((t, n_groups), dtype=bool)
    np.put_along_axis(allowed, best, True, axis=1)
    masked = np.where(allowed[:, group], probs, -1.0)
    idx = top_k(masked, k)
    return assemble_topk(idx, topk_weights(probs, idx, bool(params["normalize"])), probs)
