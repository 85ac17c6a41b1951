"""Candidate paths of every flow (k shortest simple paths by hop count), as arrays."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import networkx as nx
import numpy as np

from sim.solve.pfar.problem import Problem


@dataclass(frozen=True)
class _Index:
    """Candidate paths as arrays: candidate c belongs to flow f for first[f] <= c < first[f+1] and
    uses arcs ``arcs[arc_ptr[c]:arc_ptr[c+1]]`` (indices into ``problem.links``)."""

    paths: list[list[list[str]]]
    first: np.ndarray
    arc_ptr: np.ndarray
    arcs: np.ndarray


def _index(p: Problem) -> _Index:
    key = (tuple(p.nodes), tuple((u, v) for u, v, _ in p.links),
           tuple((f.src, f.dst) for f in p.flows), p.k_paths, tuple(p.endpoint_only))
    cached = p.__dict__.get("_index_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    g = nx.DiGraph()
    g.add_nodes_from(p.nodes)
    g.add_edges_from((u, v) for u, v, _ in p.links)
    arc_id = {(u, v): i for i, (u, v, _) in enumerate(p.links)}
    endpoint = set(p.endpoint_only)
    by_pair: dict[tuple[str, str], list[list[str]]] = {}
    paths, first, arc_ptr, arcs = [], [0], [0], []
    for f in p.flows:
        pair = (f.src, f.dst)
        if pair not in by_pair:
            by_pair[pair] = _k_shortest(g, f.src, f.dst, p.k_paths, endpoint)
        paths.append(by_pair[pair])
        for path in by_pair[pair]:
            arcs.extend(arc_id[a] for a in zip(path, path[1:], strict=False))
            arc_ptr.append(len(arcs))
        first.append(len(arc_ptr) - 1)
    idx = _Index(paths, np.array(first, np.int64), np.array(arc_ptr, np.int64),
                 np.array(arcs, np.int64))
    p.__dict__["_index_cache"] = (key, idx)
    return idx


def _k_shortest(g: nx.DiGraph, s: str, t: str, k: int, endpoint: set) -> list[list[str]]:
    if endpoint:
        g = nx.subgraph_view(g, filter_node=lambda n: n not in endpoint or n in (s, t))
    try:
        return [list(path) for path in islice(nx.shortest_simple_paths(g, s, t), k)]
    except nx.NetworkXNoPath:
        return []
