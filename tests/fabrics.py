"""Small hand-built clusters for fabric tests (independent of the topology files)."""

import networkx as nx

from sim.topology.catalog import GpuSpec
from sim.topology.cluster import Cluster

SPEC = GpuSpec("test", 1e15, 80, 3e12, 450e9, 64e9)


def star(p: int, bandwidth_Bps: float = 100e9, latency_s: float = 1e-6) -> Cluster:
    """P GPUs on one non-blocking switch, one full-duplex link each."""
    g = nx.DiGraph()
    g.add_node("sw", kind="switch")
    for r in range(p):
        g.add_node(f"g{r}", kind="gpu", rank=r, node=0, local_rank=r)
        for u, v in ((f"g{r}", "sw"), ("sw", f"g{r}")):
            g.add_edge(u, v, bandwidth_Bps=bandwidth_Bps, latency_s=latency_s, tier="nvlink")
    return Cluster.from_graph(f"star{p}", g, SPEC)
