"""SMILE bi-level router (He et al. 2022; papers.md §2.1, step-by-step reconstruction [D]).

Experts are grouped by the server that holds them (``gpu_node[expert_gpu]``; only servers that
hold experts of this routing group count, N of them). For a token with logits z:

1. Node gate (level 1): node score a_n = log-sum-exp of z over the experts of node n;
   q = softmax over the N node scores; n* = argmax q (top-1, ties to the lowest node id).
2. Local gate (level 2): r = softmax of z over the experts of node n* only (zero elsewhere);
   the token takes its k = ``ctx.topk`` largest r inside node n* (k = 1: g* = argmax r).
3. Combine weight of each chosen expert g: q[n*] * r[g]. The product form is an assumption
   ([U] in §2.1 item 6); it is not renormalised over the k chosen experts. ``score`` is the
   same value (the joint two-level probability, in [0, 1]).

Modelling choices [D]: the paper's separate node and local gate weights (x W_node, x W_local) are
not available from a single (T, E) logit matrix, so both levels are derived from it. With the
log-sum-exp node score, q[n] is exactly the softmax mass of node n's experts and r[g] =
softmax(z)[g] / q[n*], so q[n*] * r[g] equals the flat softmax probability of g; the routing
differs from plain top-k in that the node is chosen by total mass first and every token stays on
one node (like ``node_limited`` with ``group_topk`` 1, but scoring nodes by their full mass).
Level 2 picks an expert, not a GPU: with several experts per GPU the "GPU" of SMILE's local gate
is the set of experts on that GPU (see :func:`balance_terms`). Capacity per level is not the
router's job (none is applied here). k must be <= the number of experts on the smallest node.
No parameters. Needs ``ctx.expert_gpu`` and ``ctx.gpu_node``.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble_topk, check_logits, check_topk, read_params, softmax, top_k
from sim.routing.locmoe import expert_node
from sim.routing.registry import ROUTERS


def node_index(ctx: RouterContext, num_experts: int) -> np.ndarray:
    """(E,) node 0..N-1 of each expert: servers holding experts, renumbered in id order."""
    return np.unique(expert_node(ctx, num_experts, "smile"), return_inverse=True)[1].reshape(-1)


def node_scores(z: np.ndarray, node: np.ndarray) -> np.ndarray:
    """(T, N) log-sum-exp of the logits over each node's experts."""
    m = z.max(axis=1, keepdims=True)
    mass = np.exp(z - m) @ np.eye(int(node.max()) + 1)[node]  # (T, E) @ (E, N) one-hot
    with np.errstate(divide="ignore"):  # a node whose every exp underflows scores -inf
        return np.log(mass) + m


def bilevel_probs(z: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q (T, N), n* (T,), r (T, E)) of the two gates; r is zero outside node n*."""
    q = softmax(node_scores(z, node))
    nstar = np.argmax(q, axis=1)
    on = node[None, :] == nstar[:, None]
    r = softmax(np.where(on, z, -np.inf))
    return q, nstar, r


@ROUTERS.register("smile")
def smile(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Top-1 node by log-sum-exp score, then top-k experts inside it; weight q[n*] * r[g]."""
    read_params(ctx, "smile")
    z = check_logits(logits)
    t, e = z.shape
    k = check_topk(ctx.topk, e)
    node = node_index(ctx, e)
    sizes = np.bincount(node)
    if k > sizes.min():
        raise UserError(f"router 'smile': topk {k} exceeds the experts per node (smallest node "
                        f"holds {sizes.min()}; node sizes {sizes.tolist()})")
    q, nstar, r = bilevel_probs(z, node)
    on = node[None, :] == nstar[:, None]
    idx = top_k(np.where(on, r, -1.0), k)
    joint = q[np.arange(t), nstar][:, None] * r
    w = np.take_along_axis(joint, idx, axis=1)
    return assemble_topk(idx, w, joint)


def gpu_slot(ctx: RouterContext, num_experts: int) -> np.ndarray:
    """(E,) local slot 0..G-1 of each expert: rank of its GPU among its node's expert GPUs."""
    node = node_index(ctx, num_experts)
    gpu = np.asarray(ctx.expert_gpu, dtype=np.int64)
    key = node * (int(gpu.max()) + 1) + gpu
    ukey, inv = np.unique(key, return_inverse=True)
    unode = ukey // (int(gpu.max()) + 1)
    first = np.searchsorted(unode, unode, side="left")
    return (np.arange(len(ukey)) - first)[inv.reshape(-1)]


def balance_terms(assignment: Assignment, logits: np.ndarray,
                  ctx: RouterContext) -> tuple[float, float]:
    """SMILE's two Switch-style load-balance statistics, (node term, GPU term).

    Definitions (papers.md §2.1 item 7 [D], without the a1, a2 coefficients):

    * node term = N * sum_n f_n * Q_n. N = nodes holding experts; f_n = share of the
      assignment's (token, expert) rows whose expert is on node n (for SMILE every token's rows
      are on one node, so this is the share of tokens sent to n); Q_n = mean over the T tokens
      of the node-gate probability q[t, n].
    * GPU term = G * sum_g f_g * R_g. A GPU's local slot g is its rank (0..G-1) among the
      GPUs of its node that hold experts, pooled over nodes as SMILE's intra-node gate has G
      outputs shared by every node; G = number of slots (GPUs per node). f_g = share of rows
      whose expert is on a GPU in slot g; R_g = mean over the T tokens of the local-gate mass
      of slot g on the token's chosen node n* (sum of r[t, e] over that node's experts on the
      slot-g GPU).

    q, n* and r are recomputed from ``logits`` as the ``smile`` router does. Each term is 1.0
    for perfect balance (uniform f and uniform probabilities, when every node holds the same
    number of GPUs with the same number of experts each) and grows with skew.
    """
    z = check_logits(logits)
    t, e = z.shape
    if (assignment.num_tokens, assignment.num_experts) != (t, e):
        raise UserError(f"balance_terms: assignment is for {assignment.num_tokens} tokens x "
                        f"{assignment.num_experts} experts but logits are {t} x {e}")
    if len(assignment) == 0:
        raise UserError("balance_terms: the assignment has no rows")
    node = node_index(ctx, e)
    slot = gpu_slot(ctx, e)
    n_nodes, n_slots = int(node.max()) + 1, int(slot.max()) + 1
    q, _, r = bilevel_probs(z, node)
    rows = len(assignment)
    f_node = np.bincount(node[assignment.expert], minlength=n_nodes) / rows
    f_slot = np.bincount(slot[assignment.expert], minlength=n_slots) / rows
    q_mean = q.mean(axis=0)
    r_mean = np.bincount(slot, weights=r.mean(axis=0), minlength=n_slots)
    return (float(n_nodes * np.dot(f_node, q_mean)), float(n_slots * np.dot(f_slot, r_mean)))
