"""Topologies: GPU catalog, pure graph builders, YAML schema and loader.

``load_topology("h100-leaf-spine", {"nodes": 32})`` returns a frozen :class:`Cluster`.
"""

from sim.topology.catalog import GpuSpec, get_gpu, list_gpus
from sim.topology.cluster import Cluster, LinkTable
from sim.topology.loader import list_topologies, load_topology, validate_topology

__all__ = [
    "Cluster",
    "GpuSpec",
    "LinkTable",
    "get_gpu",
    "list_gpus",
    "list_topologies",
    "load_topology",
    "validate_topology",
]
