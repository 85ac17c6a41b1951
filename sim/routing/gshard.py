"""GShard top-2 router with Mesh-TF's "random" second-expert policy (papers.md §6.2, §6.3 item 2).

g1 = max p, g2 = max of the rest, both renormalised so g1 + g2 = 1. The first expert is always
dispatched; the second only with probability min(1, g2 / threshold), drawn from ``ctx.rng``
(one uniform per token, always T draws). The weights are renormalised *before* this drop, as in
Mesh-TF's legacy behaviour: a token whose second expert is skipped keeps weight g1 < 1.
k is fixed at 2 by the method: ``ctx.topk`` is ignored. Parameters:

* ``second_threshold`` (float >= 0, default 0.2): 0 dispatches every second expert.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble, check_topk, gate_probs, read_params, top_k
from sim.routing.registry import ROUTERS


@ROUTERS.register("gshard")
def gshard(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Top-2 with renormalised gates and a randomly dispatched second expert."""
    params = read_params(ctx, "gshard", second_threshold=0.2)
    threshold = float(params["second_threshold"])
    if not threshold >= 0:
        raise UserError(f"router 'gshard': second_threshold must be >= 0, got {threshold}")
    probs = gate_probs(logits)
    t, e = probs.shape
    idx = top_k(probs, check_topk(2, e))
    gates = np.take_along_axis(probs, idx, axis=1)
    weight = gates / gates.sum(axis=1, keepdims=True)
    p_second = np.minimum(1.0, weight[:, 1] / threshold) if threshold > 0 else np.ones(t)
    keep = np.ones((t, 2), dtype=bool)
    keep[:, 1] = ctx.rng.random(t) < p_second
    token = np.repeat(np.arange(t), 2).reshape(t, 2)
    return assemble(token[keep], idx[keep], weight[keep], gates[keep], t, e)
