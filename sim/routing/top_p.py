"""Dynamic top-p router: a variable number of experts per token (Huang et al. 2024, "Harder
Tasks Need More Experts: Dynamic Routing in MoE Models"; the family of DA-MoE and ReMoE).

p = softmax over all E experts; each token takes its most probable experts, best first, until
their probabilities sum to at least ``threshold`` (at least one expert, at most ``max_k``), so a
confident token takes one expert and an uncertain one several. The MoE layer's capacity rule is
the framework's, with ``moe_router_topk`` read as the expected experts per token (set it to the
average k the threshold gives; the capacity then matches that many pairs per token). Parameters:

* ``threshold`` (float in (0, 1], default 0.5): the cumulative probability to reach;
* ``max_k`` (int >= 1, default ``ctx.topk`` x 2, at most E): the most experts per token;
* ``normalize`` (bool, default true): weights renormalised over each token's chosen experts.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble, gate_probs, read_params, top_k
from sim.routing.registry import ROUTERS


@ROUTERS.register("top_p")
def top_p(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Each token's best experts until their probabilities reach ``threshold``."""
    probs = gate_probs(logits)
    t, e = probs.shape
    params = read_params(ctx, "top_p", threshold=0.5, max_k=min(2 * int(ctx.topk), e),
                         normalize=True)
    threshold, max_k = float(params["threshold"]), int(params["max_k"])
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"router 'top_p': threshold must be in (0, 1], got {threshold}")
    if not 1 <= max_k <= e:
        raise UserError(f"router 'top_p': max_k must be in 1..{e} (experts), got {max_k}")
    order = top_k(probs, max_k)  # best first, ties by index
    sorted_p = np.take_along_axis(probs, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the better experts
    take = before < threshold  # the first always; then until the threshold is reached
    token = np.broadcast_to(np.arange(t)[:, None], order.shape)[take]
    weight = np.where(take, sorted_p, 0.0)
    if params["normalize"]:
        weight = weight / weight.sum(axis=1, keepdims=True)
    return assemble(token, order[take], weight[take], sorted_p[take], t, e)
