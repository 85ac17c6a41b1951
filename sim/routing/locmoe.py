"""LocMoE locality-aware top-1 router (Li et al. 2024; reference papers.md §1).

Switch-style top-1 (§1.1): p = softmax(s), i* = argmax p, combine weight p[i*] (not
renormalised); ``ctx.topk`` is ignored (the method is top-1). The scores s are the gate values
plus a locality bias:

    s[t, i] = G[t, i] + locality_bias * 1{node(expert i) == node(token t)}

with node(expert i) = ``gpu_node[expert_gpu[i]]`` and node(token t) = ``gpu_node[token_gpu[t]]``.
The bias is the simulator proxy of LocMoE's locality loss (§1.3, [D]): the paper's locality is a
soft training-time constraint, with no published local fraction, so here it is a tunable logit
bonus for co-located experts. The same biased scores feed the argmax and the softmax, so the
combine weight and ``score`` are the biased probability of the chosen expert.

Parameters:

* ``locality_bias`` (float >= 0, default 1.0): the bonus; 0 is plain Switch top-1, and then
  the placement is not needed. Any bias > 0 needs ``ctx.expert_gpu``, ``ctx.gpu_node`` and
  ``ctx.token_gpu``.
* ``gate`` ("linear" or "grap", default "linear"): how G is made from the logits.

  - ``linear``: G = the logits as given (a learned dense gate x W_g).
  - ``grap``: GrAP (§1.2), fixed orthogonal average-pooling weights with no learned
    popularity. Modelling choice [D]: the logits we get are synthetic x W_g scores, whose
    per-expert offset (an expert that is popular for every token) is exactly what a learned
    W_g carries and fixed pooling weights cannot. So GrAP is modelled as removing each
    expert's mean logit over the routing group's tokens (the per-expert popularity
    component), then G = ReLU(z - mean_t z + eps) with eps = 0. A token whose centred scores
    are all <= 0 gets G = 0 everywhere (ReLU); ties in s are broken in favour of the larger
    centred (pre-ReLU) logit, so a flat G does not pile onto the lowest expert index.

Also here: :func:`local_fraction` (share of rows that stay on the token's own node). LocMoE's
critical capacity (Theorem 1 of §1.4) is with the other capacity rules, in
:mod:`sim.moe.capacity`.
"""

from __future__ import annotations

import math

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble_topk, check_logits, read_params, softmax
from sim.routing.registry import ROUTERS

GATES = ("linear", "grap")


def _gpu_node(ctx: RouterContext, router: str) -> np.ndarray:
    if ctx.gpu_node is None:
        raise UserError(f"router {router!r} needs the placement: gpu_node (server of each GPU)")
    node = np.asarray(ctx.gpu_node)
    if node.ndim != 1 or node.size == 0 or not np.issubdtype(node.dtype, np.integer):
        raise UserError(f"router {router!r}: gpu_node must be a non-empty 1-D integer array, "
                        f"got shape {node.shape} {node.dtype}")
    return node.astype(np.int64)


def _node_of(gpus: np.ndarray | None, n: int, what: str, node: np.ndarray,
             router: str) -> np.ndarray:
    if gpus is None:
        raise UserError(f"router {router!r} needs the placement: {what} (GPU of each "
                        f"{what.split('_')[0]})")
    g = np.asarray(gpus)
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
        raise UserError(f"router {router!r}: {what} must be ({n},) integers, got {g.shape} "
                        f"{g.dtype}")
    if n and (g.min() < 0 or g.max() >= len(node)):
        raise UserError(f"router {router!r}: {what} holds GPU ranks outside 0..{len(node) - 1} "
                        f"(gpu_node has {len(node)} GPUs)")
    return node[g.astype(np.int64)]


def expert_node(ctx: RouterContext, num_experts: int, router: str) -> np.ndarray:
    """(E,) server of each expert, ``gpu_node[expert_gpu]``; UserError naming ``router``."""
    return _node_of(ctx.expert_gpu, num_experts, "expert_gpu", _gpu_node(ctx, router), router)


def token_node(ctx: RouterContext, num_tokens: int, router: str) -> np.ndarray:
    """(T,) server each token starts on, ``gpu_node[token_gpu]``; UserError naming ``router``."""
    return _node_of(ctx.token_gpu, num_tokens, "token_gpu", _gpu_node(ctx, router), router)


def locality_mask(ctx: RouterContext, num_tokens: int, num_experts: int,
                  router: str = "locmoe") -> np.ndarray:
    """(T, E) bool: expert e lives on the node token t starts on."""
    en = expert_node(ctx, num_experts, router)
    tn = token_node(ctx, num_tokens, router)
    return tn[:, None] == en[None, :]


def _bias(value: object) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        b = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(
            f"router 'locmoe': locality_bias must be a number >= 0, got {value!r}") from None
    if not math.isfinite(b) or b < 0:
        raise UserError(f"router 'locmoe': locality_bias must be a finite number >= 0, got {b}")
    return b


def grap_scores(z: np.ndarray) -> np.ndarray:
    """GrAP gate values G = ReLU(z - per-expert mean over tokens), eps = 0 (module docstring)."""
    return np.maximum(z - z.mean(axis=0, keepdims=True), 0.0)


@ROUTERS.register("locmoe")
def locmoe(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Top-1 over gate values plus a bonus for experts on the token's own node."""
    params = read_params(ctx, "locmoe", locality_bias=1.0, gate="linear")
    bias = _bias(params["locality_bias"])
    gate = params["gate"]
    if gate not in GATES:
        raise UserError(f"router 'locmoe': gate must be one of {', '.join(GATES)}, got {gate!r}")
    z = check_logits(logits)
    t, e = z.shape
    if gate == "grap":
        tie = z - z.mean(axis=0, keepdims=True)  # centred logits, pre-ReLU
        s = np.maximum(tie, 0.0)
    else:
        tie = None
        s = z.copy()
    if bias > 0:
        s += bias * locality_mask(ctx, t, e)
    probs = softmax(s)
    if tie is None:
        idx = np.argmax(s, axis=1)
    else:  # among the tied maxima of s (ReLU flattens), the largest centred logit wins
        best = s.max(axis=1, keepdims=True)
        idx = np.argmax(np.where(s == best, tie, -np.inf), axis=1)
    idx = idx[:, None]
    return assemble_topk(idx, np.take_along_axis(probs, idx, axis=1), probs)


def local_fraction(assignment: Assignment, ctx: RouterContext) -> float:
    """Share of the assignment's (token, expert) rows whose expert is on the token's own node.

    Nodes come from ``ctx.expert_gpu``, ``ctx.token_gpu`` and ``ctx.gpu_node``; an empty
    assignment gives 0.0.
    """
    if len(assignment) == 0:
        return 0.0
    en = expert_node(ctx, assignment.num_experts, "locmoe")
    tn = token_node(ctx, assignment.num_tokens, "locmoe")
    return float(np.mean(en[assignment.expert] == tn[assignment.token]))
