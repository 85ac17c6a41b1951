"""The two optional fabric effects against closed forms: the per-message issue gap at the sender
(``message_gap_s``) and receiver incast (``incast_penalty``), both off by default."""

import textwrap

import networkx as nx
import numpy as np
import pytest
import simpy

from sim.collectives import run_collective
from sim.collectives.traffic import zipf
from sim.errors import UserError
from sim.network import Fabric, FabricOptions
from sim.scenario import load_scenario
from sim.topology import load_topology
from sim.topology.cluster import Cluster
from tests.fabrics import SPEC, star

B, LAT, OVH = 100e9, 1e-6, 3e-6
M = 1e6  # bytes per flow; M / B = 10 us


def _fabric(cluster, **opts):
    env = simpy.Environment()
    return env, Fabric(env, cluster, FabricOptions(**opts))


def nic_star(p: int, bandwidth_Bps: float = B, latency_s: float = LAT) -> Cluster:
    """P GPUs on one leaf switch by ``nic``-tier full-duplex links: leaf -> GPU is incast-prone,
    GPU -> leaf (into a switch) is not."""
    g = nx.DiGraph()
    g.add_node("leaf", kind="switch")
    for r in range(p):
        g.add_node(f"g{r}", kind="gpu", rank=r, node=r, local_rank=0)
        for u, v in ((f"g{r}", "leaf"), ("leaf", f"g{r}")):
            g.add_edge(u, v, bandwidth_Bps=bandwidth_Bps, latency_s=latency_s, tier="nic")
    return Cluster.from_graph(f"nic-star{p}", g, SPEC)


def two_leaves(n: int) -> Cluster:
    """GPUs 0..n-1 on leaf a, n..2n-1 on leaf b; a <-> b is one ``nic``-tier link per direction
    (tier nic, but into a switch: not incast-prone)."""
    g = nx.DiGraph()
    for leaf in ("a", "b"):
        g.add_node(leaf, kind="switch")
    for r in range(2 * n):
        leaf = "a" if r < n else "b"
        g.add_node(f"g{r}", kind="gpu", rank=r, node=r, local_rank=0)
        for u, v in ((f"g{r}", leaf), (leaf, f"g{r}")):
            g.add_edge(u, v, bandwidth_Bps=B, latency_s=LAT, tier="nic")
    for u, v in (("a", "b"), ("b", "a")):
        g.add_edge(u, v, bandwidth_Bps=B, latency_s=LAT, tier="nic")
    return Cluster.from_graph(f"two-leaves{n}", g, SPEC)


def _eta(n: int, threshold: int, penalty: float) -> float:
    return 1.0 / (1.0 + penalty * max(0, n - threshold))


# -- message gap -----------------------------------------------------------------------------


@pytest.mark.parametrize("tol", [0.0, 3e-3])
def test_gap_larger_than_a_message_serializes_the_flows(transfer, tol):
    # g > M/B: each flow transmits alone at B, flow i from t0 + i g to t0 + i g + M/B
    n, g = 4, 1.5 * M / B
    tr, _ = transfer(star(n + 1, B, LAT), [0] * n, range(1, n + 1), [M] * n,
                 message_overhead_s=OVH, message_gap_s=g, rate_tolerance=tol)
    t0 = 2 * LAT + OVH
    assert tr.finish_s == pytest.approx(t0 + np.arange(n) * g + M / B, rel=1e-12)
    assert tr.end_s == pytest.approx(t0 + (n - 1) * g + M / B, rel=1e-12)


def test_overlapping_gaps_share_the_uplink_exactly(transfer):
    # g = M/(2B), in units of M/B after t0: [0, .5] flow 0 alone (sends .5); [.5, 1] flows 0, 1
    # at 1/2 (flow 0 left .25, flow 1 left .75); at 1 flow 2 arrives, all at 1/3: flow 0 ends
    # at 1.75 (flows 1, 2 left .5, .75); then 1/2 each: flow 1 ends at 2.75 (flow 2 left .25),
    # flow 2 alone ends at 3 = 3 M/B (the uplink was never idle).
    g = M / (2 * B)
    tr, _ = transfer(star(4, B, LAT), [0, 0, 0], [1, 2, 3], [M] * 3,
                 message_overhead_s=OVH, message_gap_s=g, rate_tolerance=0.0)
    assert tr.finish_s == pytest.approx(2 * LAT + OVH + np.array([1.75, 2.75, 3.0]) * M / B,
                                        rel=1e-12)


@pytest.mark.parametrize(("n", "gap"), [(5, 0.3), (8, 0.9)])
def test_overlapping_gaps_keep_the_uplink_busy(transfer, n, gap):
    # g < M/B: flow i arrives at t0 + i g, before the i bytes-worth of earlier flows (i M/B)
    # have drained, so the uplink never idles and the last flow ends at t0 + n M/B
    tr, _ = transfer(star(n + 1, B, LAT), [0] * n, range(1, n + 1), [M] * n,
                 message_overhead_s=OVH, message_gap_s=gap * M / B, rate_tolerance=0.0)
    assert tr.end_s == pytest.approx(2 * LAT + OVH + n * M / B, rel=1e-12)
    assert np.all(np.diff(tr.finish_s) > 0)  # first issued, first done


def test_gap_zero_reproduces_the_closed_form_bit_for_bit(transfer):
    n = 6
    args = (star(n + 1, B, LAT), [0] * n, range(1, n + 1), [M] * n)
    tr, _ = transfer(*args, message_overhead_s=OVH, message_gap_s=0.0)
    assert tr.finish_s == pytest.approx([2 * LAT + OVH + n * M / B] * n, rel=1e-12)
    old, _ = transfer(*args, message_overhead_s=OVH)
    assert np.array_equal(tr.finish_s, old.finish_s)
    mat = zipf(16, 8e6, 1.2, np.random.default_rng(5))
    runs = [run_collective(star(16, B, LAT), "all_to_all", "direct", mat, FabricOptions(**o))
            for o in ({}, {"message_gap_s": 0.0})]
    assert runs[0].time_s == runs[1].time_s
    assert runs[0].stats.recomputes == runs[1].stats.recomputes


def test_gap_only_delays_later_flows_of_the_same_source(transfer):
    # interleaved submission: source 0 holds slots 0, 1, 2; sources 1 and 2 slot 0 each
    g = 2 * M / B
    tr, _ = transfer(star(8, B, LAT), [0, 1, 0, 2, 0], [3, 4, 5, 6, 7], [M] * 5,
                 message_overhead_s=OVH, message_gap_s=g)
    t0 = 2 * LAT + OVH
    assert tr.finish_s == pytest.approx(t0 + M / B + np.array([0, 0, 1, 0, 2]) * g, rel=1e-12)


def test_gap_one_message_per_source_costs_nothing(transfer):
    n = 8
    tr, _ = transfer(star(2 * n, B, LAT), range(n), range(n, 2 * n), [M] * n,
                 message_overhead_s=OVH, message_gap_s=1e-3)
    assert tr.finish_s == pytest.approx([2 * LAT + OVH + M / B] * n, rel=1e-12)


def test_empty_flows_take_no_gap_slot(transfer):
    g = 2 * M / B
    tr, _ = transfer(star(4, B, LAT), [0, 0, 0], [1, 2, 3], [0.0, M, M], message_gap_s=g)
    t0 = 2 * LAT
    assert tr.finish_s == pytest.approx([t0, t0 + M / B, t0 + g + M / B], rel=1e-12)


def test_gap_slots_are_counted_per_batch():
    # two batches of source 0 submitted at once both take slot 0: they share the uplink
    env, fab = _fabric(star(3, B, LAT), message_gap_s=10 * M / B)
    a, b = fab.transfer([0], [1], [M]), fab.transfer([0], [2], [M])
    env.run(a & b)
    assert a.value.end_s == pytest.approx(2 * LAT + 2 * M / B, rel=1e-12)
    assert b.value.end_s == pytest.approx(2 * LAT + 2 * M / B, rel=1e-12)


# -- incast ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 8, 9, 12, 16])
def test_incast_rate_is_capacity_times_eta_over_n(n):
    thr, pen = 8, 0.25
    eta = _eta(n, thr, pen)  # 1 up to the threshold, then 1/2 at 12 and 1/3 at 16 flows
    env, fab = _fabric(nic_star(n + 1), incast_threshold_flows=thr, incast_penalty=pen)
    ev = fab.transfer(range(1, n + 1), [0] * n, [M] * n)
    env.run(until=2 * LAT + M / B)  # everyone is transmitting
    down = fab.cluster.links.index[(fab.cluster.node_index["leaf"], 0)]
    assert fab.effective_capacity()[down] == pytest.approx(B * eta, rel=1e-12)
    assert fab.link_load()[down] == pytest.approx(B * eta, rel=1e-12)
    env.run(ev)
    assert ev.value.finish_s == pytest.approx([2 * LAT + n * M / (B * eta)] * n, rel=1e-12)


def test_incast_speeds_up_as_senders_leave(transfer):
    # sizes k M (k = 1..n), rate_tolerance 0: while j flows are done the n - j others share
    # B eta(n - j), so flow k ends at 2 LAT + sum_{j<k} M / (B eta(n - j) / (n - j))
    n, thr, pen = 12, 4, 0.5
    tr, _ = transfer(nic_star(n + 1), range(1, n + 1), [0] * n, M * np.arange(1, n + 1),
                 incast_threshold_flows=thr, incast_penalty=pen, rate_tolerance=0.0)
    phase = [M * (n - j) / (B * _eta(n - j, thr, pen)) for j in range(n)]
    assert tr.finish_s == pytest.approx(2 * LAT + np.cumsum(phase), rel=1e-12)


def test_lazy_incast_is_within_tolerance_of_exact(transfer):
    n, thr, pen, tol = 24, 4, 0.2, 3e-3
    sizes = M * np.random.default_rng(2).uniform(0.5, 2.0, n)
    args = (nic_star(n + 1), range(1, n + 1), [0] * n, sizes)
    exact, _ = transfer(*args, incast_threshold_flows=thr, incast_penalty=pen, rate_tolerance=0.0)
    fast, fab = transfer(*args, incast_threshold_flows=thr, incast_penalty=pen, rate_tolerance=tol)
    assert fab.stats.recomputes < n
    assert exact.end_s * (1 - 1e-9) <= fast.end_s <= exact.end_s * (1 + 2 * tol)


def test_incast_leaves_links_into_switches_alone(transfer):
    n, kw = 12, {"incast_threshold_flows": 2, "incast_penalty": 1.0}
    # one sender to n receivers: its uplink (nic tier, into the leaf) carries n flows at B / n
    tr, _ = transfer(nic_star(n + 1), [0] * n, range(1, n + 1), [M] * n, **kw)
    assert tr.finish_s == pytest.approx([2 * LAT + n * M / B] * n, rel=1e-12)
    # n senders on leaf a to n receivers on leaf b: the a -> b link (nic tier, into a switch)
    # carries n flows at B / n, every last hop one flow
    tr, fab = transfer(two_leaves(n), range(n), range(n, 2 * n), [M] * n, **kw)
    assert tr.finish_s == pytest.approx([3 * LAT + n * M / B] * n, rel=1e-12)
    assert np.array_equal(fab.effective_capacity(), fab.cluster.links.capacity_Bps)


def test_incast_prone_links_are_the_last_nic_hops_into_hosts():
    cl = two_leaves(3)
    fab = Fabric(simpy.Environment(), cl)
    names = cl.node_names
    prone = {(names[s], names[d]) for s, d in zip(cl.links.src[fab.incast_prone],
                                                  cl.links.dst[fab.incast_prone], strict=True)}
    assert prone == {("a", "g0"), ("a", "g1"), ("a", "g2"), ("b", "g3"), ("b", "g4"),
                     ("b", "g5")}
    # shipped topologies: into a GPU (one NIC per GPU) or into a NIC node (shared NICs)
    for topo, kind in (("h100-leaf-spine", "gpu"), ("a100-p4d", "nic")):
        cl = load_topology(topo, {"nodes": 2})
        fab = Fabric(simpy.Environment(), cl)
        links, g = cl.links, cl.graph.nodes
        nic = links.tier == "nic"
        into = np.array([g[cl.node_names[d]]["kind"] for d in links.dst])
        assert fab.incast_prone.sum() > 0
        assert np.array_equal(fab.incast_prone, nic & (into != "switch"))
        assert set(into[fab.incast_prone]) == {kind}


@pytest.mark.parametrize("n", [4, 16])
def test_incast_penalty_zero_changes_nothing(transfer, n):
    tr, _ = transfer(nic_star(n + 1), range(1, n + 1), [0] * n, [M] * n,
                 incast_threshold_flows=1, incast_penalty=0.0)
    assert tr.finish_s == pytest.approx([2 * LAT + n * M / B] * n, rel=1e-12)
    mat = zipf(16, 8e6, 1.2, np.random.default_rng(9))
    runs = [run_collective(nic_star(16), "all_to_all", "direct", mat, FabricOptions(**o))
            for o in ({}, {"incast_threshold_flows": 1, "incast_penalty": 0.0})]
    assert runs[0].time_s == runs[1].time_s
    assert runs[0].stats.recomputes == runs[1].stats.recomputes
    # and the penalty does bite on the same traffic
    hit = run_collective(nic_star(16), "all_to_all", "direct", mat,
                         FabricOptions(incast_threshold_flows=1, incast_penalty=0.5))
    assert hit.time_s > runs[0].time_s * 1.05


def test_incast_allocation_stays_within_effective_capacity():
    p = 16
    cl = nic_star(p)
    env, fab = _fabric(cl, incast_threshold_flows=2, incast_penalty=0.3, rate_tolerance=0.05)
    mat = zipf(p, 16e6, 1.5, np.random.default_rng(3))
    s, d = np.nonzero(mat)
    ev = fab.transfer(s, d, mat[s, d])
    peaks, bites = [], []

    def monitor():
        while not ev.triggered:
            eff = fab.effective_capacity()
            load = fab.link_load()
            peaks.append((load / eff).max())
            assert np.all(load <= cl.links.capacity_Bps * (1 + 1e-9))
            bites.append(((eff < cl.links.capacity_Bps) & (load > 0.99 * eff)).any())
            yield env.timeout(5e-6)

    env.process(monitor())
    env.run(ev)
    assert len(peaks) > 20 and max(peaks) <= 1 + 1e-9
    assert any(bites)  # some incast-limited link was running full


def test_fabric_rejects_bad_options():
    for opts in ({"message_gap_s": -1e-6}, {"incast_penalty": -0.1},
                 {"incast_threshold_flows": 0}):
        with pytest.raises(ValueError, match=next(iter(opts))):
            Fabric(simpy.Environment(), star(2), FabricOptions(**opts))


# -- scenario fields -------------------------------------------------------------------------

SCENARIO = """\
name: effects
topology: dgx-h100
fabric:
{fabric}
benchmark:
  collective: all_to_all
  sizes: [1MiB]
"""


def _scenario(tmp_path, fabric: str, sets=()):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(fabric=textwrap.indent(fabric, "  ")))
    return load_scenario(path, list(sets))


def test_scenario_fields_reach_the_fabric(tmp_path):
    sc = _scenario(tmp_path, "message_gap_us: 2.5\nincast_threshold_flows: 4\n"
                             "incast_penalty: 0.125\n")
    opts = FabricOptions.from_settings(sc.fabric)
    assert opts.message_gap_s == pytest.approx(2.5e-6, rel=1e-15)
    assert opts.incast_threshold_flows == 4 and opts.incast_penalty == 0.125
    sc = _scenario(tmp_path, "ecmp: balanced\n", ["fabric.message_gap_us=1"])
    assert FabricOptions.from_settings(sc.fabric).message_gap_s == pytest.approx(1e-6)
    # defaults are off and equal the engine's defaults
    sc = _scenario(tmp_path, "ecmp: balanced\n")
    assert FabricOptions.from_settings(sc.fabric) == FabricOptions()


@pytest.mark.parametrize(("line", "expected"), [
    ("message_gap_us: -1.0", "fabric.message_gap_us: must be >= 0 (got -1.0)"),
    ("incast_penalty: -0.5", "fabric.incast_penalty: must be >= 0 (got -0.5)"),
    ("incast_threshold_flows: 0", "fabric.incast_threshold_flows: must be >= 1 (got 0)"),
    ("incast_threshold_flows: 2.5", "fabric.incast_threshold_flows: must be an integer"),
])
def test_scenario_rejects_bad_effect_fields(tmp_path, line, expected):
    with pytest.raises(UserError) as info:
        _scenario(tmp_path, line + "\n")
    assert expected in str(info.value)


def test_staggered_messages_share_solves_within_the_tolerance():
    # 64 messages of 8 sources, issued 0.01 M/B apart, sharing receivers: under tol each later
    # message may wait up to tol x the batch's drain bound for a solve (others may gain a
    # little meanwhile); the batch ends within 2 tol of exact, on fewer solves
    cl = star(16, B, LAT)
    src = np.repeat(np.arange(8), 8)
    dst = 8 + (src + np.tile(np.arange(8), 8)) % 8
    nbytes = M * (1 + np.arange(64) % 5)
    runs = {}
    for tol in (0.0, 0.01):
        env, fab = _fabric(cl, message_overhead_s=OVH, message_gap_s=0.01 * M / B,
                           rate_tolerance=tol)
        ev = fab.transfer(src, dst, nbytes)
        env.run(ev)
        runs[tol] = (ev.value, fab.stats.recomputes)
    (exact, n_exact), (lazy, n_lazy) = runs[0.0], runs[0.01]
    assert lazy.duration_s == pytest.approx(exact.duration_s, rel=2 * 0.01)
    assert lazy.duration_s != exact.duration_s  # the waits did happen
    assert n_lazy < n_exact
    # the first message of every source starts on time: alone on the fabric it ends exactly
    env, fab = _fabric(cl, message_overhead_s=OVH, message_gap_s=0.2 * M / B,
                       rate_tolerance=0.01)
    ev = fab.transfer(np.arange(8), 8 + np.arange(8), [M] * 8)
    env.run(ev)
    assert ev.value.finish_s == pytest.approx([2 * LAT + OVH + M / B] * 8, rel=1e-12)
