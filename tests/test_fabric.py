"""The flow-level fabric against closed forms, on hand-built clusters."""

import numpy as np
import pytest
import simpy

from sim.collectives import run_collective
from sim.collectives.traffic import uniform, zipf
from sim.network import Fabric, FabricOptions
from tests.fabrics import star

B, LAT = 100e9, 1e-6


@pytest.mark.parametrize("p", [2, 8, 64])
def test_flat_all_to_all_on_one_switch_matches_closed_form(p):
    m = 64e6
    res = run_collective(star(p, B, LAT), "all_to_all", "direct", uniform(p, m),
                         FabricOptions(message_overhead_s=3e-6))
    expect = 2 * LAT + 3e-6 + m * (p - 1) / (p * B)
    assert res.time_s == pytest.approx(expect, rel=1e-12)


def test_two_flows_sharing_a_link_get_half_each(transfer):
    tr, _ = transfer(star(3, B, LAT), [0, 1], [2, 2], [1e6, 1e6])
    assert tr.finish_s == pytest.approx([2 * LAT + 2e6 / B] * 2, rel=1e-12)


def test_flow_speeds_up_when_its_neighbour_ends(transfer):
    # 1 MB and 3 MB into one GPU: both at B/2 until 2 MB passed, then the big one alone
    tr, _ = transfer(star(3, B, LAT), [0, 1], [2, 2], [1e6, 3e6], rate_tolerance=0.0)
    assert tr.finish_s == pytest.approx([2 * LAT + 2e6 / B, 2 * LAT + 4e6 / B], rel=1e-12)


def test_lazy_resolve_still_speeds_up_a_lonely_flow(transfer):
    # the freed half of the link exceeds any tolerance, so the survivor is re-solved
    tr, _ = transfer(star(3, B, LAT), [0, 1], [2, 2], [1e6, 3e6], rate_tolerance=0.1)
    assert tr.finish_s[1] == pytest.approx(2 * LAT + 4e6 / B, rel=1e-12)


def test_local_copies_and_empty_flows_cost_nothing_on_the_network(transfer):
    tr, fab = transfer(star(2, B, LAT), [0, 0], [0, 1], [5e6, 0.0])
    assert tr.finish_s[0] == 0.0
    assert tr.finish_s[1] == pytest.approx(2 * LAT)
    assert fab.stats.link_bytes.sum() == 0


def test_ring_all_reduce_matches_closed_form():
    p, m = 8, 32e6
    res = run_collective(star(p, B, LAT), "all_reduce", "ring", m)
    expect = 2 * (p - 1) * (2 * LAT) + 2 * (p - 1) / p * m / B
    assert res.time_s == pytest.approx(expect, rel=1e-12)


def test_ring_all_gather_matches_closed_form():
    p, m = 8, 32e6
    res = run_collective(star(p, B, LAT), "all_gather", "ring", m)
    assert res.time_s == pytest.approx((p - 1) * (2 * LAT) + (p - 1) / p * m / B, rel=1e-12)


def test_pairwise_all_to_all_matches_closed_form():
    p, m = 8, 32e6
    res = run_collective(star(p, B, LAT), "all_to_all", "pairwise", uniform(p, m))
    assert res.time_s == pytest.approx((p - 1) * (2 * LAT + m / p / B), rel=1e-12)


def test_bytes_sent_equal_bytes_carried():
    p = 16
    mat = zipf(p, 8e6, 1.2, np.random.default_rng(1))
    res = run_collective(star(p, B, LAT), "all_to_all", "direct", mat)
    # each flow crosses one up-link and one down-link of the star
    assert res.stats.link_bytes.sum() == pytest.approx(2 * (mat.sum() - np.trace(mat)))


def test_no_link_above_capacity_during_a_skewed_all_to_all():
    p = 16
    cl = star(p, B, LAT)
    env = simpy.Environment()
    fab = Fabric(env, cl, FabricOptions(rate_tolerance=0.05))
    mat = zipf(p, 16e6, 1.5, np.random.default_rng(3))
    s, d = np.nonzero(mat)
    ev = fab.transfer(s, d, mat[s, d])
    peaks = []

    def monitor():
        while not ev.triggered:
            peaks.append((fab.link_load() / cl.links.capacity_Bps).max())
            yield env.timeout(5e-6)

    env.process(monitor())
    env.run(ev)
    assert len(peaks) > 20 and max(peaks) <= 1 + 1e-9
    assert max(peaks) > 0.99  # and the fabric was actually busy


@pytest.mark.parametrize("tol", [1e-3, 1e-2])
def test_lazy_resolve_is_within_tolerance_of_exact(tol):
    p = 32
    mat = zipf(p, 32e6, 1.2, np.random.default_rng(7))
    cl = star(p, B, LAT)
    exact = run_collective(cl, "all_to_all", "direct", mat, FabricOptions(rate_tolerance=0.0))
    fast = run_collective(cl, "all_to_all", "direct", mat, FabricOptions(rate_tolerance=tol))
    assert fast.stats.recomputes < exact.stats.recomputes
    assert abs(fast.time_s / exact.time_s - 1) <= 2 * tol  # measured: about 1.3 x tol
    assert fast.time_s >= exact.time_s * (1 - 1e-9)  # lazy rates are never too fast


def test_concurrent_batches_share_the_fabric():
    cl = star(3, B, LAT)
    env = simpy.Environment()
    fab = Fabric(env, cl, FabricOptions())
    out = {}

    def job(name, src, delay):
        yield env.timeout(delay)
        tr = yield fab.transfer([src], [2], [1e6])
        out[name] = tr.end_s

    env.process(job("a", 0, 0.0))
    env.process(job("b", 1, 0.0))
    env.run()
    assert out["a"] == pytest.approx(out["b"]) == pytest.approx(2 * LAT + 2e6 / B)


def test_pipelined_ring_all_reduce_alone_equals_the_stepped_ring():
    import numpy as np

    from sim.collectives.algorithms import ring_all_reduce_groups

    p, m = 8, 32e6
    times = []
    for pipelined in (False, True):
        env = simpy.Environment()
        fab = Fabric(env, star(p, B, LAT), FabricOptions(message_overhead_s=1e-6))
        proc = env.process(ring_all_reduce_groups(fab, np.arange(p)[None, :], m, pipelined))
        env.run(proc)
        times.append(proc.value)
    expect = 2 * (p - 1) * (2 * LAT + 1e-6) + 2 * (p - 1) / p * m / B
    assert times == pytest.approx([expect, expect], rel=1e-12)


def test_a_capped_flow_takes_its_cap_and_leaves_the_rest(transfer):
    # alone: latency + bytes / cap
    tr, _ = transfer(star(2, B, LAT), [0], [1], [1e6], rate_cap=B / 4, delay_s=5e-6)
    assert tr.finish_s[0] == pytest.approx(2 * LAT + 5e-6 + 1e6 / (B / 4), rel=1e-12)
    # sharing a link: the capped flow takes its cap, the other the rest (max-min)
    tr, _ = transfer(star(3, B, LAT), [0, 1], [2, 2], [1e6, 1e6], rate_cap=[B / 4, np.inf],
                     rate_tolerance=0.0)
    fast = 1e6 / (3 * B / 4)
    assert tr.finish_s[1] == pytest.approx(2 * LAT + fast, rel=1e-12)
    # once the fast one is done, the capped one keeps its cap (the link is free, its cap is not)
    assert tr.finish_s[0] == pytest.approx(2 * LAT + 1e6 / (B / 4), rel=1e-12)
    with pytest.raises(ValueError, match="rate caps must be > 0"):
        transfer(star(2, B, LAT), [0], [1], [1.0], rate_cap=0.0)


def test_max_min_with_caps_equals_private_links():
    from sim.network.maxmin import max_min_rates

    rng = np.random.default_rng(5)
    n_links, n_flows, hops = 12, 40, 3
    cap = np.append(rng.uniform(1, 10, n_links), np.inf)
    paths = rng.integers(0, n_links, (n_flows, hops))
    flow_cap = np.where(rng.random(n_flows) < 0.5, rng.uniform(0.05, 1.0, n_flows), np.inf)
    got, _ = max_min_rates(paths, cap, 0.0, flow_cap)
    # the same flows, each capped one given a private link of its cap
    private = np.flatnonzero(np.isfinite(flow_cap))
    extra = np.full((n_flows, 1), n_links + len(private))  # the new dummy
    extra[private, 0] = n_links + np.arange(len(private))
    wide = np.hstack([np.where(paths == n_links, n_links + len(private), paths), extra])
    cap2 = np.concatenate([cap[:-1], flow_cap[private], [np.inf]])
    want, _ = max_min_rates(wide, cap2, 0.0)
    assert np.allclose(got, want, rtol=1e-12)
    assert np.all(got <= flow_cap * (1 + 1e-12))
