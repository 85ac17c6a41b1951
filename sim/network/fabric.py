"""The flow-level fabric: one SimPy process owns every flow in flight.

A flow moves ``bytes`` from one GPU rank to another along its route. It first waits its start-up
latency (sum of link latencies on the path plus the per-message overhead), then transmits at its
max-min fair rate, which changes whenever the set of transmitting flows changes. Collectives hand
the fabric whole batches (``transfer``) and get one event back that fires when the last flow of
the batch has arrived.

Exactness and speed (``rate_tolerance``, written ``tol`` below). With ``tol = 0`` rates are
re-solved at every instant a flow starts or ends: the exact fluid max-min model, which costs one
solve per distinct completion time (about one per flow under skewed alltoallv). Arrivals always
re-solve. Departures re-solve lazily: between two solves every flow keeps its rate, so each
completion time is exact for the rates in force, and departed flows leave their bandwidth idle.
A re-solve is due once (a) the bandwidth freed on some link exceeds ``tol`` of its capacity and
(b) ``tol`` x the horizon has passed since the last solve (horizon: the age of the oldest flow in
flight, or a lower bound on the time to drain what is in flight, whichever is larger). Solves
freeze together links whose fair shares are within a factor ``1 + min(10 tol, 0.1)``
(``max_min_rates``), which halves the filling rounds of skewed traffic; the capacity this
leaves unused lasts only until the next solve and barely moves the error. The allocation is
always feasible (no link above 100 %) and flows are only ever late, never early: measured
against the exact model, collective times come out late by 1-2 x ``tol``
(``benchmarks/bench_fabric.py``); the default 0.003 gives about 0.3-0.6 %.
Flows that finish at the same instant finish as one batch.

Per-message issue gap (``message_gap_s``, LogGP's g; default 0 = off). A sender injects the
messages of one ``transfer`` batch one after another: the i-th network flow of a source rank in
that batch (i = 0, 1, ... in the order submitted) starts i x g later than its start-up latency
alone would allow. Many small messages (flat All-to-All) pay (n - 1) g per sender, a few large
ones (two-stage All-to-All) pay little. Slots are counted per batch (concurrent batches of one
rank do not delay each other) and only over flows that carry bytes: zero-byte flows take no slot
and complete at their plain start-up time, as they do without a gap.

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

from sim.network.maxmin import max_min_rates
from sim.network.routing import Routes
from sim.topology.cluster import SWITCH, Cluster

_TIME_EPS = 1e-12  # relative tolerance for "finishes at the same instant"
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
        self._incast_on = opt.incast_penalty > 0.0 and len(self._incast) > 0
        self._cap_solved = self.capacity  # the capacities of the last solve
        self.stats = FabricStats(link_bytes=np.zeros(n_links))
        self._batches: dict[int, _Batch] = {}
        self._next_batch = 0
        h = 1
        # flows in their start-up latency
        self._p_time = np.zeros(0)
        self._p_paths = np.zeros((0, h), dtype=np.int32)
        self._p_bytes = np.zeros(0)
        self._p_batch = np.zeros(0, dtype=np.int64)
        self._p_idx = np.zeros(0, dtype=np.int64)
        self._p_cap = np.zeros(0)
        # flows transmitting
        self._paths = np.zeros((0, h), dtype=np.int32)
        self._rem = np.zeros(0)
        self._rate = np.zeros(0)
        self._batch = np.zeros(0, dtype=np.int64)
        self._idx = np.zeros(0, dtype=np.int64)
        self._cap = np.zeros(0)  # per-flow rate cap, bytes/s (inf: none)
        self._finish = np.zeros(0)  # projected finish time at current rates
        self._solved_at = 0.0
        self._drain_s = 0.0
        self._due_at = np.inf  # when the lazy re-solve is due (see module doc)
        self._freed_since_solve = np.zeros(len(self.capacity))  # bytes/s idle since the solve
        self._advanced_at = 0.0
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
        self.stats.link_bytes += np.bincount(
            paths.ravel(), weights=np.repeat(nbytes[net], paths.shape[1]),
            minlength=len(self.capacity))[:-1]
        self._p_paths, self._paths = self._widen(paths.shape[1])
        paths = self._pad(paths, self._paths.shape[1])
        start = now + latency + self.options.message_overhead_s + delay_s
        if self.options.message_gap_s > 0.0:
            start = start + self.options.message_gap_s * _issue_slots(src[net], nbytes[net] > 0)
        self._p_time = np.concatenate([self._p_time, start])
        self._p_paths = np.vstack([self._p_paths, paths])
        self._p_bytes = np.concatenate([self._p_bytes, nbytes[net]])
        self._p_batch = np.concatenate([self._p_batch, np.full(len(net), bid)])
        self._p_idx = np.concatenate([self._p_idx, net])
        self._p_cap = np.concatenate([self._p_cap, cap[net]])
        if not self._wake.triggered:
            self._wake.succeed()
        return event

    def link_load(self) -> np.ndarray:
        """Current sum of flow rates on each link, bytes/s (length = number of links)."""
        load = np.bincount(self._paths.ravel(), weights=np.repeat(self._rate, self._paths.shape[1]),
                           minlength=len(self.capacity))
        return load[:-1]

    def effective_capacity(self) -> np.ndarray:
        """Usable capacity of each link for the flows now transmitting, bytes/s (length = number
        of links): the raw capacity, lowered on incast-prone links when incast is on."""
        return self._effective_capacity()[:-1].copy()

    @property
    def active_flows(self) -> int:
        return len(self._rem)

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
        t = self._p_time.min() if len(self._p_time) else np.inf
        self._due_at = np.inf
        if len(self._rem):
            self._due_at = self._due_time()
            t = min(t, self._due_at, self._batch_end_time())
        return t

    def _batch_end_time(self) -> float:
        """Earliest time a batch with no flow still in start-up has all its flows done."""
        ends = np.full(self._next_batch, np.inf)
        ends[self._batch] = -np.inf
        np.maximum.at(ends, self._batch, self._finish)
        ends[self._p_batch] = np.inf
        return float(ends.min())

    def _due_time(self) -> float:
        """When the next lazy re-solve is due (see the module doc).

        Both must hold: the bandwidth freed on some link since the last solve exceeds tol of its
        capacity, and at least tol x the horizon has passed since the last solve, the horizon
        being the larger of the age of the oldest flow in flight and a lower bound on the time
        needed to drain the bytes in flight (busiest link at full capacity).
        """
        tol = self.options.rate_tolerance
        if tol == 0.0:
            return float(self._finish.min())
        origin = min(b.start_s for b in self._batches.values())
        horizon = max(self._solved_at - origin, self._drain_s)
        t_quantum = self._solved_at + tol * horizon
        h = self._paths.shape[1]
        n_links = len(self.capacity)
        threshold = tol * self._cap_solved
        early = self._finish <= t_quantum
        freed = self._freed_since_solve + np.bincount(
            self._paths[early].ravel(), weights=np.repeat(self._rate[early], h),
            minlength=n_links)
        if np.any(freed > threshold):
            return t_quantum
        late = np.flatnonzero(~early)
        order = late[np.argsort(self._finish[late], kind="stable")]
        chunk = max(256, len(order) // 16)
        for lo in range(0, len(order), chunk):
            idx = order[lo:lo + chunk]
            p = self._paths[idx].ravel()
            w = np.repeat(self._rate[idx], h)
            add = np.bincount(p, weights=w, minlength=n_links)
            if np.any(freed + add > threshold):
                # the first flow of the chunk at which some link crosses its threshold
                pos = np.repeat(np.arange(len(idx)), h)
                s = np.argsort(p, kind="stable")
                ps, ws, pos = p[s], w[s], pos[s]
                cum = np.cumsum(ws)
                starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
                base = np.repeat(cum[starts] - ws[starts], np.diff(np.r_[starts, len(ps)]))
                cross = (cum - base + freed[ps]) > threshold[ps]
                return float(self._finish[idx[pos[cross].min()]])
            freed += add
        return float(self._finish.max())

    def _advance(self, now: float) -> None:
        """Move time to ``now``: retire finished flows, start due ones, re-solve if needed."""
        resolve = False
        if len(self._rem):
            done = self._finish <= now * (1 + _TIME_EPS) + 1e-18
            dt = now - self._advanced_at
            self._rem -= self._rate * dt
            self._advanced_at = now
            if done.any():
                self._retire(done, now)
            resolve = now >= self._due_at * (1 - _TIME_EPS)
        if len(self._p_time):
            due = self._p_time <= now * (1 + _TIME_EPS) + 1e-18
            if due.any():
                self._start(due, now)
                resolve = True
        if resolve:
            self._solve(now)

    def _retire(self, done: np.ndarray, now: float) -> None:
        fin = self._finish[done]
        bids = self._batch[done]
        idx = self._idx[done]
        h, n_links = self._paths.shape[1], len(self.capacity)
        p = self._paths[done].ravel()
        w = np.repeat(self._rate[done], h)
        self._freed_since_solve += np.bincount(p, weights=w, minlength=n_links)
        keep = ~done
        for name in ("_paths", "_rem", "_rate", "_batch", "_idx", "_finish", "_cap"):
            setattr(self, name, getattr(self, name)[keep])
        self._complete(bids, idx, fin)

    def _complete(self, bids: np.ndarray, idx: np.ndarray, fin: np.ndarray) -> None:
        for bid in np.unique(bids):
            m = bids == bid
            b = self._batches[int(bid)]
            b.finish_s[idx[m]] = fin[m]
            b.left -= int(m.sum())
            if b.left == 0:
                del self._batches[int(bid)]
                b.event.succeed(Transfer(b.start_s, b.finish_s, b.nbytes))

    def _start(self, due: np.ndarray, now: float) -> None:
        zero = due & (self._p_bytes <= 0)
        if zero.any():
            self._complete(self._p_batch[zero], self._p_idx[zero], self._p_time[zero])
        go = due & ~zero
        self._paths = np.vstack([self._paths, self._p_paths[go]])
        self._rem = np.concatenate([self._rem, self._p_bytes[go]])
        self._batch = np.concatenate([self._batch, self._p_batch[go]])
        self._idx = np.concatenate([self._idx, self._p_idx[go]])
        self._cap = np.concatenate([self._cap, self._p_cap[go]])
        keep = ~due
        for name in ("_p_time", "_p_paths", "_p_bytes", "_p_batch", "_p_idx", "_p_cap"):
            setattr(self, name, getattr(self, name)[keep])

    def _solve(self, now: float) -> None:
        fill = min(_FILL_FACTOR * self.options.rate_tolerance, 0.1)
        self._cap_solved = cap = self._effective_capacity()
        capped = np.isfinite(self._cap).any()
        self._rate, rounds = max_min_rates(self._paths, cap, fill,
                                           self._cap if capped else None)
        self.stats.recomputes += 1
        self.stats.filling_rounds += rounds
        self.stats.peak_active_flows = max(self.stats.peak_active_flows, len(self._rate))
        self._finish = now + self._rem / self._rate
        self._solved_at = self._advanced_at = now
        # lower bound on the time to drain what is in flight: the busiest link at full speed
        h = self._paths.shape[1]
        backlog = np.bincount(self._paths.ravel(), weights=np.repeat(self._rem, h),
                              minlength=len(self.capacity))
        self._drain_s = float((backlog / self.capacity).max()) if len(self._rem) else 0.0
        self._freed_since_solve = np.zeros(len(self.capacity))

    # ----------------------------------------------------------------- helpers
    def _effective_capacity(self) -> np.ndarray:
        """(L + 1,) capacities for the flows now transmitting: ``self.capacity`` itself when
        incast is off, else a copy lowered on the incast-prone links (module doc)."""
        if not self._incast_on:
            return self.capacity
        n = np.bincount(self._paths.ravel(), minlength=len(self.capacity))[self._incast]
        excess = np.maximum(n - self.options.incast_threshold_flows, 0)
        cap = self.capacity.copy()
        cap[self._incast] /= 1.0 + self.options.incast_penalty * excess
        return cap

    def _widen(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        cur = self._paths.shape[1]
        if h <= cur:
            return self._p_paths, self._paths
        return self._pad(self._p_paths, h), self._pad(self._paths, h)

    def _pad(self, a: np.ndarray, h: int) -> np.ndarray:
        if a.shape[1] >= h:
            return a
        fill = np.full((len(a), h - a.shape[1]), len(self.capacity) - 1, dtype=np.int32)
        return np.hstack([a.astype(np.int32), fill])


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
