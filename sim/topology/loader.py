"""Load ``topologies/*.yaml`` into a :class:`Cluster`: resolve the name, read YAML, deep-merge
overrides, validate (schema), build the graph (builders), check connectivity.

Every user mistake becomes a one-line :class:`sim.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from sim.errors import UserError
from sim.inputs import available, find_file, got, read_yaml, validation_message
from sim.topology import builders
from sim.topology.catalog import GpuSpec, get_gpu
from sim.topology.cluster import Cluster
from sim.topology.connectivity import unreachable_pair
from sim.topology.schema import (
    MODEL_OF_KIND,
    TOPOLOGY_ADAPTER,
    ExplicitTopology,
    FatTreeTopology,
    IntraNode,
    SingleNodeTopology,
)
from sim.units import gbps_to_bytes_per_s, us_to_s


def resolve(ref: str | Path) -> Path:
    """The file for ``ref``: a path to a YAML file, or a bare name looked up as
    ``topologies/<name>.yaml`` in the current directory, its parents, then the repository."""
    return find_file(ref, "topologies", "topology")


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested mappings merge key by key, anything else
    replaces. A dotted key ``"a.b": 1`` means ``{"a": {"b": 1}}``."""
    out = dict(base)
    for key, value in overrides.items():
        head, _, rest = str(key).partition(".")
        if rest:
            value, key = {rest: value}, head
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def _paths(mapping: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in mapping.items():
        path = prefix + tuple(str(key).split("."))
        out.add(path)
        if isinstance(value, Mapping):
            out |= _paths(value, path)
    return out


def _server(intra: IntraNode, gpus: int, gpu: GpuSpec) -> builders.ServerBuilder:
    """The intra-node builder for ``intra`` (bandwidth defaults from the GPU catalog)."""
    latency_s = us_to_s(intra.latency_us)
    given = None if intra.bandwidth_gbps is None else gbps_to_bytes_per_s(intra.bandwidth_gbps)
    if intra.fabric == "hccs_groups":
        bw, size = given or gpu.scale_up_link_bandwidth_Bps, intra.group_size or 4
        return lambda s: builders.hccs_groups(
            gpus, group_size=size, bandwidth_Bps=bw, latency_s=latency_s, node=s
        )
    build = builders.pcie if intra.fabric == "pcie" else builders.nvswitch
    default = gpu.pcie_bandwidth_Bps if intra.fabric == "pcie" else gpu.nvlink_bandwidth_Bps
    return lambda s: build(gpus, bandwidth_Bps=given or default, latency_s=latency_s, node=s)


def _fat_tree(spec: FatTreeTopology, gpu: GpuSpec) -> nx.DiGraph:
    def bw(gbps: float | None) -> float | None:
        return None if gbps is None else gbps_to_bytes_per_s(gbps)

    pcie = spec.pcie
    core = spec.spine_core
    return builders.fat_tree(
        spec.nodes,
        spec.gpus_per_node,
        _server(spec.intra_node, spec.gpus_per_node, gpu),
        nics_per_node=spec.nics_per_node or spec.gpus_per_node,
        nic_bandwidth_Bps=gbps_to_bytes_per_s(spec.nic.bandwidth_gbps),
        nic_latency_s=us_to_s(spec.nic.latency_us),
        hosts_per_leaf=spec.hosts_per_leaf,
        rail_optimized=spec.rail_optimized,
        tiers=spec.tiers,
        uplinks_per_leaf=spec.uplinks_per_leaf,
        oversubscription=spec.oversubscription,
        uplink_bandwidth_Bps=bw(spec.leaf_spine.bandwidth_gbps),
        leaf_spine_latency_s=us_to_s(spec.leaf_spine.latency_us),
        pcie_bandwidth_Bps=gpu.pcie_bandwidth_Bps if pcie is None else bw(pcie.bandwidth_gbps),
        pcie_latency_s=us_to_s(1.0 if pcie is None else pcie.latency_us),
        leaves_per_pod=spec.leaves_per_pod,
        cores=spec.cores,
        core_oversubscription=spec.core_oversubscription or 1.0,
        core_bandwidth_Bps=None if core is None else bw(core.bandwidth_gbps),
        spine_core_latency_s=us_to_s(0.5 if core is None else core.latency_us),
    )


def build_graph(spec: SingleNodeTopology | FatTreeTopology | ExplicitTopology) -> nx.DiGraph:
    """The graph described by a validated topology model (bytes/s, seconds inside)."""
    gpu = get_gpu(spec.gpu)
    if isinstance(spec, SingleNodeTopology):
        return _server(spec.intra_node, spec.gpus_per_node, gpu)(0)
    if isinstance(spec, FatTreeTopology):
        return _fat_tree(spec, gpu)
    links = [
        builders.Link(
            e.a,
            e.b,
            e.count * gbps_to_bytes_per_s(e.bandwidth_gbps),
            us_to_s(e.latency_us),
            e.tier,
            e.duplex,
        )
        for e in spec.links
    ]
    return builders.explicit(
        [(e.name, e.node, e.local_rank) for e in spec.gpus], links, spec.switches, spec.nics
    )


def load_topology(ref: str | Path, overrides: Mapping[str, Any] | None = None) -> Cluster:
    """Load a topology by name (``topologies/<name>.yaml``, current directory first, then the
    repository) or by path, with ``overrides`` deep-merged into the file before validation.

    Raises ``UserError`` (one line: ``file: field: problem (got value)``) on any user mistake.
    """
    path = resolve(ref)
    source = str(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if overrides:
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: (top level): must be a mapping (got {got(data)})")
        data = deep_merge(data, overrides)
    try:
        spec = TOPOLOGY_ADAPTER.validate_python(data)
    except ValidationError as exc:
        origins = dict.fromkeys(_paths(overrides) if overrides else (), "topology overrides")
        raise UserError(validation_message(exc, source, None, origins, MODEL_OF_KIND)) from None
    try:
        graph = build_graph(spec)
    except ValueError as exc:  # a builder rule the schema did not catch
        raise UserError(f"{source}: (topology): {exc}") from None
    pair = unreachable_pair(graph)
    if pair is not None:
        field = "links" if isinstance(spec, ExplicitTopology) else "intra_node.fabric"
        raise UserError(
            f"{source}: {field}: topology is disconnected; every GPU must reach every other "
            "through switch/nic nodes or a direct link (GPUs do not forward traffic) "
            f"(got no path from {pair[0]} to {pair[1]})"
        )
    name = spec.name or path.stem
    return Cluster.from_graph(name, graph, get_gpu(spec.gpu), source=source,
                              comm_profile=spec.comm_profile)


def validate_topology(ref: str | Path, overrides: Mapping[str, Any] | None = None) -> Cluster:
    """Load ``ref`` only to check it; returns the cluster, raises ``UserError`` if invalid."""
    return load_topology(ref, overrides)


def list_topologies() -> list[tuple[str, str]]:
    """``(name, description)`` of every topology found (current directory shadows repo)."""
    out = []
    for name, path in sorted(available("topologies").items()):
        try:
            data = read_yaml(path)
            desc = data.get("description", "") if isinstance(data, Mapping) else ""
        except UserError:
            desc = "(unreadable: invalid YAML)"
        out.append((name, " ".join(str(desc).split())))
    return out
