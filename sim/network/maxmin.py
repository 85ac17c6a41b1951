"""Max-min fair rates for flows on capacitated links, vectorized.

The link x flow incidence is a padded path matrix (``paths[f, h]`` = h-th link of flow f, padded
with a dummy link of infinite capacity): a sparse matrix in ELLPACK layout. This solve is the
simulator's hot path (one per re-allocation, tens of thousands per large step), so the filling
loop is compiled with numba: three passes over the live (flow, hop) pairs per round and no
temporaries, about 7x faster than the same rounds as numpy gathers and bincounts.

Algorithm (parallel progressive filling). Each round, every link has a fair share
``residual / unfrozen flows``. A link whose share is the smallest on the path of every unfrozen
flow crossing it is a bottleneck: in sequential progressive filling all of those flows would be
frozen at exactly that share, because shares only grow as other flows freeze at lower levels.
All such links are frozen in the same round, so the number of rounds is the length of the longest
chain of distinct bottleneck levels, not the number of distinct levels (one round for a uniform
All-to-All). The result is the exact max-min fair allocation up to floating-point rounding.
"""

from __future__ import annotations

import numba
import numpy as np


def max_min_rates(
    paths: np.ndarray, capacity: np.ndarray, tolerance: float = 0.0,
    flow_cap: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Max-min fair rate of each flow, bytes/s, and the number of filling rounds used.

    ``paths``: (F, H) int link ids, padded with ``len(capacity) - 1`` (the dummy link).
    ``capacity``: (L + 1,) bytes/s, the last entry (dummy) must be ``inf``.
    ``flow_cap``: (F,) bytes/s, the most each flow may take (``inf``: no cap), as if each flow
    had a private link of that capacity on its path (a sender that cannot go faster: a channel
    count, a copy engine); None caps nothing.
    ``tolerance``: 0 gives the exact allocation. With t > 0 a link also freezes when its share
    is within a factor (1 + t) of the smallest share on its flows' paths; each of its flows gets
    that smallest share, so the allocation stays feasible, no flow gets more than its exact
    max-min rate on its bottleneck, and far fewer rounds are needed when many links have nearly
    equal shares (skewed All-to-All).
    """
    p = np.ascontiguousarray(paths, dtype=np.int32)
    cap = np.ascontiguousarray(capacity, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        return np.empty(len(p)), 0
    own = (np.full(len(p), np.inf) if flow_cap is None
           else np.ascontiguousarray(flow_cap, dtype=np.float64))
    return _fill(p, cap, 1.0 + float(tolerance), own)


@numba.njit(cache=True, nogil=True)
def _fill(p, capacity, slack, own):  # pragma: no cover - compiled; covered via max_min_rates
    n_flows, n_hops = p.shape
    n_links = capacity.shape[0]
    dummy = n_links - 1
    rates = np.empty(n_flows)
    residual = capacity.copy()
    count = np.zeros(n_links)
    for f in range(n_flows):
        for h in range(n_hops):
            count[p[f, h]] += 1.0
    count[dummy] = 0.0
    live = np.arange(n_flows)
    n_live = n_flows
    share = np.empty(n_links)
    fmin = np.empty(n_flows)
    not_bottleneck = np.empty(n_links, np.bool_)
    rounds = 0
    while n_live:
        rounds += 1
        for link in range(n_links):
            share[link] = max(residual[link], 0.0) / count[link] if count[link] > 0 else np.inf
            not_bottleneck[link] = count[link] <= 0
        for i in range(n_live):  # smallest share on each live flow's path (its cap included)
            f = live[i]
            m = own[f]
            for h in range(n_hops):
                m = min(m, share[p[f, h]])
            fmin[f] = m
        # a link is a bottleneck if no flow on it has a (much) smaller share elsewhere
        for i in range(n_live):
            f = live[i]
            limit = fmin[f] * slack
            for h in range(n_hops):
                if share[p[f, h]] > limit:
                    not_bottleneck[p[f, h]] = True
        # flows crossing a bottleneck freeze at their smallest share; the rest stay live
        k = 0
        for i in range(n_live):
            f = live[i]
            frozen = own[f] <= fmin[f] * slack  # its own cap is its bottleneck
            for h in range(n_hops):
                if frozen:
                    break
                if not not_bottleneck[p[f, h]]:
                    frozen = True
            if frozen:
                r = fmin[f]
                rates[f] = r
                for h in range(n_hops):
                    residual[p[f, h]] -= r
                    count[p[f, h]] -= 1.0
            else:
                live[k] = f
                k += 1
        count[dummy] = 0.0
        n_live = k
    return rates, rounds
