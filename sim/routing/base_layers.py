"""BASE-layers balanced router (Lewis et al. 2021; reference papers.md §6.3 item 5).

Top-1 with a hard balance constraint: every expert gets floor(T/E) or ceil(T/E) tokens
(exactly T mod E experts get the ceil), maximising the total affinity, where affinity is the
raw logit (BASE's features . centroid). Combine weight = sigmoid(logit), the gate BASE mixes
the expert output with; ``score`` is the softmax probability. ``ctx.topk`` is ignored.

Solvers:

* exact, when (T + E) * E * ceil(T/E) <= ``exact_max_cells``: ``scipy.optimize.
  linear_sum_assignment`` on a token x slot cost matrix with C = ceil(T/E) slots per expert. When
  E does not divide T, E - (T mod E) dummy rows may only fill the last slot of an expert, so the
  mandatory floor(T/E) slots of every expert are taken by real tokens.
* greedy otherwise (BASE itself uses an approximate auction): experts get capacities
  floor(T/E), plus one for the T mod E experts most often the argmax. In rounds, each unplaced
  token proposes to its best expert with room, and each expert accepts its highest-affinity
  proposers up to its room. Each round fills an expert or places every proposer, so it ends
  within E + 1 vectorized rounds.

Parameters:

* ``exact_max_cells`` (int, default 4_000_000): the cost-matrix size above which greedy is used.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from sim.routing.assignment import Assignment, RouterContext
from sim.routing.common import assemble, check_logits, read_params, softmax
from sim.routing.registry import ROUTERS


def balanced_exact(z: np.ndarray) -> np.ndarray:
    """(T,) expert per token maximising sum z[t, expert[t]] with floor/ceil(T/E) loads."""
    t, e = z.shape
    q, r = divmod(t, e)
    c = q + (r > 0)
    cost = np.repeat(-z, c, axis=1)  # column j is slot j % c of expert j // c
    if r:
        dummy = np.full((e - r, e * c), np.inf)
        dummy[:, c - 1::c] = 0.0
        cost = np.vstack([cost, dummy])
    rows, cols = linear_sum_assignment(cost)
    real = rows < t
    expert = np.empty(t, dtype=np.int64)
    expert[rows[real]] = cols[real] // c
    return expert


def balanced_greedy(z: np.ndarray) -> np.ndarray:
    """(T,) expert per token with floor/ceil(T/E) loads, by proposal rounds (see module doc)."""
    t, e = z.shape
    q, r = divmod(t, e)
    demand = np.bincount(z.argmax(axis=1), minlength=e)
    room = np.full(e, q, dtype=np.int64)
    room[np.argsort(-demand, kind="stable")[:r]] += 1
    expert = np.full(t, -1, dtype=np.int64)
    while (open_ := np.flatnonzero(expert < 0)).size:
        want = np.where(room > 0, z[open_], -np.inf).argmax(axis=1)
        order = np.lexsort((-z[open_, want], want))
        w = want[order]
        rank = np.arange(len(w)) - np.searchsorted(w, w, side="left")
        ok = rank < room[w]
        expert[open_[order[ok]]] = w[ok]
        room -= np.bincount(w[ok], minlength=e)
    return expert


@ROUTERS.register("base")
def base(logits: np.ndarray, ctx: RouterContext) -> Assignment:
    """Balanced top-1 assignment maximising total logit affinity."""
    params = read_params(ctx, "base", exact_max_cells=4_000_000)
    z = check_logits(logits)
    t, e = z.shape
    cells = (t + e) * e * -(-t // e)
    expert = balanced_exact(z) if cells <= int(params["exact_max_cells"]) else balanced_greedy(z)
    token = np.arange(t)
    weight = 1.0 / (1.0 + np.exp(-z[token, expert]))
    return assemble(token, expert, weight, softmax(z)[token, expert], t, e)
