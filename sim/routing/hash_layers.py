"""Hash-layers router (Roller et al. 2021; reference papers.md §6.3 item 4).

expert = h(token_id) mod E with a fixed integer hash (the splitmix64 finaliser), so the choice
depends only on the vocabulary id and never on the gate logits; there are no learned scores.
Combine weight 1; ``score`` still reports the softmax probability of the chosen expert (for
the ``probs`` drop policy). Needs ``ctx.token_ids``; ``ctx.topk`` is ignored (one expert).
Parameters:

* ``salt`` (int, default 0): mixed into the hash to pick a different fixed table.
* ``balanced`` (bool, default false): deal the group's tokens out to the experts in the order
  of their hashes (ties by position), token i of that order to expert i mod E, so every expert
  gets equal tokens (to one), as PanGu-Sigma's random routed experts are balanced; the choice
  then depends on the other tokens of the group too.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble, gate_probs, read_params
from sim.routing.registry import ROUTERS


def hash_ids(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """splitmix64 finaliser of (id + salt) as uint64: a fixed, well-mixed integer hash."""
    x = (np.asarray(ids, dtype=np.int64).astype(np.uint64)
         + np.uint64(salt % 2**64) + np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@ROUTERS.register("hash")
def hash_router(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """One expert per token from a fixed hash of its vocabulary id; weight 1."""
    params = read_params(ctx, "hash", salt=0, balanced=False)
    probs = gate_probs(logits)
    t, e = probs.shape
    if ctx.token_ids is None:
        raise UserError("router 'hash' needs token ids (ctx.token_ids), got none")
    ids = np.asarray(ctx.token_ids)
    if ids.shape != (t,) or not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"router 'hash': token_ids must be ({t},) integers, got {ids.shape} "
                        f"{ids.dtype}")
    h = hash_ids(ids, int(params["salt"]))
    token = np.arange(t)
    if params["balanced"]:
        expert = np.empty(t, dtype=np.int64)
        expert[np.argsort(h, kind="stable")] = token % e
    else:
        expert = (h % np.uint64(e)).astype(np.int64)
    return assemble(token, expert, np.ones(t), probs[token, expert], t, e)
