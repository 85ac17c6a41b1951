"""The fabric's bookkeeping from one instant to the next, compiled (numba).

``sim.network.fabric`` keeps every flow in preallocated row buffers: flows in their start-up
latency (*pending*: path, start time, latest start, bytes, rate cap, batch, index in the batch)
and flows transmitting (*active*: path, remaining bytes, rate, projected finish, rate cap,
batch, index); paths are padded with the dummy link. Between two SimPy events the fabric calls
two kernels:

* ``advance``: move the active flows' remaining bytes to ``now``, retire those that finished,
  start the pending ones that are due, and re-solve the max-min rates when the lazy rule (or an
  arrival) asks for it;
* ``next_stop``: the next instant anything happens: a pending flow starting (at its start
  when nothing transmits, else by its latest start), a batch ending, or the lazy re-solve
  coming due.

The arithmetic is the fabric's (its module doc has the model); doing it in one compiled pass per
event instead of tens of numpy calls is what makes large steps fast. Rows keep their order
(finished ones are squeezed out, new ones appended), so sums run in the same order every time.
Counters ``cnt`` = [active, pending]; scalars ``sc`` = [solved_at, advanced_at, drain_s,
due_at] in s; ``stat`` = [re-solves, filling rounds, peak active flows].
"""

from __future__ import annotations

import numba
import numpy as np

from sim.network.maxmin import _fill

TIME_EPS = 1e-12  # relative tolerance for "finishes at the same instant"


@numba.njit(cache=True, nogil=True)
def advance(now, cnt, sc, stat, act, pend, capacity, incast, incast_thr, incast_pen,
            slack, freed_since, cap_solved, out):  # pragma: no cover - compiled
    """Bring the flows to ``now``; returns (flows retired, zero-byte flows completed at their
    start), written in that order to ``out`` = (batch, index, finish time)."""
    a_paths, a_rem, a_rate, a_finish, a_cap, a_batch, a_idx = act
    p_paths, p_time, p_latest, p_bytes, p_cap, p_batch, p_idx = pend
    o_batch, o_idx, o_fin = out
    n_a, n_p = cnt[0], cnt[1]
    n_hops = a_paths.shape[1]
    n_links = capacity.shape[0]
    lim = now * (1.0 + TIME_EPS) + 1e-18
    resolve = False
    n_ret = 0
    if n_a > 0:
        dt = now - sc[1]
        for f in range(n_a):
            a_rem[f] -= a_rate[f] * dt
        sc[1] = now
        freed = np.zeros(n_links)
        k = 0
        for f in range(n_a):
            if a_finish[f] <= lim:
                for h in range(n_hops):
                    freed[a_paths[f, h]] += a_rate[f]
                o_batch[n_ret], o_idx[n_ret], o_fin[n_ret] = a_batch[f], a_idx[f], a_finish[f]
                n_ret += 1
            else:
                if k != f:
                    a_paths[k] = a_paths[f]
                    a_rem[k], a_rate[k], a_finish[k] = a_rem[f], a_rate[f], a_finish[f]
                    a_cap[k], a_batch[k], a_idx[k] = a_cap[f], a_batch[f], a_idx[f]
                k += 1
        if n_ret:
            for link in range(n_links):
                freed_since[link] += freed[link]
        n_a = k
        resolve = now >= sc[3] * (1.0 - TIME_EPS)
    n_zero = 0
    if n_p > 0:
        k = 0
        for i in range(n_p):
            if p_time[i] <= lim:
                resolve = True
                if p_bytes[i] <= 0:
                    j = n_ret + n_zero
                    o_batch[j], o_idx[j], o_fin[j] = p_batch[i], p_idx[i], p_time[i]
                    n_zero += 1
                else:
                    a_paths[n_a] = p_paths[i]
                    a_rem[n_a], a_rate[n_a], a_finish[n_a] = p_bytes[i], 0.0, np.inf
                    a_cap[n_a], a_batch[n_a], a_idx[n_a] = p_cap[i], p_batch[i], p_idx[i]
                    n_a += 1
            else:
                if k != i:
                    p_paths[k] = p_paths[i]
                    p_time[k], p_latest[k] = p_time[i], p_latest[i]
                    p_bytes[k], p_cap[k] = p_bytes[i], p_cap[i]
                    p_batch[k], p_idx[k] = p_batch[i], p_idx[i]
                k += 1
        n_p = k
    cnt[0], cnt[1] = n_a, n_p
    if resolve:
        _solve(now, n_a, sc, stat, a_paths, a_rem, a_rate, a_finish, a_cap, capacity, incast,
               incast_thr, incast_pen, slack, freed_since, cap_solved)
    return n_ret, n_zero


@numba.njit(cache=True, nogil=True)
def _solve(now, n_a, sc, stat, a_paths, a_rem, a_rate, a_finish, a_cap, capacity, incast,
           incast_thr, incast_pen, slack, freed_since, cap_solved):  # pragma: no cover
    """Max-min rates of the active flows, their finish times, the drain bound."""
    n_hops = a_paths.shape[1]
    n_links = capacity.shape[0]
    effective_capacity(a_paths, n_a, capacity, incast, incast_thr, incast_pen, cap_solved)
    rates, rounds = _fill(a_paths[:n_a], cap_solved, slack, a_cap[:n_a])
    stat[0] += 1
    stat[1] += rounds
    stat[2] = max(stat[2], n_a)
    backlog = np.zeros(n_links)
    for f in range(n_a):
        a_rate[f] = rates[f]
        a_finish[f] = now + a_rem[f] / rates[f]
        for h in range(n_hops):
            backlog[a_paths[f, h]] += a_rem[f]
    drain = 0.0
    if n_a:
        for link in range(n_links):
            drain = max(drain, backlog[link] / capacity[link])
    sc[0] = sc[1] = now
    sc[2] = drain
    freed_since[:] = 0.0


@numba.njit(cache=True, nogil=True)
def effective_capacity(a_paths, n_a, capacity, incast, incast_thr, incast_pen,
                       out):  # pragma: no cover - compiled
    """``out`` = the link capacities (L + 1,) for the first ``n_a`` active flows: ``capacity``,
    lowered on the incast-prone links by the receiver incast model (the fabric's module doc)."""
    out[:] = capacity
    if incast.shape[0] and incast_pen > 0.0:
        count = np.zeros(capacity.shape[0], np.int64)
        for f in range(n_a):
            for h in range(a_paths.shape[1]):
                count[a_paths[f, h]] += 1
        for link in incast:
            out[link] = capacity[link] / (1.0 + incast_pen * max(count[link] - incast_thr, 0))


@numba.njit(cache=True, nogil=True)
def next_stop(cnt, sc, tol, origin, act, pend, freed_since, cap_solved):  # pragma: no cover
    """Earliest of: a pending flow starting, a batch ending, the lazy re-solve (``sc[3]`` is
    set to the latter, inf when nothing transmits). ``origin``: start of the oldest batch, s."""
    a_paths, a_rem, a_rate, a_finish, a_cap, a_batch, a_idx = act
    p_time, p_latest, p_batch = pend[1], pend[2], pend[5]
    n_a, n_p = cnt[0], cnt[1]
    t = np.inf
    sc[3] = np.inf
    if n_a == 0:  # nothing transmitting: the first pending flow starts on time
        for i in range(n_p):
            t = min(t, p_time[i])
        return t
    for i in range(n_p):  # else pending flows wait, up to their latest start, for a solve
        t = min(t, p_latest[i])
    sc[3] = _due_time(n_a, sc, tol, origin, a_paths, a_rate, a_finish, freed_since,
                      cap_solved)
    # batch ends: the last finish of a batch with no flow still in start-up
    lo, hi = a_batch[0], a_batch[0]
    for f in range(n_a):
        lo, hi = min(lo, a_batch[f]), max(hi, a_batch[f])
    ends = np.full(hi - lo + 1, np.inf)
    for f in range(n_a):
        ends[a_batch[f] - lo] = -np.inf
    for f in range(n_a):
        ends[a_batch[f] - lo] = max(ends[a_batch[f] - lo], a_finish[f])
    for i in range(n_p):
        if lo <= p_batch[i] <= hi:
            ends[p_batch[i] - lo] = np.inf
    return min(t, sc[3], ends.min())


@numba.njit(cache=True, nogil=True)
def _due_time(n_a, sc, tol, origin, a_paths, a_rate, a_finish, freed_since,
              cap_solved):  # pragma: no cover - compiled
    """When the lazy re-solve is due (the fabric's module doc): the first instant after
    tol x horizon since the solve at which the bandwidth freed on some link exceeds tol of it."""
    if tol == 0.0:
        return a_finish[:n_a].min()
    n_hops = a_paths.shape[1]
    n_links = cap_solved.shape[0]
    horizon = max(sc[0] - origin, sc[2])
    t_quantum = sc[0] + tol * horizon
    freed = np.zeros(n_links)
    n_late = 0
    for f in range(n_a):
        if a_finish[f] <= t_quantum:
            for h in range(n_hops):
                freed[a_paths[f, h]] += a_rate[f]
        else:
            n_late += 1
    crossed = False
    for link in range(n_links):
        freed[link] += freed_since[link]
        crossed = crossed or freed[link] > tol * cap_solved[link]
    if crossed:
        return t_quantum
    # the late flows in finish order (ties: row order), through a binary heap
    key = np.empty(n_late)
    row = np.empty(n_late, np.int64)
    j = 0
    for f in range(n_a):
        if a_finish[f] > t_quantum:
            key[j], row[j] = a_finish[f], f
            j += 1
    for i in range(n_late // 2 - 1, -1, -1):
        _sift(key, row, i, n_late)
    size = n_late
    while size:
        f = row[0]
        for h in range(n_hops):
            link = a_paths[f, h]
            freed[link] += a_rate[f]
            if freed[link] > tol * cap_solved[link]:
                return a_finish[f]
        size -= 1
        key[0], row[0] = key[size], row[size]
        _sift(key, row, 0, size)
    return a_finish[:n_a].max()


@numba.njit(cache=True, nogil=True)
def _sift(key, row, i, size):  # pragma: no cover - compiled
    """Restore the min-heap order on (key, row) below position i."""
    while True:
        c = 2 * i + 1
        if c >= size:
            return
        if c + 1 < size and (key[c + 1] < key[c]
                             or (key[c + 1] == key[c] and row[c + 1] < row[c])):
            c += 1
        if key[c] < key[i] or (key[c] == key[i] and row[c] < row[i]):
            key[c], key[i] = key[i], key[c]
            row[c], row[i] = row[i], row[c]
            i = c
        else:
            return
