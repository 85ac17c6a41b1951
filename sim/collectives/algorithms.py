"""Collectives as SimPy processes on a Fabric; each returns its duration in seconds.

Every algorithm hands the fabric whole batches of flows. Staged algorithms (pairwise, ring,
hierarchical) are bulk-synchronous: a stage starts when every flow of the previous stage has
arrived, which is exact for balanced traffic and a slight overestimate for skewed traffic.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from sim.network.fabric import Fabric


def _send(fabric: Fabric, src, dst, nbytes) -> Generator:
    """Yield one batch of non-empty flows; return its duration (0 if nothing to send)."""
    src, dst, nbytes = (np.asarray(a).ravel() for a in (src, dst, nbytes))
    keep = (nbytes > 0) & (src != dst)
    if not keep.any():
        return 0.0
    tr = yield fabric.transfer(src[keep], dst[keep], nbytes[keep])
    return tr.duration_s


def all_to_all(fabric: Fabric, matrix: np.ndarray, algorithm: str = "direct",
               relay: str = "destination") -> Generator:
    """All-to-All of ``matrix[s, d]`` bytes from rank s to rank d; returns seconds.

    * ``direct``: every flow at once (what NCCL does with grouped send/recv).
    * ``pairwise``: P-1 rounds; in round r rank s sends to (s + r) mod P.
    * ``hierarchical``: gather inside each node to a relay GPU, exchange between GPUs of equal
      local rank on different nodes, scatter inside the destination node. ``relay`` picks the
      GPU of the destination's local rank (``destination``: the scatter stage is empty, as in
      NCCL PXN) or of the source's (``source``: the gather stage is empty, as in SMILE).
    """
    env = fabric.env
    t0 = env.now
    p = matrix.shape[0]
    if algorithm == "direct":
        s, d = np.nonzero(matrix)
        yield from _send(fabric, s, d, matrix[s, d])
    elif algorithm == "pairwise":
        ranks = np.arange(p)
        for r in range(1, p):
            dst = (ranks + r) % p
            yield from _send(fabric, ranks, dst, matrix[ranks, dst])
    elif algorithm == "hierarchical":
        for src, dst, nbytes in hierarchical_stages(fabric.cluster, matrix, relay):
            yield from _send(fabric, src, dst, nbytes)
    else:
        raise ValueError(f"unknown all_to_all algorithm {algorithm!r}")
    return env.now - t0


def hierarchical_stages(cluster, matrix: np.ndarray, relay: str = "destination") -> list:
    """The three stages (gather, exchange, scatter) of a hierarchical All-to-All.

    Each stage is (src, dst, bytes) arrays, aggregated per GPU pair. Traffic between GPUs of one
    node goes straight to its destination in the first intra-node stage. Needs the same number of
    GPUs on every node.
    """
    if relay not in ("destination", "source"):
        raise ValueError("relay must be 'destination' or 'source'")
    node, local = cluster.node_of, cluster.local_rank
    n_nodes, g = cluster.num_nodes, cluster.gpus_per_node
    if n_nodes * g != len(node):
        raise ValueError("hierarchical All-to-All needs the same number of GPUs on every node")
    rank_of = np.empty((n_nodes, g), dtype=np.int64)
    rank_of[node, local] = np.arange(len(node))
    s, d = np.nonzero(matrix)
    b = matrix[s, d]
    same = node[s] == node[d]
    s_in, d_in, b_in = s[same], d[same], b[same]
    s, d, b = s[~same], d[~same], b[~same]
    x = local[d] if relay == "destination" else local[s]
    r_src = rank_of[node[s], x]  # relay on the source node
    r_dst = rank_of[node[d], x]  # relay on the destination node
    gather = (np.r_[s, s_in], np.r_[r_src, d_in], np.r_[b, b_in])
    stages = [gather, (r_src, r_dst, b), (r_dst, d, b)]
    if relay == "source":  # local traffic rides with the scatter instead
        stages[0] = (s, r_src, b)
        stages[2] = (np.r_[r_dst, s_in], np.r_[d, d_in], np.r_[b, b_in])
    return [_aggregate(len(node), *st) for st in stages]


def _aggregate(p: int, src, dst, nbytes):
    """Merge flows with the same (src, dst) into one; drop self-pairs."""
    keep = src != dst
    key = src[keep] * p + dst[keep]
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.bincount(inv, weights=nbytes[keep], minlength=len(uniq))
    return uniq // p, uniq % p, total


def ring_all_reduce(fabric: Fabric, nbytes: float) -> Generator:
    """Ring AllReduce of ``nbytes`` per rank over the rings of :func:`ring_orders`, each
    carrying 1/R of the data: 2(P-1) steps of nbytes/(P R) to the next rank; seconds."""
    return (yield from _ring(fabric, nbytes / fabric.cluster.num_gpus,
                             2 * (fabric.cluster.num_gpus - 1)))


def ring_all_gather(fabric: Fabric, nbytes: float) -> Generator:
    """Ring AllGather producing ``nbytes`` per rank (each contributes nbytes/P), over the rings
    of :func:`ring_orders`; seconds."""
    return (yield from _ring(fabric, nbytes / fabric.cluster.num_gpus,
                             fabric.cluster.num_gpus - 1))


def ring_reduce_scatter(fabric: Fabric, nbytes: float) -> Generator:
    """Ring ReduceScatter of ``nbytes`` per rank (each keeps nbytes/P reduced), over the rings of
    :func:`ring_orders`: the traffic of an AllGather; seconds."""
    return (yield from ring_all_gather(fabric, nbytes))


def sendrecv(fabric: Fabric, nbytes: float) -> Generator:
    """Every rank sends ``nbytes`` to the next rank and receives as many from the previous
    (nccl-tests' sendrecv_perf); seconds."""
    t0 = fabric.env.now
    ranks = np.arange(fabric.cluster.num_gpus)
    yield from _send(fabric, ranks, (ranks + 1) % len(ranks), np.full(len(ranks), nbytes))
    return fabric.env.now - t0


def ring_order(cluster, rotation: int = 0) -> np.ndarray:
    """Ranks in ring order: node by node, local ranks in ascending order on even nodes and
    descending on odd ones (a snake), each node's sequence rotated to start at local rank
    ``rotation`` (even nodes) or end there (odd nodes). Every hop between nodes then joins GPUs
    of the same local rank, i.e. the same NIC rail, as NCCL's rings do. With an odd number of
    nodes the closing hop is the exception."""
    q = (cluster.local_rank - rotation) % max(int(cluster.gpus_per_node), 1)
    key_local = np.where(cluster.node_of % 2 == 0, q, -q)
    return np.lexsort((key_local, cluster.node_of))


def ring_orders(cluster) -> np.ndarray:
    """(R, P): the rings a collective uses at once, as NCCL's channels. On one server R = 1;
    across servers R = GPUs per server, ring r being :func:`ring_order` rotated by r, so ring r
    leaves an even node from local rank r-1 and an odd node from local rank r: every GPU (and
    so every NIC rail) carries the inter-node hop of exactly one ring in each direction, and
    together the rings use every rail instead of one."""
    rings = int(cluster.gpus_per_node) if cluster.num_nodes > 1 else 1
    return np.stack([ring_order(cluster, r) for r in range(rings)])


def _ring(fabric: Fabric, chunk: float, steps: int) -> Generator:
    orders = ring_orders(fabric.cluster)
    return (yield from ring_steps(fabric, orders, chunk / len(orders), steps))


def ring_steps(fabric: Fabric, groups: np.ndarray, chunk: float, steps: int) -> Generator:
    """``steps`` bulk-synchronous ring steps in every group at once: each rank sends ``chunk``
    bytes to the next rank of its row of ``groups`` (G, n); returns seconds."""
    t0 = fabric.env.now
    src = groups.ravel()
    nxt = np.roll(groups, -1, axis=1).ravel()
    sizes = np.full(len(src), float(chunk))
    for _ in range(steps):
        yield from _send(fabric, src, nxt, sizes)
    return fabric.env.now - t0


def ring_all_reduce_groups(fabric: Fabric, groups: np.ndarray, nbytes: float,
                           pipelined: bool = False, cost=None,
                           steps: int | None = None) -> Generator:
    """Ring AllReduce of ``nbytes`` per rank inside every row of ``groups`` (G, n) at once;
    with ``steps`` n - 1 instead of the default 2(n - 1), its ReduceScatter (or AllGather).

    ``pipelined``: as NCCL streams chunks round the ring, each rank sends its 2(n-1)/n x nbytes to
    the next rank as one flow, after the 2(n-1) - 1 extra hop latencies of the slowest ring edge
    (alone on a fabric this equals the stepped ring; under contention it shares links as one
    stream instead of 2(n-1) lock-step rounds, and costs one batch instead of 2(n-1)).
    ``cost`` (pipelined only; a ``sim.comm.model.Cost``): the library's fixed delay, which
    replaces the extra hop latencies (its step latencies include them), wire bytes per payload
    byte and per-flow cap.
    """
    n = groups.shape[1]
    if n < 2 or nbytes <= 0:
        return 0.0
    steps = 2 * (n - 1) if steps is None else steps
    if not pipelined:
        return (yield from ring_steps(fabric, groups, nbytes / n, steps))
    t0 = fabric.env.now
    src = groups.ravel()
    nxt = np.roll(groups, -1, axis=1).ravel()
    if cost is not None:
        yield fabric.transfer(src, nxt, np.full(len(src), steps * nbytes / n * cost.inflate),
                              cost.flow_cap_Bps, cost.delay_s)
        return fabric.env.now - t0
    _, latency = fabric.routes.paths(src, nxt)
    yield fabric.env.timeout((steps - 1) * (latency.max() + fabric.options.message_overhead_s))
    yield from _send(fabric, src, nxt, np.full(len(src), steps * nbytes / n))
    return fabric.env.now - t0


def staggered_transfer(fabric: Fabric, matrix: np.ndarray, ready: np.ndarray,
                       merge_s: float = 0.0, delay_s: float = 0.0,
                       cap_of=None) -> Generator:
    """Send ``matrix[s, d]`` bytes, each source starting at its own ``ready[s]`` (absolute s).

    Sources whose ready times lie within ``merge_s`` of the earliest pending one start together
    at the latest of them (never early). ``delay_s`` is the collective library's fixed cost on
    every flow and ``cap_of(src, dst, bytes)`` its per-flow rate caps (bytes/s), both from the
    communication model. Returns ``(recv_done, send_done)``: per rank, the time its last
    incoming / outgoing flow arrived, or ``ready`` when it had none.
    """
    env = fabric.env
    s, d = np.nonzero(matrix)
    keep = s != d
    s, d = s[keep], d[keep]
    b = matrix[s, d]
    recv_done = ready.astype(float).copy()
    send_done = ready.astype(float).copy()
    if not len(s):
        return recv_done, send_done
    t_src = ready[s]
    order = np.argsort(t_src, kind="stable")
    s, d, b, t_src = s[order], d[order], b[order], t_src[order]
    events, idx = [], []
    lo = 0
    while lo < len(s):
        hi = int(np.searchsorted(t_src, t_src[lo] + merge_s, side="right"))
        start = t_src[hi - 1]
        if start > env.now:
            yield env.timeout(start - env.now)
        cap = None if cap_of is None else cap_of(s[lo:hi], d[lo:hi], b[lo:hi])
        events.append(fabric.transfer(s[lo:hi], d[lo:hi], b[lo:hi], cap, delay_s))
        idx.append(slice(lo, hi))
        lo = hi
    yield env.all_of(events)
    finish = np.empty(len(s))
    for ev, sl in zip(events, idx, strict=True):
        finish[sl] = ev.value.finish_s
    np.maximum.at(recv_done, d, finish)
    np.maximum.at(send_done, s, finish)
    return recv_done, send_done
