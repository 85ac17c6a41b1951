"""Pure topology builders: each call returns a fresh ``nx.DiGraph`` following the conventions of
:mod:`sim.topology.cluster` (node ``kind``; GPU ``rank``/``node``/``local_rank``; edge
``bandwidth_Bps``/``latency_s``/``tier``). Units are SI: bytes/s per direction and seconds.

Names: GPU ``n<server>.g<local>``, intra-node switch ``n<server>.nvsw`` / ``n<server>.pcie``,
NIC ``n<server>.nic<k>``, leaf ``leaf.<i>`` or ``leaf.r<rail>.<i>``, spine ``spine.<i>`` (2 tiers)
or ``spine.p<pod>.<i>`` (3 tiers), core ``core.<i>``. Switches also carry a ``role`` attribute
(``nvswitch``, ``pcie``, ``leaf``, ``spine``, ``core``); leaves carry ``rail`` (or None) and
``pod``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import networkx as nx

from sim.topology.cluster import GPU, NIC, SWITCH

ServerBuilder = Callable[[int], nx.DiGraph]
"""Builds server ``s``: a graph whose GPUs are ``n<s>.g<i>`` with rank ``s * G + i``."""


def gpu_name(node: int, local_rank: int) -> str:
    """Canonical GPU node name, e.g. ``n0.g3``."""
    return f"n{node}.g{local_rank}"


def add_duplex(
    g: nx.DiGraph, a: str, b: str, bandwidth_Bps: float, latency_s: float, tier: str
) -> None:
    """Add a full-duplex link ``a <-> b`` to ``g``: two directed edges of ``bandwidth_Bps``
    (bytes/s, each direction) and ``latency_s`` (s)."""
    add_simplex(g, a, b, bandwidth_Bps, latency_s, tier)
    add_simplex(g, b, a, bandwidth_Bps, latency_s, tier)


def add_simplex(
    g: nx.DiGraph, a: str, b: str, bandwidth_Bps: float, latency_s: float, tier: str
) -> None:
    """Add one directed edge ``a -> b`` (bytes/s, s)."""
    if not (bandwidth_Bps > 0 and math.isfinite(bandwidth_Bps)):
        raise ValueError(f"link {a}->{b}: bandwidth must be a finite number > 0")
    if not (latency_s >= 0 and math.isfinite(latency_s)):
        raise ValueError(f"link {a}->{b}: latency must be a finite number >= 0")
    g.add_edge(a, b, bandwidth_Bps=float(bandwidth_Bps), latency_s=float(latency_s), tier=tier)


def _positive(**counts: int) -> None:
    for key, value in counts.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


def _add_gpus(g: nx.DiGraph, node: int, gpus: int) -> list[str]:
    names = [gpu_name(node, i) for i in range(gpus)]
    for i, name in enumerate(names):
        g.add_node(name, kind=GPU, rank=node * gpus + i, node=node, local_rank=i)
    return names


# --------------------------------------------------------------------------- intra-node fabrics


def nvswitch(gpus: int = 8, *, bandwidth_Bps: float, latency_s: float, node: int = 0) -> nx.DiGraph:
    """One server whose GPUs hang off one non-blocking NVSwitch-like switch.

    ::

        n0.g0  n0.g1  ...  n0.g7
           \\     |          /        one link per GPU: bandwidth_Bps each way (bytes/s),
            +-- n0.nvsw ---+         latency_s per hop (s); GPU->GPU = 2 hops

    ``bandwidth_Bps`` is the per-GPU NVLink bandwidth per direction (H100: 450e9).
    """
    return _switched_server(gpus, bandwidth_Bps, latency_s, node, "nvsw", "nvswitch", "nvlink")


def _switched_server(
    gpus: int, bandwidth_Bps: float, latency_s: float, node: int, suffix: str, role: str,
    tier: str,
) -> nx.DiGraph:
    """GPUs of one server, each joined to one switch ``n<node>.<suffix>`` by a duplex link."""
    _positive(gpus=gpus)
    g = nx.DiGraph()
    sw = f"n{node}.{suffix}"
    g.add_node(sw, kind=SWITCH, role=role, node=node)
    for name in _add_gpus(g, node, gpus):
        add_duplex(g, name, sw, bandwidth_Bps, latency_s, tier)
    return g


def single_node(gpus: int = 8, *, bandwidth_Bps: float, latency_s: float) -> nx.DiGraph:
    """G GPUs on one NVSwitch-like switch (server 0); see :func:`nvswitch`. Bytes/s, s."""
    return nvswitch(gpus, bandwidth_Bps=bandwidth_Bps, latency_s=latency_s, node=0)


def hccs_groups(
    gpus: int = 8,
    *,
    group_size: int = 4,
    bandwidth_Bps: float,
    latency_s: float,
    node: int = 0,
) -> nx.DiGraph:
    """An Ascend 910A server: NPUs in groups of ``group_size``, full mesh of HCCS links inside
    each group, **nothing** directly between groups.

    ::

        group 0                    group 1
        g0 ---- g1                 g4 ---- g5
        | \\  / |                  | \\  / |       each line: one HCCS link,
        |  \\/  |                  |  \\/  |       bandwidth_Bps each way (bytes/s),
        |  /\\  |                  |  /\\  |       latency_s (s)
        g3 ---- g2                 g7 ---- g6

    Cross-group traffic has no path inside the server: it must leave through the NICs and the
    network (in a fat tree, NPU -> leaf -> NPU). On its own this graph is therefore disconnected
    when there is more than one group. ``bandwidth_Bps`` is per NPU-NPU link (910A: one HCCS
    port, 30e9 [uncertain]).
    """
    _positive(gpus=gpus, group_size=group_size)
    if gpus % group_size:
        raise ValueError(f"gpus ({gpus}) must be a multiple of group_size ({group_size})")
    g = nx.DiGraph()
    names = _add_gpus(g, node, gpus)
    for start in range(0, gpus, group_size):
        group = names[start : start + group_size]
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                add_duplex(g, a, b, bandwidth_Bps, latency_s, "hccs")
    return g


def pcie(gpus: int = 8, *, bandwidth_Bps: float, latency_s: float, node: int = 0) -> nx.DiGraph:
    """GPUs behind one PCIe switch.

    ::

        n0.g0  n0.g1  ...  n0.gG-1
           \\     |          /        one PCIe x16 link per GPU: bandwidth_Bps each way
            +-- n0.pcie ---+         (bytes/s, Gen4 ~32e9), latency_s per hop (s)
    """
    return _switched_server(gpus, bandwidth_Bps, latency_s, node, "pcie", "pcie", "pcie")


# --------------------------------------------------------------------------- fat tree


def fat_tree(
    nodes: int,
    gpus_per_node: int,
    server: ServerBuilder,
    *,
    nics_per_node: int,
    nic_bandwidth_Bps: float,
    nic_latency_s: float,
    hosts_per_leaf: int,
    rail_optimized: bool = True,
    tiers: int = 2,
    uplinks_per_leaf: int | None = None,
    oversubscription: float | None = None,
    uplink_bandwidth_Bps: float | None = None,
    leaf_spine_latency_s: float = 0.5e-6,
    pcie_bandwidth_Bps: float | None = None,
    pcie_latency_s: float = 1e-6,
    leaves_per_pod: int | None = None,
    cores: int | None = None,
    core_oversubscription: float = 1.0,
    core_bandwidth_Bps: float | None = None,
    spine_core_latency_s: float = 0.5e-6,
) -> nx.DiGraph:
    """``nodes`` servers of ``gpus_per_node`` GPUs (built by ``server(s)``) on a 2- or 3-tier
    fat tree. Bandwidths in bytes/s per direction, latencies in s.

    ::

        tiers=3 only:      core.0 ........ core.C-1          every spine <-> every core
                            /    \\            /   \\
        spines:       spine.0 .. spine.U-1  (per pod)        every leaf <-> every spine
                        |   \\    /   |                        (of its pod when tiers=3)
        leaves:      leaf.r0.0  ...  leaf.r7.0               hosts_per_leaf NIC ports each
                      |   |            |   |
        NICs:        n0.g0 n1.g0 ..   n0.g7 n1.g7            K == G: GPU -> leaf directly
                     (or n<s>.nic<k> joined by PCIe to GPUs g with g*K//G == k when K < G)
        servers:     [ intra-node fabric from server(s) ]

    NIC port ``k`` of server ``s``: ``rail_optimized`` puts it on a rail-``k`` leaf
    (``leaf.r<k>.<s // hosts_per_leaf>``); otherwise ports fill leaves in order
    (``leaf.<(s*K + k) // hosts_per_leaf>``). Leaves are added as needed for ``nodes``.

    Uplinks: every leaf has ``uplinks_per_leaf`` (U) links, one to each of U spines; U defaults
    to ``ceil(hosts_per_leaf / oversubscription)`` (uplink ports at NIC speed on a full leaf).
    Unless ``uplink_bandwidth_Bps`` is given, a leaf with ``n`` NIC ports attached gets
    ``n * nic_bandwidth_Bps / (oversubscription * U)`` per uplink, so that its total up = total
    attached down / oversubscription (1 = non-blocking) whatever the cluster size.

    ``tiers=3``: leaves are grouped in order (rail-major within a block of servers) into pods of
    ``leaves_per_pod`` (default U); each pod has its own U spines; each spine links to every one
    of ``cores`` core switches (default U) with ``core_bandwidth_Bps`` or, by default, a
    bandwidth making spine up = spine down / ``core_oversubscription``.

    With K < G, two GPUs sharing a NIC also have a 2-hop path through it; give PCIe a larger
    latency than the intra-node fabric so latency-weighted shortest paths stay on NVLink.
    """
    _positive(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        nics_per_node=nics_per_node,
        hosts_per_leaf=hosts_per_leaf,
    )
    if nics_per_node > gpus_per_node:
        raise ValueError(f"nics_per_node ({nics_per_node}) must be <= gpus_per_node")
    if tiers not in (2, 3):
        raise ValueError(f"tiers must be 2 or 3, got {tiers}")
    if oversubscription is not None and uplink_bandwidth_Bps is not None:
        raise ValueError("give either oversubscription or uplink_bandwidth_Bps, not both")
    ratio = 1.0 if oversubscription is None else float(oversubscription)
    if ratio <= 0 or core_oversubscription <= 0:
        raise ValueError("oversubscription ratios must be > 0")
    if uplinks_per_leaf is None:
        uplinks_per_leaf = max(1, math.ceil(hosts_per_leaf / ratio - 1e-9))
    _positive(uplinks_per_leaf=uplinks_per_leaf)
    if nics_per_node < gpus_per_node and pcie_bandwidth_Bps is None:
        raise ValueError("pcie_bandwidth_Bps is required when nics_per_node < gpus_per_node")

    g = nx.DiGraph()
    for s in range(nodes):
        part = server(s)
        names = {gpu_name(s, i) for i in range(gpus_per_node)}
        if {n for n, d in part.nodes(data=True) if d.get("kind") == GPU} != names:
            raise ValueError(f"server({s}) must return exactly the GPUs n{s}.g0..")
        g.update(part)

    attached: dict[int, int] = {}  # leaf ordinal -> NIC ports attached
    leaf_name: dict[int, str] = {}
    for s in range(nodes):
        for k in range(nics_per_node):
            if rail_optimized:
                block = s // hosts_per_leaf
                ordinal, leaf, rail = block * nics_per_node + k, f"leaf.r{k}.{block}", k
            else:
                ordinal = (s * nics_per_node + k) // hosts_per_leaf
                leaf, rail = f"leaf.{ordinal}", None
            if ordinal not in leaf_name:
                g.add_node(leaf, kind=SWITCH, role="leaf", rail=rail, pod=None)
                leaf_name[ordinal], attached[ordinal] = leaf, 0
            attached[ordinal] += 1
            port = gpu_name(s, k)
            if nics_per_node < gpus_per_node:
                port = f"n{s}.nic{k}"
                g.add_node(port, kind=NIC, node=s)
                for i in range(gpus_per_node):
                    if i * nics_per_node // gpus_per_node == k:
                        add_duplex(
                            g, gpu_name(s, i), port, pcie_bandwidth_Bps, pcie_latency_s, "pcie"
                        )
            add_duplex(g, port, leaf, nic_bandwidth_Bps, nic_latency_s, "nic")

    def up_bw(ordinal: int) -> float:
        if uplink_bandwidth_Bps is not None:
            return uplink_bandwidth_Bps
        return attached[ordinal] * nic_bandwidth_Bps / (ratio * uplinks_per_leaf)

    ordinals = sorted(leaf_name)
    if tiers == 2:
        pods = [ordinals]
    else:
        per_pod = uplinks_per_leaf if leaves_per_pod is None else leaves_per_pod
        _positive(leaves_per_pod=per_pod)
        pods = [ordinals[i : i + per_pod] for i in range(0, len(ordinals), per_pod)]
    n_cores = uplinks_per_leaf if cores is None else cores
    _positive(cores=n_cores)
    core_names = [f"core.{c}" for c in range(n_cores)] if tiers == 3 else []
    for c in core_names:
        g.add_node(c, kind=SWITCH, role="core", pod=None)
    for p, members in enumerate(pods):
        prefix = "spine." if tiers == 2 else f"spine.p{p}."
        spines = [f"{prefix}{j}" for j in range(uplinks_per_leaf)]
        for sp in spines:
            g.add_node(sp, kind=SWITCH, role="spine", pod=None if tiers == 2 else p)
        for o in members:
            if tiers == 3:
                g.nodes[leaf_name[o]]["pod"] = p
            for sp in spines:
                add_duplex(g, leaf_name[o], sp, up_bw(o), leaf_spine_latency_s, "leaf-spine")
        if not core_names:
            continue
        down = sum(up_bw(o) for o in members)  # into one spine from its pod's leaves
        core_bw = (
            down / (core_oversubscription * n_cores)
            if core_bandwidth_Bps is None
            else core_bandwidth_Bps
        )
        for sp in spines:
            for c in core_names:
                add_duplex(g, sp, c, core_bw, spine_core_latency_s, "spine-core")
    return g


# --------------------------------------------------------------------------- explicit


class Link(NamedTuple):
    """One link of an explicit topology: bytes/s per direction, seconds."""

    a: str
    b: str
    bandwidth_Bps: float
    latency_s: float
    tier: str = "link"
    duplex: bool = True


def explicit(
    gpus: Sequence[tuple[str, int, int]],
    links: Sequence[Link],
    switches: Sequence[str] = (),
    nics: Sequence[str] = (),
) -> nx.DiGraph:
    """A topology listed by hand. ``gpus`` are ``(name, server, local_rank)`` in rank order;
    ``switches`` and ``nics`` are names of forwarding nodes; ``links`` join any two declared
    names (``duplex=False`` adds only ``a -> b``). Bandwidth bytes/s per direction, latency s.

    ::

        g0 ===== g1        e.g. DGX-1: NVLink between some GPU pairs (===),
         |  pcie0 |        PCIe switches joining the rest (|), all declared here
        g2 ===== g3

    Raises ``ValueError`` on a repeated name, a link to an undeclared node, a repeated link.
    """
    g = nx.DiGraph()
    declared: set[str] = set()

    def declare(name: str) -> None:
        if name in declared:
            raise ValueError(f"node {name!r} is declared twice")
        declared.add(name)

    for rank, (name, node, local) in enumerate(gpus):
        declare(name)
        g.add_node(name, kind=GPU, rank=rank, node=int(node), local_rank=int(local))
    for kind, names in ((SWITCH, switches), (NIC, nics)):
        for name in names:
            declare(name)
            g.add_node(name, kind=kind)
    for link in links:
        for end in (link.a, link.b):
            if end not in declared:
                raise ValueError(f"link {link.a}-{link.b}: node {end!r} is not declared")
        pairs = [(link.a, link.b), (link.b, link.a)] if link.duplex else [(link.a, link.b)]
        for u, v in pairs:
            if g.has_edge(u, v):
                raise ValueError(f"link {u}->{v} is given twice")
            add_simplex(g, u, v, link.bandwidth_Bps, link.latency_s, link.tier)
    return g
