"""Expert-choice router (Zhou et al. 2022; reference papers.md §6.3 item 3, Flaxformer code).

S = softmax(logits) over experts, shape (T, E). Each expert takes the C tokens with the highest
S in its column; combine weight = S[t, e]. Every expert gets exactly C tokens; a token gets 0..E
experts, and its rows' ``choice`` ranks them by score. ``ctx.topk`` is ignored.
Not causal: it must not be used for autoregressive decoding.

C = ``ctx.capacity`` when set, else max(1, round(capacity_factor * T / E)); C is capped at T
(:func:`sim.moe.capacity.expert_choice_capacity`).
Parameters:

* ``capacity_factor`` (float > 0, default 2.0, "EC-CF2"): used only when ``ctx.capacity`` is None.
"""

from __future__ import annotations

import numpy as np

from sim.moe.capacity import expert_choice_capacity
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble, gate_probs, read_params, top_k
from sim.routing.registry import ROUTERS


@ROUTERS.register("expert_choice")
def expert_choice(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Each expert picks its top-C tokens by softmax score."""
    params = read_params(ctx, "expert_choice", capacity_factor=2.0)
    probs = gate_probs(logits)
    t, e = probs.shape
    c = expert_choice_capacity(t, e, float(params["capacity_factor"]), ctx.capacity)
    tokens = top_k(probs.T, c)  # (E, C): each expert's best tokens
    expert = np.repeat(np.arange(e), c)
    score = probs[tokens.ravel(), expert]
    return assemble(tokens.ravel(), expert, score, score, t, e)
