"""Collectives as the library runs them: the flows of the chosen algorithm, carrying wire bytes
(payload / protocol efficiency), under the library's per-flow caps, after its fixed costs
(``sim.comm.model``). Under the ``ideal`` profile the plain algorithms of ``algorithms`` run."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from sim.collectives import algorithms
from sim.comm.model import Cost, Model, pattern
from sim.network.fabric import Fabric


def run(fabric: Fabric, model: Model, collective: str, cost: Cost, size: float,
        matrix: np.ndarray | None = None) -> Generator:
    """SimPy process: ``collective`` of ``size`` bytes (nccl-tests' size) with ``cost``'s
    algorithm and protocol; ``matrix`` (P, P) gives an alltoall's bytes (default: uniform).
    Returns seconds."""
    env = fabric.env
    t0 = env.now
    if collective == "all_to_all" and cost.algorithm != "direct":
        yield env.timeout(cost.delay_s)
        yield from algorithms.all_to_all(fabric, matrix, cost.algorithm)
        return env.now - t0
    if collective == "all_to_all":
        src, dst = np.nonzero(matrix)
        keep = src != dst
        src, dst = src[keep], dst[keep]
        nbytes = matrix[src, dst]
        cap = model.cost(collective, cost.algorithm, cost.protocol, size, src, dst,
                         nbytes).flow_cap_Bps
    else:
        src, dst, nbytes = pattern(fabric.cluster, collective, cost.algorithm, size)
        cap = cost.flow_cap_Bps
    if len(src):
        yield fabric.transfer(src, dst, nbytes * cost.inflate, rate_cap=cap, delay_s=cost.delay_s)
    return env.now - t0
