"""Max-min fair rates for flows on capacitated links, vectorized.

The link x flow incidence is kept as a padded path matrix (``paths[f, h]`` = h-th link of flow f,
padded with a dummy link of infinite capacity): a sparse matrix in ELLPACK layout, so every step
is a gather or a ``bincount`` over all (flow, link) pairs at once.

Algorithm (parallel progressive filling). Each round, every link has a fair share
``residual / unfrozen flows``. A link whose share is the smallest on the path of every unfrozen
flow crossing it is a bottleneck: in sequential progressive filling all of those flows would be
frozen at exactly that share, because shares only grow as other flows freeze at lower levels.
All such links are frozen in the same round, so the number of rounds is the length of the longest
chain of distinct bottleneck levels, not the number of distinct levels (one round for a uniform
All-to-All). The result is the exact max-min fair allocation up to floating-point rounding.
"""

from __future__ import annotations

import numpy as np


def max_min_rates(
    paths: np.ndarray, capacity: np.ndarray, tolerance: float = 0.0
) -> tuple[np.ndarray, int]:
    """Max-min fair rate of each flow, bytes/s, and the number of filling rounds used.

    ``paths``: (F, H) int link ids, padded with ``len(capacity) - 1`` (the dummy link).
    ``capacity``: (L + 1,) bytes/s, the last entry (dummy) must be ``inf``.
    ``tolerance``: 0 gives the exact allocation. With t > 0 a link also freezes when its share
    is within a factor (1 + t) of the smallest share on its flows' paths; each of its flows gets
    that smallest share, so the allocation stays feasible, no flow gets more than its exact
    max-min rate on its bottleneck, and far fewer rounds are needed when many links have nearly
    equal shares (skewed All-to-All).
    """
    n_flows, n_hops = paths.shape
    n_links = len(capacity)
    rates = np.empty(n_flows)
    if n_flows == 0:
        return rates, 0
    residual = capacity.astype(float, copy=True)
    p = np.ascontiguousarray(paths.T)  # (H, F): row-wise reductions are much faster
    count = np.bincount(p.ravel(), minlength=n_links).astype(float)
    count[-1] = 0.0
    live = np.arange(n_flows)
    slack = 1.0 + tolerance
    rounds = 0
    while len(live):
        rounds += 1
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(count > 0, np.maximum(residual, 0.0) / count, np.inf)
        fmin = share[p].min(axis=0)
        # a link is a bottleneck if no flow on it has a (much) smaller share elsewhere
        link_min = np.full(n_links, np.inf)
        np.minimum.at(link_min, p.ravel(), np.tile(fmin, n_hops))
        bottleneck = (link_min * slack >= share) & (count > 0)
        frozen = bottleneck[p].any(axis=0)
        fr = fmin[frozen]
        rates[live[frozen]] = fr
        pf = p[:, frozen].ravel()
        residual -= np.bincount(pf, weights=np.tile(fr, n_hops), minlength=n_links)
        count -= np.bincount(pf, minlength=n_links)
        count[-1] = 0.0
        keep = ~frozen
        live = live[keep]
        p = p[:, keep]
    return rates, rounds
