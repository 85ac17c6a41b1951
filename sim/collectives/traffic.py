"""All-to-All traffic matrices: ``m[s, d]`` bytes from rank s to rank d (diagonal = local copy)."""

from __future__ import annotations

import numpy as np


def uniform(ranks: int, bytes_per_rank: float) -> np.ndarray:
    """Every rank sends ``bytes_per_rank / P`` to every rank (itself included, as nccl-tests)."""
    return np.full((ranks, ranks), bytes_per_rank / ranks)


def zipf(
    ranks: int, bytes_per_rank: float, exponent: float, rng: np.random.Generator
) -> np.ndarray:
    """Skewed alltoallv: each rank splits the same off-node total over its peers by Zipf weights.

    Row s gives peer k-th in a random order the weight 1 / k**exponent; every row sends
    ``bytes_per_rank * (P-1)/P`` over the network, like the uniform matrix, so times compare.
    Sizes are rounded to whole bytes.
    """
    p = ranks
    w = 1.0 / np.arange(1, p) ** exponent
    m = np.zeros((p, p))
    total = bytes_per_rank * (p - 1) / p
    for s in range(p):
        peers = np.delete(np.arange(p), s)
        m[s, rng.permutation(peers)] = w
    m *= total / m.sum(axis=1, keepdims=True)
    return np.round(m)
