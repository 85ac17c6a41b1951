"""The flow-level fabric: one SimPy process owns every flow in flight.

A flow moves ``bytes`` from one GPU rank to another along its route. It first waits its start-up
latency (sum of link latencies on the path plus the per-message overhead), then transmits at its
max-min fair rate, which changes whenever the set of transmitting flows changes. Collectives hand
the fabric whole batches (``transfer``) and get one event back that fires when the last flow of
the batch has arrived.

Exactness and speed (``rate_tolerance``, written ``tol`` below). With ``tol = 0`` rates are
re-solved at every instant a flow starts or ends: the exact fluid max-min model, which costs one
solve per distinct completion time (about one per flow under skewed alltoallv). Arrivals
re-solve at once (but for the staggered messages of the issue gap, below). Departures re-solve
lazily: between two solves every flow keeps its rate, so each
completion time is exact for the rates in force, and departed flows leave their bandwidth idle.
A re-solve is due once (a) the bandwidth freed on some link exceeds ``tol`` of its capacity and
(b) ``tol`` x the horizon has passed since the last solve (horizon: the age of the oldest flow in
flight, or a lower bound on the time to drain what is in flight, whichever is larger). Solves
freeze together links whose fair shares are within a factor ``1 + min(10 tol, 0.1)``
(``max_min_rates``), which halves the filling rounds of skewed traffic; the capacity this
leaves unused lasts only until the next solve and barely moves the error. The allocation is
always feasible (no link above 100 %) and flows are only ever late, never early (but see the
issue gap's waiting messages, below): measured
against the exact model, collective times come out late by 1-2 x ``tol``
(``benchmarks/bench_fabric.py``); the default 0.003 gives about 0.3-0.6 %.
Flows that finish at the same instant finish as one batch.

Per-message issue gap (``message_gap_s``, LogGP's g; default 0 = off). A sender injects the
messages of one ``transfer`` batch one after another: the i-th network flow of a source rank in
that batch (i = 0, 1, ... in the order submitted) starts i x g later than its start-up latency
alone would allow. Many small messages (flat All-to-All) pay (n - 1) g per sender, a few large
ones (two-stage All-to-All) pay little. Slots are counted per batch (concurrent batches of one
rank do not delay each other) and only over flows that carry bytes: zero-byte flows take no slot
and complete at their plain start-up time, as they do without a gap. A sender's messages after
its first may start up to ``tol`` x the batch's drain bound late (its bytes on its busiest link,
or on its most capped flow, at full rate): they wait for the next solve, due at the latest then,
so staggered starts share solves instead of one each; with ``tol = 0`` every message starts on
time. A waiting message is late, and the flows it would have slowed gain a little meanwhile:
skewed All-to-Alls with a 1 us gap stay within 0.6 % of exact, uniform ones within 0.25 %
(``benchmarks/bench_fabric.py --gap-us 1``); on ``smile-p4d``, when the rule came in, the
re-solves dropped from 36k to 11k and the step time moved by +0.03 % (+0.18 % from exact,
+0.15 % before).

Per-flow caps and fixed costs (``transfer(..., rate_cap=, delay_s=)``). A flow may carry a rate
cap: the most it can take whatever the links leave (a sender limited by its channels or copy
engines), solved as a private link of that capacity on its path, so the others share what it
leaves (``max_min_rates``). ``delay_s`` is a software cost (a collective's launch and protocol
steps) added to the flows' start-up latency. Both are what the communication model
(``sim.comm``) hands the fabric; neither changes how links are shared.

Receiver incast (``incast_penalty``, default 0 = off). A phenomenological goodput model of
many-to-one congestion (PFC pauses, drops and retransmissions), not a packet-level one: a link
of tier ``"nic"`` whose far end is not a switch (the last hop into a host: a GPU or a NIC node)
is incast-prone, and when n flows are transmitting across it its usable capacity is
``capacity / (1 + incast_penalty * max(0, n - incast_threshold_flows))``. Every solve recomputes
these effective capacities from the current flow counts and hands them to the max-min solve, so
the rates stay feasible against them (and hence never exceed the raw capacity); a departure
only raises them, so rates held between lazy re-solves stay feasible too. The lazy rule measures
freed bandwidth against the effective capacities of the last solve; the capacity a link regains
as its flows leave is picked up at the next solve (counting it too changed no re-solve in
skewed All-to-Alls on 32-64 GPUs; lazy times stayed within 2 x ``tol`` of exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from sim.network import bookkeeping as bk
from sim.network.routing import Routes
from sim.topology.cluster import SWITCH, Cluster

_FILL_FACTOR = 10.0  # solves freeze links within 1 + min(10 tol, 0.1) of the local minimum share


@dataclass(frozen=True)
class FabricOptions:
    """Fabric knobs, SI units. ``rate_tolerance`` in [0, 0.5]; 0 is exact (see module doc).

    ``message_gap_s`` (>= 0) and ``incast_penalty`` (>= 0, with ``incast_threshold_flows`` >= 1)
    are the issue gap and the receiver incast model of the module doc; both default to off.
    """

    message_overhead_s: float = 0.0
    ecmp: str = "balanced"
    rate_tolerance: float = 3e-3
    message_gap_s: float = 0.0
    incast_threshold_flows: int = 8
    incast_penalty: float = 0.0
    link_efficiency: tuple[tuple[str, float], ...] = ()
    """(tier, share): links of that tier carry at most share x their rate (a communication
    profile's achieved link rates); tiers not listed carry their full rate."""

    @classmethod
    def from_settings(cls, s, profile=None) -> FabricOptions:
        """From a scenario's ``fabric`` section (file units: microseconds) and, when given, a
        communication profile's link efficiencies."""
        eff = tuple(sorted(profile.link_efficiency.items())) if profile is not None else ()
        return cls(message_overhead_s=s.message_overhead_us * 1e-6, ecmp=s.ecmp,
                   rate_tolerance=s.rate_tolerance, message_gap_s=s.message_gap_us * 1e-6,
                   incast_threshold_flows=s.incast_threshold_flows,
                   incast_penalty=s.incast_penalty, link_efficiency=eff)


@dataclass
class Transfer:
    """What ``Fabric.transfer`` delivers: per-flow finish times in s (same order as submitted)."""

    start_s: float
    finish_s: np.ndarray
    nbytes: np.ndarray

    @property
    def end_s(self) -> float:
        return float(self.finish_s.max()) if len(self.finish_s) else self.start_s

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class FabricStats:
    """Counters of the work the fabric did; ``link_bytes`` (L,) bytes carried per link."""

    flows: int = 0
    recomputes: int = 0
    filling_rounds: int = 0
    peak_active_flows: int = 0
    link_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class _Batch:
    event: simpy.Event
    start_s: float
    finish_s: np.ndarray
    nbytes: np.ndarray
    left: int


class Fabric:
    """Flow-level network of a cluster inside a SimPy environment."""

    def __init__(
        self,
        env: simpy.Environment,
        cluster: Cluster,
        options: FabricOptions | None = None,
        routes: Routes | None = None,
    ):
        self.env = env
        self.cluster = cluster
        self.options = options or FabricOptions()
        opt = self.options
        if not 0.0 <= opt.rate_tolerance <= 0.5:
            raise ValueError("rate_tolerance must be within [0, 0.5]")
        if not opt.message_gap_s >= 0.0:
            raise ValueError("message_gap_s must be >= 0")
        if not opt.incast_penalty >= 0.0:
            raise ValueError("incast_penalty must be >= 0")
        if int(opt.incast_threshold_flows) != opt.incast_threshold_flows \
                or opt.incast_threshold_flows < 1:
            raise ValueError("incast_threshold_flows must be an integer >= 1")
        self.routes = routes or Routes(cluster, opt.ecmp)
        links = cluster.links
        share = dict(opt.link_efficiency)
        if any(not 0 < v <= 1 for v in share.values()):
            raise ValueError("link efficiencies must be in (0, 1]")
        cap = links.capacity_Bps * np.array([share.get(str(t), 1.0) for t in links.tier]) \
            if share else links.capacity_Bps
        self.capacity = np.append(cap, np.inf)
        n_links = len(cap)
        # incast-prone links: tier "nic" into a host (a GPU or a NIC node), not into a switch
        kind = np.array([cluster.graph.nodes[n].get("kind") for n in cluster.node_names],
                        dtype=object)
        self.incast_prone = np.asarray((links.tier == "nic") & (kind[links.dst] != SWITCH),
                                       dtype=bool)
        self._incast = np.flatnonzero(self.incast_prone)
        self._slack = 1.0 + min(_FILL_FACTOR * opt.rate_tolerance, 0.1)  # max_min_rates' 1 + t
        self._cap_solved = self.capacity.copy()  # the capacities of the last solve
        self.stats = FabricStats(link_bytes=np.zeros(n_links))
        self._batches: dict[int, _Batch] = {}
        self._next_batch = 0
        # flow rows (sim.network.bookkeeping): transmitting ("act": paths, remaining bytes,
        # rate, projected finish, rate cap, batch, index in batch) and in start-up ("pend":
        # paths, start time, latest start, bytes, rate cap, batch, index); completions in "out"
        self._cnt = np.zeros(2, dtype=np.int64)  # active, pending
        self._sc = np.array([0.0, 0.0, 0.0, np.inf])  # solved_at, advanced_at, drain, due_at
        self._stat = np.zeros(3, dtype=np.int64)
        self._freed_since_solve = np.zeros(len(self.capacity))  # bytes/s idle since the solve
        self._rows = 0
        self._act = self._pend = self._out = ()
        self._resize(64, 1)
        self._wake = env.event()
        self._process = env.process(self._run())

    # ------------------------------------------------------------------ public
    def transfer(self, src, dst, nbytes, rate_cap=None, delay_s: float = 0.0) -> simpy.Event:
        """Start flows ``src[i] -> dst[i]`` of ``nbytes[i]`` bytes; the event's value is a Transfer.

        ``rate_cap`` (bytes/s, a scalar or one per flow; None or ``inf``: none) is the most a flow
        may take whatever the links leave it (a sender limited by its channels or copy engines);
        ``delay_s`` is a fixed software cost (launch, protocol steps) added to every flow's
        start-up latency. Flows with ``src == dst`` are local copies and finish at once.
        """
        src = np.asarray(src, dtype=np.int64).ravel()
        dst = np.asarray(dst, dtype=np.int64).ravel()
        nbytes = np.asarray(nbytes, dtype=float).ravel()
        if not (len(src) == len(dst) == len(nbytes)):
            raise ValueError("src, dst and nbytes must have the same length")
        if np.any(nbytes < 0):
            raise ValueError("flow sizes must be >= 0 bytes")
        cap = np.broadcast_to(np.inf if rate_cap is None else np.asarray(rate_cap, float),
                              src.shape)
        if np.any(~(cap > 0)):
            raise ValueError("rate caps must be > 0 bytes/s")
        if not delay_s >= 0:
            raise ValueError("delay_s must be >= 0")
        now = self.env.now
        event = self.env.event()
        bid = self._next_batch
        self._next_batch += 1
        finish = np.full(len(src), float(now))
        net = np.flatnonzero(src != dst)
        batch = _Batch(event, now, finish, nbytes, len(net))
        if not len(net):
            event.succeed(Transfer(now, finish, nbytes))
            return event
        self._batches[bid] = batch
        paths, latency = self.routes.paths(src[net], dst[net])
        self.stats.flows += len(net)
        link_bytes = np.bincount(paths.ravel(), weights=np.repeat(nbytes[net], paths.shape[1]),
                                 minlength=len(self.capacity))
        self.stats.link_bytes += link_bytes[:-1]
        start = now + latency + self.options.message_overhead_s + delay_s
        wait_s = 0.0
        if self.options.message_gap_s > 0.0:
            slots = _issue_slots(src[net], nbytes[net] > 0)
            start = start + self.options.message_gap_s * slots
            # a sender's later messages may wait for a solve (module doc): up to tol x a lower
            # bound on the batch's duration (its busiest link, or most capped flow, at full rate)
            drain_s = max(float((link_bytes / self.capacity).max()),
                          float((nbytes[net] / cap[net]).max()))
            wait_s = np.where(slots > 0, self.options.rate_tolerance * drain_s, 0.0)
        n_a, n_p = (int(x) for x in self._cnt)
        self._resize(n_a + n_p + len(net), paths.shape[1])
        rows = slice(n_p, n_p + len(net))
        p_paths, p_time, p_latest, p_bytes, p_cap, p_batch, p_idx = self._pend
        p_paths[rows] = self._dummy
        p_paths[rows, :paths.shape[1]] = paths
        p_time[rows], p_latest[rows] = start, start + wait_s
        p_bytes[rows], p_cap[rows] = nbytes[net], cap[net]
        p_batch[rows], p_idx[rows] = bid, net
        self._cnt[1] = n_p + len(net)
        if not self._wake.triggered:
            self._wake.succeed()
        return event

    def link_load(self) -> np.ndarray:
        """Current sum of flow rates on each link, bytes/s (length = number of links)."""
        paths, rate = self._act[0][:self._cnt[0]], self._act[2][:self._cnt[0]]
        load = np.bincount(paths.ravel(), weights=np.repeat(rate, paths.shape[1]),
                           minlength=len(self.capacity))
        return load[:-1]

    def effective_capacity(self) -> np.ndarray:
        """Usable capacity of each link for the flows now transmitting, bytes/s (length = number
        of links): the raw capacity, lowered on incast-prone links when incast is on."""
        cap = np.empty_like(self.capacity)
        bk.effective_capacity(self._act[0], int(self._cnt[0]), self.capacity, self._incast,
                              self.options.incast_threshold_flows, self.options.incast_penalty,
                              cap)
        return cap[:-1]

    @property
    def active_flows(self) -> int:
        return int(self._cnt[0])

    # ---------------------------------------------------------------- process
    def _run(self):
        env = self.env
        while True:
            t_next = self._next_stop()
            if np.isinf(t_next):
                yield self._wake
            else:
                yield self._wake | env.timeout(max(t_next - env.now, 0.0))
            if self._wake.triggered:
                self._wake = env.event()
                yield env.timeout(0)  # let every process submitting at this instant do so
                if self._wake.triggered:
                    self._wake = env.event()
            self._advance(env.now)

    def _next_stop(self) -> float:
        """Earliest of: a pending flow starting, a batch ending, a lazy re-solve being due."""
        origin = (min(b.start_s for b in self._batches.values())
                  if self._cnt[0] and self._batches else 0.0)
        return float(bk.next_stop(self._cnt, self._sc, self.options.rate_tolerance, origin,
                                  self._act, self._pend, self._freed_since_solve,
                                  self._cap_solved))

    def _advance(self, now: float) -> None:
        """Move time to ``now``: retire finished flows, start due ones, re-solve if needed."""
        n_ret, n_zero = bk.advance(
            float(now), self._cnt, self._sc, self._stat, self._act, self._pend, self.capacity,
            self._incast, self.options.incast_threshold_flows, self.options.incast_penalty,
            self._slack, self._freed_since_solve, self._cap_solved, self._out)
        st = self.stats
        st.recomputes, st.filling_rounds, st.peak_active_flows = (int(x) for x in self._stat)
        ob, oi, of = self._out
        if n_ret:
            self._complete(ob[:n_ret], oi[:n_ret], of[:n_ret])
        if n_zero:
            done = slice(n_ret, n_ret + n_zero)
            self._complete(ob[done], oi[done], of[done])

    def _complete(self, bids: np.ndarray, idx: np.ndarray, fin: np.ndarray) -> None:
        if bids[0] == bids[-1] and (bids == bids[0]).all():  # the common case: one batch
            parts = ((bids[0], slice(None)),)
        else:
            parts = ((bid, bids == bid) for bid in np.unique(bids))
        for bid, m in parts:
            b = self._batches[int(bid)]
            done = idx[m]
            b.finish_s[done] = fin[m]
            b.left -= len(done)
            if b.left == 0:
                del self._batches[int(bid)]
                b.event.succeed(Transfer(b.start_s, b.finish_s, b.nbytes))

    # ----------------------------------------------------------------- helpers
    def _resize(self, rows: int, hops: int) -> None:
        """Make room for ``rows`` flows (active and pending together) of up to ``hops`` links,
        keeping the rows in use; paths are padded with the dummy link."""
        cur_hops = self._act[0].shape[1] if self._act else 0
        if rows <= self._rows and hops <= cur_hops:
            return
        new_rows = max(rows, 2 * self._rows, 64)
        new_hops = max(hops, cur_hops)
        self._dummy = np.int32(len(self.capacity) - 1)

        def grow(old, dtype, fill):  # paths (the int32 rows) are 2-D, the rest 1-D
            a = np.full((new_rows, new_hops) if dtype is np.int32 else new_rows, fill, dtype)
            if old is not None:
                a[tuple(slice(0, n) for n in old.shape)] = old
            return a

        kinds = ((np.int32, self._dummy), (float, 0.0), (float, 0.0), (float, np.inf),
                 (float, np.inf), (np.int64, 0), (np.int64, 0))
        old = self._act or (None,) * 7
        self._act = tuple(grow(o, t, f) for o, (t, f) in zip(old, kinds, strict=True))
        kinds = ((np.int32, self._dummy), (float, np.inf), (float, np.inf), (float, 0.0),
                 (float, np.inf), (np.int64, 0), (np.int64, 0))
        old = self._pend or (None,) * 7
        self._pend = tuple(grow(o, t, f) for o, (t, f) in zip(old, kinds, strict=True))
        self._out = (np.zeros(new_rows, np.int64), np.zeros(new_rows, np.int64),
                     np.zeros(new_rows))
        self._rows = new_rows


def _issue_slots(src: np.ndarray, sends: np.ndarray) -> np.ndarray:
    """Issue slot of each flow: its position among the byte-carrying flows of its source, in
    submission order (0, 1, ...); flows with ``sends`` False get slot 0 and take none."""
    slot = np.zeros(len(src))
    idx = np.flatnonzero(sends)
    if not len(idx):
        return slot
    order = idx[np.argsort(src[idx], kind="stable")]
    s = src[order]
    pos = np.arange(len(order))
    first = np.r_[True, s[1:] != s[:-1]]
    slot[order] = pos - np.maximum.accumulate(np.where(first, pos, 0))
    return slot
