"""Switch Transformer top-1 router (reference papers.md §6.3 item 1, Mesh-TF ``_switch_gating``).

p = softmax(logits); each token goes to argmax p with combine weight p[argmax], not
renormalised. k is fixed at 1 by the method: ``ctx.topk`` is ignored. No parameters; capacity
and position-order dropping (§6.1, §6.2) belong to the MoE layer, not the router.
"""

from __future__ import annotations

import numpy as np

from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble_topk, gate_probs, read_params, top_k
from sim.routing.registry import ROUTERS


@ROUTERS.register("switch")
def switch(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Top-1 routing; weight = softmax probability of the chosen expert."""
    read_params(ctx, "switch")
    probs = gate_probs(logits)
    idx = top_k(probs, 1)
    return assemble_topk(idx, np.take_along_axis(probs, idx, axis=1), probs)
