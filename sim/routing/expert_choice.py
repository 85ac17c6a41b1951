"""Expert-choice router (Zhou et al. 2022; reference papers.md §6.3 item 3, Flaxformer code).

S = softmax(logits) over experts, shape (T, E). Each expert takes the C tokens with the highest
S in its column; combine weight = S[t, e]. Every expert gets exactly C tokens; a token gets 0..E
experts, and its rows' ``choice`` ranks them by score. ``ctx.topk`` is ignored.
Not causal: it must not be used for autoregressive decoding.

C = ``ctx.capacity`` when set, else max(1, round(capacity_factor * T / E)); C is capped at T.
Parameters:

* ``capacity_factor`` (float > 0, default 2.0, "EC-CF2"): used only when ``ctx.capacity`` is None.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble, check_logits, read_params, softmax, top_k
from sim.routing.registry import ROUTERS


def expert_capacity(ctx: RouterContext, num_tokens: int, num_experts: int, cf: float) -> int:
    """Tokens per expert C, in 1..T."""
    if ctx.capacity is not None:
        c = int(ctx.capacity)
        if c < 1:
            raise UserError(f"router 'expert_choice': capacity must be >= 1, got {c}")
    else:
        if not cf > 0:
            raise UserError(f"router 'expert_choice': capacity_factor must be > 0, got {cf}")
        c = max(1, round(cf * num_tokens / num_experts))
    return min(c, num_tokens)


@ROUTERS.register("expert_choice")
def expert_choice(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Each expert picks its top-C tokens by softmax score."""
    params = read_params(ctx, "expert_choice", capacity_factor=2.0)
    probs = softmax(check_logits(logits))
    t, e = probs.shape
    c = expert_capacity(ctx, t, e, float(params["capacity_factor"]))
    tokens = top_k(probs.T, c)  # (E, C): each expert's best tokens
    expert = np.repeat(np.arange(e), c)
    score = probs[tokens.ravel(), expert]
    return assemble(tokens.ravel(), expert, score, score, t, e)
