"""The simulated machine: a frozen directed networkx graph plus the GPU spec and rank tables.

Graph conventions (the only contract between topology builders and the engine):

* node attribute ``kind``: ``"gpu"`` (an endpoint, never forwards traffic), ``"switch"`` or
  ``"nic"`` (both forward traffic);
* GPU nodes also carry ``rank`` (global, 0..P-1), ``node`` (server index) and ``local_rank``;
* every directed edge carries ``bandwidth_Bps`` (bytes/s, > 0), ``latency_s`` (s, >= 0) and
  ``tier`` (a short label such as ``"nvlink"``, ``"nic"``, ``"leaf-spine"``). A full-duplex
  link is two directed edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np

from sim.topology.catalog import GpuSpec

GPU = "gpu"
SWITCH = "switch"
NIC = "nic"


@dataclass(frozen=True)
class LinkTable:
    """Directed links as flat arrays; link ``i`` goes from node ``src[i]`` to ``dst[i]``.

    Node indices refer to ``Cluster.node_names``. ``capacity_Bps`` in bytes/s, ``latency_s`` in s.
    """

    src: np.ndarray
    dst: np.ndarray
    capacity_Bps: np.ndarray
    latency_s: np.ndarray
    tier: np.ndarray
    index: dict[tuple[int, int], int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True, eq=False)
class Cluster:
    """A GPU cluster: graph (frozen), GPU model, and rank -> (server, local rank) tables."""

    name: str
    graph: nx.DiGraph
    gpu: GpuSpec
    source: str = ""  # file the cluster was loaded from, for messages
    comm_profile: str = "ideal"  # the communication profile its topology file names

    @classmethod
    def from_graph(cls, name: str, graph: nx.DiGraph, gpu: GpuSpec, source: str = "",
                   comm_profile: str = "ideal") -> Cluster:
        """Freeze ``graph`` and wrap it. GPU ranks must be 0..P-1 without gaps."""
        ranks = sorted(d["rank"] for _, d in graph.nodes(data=True) if d.get("kind") == GPU)
        if ranks != list(range(len(ranks))):
            raise ValueError("GPU ranks must be 0..P-1 without gaps or repeats")
        return cls(name=name, graph=nx.freeze(graph), gpu=gpu, source=source,
                   comm_profile=comm_profile)

    @cached_property
    def node_names(self) -> tuple:
        """All graph nodes in a fixed order: GPUs first (by rank), then the rest sorted by name."""
        gpus = sorted(
            (n for n, d in self.graph.nodes(data=True) if d.get("kind") == GPU),
            key=lambda n: self.graph.nodes[n]["rank"],
        )
        rest = sorted((n for n, d in self.graph.nodes(data=True) if d.get("kind") != GPU), key=str)
        return tuple(gpus) + tuple(rest)

    @cached_property
    def node_index(self) -> dict:
        return {n: i for i, n in enumerate(self.node_names)}

    @property
    def num_gpus(self) -> int:
        return len(self.node_of)

    @cached_property
    def node_of(self) -> np.ndarray:
        """Server index of each GPU rank."""
        g = self.graph.nodes
        return np.array([g[n]["node"] for n in self.node_names[: self._p]], dtype=np.int64)

    @cached_property
    def local_rank(self) -> np.ndarray:
        """Rank of each GPU inside its server."""
        g = self.graph.nodes
        return np.array([g[n]["local_rank"] for n in self.node_names[: self._p]], dtype=np.int64)

    @cached_property
    def _p(self) -> int:
        return sum(1 for _, d in self.graph.nodes(data=True) if d.get("kind") == GPU)

    @property
    def num_nodes(self) -> int:
        return int(self.node_of.max()) + 1 if self.num_gpus else 0

    @property
    def gpus_per_node(self) -> int:
        return int(np.bincount(self.node_of).max()) if self.num_gpus else 0

    @cached_property
    def links(self) -> LinkTable:
        """Every directed edge as arrays, in a deterministic order."""
        idx = self.node_index
        edges = sorted(
            ((idx[u], idx[v], d) for u, v, d in self.graph.edges(data=True)),
            key=lambda e: (e[0], e[1]),
        )
        src = np.array([e[0] for e in edges], dtype=np.int64)
        dst = np.array([e[1] for e in edges], dtype=np.int64)
        cap = np.array([e[2]["bandwidth_Bps"] for e in edges], dtype=float)
        lat = np.array([e[2]["latency_s"] for e in edges], dtype=float)
        tier = np.array([e[2].get("tier", "") for e in edges], dtype=object)
        index = {(int(s), int(d)): i for i, (s, d) in enumerate(zip(src, dst, strict=True))}
        return LinkTable(src, dst, cap, lat, tier, index)

    def describe(self) -> dict:
        """A summary for listings: sizes, and per link tier the number of directed links and
        their total capacity (bytes/s)."""
        kinds = [d.get("kind") for _, d in self.graph.nodes(data=True)]
        tiers: dict[str, dict[str, float]] = {}
        for tier, cap in zip(self.links.tier, self.links.capacity_Bps, strict=True):
            entry = tiers.setdefault(str(tier), {"links": 0, "capacity_Bps": 0.0})
            entry["links"] += 1
            entry["capacity_Bps"] += float(cap)
        return {
            "name": self.name,
            "gpu": self.gpu.name,
            "num_gpus": self.num_gpus,
            "num_nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "switches": kinds.count(SWITCH),
            "nics": kinds.count(NIC),
            "tiers": tiers,
        }
