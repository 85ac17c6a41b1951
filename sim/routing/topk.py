"""Generic top-k router, Megatron-LM style (reference papers.md §6.1 Megatron row, §6.3).

p = softmax over all E experts; each token takes its k = ``ctx.topk`` most probable experts.
Parameters:

* ``normalize`` (bool, default true): combine weights are the chosen probabilities renormalised
  to sum to 1 per token (equal to a softmax over the k chosen logits); false keeps the raw p.
"""

from __future__ import annotations

import numpy as np

from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble_topk, check_topk, gate_probs, read_params, top_k
from sim.routing.registry import ROUTERS


def topk_weights(probs: np.ndarray, idx: np.ndarray, normalize: bool) -> np.ndarray:
    """(T, k) combine weights of the chosen experts ``idx``, optionally renormalised."""
    w = np.take_along_axis(probs, idx, axis=1)
    return w / w.sum(axis=1, keepdims=True) if normalize else w


@ROUTERS.register("topk")
def topk(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Top-k of the softmax; weights renormalised over the k chosen unless ``normalize: false``."""
    params = read_params(ctx, "topk", normalize=True)
    probs = gate_probs(logits)
    idx = top_k(probs, check_topk(ctx.topk, probs.shape[1]))
    return assemble_topk(idx, topk_weights(probs, idx, bool(params["normalize"])), probs)
