"""Collectives on the flow-level fabric: All-to-All (direct, pairwise, hierarchical), ring
AllReduce and ring AllGather, with nccl-tests algbw/busbw."""

from sim.collectives.algorithms import all_to_all, ring_all_gather, ring_all_reduce
from sim.collectives.runner import COLLECTIVES, CollectiveResult, run_benchmark, run_collective

__all__ = [
    "COLLECTIVES", "CollectiveResult", "all_to_all", "ring_all_gather", "ring_all_reduce",
    "run_benchmark", "run_collective",
]
