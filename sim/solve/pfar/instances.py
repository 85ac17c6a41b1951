"""PFAR instances: semi-random congested ones, and one All-to-All on a moe-sim cluster."""

from __future__ import annotations

import networkx as nx
import numpy as np

from sim.errors import UserError
from sim.rng import stream
from sim.solve.pfar.problem import Flow, Problem, _number


def generate(nodes: int, flows: int, seed: int, *, k_paths: int = 4, weighting: str = "linear",
             degree: float = 4.0, capacities: tuple[float, ...] = (10.0, 40.0, 100.0),
             capacity_p: tuple[float, ...] = (0.5, 0.3, 0.2), priorities: int = 5,
             demand_sigma: float = 1.0, load: float = 1.0) -> Problem:
    """A congested semi-random instance (rates in Gbit/s), reproducible from ``seed``.

    Topology: nodes ``v0..v{n-1}``; a uniform random spanning tree (each node in a random order
    joins a uniformly drawn earlier one) plus uniform random extra links up to an average degree
    of ``degree``; every link is two arcs with one capacity drawn from ``capacities`` with
    probabilities ``capacity_p``. Flows: src uniform, dst uniform among the others, priority
    uniform in 1..``priorities``, demand lognormal(0, ``demand_sigma``) (skewed), scaled so that
    the offered load ``sum(demand * shortest hops) / sum(arc capacity)`` equals ``load``. Load
    gathers on the 10 Gbit/s links, so at the default 1.0 the best known answers reject 14-30 %
    of the flows (17 % at 10 nodes and 500 flows, 23 % at 50 nodes and 2,000; see
    ``benchmarks/bench_solvers.py``). Draws come from ``sim.rng.stream(seed, "instances")``.
    Demands are rounded to 1e-4 Gbit/s (at least 1e-4).
    """
    if nodes < 2 or flows < 0:
        raise UserError("generate: need nodes >= 2 and flows >= 0")
    rng = stream(seed, "instances")
    order = rng.permutation(nodes)
    edges = {tuple(sorted((int(order[i]), int(order[rng.integers(i)])))) for i in range(1, nodes)}
    target = min(round(degree * nodes / 2), nodes * (nodes - 1) // 2)
    while len(edges) < target:
        u, v = (int(x) for x in rng.choice(nodes, 2, replace=False))
        edges.add((min(u, v), max(u, v)))
    edges_l = sorted(edges)
    caps = rng.choice(np.asarray(capacities, float), size=len(edges_l), p=capacity_p)
    names = [f"v{i}" for i in range(nodes)]
    links = []
    for (u, v), c in zip(edges_l, caps, strict=True):
        links += [(names[u], names[v], float(c)), (names[v], names[u], float(c))]
    src = rng.integers(nodes, size=flows)
    dst = (src + rng.integers(1, nodes, size=flows)) % nodes
    prio = rng.integers(1, priorities + 1, size=flows)
    raw = rng.lognormal(0.0, demand_sigma, size=flows)
    hops = dict(nx.all_pairs_shortest_path_length(nx.Graph(edges_l)))
    h = np.array([hops[int(s)][int(d)] for s, d in zip(src, dst, strict=True)], float)
    total_cap = 2 * caps.sum()
    demand = np.maximum(np.round(raw * load * total_cap / max((raw * h).sum(), 1e-12), 4), 1e-4)
    fl = [Flow(names[s], names[d], float(x), int(q))
          for s, d, x, q in zip(src, dst, demand, prio, strict=True)]
    return Problem(names, links, fl, k_paths=k_paths, weighting=weighting)


def from_cluster(cluster, matrix_bytes, duration_s: float, priority_of=None, k_paths: int = 4,
                 weighting: str = "linear") -> Problem:
    """One All-to-All on a moe-sim cluster as a PFAR instance (rates in bytes/s).

    Nodes: every graph node (names as ``str``); arcs: every directed edge, capacity
    ``bandwidth_Bps``. Flows: one per nonzero ``matrix_bytes[s, d]`` between GPU ranks on
    different servers, demand ``bytes / duration_s`` (the rate that finishes within
    ``duration_s``), priority ``priority_of(s, d)`` or 1. GPUs are endpoint-only: candidate
    paths never transit a GPU.
    """
    m = np.asarray(matrix_bytes, float)
    p = cluster.num_gpus
    if m.shape != (p, p):
        raise UserError(f"from_cluster: matrix_bytes has shape {m.shape}; need ({p}, {p})")
    if not (_number(duration_s) and duration_s > 0):
        raise UserError(f"from_cluster: duration_s {duration_s!r}; must be a number > 0")
    names = [str(n) for n in cluster.node_names]
    gpus = [n for n, d in cluster.graph.nodes(data=True) if d.get("kind") == "gpu"]
    lt = cluster.links
    links = [(names[s], names[d], float(c))
             for s, d, c in zip(lt.src, lt.dst, lt.capacity_Bps, strict=True)]
    node_of = cluster.node_of
    flows = [Flow(names[s], names[d], float(m[s, d] / duration_s),
                  int(priority_of(s, d)) if priority_of else 1)
             for s, d in zip(*np.nonzero(m), strict=True) if node_of[s] != node_of[d]]
    return Problem(names, links, flows, k_paths=k_paths, weighting=weighting,
                   endpoint_only=[str(g) for g in gpus])
