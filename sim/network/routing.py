"""Routes between GPU ranks: equal-cost shortest paths, one deterministic path per (src, dst).

Cost of a link = its latency (rounded to 1 ns) plus a one-hop tie-breaker, so the fastest path
wins and among equally fast paths the one with fewer hops wins. GPUs are endpoints: a path may
start or end at a GPU but never passes through one (NCCL's PXN relaying is a collective-level
choice, not a routing one). Where several next hops are equally short (ECMP), one is chosen per
flow by

* ``balanced`` (default): static and spread by construction. At each hop, the flows of one
  routing request that sit at the same switch are grouped by destination; the r-th flow of a
  group (by source rank) of the j-th destination (by rank) takes candidate ``(r + j) mod k``.
  Uniform All-to-All, same-rail exchanges and rings all load equal-cost up-links evenly, the
  way adaptive routing does on a well-tuned fabric.
* ``hash``: a hash of (src, dst, hop), like Ethernet 5-tuple ECMP; collisions happen as in life.

Routes are computed vectorized, one hop for all requested pairs at a time, and cached per pair,
so the second collective between the same GPUs costs one gather.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from sim.topology.cluster import GPU, Cluster

ECMP_MODES = ("balanced", "hash")
_HOP_COST = 1.0  # tie-breaker added per hop, in units of 1/1024 ns
_NS_SCALE = 1024.0


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (a good, cheap integer hash)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _unique(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values of non-negative ``keys`` < ``size``, and the inverse index.

    Uses a dense table (linear time) when ``size`` is moderate, else sorting.
    """
    if size > 64 * max(len(keys), 1 << 20):
        return np.unique(keys, return_inverse=True)
    mark = np.zeros(size, dtype=bool)
    mark[keys] = True
    uniq = np.flatnonzero(mark)
    table = np.empty(size, dtype=np.int64)
    table[uniq] = np.arange(len(uniq))
    return uniq, table[keys]


def _positions(sizes: np.ndarray) -> np.ndarray:
    """0..n-1 within each consecutive segment of the given sizes: [2, 3] -> [0, 1, 0, 1, 2]."""
    return np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def _balanced_choice(c, t, src, fc, attachment) -> np.ndarray:
    """Candidate index per flow for ``balanced`` ECMP.

    Flows with several candidates are grouped by (switch ``c``, ``attachment(c, t)``, the switch
    that delivers to the destination); inside a group, ordered by (destination, source), the r-th
    flow takes
    candidate ``(r + (i + j) * q) mod k``, with q the group size and i, j the ordinals of the
    switch and of the attachment. Each group spreads evenly over the candidates, and the groups'
    remainders rotate both across destinations of one switch (balancing its up-links) and across
    switches feeding one destination (balancing the down-links into it).
    """
    choice = np.zeros(len(c), dtype=np.int64)
    multi = np.flatnonzero(fc > 1)
    if not len(multi):
        return choice
    att = attachment(c[multi], t[multi])
    o = np.lexsort((src[multi], t[multi], att, c[multi]))
    order = multi[o]
    cs, ats = c[order], att[o]
    new = np.r_[True, (cs[1:] != cs[:-1]) | (ats[1:] != ats[:-1])]
    size = np.diff(np.r_[np.flatnonzero(new), len(order)])
    r = _positions(size)
    q = np.repeat(size, size)
    i = np.unique(cs, return_inverse=True)[1]
    j = np.unique(ats, return_inverse=True)[1]
    choice[order] = (r + (i + j) * q) % fc[order]
    return choice


class Routes:
    """Path table for one cluster. ``dummy`` is the padding link id (== number of links)."""

    def __init__(self, cluster: Cluster, ecmp: str = "balanced"):
        if ecmp not in ECMP_MODES:
            raise ValueError(f"ecmp must be one of {', '.join(ECMP_MODES)}, got {ecmp!r}")
        self.cluster = cluster
        self.ecmp = ecmp
        links = cluster.links
        self.num_links = len(links)
        self.dummy = self.num_links
        self.num_gpus = p = cluster.num_gpus
        self._n_nodes = n_nodes = len(cluster.node_names)
        kinds = np.array([cluster.graph.nodes[n]["kind"] for n in cluster.node_names])
        self._cost = np.round(links.latency_s * 1e9) * _NS_SCALE + _HOP_COST
        # CSR of out-links per node (links are sorted by (src, dst)).
        self._out_ptr = np.searchsorted(links.src, np.arange(n_nodes + 1)).astype(np.int64)
        # transit nodes (switches, NICs) and their index among transit nodes
        transit = np.flatnonzero(kinds != GPU)
        self._tr_index = np.full(n_nodes, -1, dtype=np.int64)
        self._tr_index[transit] = np.arange(len(transit))
        both = (self._tr_index[links.src] >= 0) & (self._tr_index[links.dst] >= 0)
        t = len(transit)
        adj = csr_matrix(
            (self._cost[both], (self._tr_index[links.src[both]], self._tr_index[links.dst[both]])),
            shape=(t, t),
        )
        d_tt = dijkstra(adj, directed=True) if t else np.zeros((0, 0))
        self._d_tt = d_tt
        # distance from every transit node to every GPU: min over links (a -> gpu) with a transit
        self._dist_tg = np.full((t, p), np.inf)
        into_gpu = np.flatnonzero((self._tr_index[links.src] >= 0) & (links.dst < p))
        for e in into_gpu:  # one column update per GPU attachment (a few per GPU)
            a, g = self._tr_index[links.src[e]], links.dst[e]
            np.minimum(self._dist_tg[:, g], d_tt[:, a] + self._cost[e], out=self._dist_tg[:, g])
        # transit neighbours feeding each GPU, padded: (P, m) transit index and link cost
        per_gpu = np.bincount(links.dst[into_gpu], minlength=p)
        m = max(int(per_gpu.max()) if p else 1, 1)
        self._in_a = np.full((p, m), -1, dtype=np.int64)
        self._in_c = np.full((p, m), np.inf)
        order = into_gpu[np.argsort(links.dst[into_gpu], kind="stable")]
        gpu = links.dst[order]
        slot = _positions(per_gpu)
        self._in_a[gpu, slot] = self._tr_index[links.src[order]]
        self._in_c[gpu, slot] = self._cost[order]
        self._route_of = np.full(p * p, -1, dtype=np.int64)
        self._table = np.zeros((0, 1), dtype=np.int32)
        self._latency = np.zeros(0)

    # ------------------------------------------------------------------ public
    def paths(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Link ids (F, H) padded with ``dummy``, and path latency (F,) in s, for rank pairs."""
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        key = src * self.num_gpus + dst
        rid = self._route_of[key]
        missing = rid < 0
        if missing.any():
            new_keys, _ = _unique(key[missing], self.num_gpus * self.num_gpus)
            self._add(new_keys // self.num_gpus, new_keys % self.num_gpus)
            rid = self._route_of[key]
        return self._table[rid], self._latency[rid]

    @property
    def max_hops(self) -> int:
        return self._table.shape[1]

    # ----------------------------------------------------------------- compute
    def _add(self, src: np.ndarray, dst: np.ndarray) -> None:
        if np.any(src == dst):
            raise ValueError("a route needs two different GPUs")
        hops = self._compute(src, dst)
        h_old, h_new = self._table.shape[1], hops.shape[1]
        if h_new > h_old:
            pad = np.full((len(self._table), h_new - h_old), self.dummy, dtype=np.int32)
            self._table = np.hstack([self._table, pad])
        elif h_new < h_old:
            pad = np.full((len(hops), h_old - h_new), self.dummy, dtype=np.int32)
            hops = np.hstack([hops, pad])
        lat = np.append(self.cluster.links.latency_s, 0.0)[hops].sum(axis=1)
        start = len(self._table)
        self._table = np.vstack([self._table, hops]) if start else hops
        self._latency = np.concatenate([self._latency, lat])
        self._route_of[src * self.num_gpus + dst] = np.arange(start, start + len(src))

    def _attachment(self, c: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The switch that delivers to GPU ``t`` on the shortest path from node ``c`` (or ``t``
        itself when ``c`` is not a switch)."""
        tc = self._tr_index[c]
        att = t.copy()
        sw = np.flatnonzero(tc >= 0)
        if len(sw):
            a = self._in_a[t[sw]]
            cost = np.where(a >= 0, self._d_tt[tc[sw][:, None], np.maximum(a, 0)], np.inf)
            best = np.argmin(cost + self._in_c[t[sw]], axis=1)
            att[sw] = self._n_nodes + a[np.arange(len(sw)), best]  # offset: never equals a GPU
        return att

    def _compute(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """One vectorized next-hop step per hop for all flows; returns (F, H) link ids."""
        links = self.cluster.links
        p = self.num_gpus
        n = len(src)
        cur = src.copy()
        alive = np.arange(n)
        columns: list[np.ndarray] = []
        hop = 0
        while len(alive):
            c, t = cur[alive], dst[alive]
            if (self._out_ptr[c + 1] - self._out_ptr[c]).max() <= 4:
                # few out-links (a GPU or a NIC): decide per flow, no grouping needed
                kc, kt, inv = c, t, np.arange(len(c))
            else:  # group flows by (node, destination): they share the candidate set
                keys, inv = _unique(c * p + t, self._n_nodes * p)
                kc, kt = keys // p, keys % p
            # expand each key over the out-links of its current node
            deg = self._out_ptr[kc + 1] - self._out_ptr[kc]
            kid = np.repeat(np.arange(len(kc)), deg)
            edge = np.repeat(self._out_ptr[kc], deg) + _positions(deg)
            w = links.dst[edge]
            tw = self._tr_index[w]
            dist_w = np.where(w == kt[kid], 0.0, np.inf)
            via = tw >= 0
            dist_w[via] = self._dist_tg[tw[via], kt[kid][via]]
            total = self._cost[edge] + dist_w
            best = np.full(len(kc), np.inf)
            np.minimum.at(best, kid, total)
            if not np.all(np.isfinite(best)):
                bad = int(np.flatnonzero(~np.isfinite(best))[0])
                names = self.cluster.node_names
                raise ValueError(f"no route from {names[kc[bad]]} to GPU {names[kt[bad]]}")
            ok = total == best[kid]
            cand = edge[ok]
            cnt = np.bincount(kid[ok], minlength=len(kc))
            off = np.cumsum(cnt) - cnt
            fc = cnt[inv]
            if self.ecmp == "balanced":
                choice = _balanced_choice(c, t, src[alive], fc, self._attachment)
            else:
                h = _mix64((src[alive].astype(np.uint64) * np.uint64(p) + t.astype(np.uint64))
                           * np.uint64(64) + np.uint64(hop))
                choice = (h % fc.astype(np.uint64)).astype(np.int64)
            chosen = cand[off[inv] + choice]
            col = np.full(n, self.dummy, dtype=np.int32)
            col[alive] = chosen
            columns.append(col)
            cur[alive] = links.dst[chosen]
            alive = alive[cur[alive] != dst[alive]]
            hop += 1
        return np.stack(columns, axis=1)
