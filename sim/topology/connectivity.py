"""Reachability between GPUs under the rule that GPUs never forward traffic.

GPU ``u`` reaches GPU ``v`` when there is a direct edge ``u -> v`` or a directed path
``u -> x1 -> ... -> xk -> v`` whose inner nodes are all switches or NICs.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx

from sim.topology.cluster import GPU


def unreachable_pair(graph: nx.DiGraph) -> tuple[str, str] | None:
    """Two GPUs ``(u, v)`` such that ``u`` cannot reach ``v``, or None if every GPU reaches
    every other.

    Cost: one strongly-connected-component condensation of the switch/NIC subgraph plus a
    bitset reachability sweep over its DAG; GPUs are grouped by which components they can
    enter and leave, so a fat tree of thousands of GPUs is checked in milliseconds.
    """
    nodes = graph.nodes
    gpus = sorted(
        (n for n, d in nodes(data=True) if d.get("kind") == GPU), key=lambda n: nodes[n]["rank"]
    )
    transit = [n for n, d in nodes(data=True) if d.get("kind") != GPU]
    dag = nx.condensation(graph.subgraph(transit))
    scc_of = dag.graph["mapping"]
    reach: dict[int, int] = {}  # component -> bitset of components reachable from it
    for c in reversed(list(nx.topological_sort(dag))):
        bits = 1 << c
        for d in dag.successors(c):
            bits |= reach[d]
        reach[c] = bits

    leaves_to: dict[int, list[str]] = defaultdict(list)  # bitset reachable from u -> GPUs u
    enters_from: dict[int, list[str]] = defaultdict(list)  # bitset of entry comps -> GPUs v
    for u in gpus:
        out = 0
        for x in graph.successors(u):
            if x in scc_of:
                out |= reach[scc_of[x]]
        leaves_to[out].append(u)
        into = 0
        for x in graph.predecessors(u):
            if x in scc_of:
                into |= 1 << scc_of[x]
        enters_from[into].append(u)

    for out, sources in leaves_to.items():
        for into, targets in enters_from.items():
            if out & into:
                continue
            for u in sources:
                for v in targets:
                    if u != v and not graph.has_edge(u, v):
                        return u, v
    return None
