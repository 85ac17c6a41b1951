"""The collective library between the collectives and the fabric: which algorithm and protocol a
collective runs with, and what the library adds around the flows the fabric shares.

For a collective of ``size`` bytes (nccl-tests' size) on P ranks over N servers, each candidate
(algorithm, protocol) has:

* fixed costs (:meth:`Model.fixed_cost_s`): the launch, plus per pipeline step its protocol's
  latency (``step_us`` inside a server, ``net_step_us`` for steps that cross servers; a ring
  all_reduce takes 2(P-1) steps of which 2(N-1) cross, all_gather and reduce_scatter P-1 of
  which N-1; on a ring that spans servers no step is shorter than the protocol's
  ``net_overhead_us``), NVLS's own latency, or for direct transfers one step per round of 8
  peers (an alltoall on P ranks: ceil((P-1)/8) rounds; sendrecv: one);
* wire bytes: payload / the protocol's efficiency (NVLS: the payload at its own efficiency);
* per-flow rate caps: a ring's channels (``channels``, fewer for small messages by
  ``channel_bytes``) x the protocol's ``channel_gbps``; a point-to-point transfer's channels.

The library's choice (as NCCL's tuner makes it) is the candidate with the least predicted time on
the idle cluster (:meth:`Model.predict`: fixed costs + the longest path latency + the longer of
the busiest link's wire bytes over its achieved rate and the largest flow over its cap); a
scenario may pin the algorithm and the protocol as NCCL_ALGO and NCCL_PROTO do. The fabric then
runs the chosen flows, where contention is decided. The traffic of each (collective, algorithm)
per payload byte (:class:`Traffic`) does not depend on the profile and is computed once per
cluster from the routes, so that predictions are cheap (calibration makes millions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.comm.profile import IDEAL, CommProfile
from sim.network.routing import Routes
from sim.scenario.schema import COLLECTIVES
from sim.topology.cluster import Cluster
from sim.units import gbps_to_bytes_per_s

#: collective -> its algorithms, the fluid model's default first (the scenario schema's list).
ALGORITHMS = COLLECTIVES
RINGS = ("all_reduce", "all_gather", "reduce_scatter")
#: Point-to-point peers one round of the library's kernel serves (NCCL's
#: NCCL_MAX_DEV_WORK_P2P_PER_BATCH).
P2P_PEERS_PER_ROUND = 8


@dataclass(frozen=True)
class Cost:
    """What the library hands the fabric for one collective: the choice, a fixed delay before
    the flows start (s), wire bytes per payload byte, and per-flow caps (bytes/s, one per flow
    of the pattern, ``inf``: none)."""

    algorithm: str
    protocol: str
    delay_s: float = 0.0
    inflate: float = 1.0
    flow_cap_Bps: np.ndarray | float = math.inf


def ring_steps(collective: str, ranks: int, nodes: int) -> tuple[int, int]:
    """(steps, steps that cross servers) of one ring pass of ``collective``."""
    if collective == "all_reduce":
        return 2 * (ranks - 1), 2 * (nodes - 1)
    return ranks - 1, nodes - 1


def pattern(cluster: Cluster, collective: str, algorithm: str, size: float):
    """(src, dst, payload bytes) of the flows of one collective on the cluster: a pipelined ring
    per rail (one flow per rank and ring), NVLS (each GPU's buffer through the switch: a shift
    by one of ``size``), a direct alltoall (size / P to every other rank) or sendrecv (``size``
    to the next rank)."""
    from sim.collectives.algorithms import ring_orders

    p = cluster.num_gpus
    if collective in RINGS and algorithm in ("ring", "tree"):  # a tree runs the ring's flows
        orders = ring_orders(cluster)
        steps, _ = ring_steps(collective, p, cluster.num_nodes)
        src = orders.ravel()
        dst = np.roll(orders, -1, axis=1).ravel()
        return src, dst, np.full(len(src), steps * size / p / len(orders))
    ranks = np.arange(p)
    if algorithm == "nvls" or collective == "sendrecv":
        return ranks, (ranks + 1) % p, np.full(p, float(size))
    s, d = np.nonzero(~np.eye(p, dtype=bool))
    return s, d, np.full(len(s), size / p)


@dataclass(frozen=True)
class Load:
    """One (collective, algorithm) per payload byte: ``tier_s`` seconds per byte of the busiest
    link of each tier at its full rate; the largest flow's bytes among flows inside a server
    and among flows across servers; the longest path latency (s); the rings it runs on."""

    tier_s: dict
    intra_flow: float
    net_flow: float
    latency_s: float
    rings: int


class Traffic:
    """The profile-independent part: each pattern's link loads per payload byte (cached)."""

    def __init__(self, cluster: Cluster, routes: Routes):
        self.cluster, self.routes = cluster, routes
        self._cache: dict[tuple[str, str], Load] = {}

    def load(self, collective: str, algorithm: str) -> Load:
        key = (collective, algorithm)
        if key not in self._cache:
            c = self.cluster
            src, dst, nbytes = pattern(c, collective, algorithm, 1.0)
            paths, latency = self.routes.paths(src, dst)
            links = np.bincount(paths.ravel(), weights=np.repeat(nbytes, paths.shape[1]),
                                minlength=len(c.links) + 1)[:-1]
            ratio = links / c.links.capacity_Bps
            tier_s = {str(t): float(ratio[c.links.tier == t].max())
                      for t in np.unique(c.links.tier)}
            net = c.node_of[src] != c.node_of[dst]
            self._cache[key] = Load(tier_s, float(nbytes[~net].max(initial=0.0)),
                                    float(nbytes[net].max(initial=0.0)),
                                    float(latency.max(initial=0.0)),
                                    max(len(src) // c.num_gpus, 1))
        return self._cache[key]


class Model:
    """The library's model of one cluster under one profile (see the module docstring)."""

    def __init__(self, cluster: Cluster, profile: CommProfile = IDEAL, ecmp: str = "balanced",
                 routes: Routes | None = None, traffic: Traffic | None = None):
        self.cluster, self.profile = cluster, profile
        self.traffic = traffic or Traffic(cluster, routes or Routes(cluster, ecmp))

    # -------------------------------------------------------------- candidates
    def candidates(self, collective: str, algorithm: str | None = None,
                   protocol: str | None = None) -> list[tuple[str, str]]:
        """The (algorithm, protocol) pairs the library may run ``collective`` with."""
        prof, c = self.profile, self.cluster
        algos = [algorithm] if algorithm else list(ALGORITHMS[collective])
        out = []
        for a in algos:
            if a == "nvls" and (prof.nvls is None or c.num_nodes > 1
                                or not np.any(c.links.tier == "nvlink")):
                continue
            if a == "tree" and (prof.tree is None or c.num_nodes < 2):
                continue
            if a in ("pairwise", "hierarchical") and algorithm is None:
                continue  # what a user asks for, not what the library picks
            protos = list(prof.protocols) if a in ("ring", "tree") else ["Simple"]
            out += [(a, p) for p in protos if protocol in (None, p)]
        return out

    # -------------------------------------------------------------- costs
    def fixed_cost_s(self, collective: str, algorithm: str, protocol: str,
                     crosses: bool | None = None) -> float:
        """Launch + protocol step latencies (+ NVLS latency), seconds."""
        prof, c = self.profile, self.cluster
        if collective in RINGS and algorithm == "ring":
            return self._ring_s(collective, protocol, c.num_gpus, c.num_nodes)
        if algorithm in ("nvls", "tree"):
            us = prof.launch_us
            if algorithm == "nvls":
                us += prof.nvls.latency_us
            else:  # a chain inside each server and log2(N) levels, up and down
                step, net, _ = self._latencies(protocol)
                us += 2 * ((c.num_gpus // c.num_nodes - 1) * step
                           + math.ceil(math.log2(c.num_nodes)) * net)
            return us * 1e-6
        return self._direct_s(collective, protocol, c.num_gpus,
                              c.num_nodes > 1 if crosses is None else crosses)

    def _latencies(self, protocol: str) -> tuple[float, float, float]:
        """(step, net step, net overhead) of ``protocol``, microseconds (0 if not profiled)."""
        proto = self.profile.protocols.get(protocol)
        return (proto.step_us, proto.net_step_us, proto.net_overhead_us) if proto \
            else (0.0, 0.0, 0.0)

    def _ring_s(self, collective: str, protocol: str, ranks: int, nodes: int) -> float:
        """Launch + the steps of a ring over ``ranks`` GPUs on ``nodes`` servers: the steps
        that cross servers at the network step latency, the others at the protocol's step
        latency, or its network overhead when the ring spans servers and that is longer (as
        NCCL's tuner charges inter-node rings), seconds."""
        step, net, overhead = self._latencies(protocol)
        steps, cross = ring_steps(collective, ranks, nodes)
        if nodes > 1:
            step = max(step, overhead)
        return (self.profile.launch_us + (steps - cross) * step + cross * net) * 1e-6

    def _direct_s(self, collective: str, protocol: str, ranks: int, crosses: bool) -> float:
        """Launch + one step latency per round of point-to-point peers (an alltoall serves
        its ranks - 1 peers :data:`P2P_PEERS_PER_ROUND` at a time; sendrecv one): across
        servers the profile's ``p2p.round_us`` (else the network step), seconds."""
        step, net, _ = self._latencies(protocol)
        p2p = self.profile.p2p
        if p2p is not None and p2p.round_us is not None:
            net = p2p.round_us
        rounds = math.ceil((ranks - 1) / P2P_PEERS_PER_ROUND) if collective == "all_to_all" \
            else 1
        return (self.profile.launch_us + max(rounds, 1) * (net if crosses else step)) * 1e-6

    def inflate(self, collective: str, algorithm: str, protocol: str) -> float:
        """Wire bytes per payload byte."""
        prof = self.profile
        if collective in RINGS and algorithm == "ring":
            return 1.0 / prof.protocols[protocol].efficiency
        if algorithm == "tree":
            return 1.0 / (prof.protocols[protocol].efficiency * prof.tree.efficiency)
        if algorithm == "nvls":
            return prof.link_efficiency.get("nvlink", 1.0) / prof.nvls.efficiency
        return 1.0

    def channels(self, size):
        """Channels a collective of ``size`` bytes (scalar or array) runs on."""
        prof = self.profile
        if prof.channel_bytes is None:
            return np.full(np.shape(size), prof.channels) if np.ndim(size) else prof.channels
        n = np.clip(np.ceil(np.asarray(size, float) / prof.channel_bytes), 1, prof.channels)
        return n if np.ndim(size) else int(n)

    def ring_cap_Bps(self, protocol: str, size, rings: int):
        """Per-flow cap of a ring's flows: its channels x the protocol's rate per channel. A
        collective's channels are shared by its rings (one per rail): inside one server
        ``channels``, across servers ``net_channels`` (NCCL runs a fixed number of channels
        whatever the NICs, so with fewer rails each ring has more); small messages fill fewer
        (``channel_bytes``)."""
        prof = self.profile
        rate = prof.protocols[protocol].channel_gbps
        if rate is None:
            return np.inf
        if self.cluster.num_nodes > 1 and prof.net_channels is not None:
            per_ring = max(prof.net_channels / rings, 1.0)
            if prof.channel_bytes:
                need = np.asarray(size, float) / prof.channel_bytes / rings
                per_ring = np.clip(np.ceil(need), 1, per_ring)
            return per_ring * gbps_to_bytes_per_s(rate)
        return self.channels(size) * gbps_to_bytes_per_s(rate) / rings

    def net_peer_channels(self, ranks: int | None = None) -> int:
        """Channels per peer across the network on a communicator of ``ranks`` GPUs (the
        cluster's by default): the profile's ``net_channels``, halved while they times the
        rounds of :data:`P2P_PEERS_PER_ROUND` peers exceed the library's point-to-point
        channels (NCCL's ncclTopoComputeP2pChannels on more than one server)."""
        p2p = self.profile.p2p
        rounds = math.ceil((ranks or self.cluster.num_gpus) / P2P_PEERS_PER_ROUND)
        n = p2p.net_channels
        while n > 1 and n * rounds > p2p.channels:
            n //= 2
        return n

    def p2p_channels(self, nbytes, ranks: int | None = None) -> np.ndarray:
        """Channels each point-to-point transfer of ``nbytes`` (array) runs on, on a
        communicator of ``ranks`` GPUs (the cluster's by default), as NCCL's enqueue splits
        them: the per-peer channels halved while they times the ranks exceed the library's
        point-to-point channels, fewer if the transfer has fewer minimal parts, then doubled
        while a part is larger than its most (up to the per-peer channels)."""
        p2p, c = self.profile.p2p, self.cluster
        ranks = ranks or c.num_gpus
        multi = c.num_nodes > 1
        per_peer = self.net_peer_channels(ranks) if multi else min(p2p.peer_channels,
                                                                    p2p.channels)
        low = per_peer
        while low > 1 and low * ranks > p2p.channels:
            low //= 2
        chunk = p2p.net_chunk_bytes if multi else p2p.chunk_bytes
        min_part, max_part = (chunk / 2, chunk) if multi else (chunk / 8, chunk * 32)
        nbytes = np.asarray(nbytes, float)
        n = np.minimum(low, np.maximum(np.ceil(nbytes / min_part), 1.0))
        while True:
            grow = (np.maximum(min_part, nbytes / n) > max_part) & (n <= per_peer / 2)
            if not grow.any():
                return n
            n = np.where(grow, 2 * n, n)

    def p2p_cap_Bps(self, nbytes, crosses, ranks: int | None = None):
        """Per-flow caps of point-to-point transfers of ``nbytes`` on a communicator of
        ``ranks`` GPUs: their channels (:meth:`p2p_channels`) x the channel rate inside a
        server or across the network (bytes/s; inf without p2p)."""
        p2p = self.profile.p2p
        nbytes = np.asarray(nbytes, float)
        if p2p is None:
            return np.full(nbytes.shape, np.inf)
        rate = np.where(crosses, gbps_to_bytes_per_s(p2p.net_channel_gbps),
                        gbps_to_bytes_per_s(p2p.channel_gbps))
        return self.p2p_channels(nbytes, ranks) * rate

    def cost(self, collective: str, algorithm: str, protocol: str, size: float,
             src=None, dst=None, nbytes=None) -> Cost:
        """The :class:`Cost` of one (algorithm, protocol) choice for ``size`` bytes; the caps
        are per flow of ``pattern`` (or of the flows given)."""
        c = self.cluster
        if src is None:
            src, dst, nbytes = pattern(c, collective, algorithm, size)
        if collective in RINGS and algorithm in ("ring", "tree"):
            rings = max(len(src) // c.num_gpus, 1)
            cap = np.full(len(src), self.ring_cap_Bps(protocol, size, rings))
        elif algorithm == "nvls":
            cap = np.full(len(src), np.inf)
        else:
            cap = self.p2p_cap_Bps(nbytes, c.node_of[src] != c.node_of[dst])
        return Cost(algorithm, protocol, self.fixed_cost_s(collective, algorithm, protocol),
                    self.inflate(collective, algorithm, protocol), cap)

    # -------------------------------------------------------------- groups (a training step)
    def group_protocol(self, size: float) -> str:
        """The protocol of a collective inside a training step: the profile's thresholds by
        size, else Simple (the library's bulk protocol)."""
        return self.protocol_for(size) or ("Simple" if "Simple" in self.profile.protocols
                                           else next(iter(self.profile.protocols)))

    def group_delay_s(self, collective: str, protocol: str, ranks: int, nodes: int) -> float:
        """Launch + step latencies of a ring (all_reduce, all_gather, reduce_scatter) over a
        group of ``ranks`` GPUs on ``nodes`` servers, or of one direct exchange (all_to_all)
        among ``ranks`` GPUs that crosses servers when ``nodes`` > 1; seconds."""
        if collective in RINGS:
            return self._ring_s(collective, protocol, ranks, nodes)
        return self._direct_s(collective, protocol, ranks, nodes > 1)

    # -------------------------------------------------------------- prediction
    def predict(self, collective: str, algorithm: str, protocol: str, size):
        """Seconds of the collective alone on the cluster (no other traffic); ``size`` a scalar
        or an array of sizes."""
        load = self.traffic.load(collective, algorithm)
        size = np.asarray(size, float)
        eff = self.profile.link_efficiency
        per_byte = max(s / eff.get(t, 1.0) for t, s in load.tier_s.items())
        inflate = self.inflate(collective, algorithm, protocol)
        wire = size * inflate
        links = wire * per_byte
        if collective in RINGS and algorithm in ("ring", "tree"):
            flows = wire * load.intra_flow / self.ring_cap_Bps(protocol, size, load.rings)
            if load.net_flow:
                flows = np.maximum(flows, wire * load.net_flow
                                   / self.ring_cap_Bps(protocol, size, load.rings))
        elif algorithm == "nvls":
            flows = 0.0
        else:
            flows = np.maximum(
                wire * load.intra_flow / self.p2p_cap_Bps(size * load.intra_flow, False),
                wire * load.net_flow / self.p2p_cap_Bps(size * load.net_flow, True))
        t = self.fixed_cost_s(collective, algorithm, protocol) + load.latency_s \
            + np.maximum(links, flows)
        return float(t) if np.ndim(t) == 0 else t

    def choose(self, collective: str, size: float, algorithm: str | None = None,
               protocol: str | None = None) -> tuple[str, str]:
        """The (algorithm, protocol) the library runs ``size`` bytes with: the least predicted
        time among the candidates (``algorithm`` / ``protocol`` pin them)."""
        options = self.candidates(collective, algorithm, protocol)
        if not options:
            offered = ", ".join(f"{a}/{p}" for a, p in self.candidates(collective)) or "none"
            raise ValueError(f"the profile {self.profile.name!r} offers no "
                             f"{algorithm or 'algorithm'}/{protocol or 'protocol'} for it on "
                             f"this cluster (it offers {offered})")
        pool = self._by_threshold(options, size, protocol)
        if len(pool) == 1:
            return pool[0]
        return min(pool, key=lambda ap: self.predict(collective, *ap, size))

    def _by_threshold(self, options: list[tuple[str, str]], size: float,
                      protocol: str | None) -> list[tuple[str, str]]:
        """The candidates the profile's protocol thresholds leave for ``size``: a ring or a
        tree runs the protocol its thresholds pick, while algorithms with one protocol of their
        own (NVLS, direct transfers: Simple) compete by time at every size, as NCCL's tuner
        weighs every (algorithm, protocol) pair it supports."""
        want = protocol or self.protocol_for(size)
        if want is None:
            return options
        pool = [(a, p) for a, p in options if p == want or a not in ("ring", "tree")]
        return pool if any(p == want for _, p in pool) else options

    def protocol_for(self, size) -> str | None:
        """The protocol the profile's size thresholds pick (None: no thresholds)."""
        limits = self.profile.protocol_max_bytes
        if not limits:
            return None
        for proto in ("LL", "LL128"):
            if proto in limits and proto in self.profile.protocols and size <= limits[proto]:
                return proto
        return "Simple"

    def best_time(self, collective: str, sizes, algorithm: str | None = None,
                  protocol: str | None = None):
        """The predicted time of the library's choice (:meth:`choose`), per size (array)."""
        sizes = np.asarray(sizes, float)
        options = self.candidates(collective, algorithm, protocol)
        times = {ap: self.predict(collective, *ap, sizes) for ap in options}
        out = np.empty(len(sizes))
        for i, s in enumerate(sizes):
            out[i] = min(times[ap][i] for ap in self._by_threshold(options, s, protocol))
        return out
