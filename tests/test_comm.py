"""The communication model: nccl-tests logs read as printed, profiles, the library's costs on
the fabric, and `moesim calibrate` (a moe-sim log of a known profile gives the profile back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.calibrate.nccltests import Measurement, format_log, read_measurements
from sim.collectives import run_collective
from sim.collectives.metrics import busbw_bytes_per_s
from sim.comm import IDEAL, load_profile
from sim.comm.model import Model
from sim.errors import UserError
from sim.network import FabricOptions, Routes
from sim.topology import load_topology
from tests.conftest import REPO

DATA = REPO / "data" / "calibration"


def test_the_shipped_logs_are_read_row_by_row():
    n1 = read_measurements(DATA / "h100-cluster01-nccl_N1_G8.log")
    n10 = read_measurements(DATA / "h100-cluster01-nccl_N10_G8.log")
    for log, ranks, nodes in ((n1, 8, 1), (n10, 80, 10)):
        assert len(log) == 50
        assert [m.collective for m in log[::10]] == ["all_reduce", "all_gather",
                                                     "reduce_scatter", "all_to_all", "sendrecv"]
        assert {(m.ranks, m.nodes) for m in log} == {(ranks, nodes)}
    first = n1[0]
    assert (first.size_bytes, first.time_s) == (33554432, pytest.approx(182.87e-6))
    assert n10[-1].size_bytes == 17179869184 and n10[-1].time_s == pytest.approx(1.128428)
    csv = read_measurements(DATA / "h100-together-allgather-ring.csv")
    assert len(csv) == 21 and csv[0].size_bytes == 128 and csv[0].algorithm == "ring"


@pytest.mark.parametrize(("text", "words"), [
    ("hello\nworld\n", "not nccl-tests output"),
    ("# Collective test starting: all_reduce_perf\n#  Rank  0 Group 0 Pid 1 on h device 0 x\n"
     "#  size count type redop root time algbw busbw #wrong time algbw busbw #wrong\n",
     "no data rows"),
    ("# Collective test starting: broadcast_perf\n", "broadcast_perf: not supported"),
    ("# Collective test starting: all_reduce_perf\n#  Rank  0 Group 0 Pid 1 on h device 0 x\n"
     "#  size count type redop root time algbw busbw #wrong\n  big 1 float sum -1 zz 1 1 0\n",
     "line 4: size and time must be numbers"),
    ("# Collective test starting: all_reduce_perf\n"
     "#  size count type redop root time algbw busbw #wrong\n 1024 1 float sum -1 10 1 1 0\n",
     "line 3: no '#  Rank N ... on HOST device ...' lines"),
    ("collective,gpus,size_bytes\nall_gather,8,128\n", "algorithm: missing column"),
])
def test_bad_logs_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "x.log"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        read_measurements(path)
    assert str(e.value).startswith(f"{path}") and words in str(e.value)
    assert "\n" not in str(e.value)


def test_profiles_are_found_by_name_and_checked():
    h100 = load_profile("h100-nccl")
    assert h100.name == "h100-nccl" and not h100.is_ideal and IDEAL.is_ideal
    assert load_profile("ideal") is IDEAL
    with pytest.raises(UserError, match="unknown communication profile name; available: "
                                        r".*h100-nccl"):
        load_profile("nope")


@pytest.mark.parametrize(("body", "words"), [
    ("launch_us: 5\nlink_eficiency: {}\n", "link_eficiency: unknown field"),
    ("link_efficiency: {nvlink: 1.5}\n", "link_efficiency.nvlink: must be <= 1 (got 1.5)"),
    ("protocols: {LL256: {}}\n", "protocols.LL256"),
    ("launch_us: -1\n", "launch_us: must be >= 0"),
    ("deepep: {forward_gbps: -3, nvlink_gbps: 1000}\n", "deepep.forward_gbps: must be > 0"),
    ("deepep: {nvlink_gbps: 1000}\n", "deepep.forward_gbps"),
])
def test_bad_profiles_name_the_file_and_field(tmp_path, body, words):
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(UserError) as e:
        load_profile(path)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value)


def _busbw(cluster, profile, collective, size, **kw):
    options = FabricOptions(link_efficiency=tuple(profile.link_efficiency.items()),
                            rate_tolerance=0.0)
    routes = Routes(cluster, options.ecmp)
    res = run_collective(cluster, collective, kw.get("algorithm"), size, options, routes,
                         Model(cluster, profile, routes=routes), kw.get("protocol"))
    return res, busbw_bytes_per_s(collective, size, res.time_s, cluster.num_gpus)


def test_a_calibrated_all_reduce_reaches_its_asymptote_and_its_fixed_cost():
    cluster, prof = load_topology("dgx-h100"), load_profile("h100-nccl")
    p = cluster.num_gpus
    nvlink = cluster.links.capacity_Bps[cluster.links.tier == "nvlink"].max()
    # large: NVLS, every GPU's buffer through the switch at the NVLS share of the NVLink rate
    res, busbw = _busbw(cluster, prof, "all_reduce", 16 * 2**30)
    assert res.algorithm == "nvls"
    assert busbw == pytest.approx(2 * (p - 1) / p * nvlink * prof.nvls.efficiency, rel=0.01)
    # a ring at large sizes: the NVLink rate at its achieved share
    res, busbw = _busbw(cluster, prof, "all_reduce", 16 * 2**30, algorithm="ring",
                        protocol="Simple")
    assert busbw == pytest.approx(nvlink * prof.link_efficiency["nvlink"], rel=0.01)
    # small: the launch and the protocol's steps, nothing else to speak of
    res, _ = _busbw(cluster, prof, "all_reduce", 1024)
    proto = prof.protocols[res.protocol]
    fixed = (prof.launch_us + 2 * (p - 1) * proto.step_us) * 1e-6
    assert fixed < res.time_s < 1.1 * fixed


def test_the_simulated_collective_equals_the_model_prediction_on_an_idle_cluster():
    cluster, prof = load_topology("h100-leaf-spine", {"nodes": 2}), load_profile("h100-nccl")
    model = Model(cluster, prof)
    for collective, size in (("all_reduce", 2**28), ("all_gather", 2**26),
                             ("all_to_all", 2**27), ("sendrecv", 2**25)):
        a, p = model.choose(collective, size)
        data = np.full((16, 16), size / 16) if collective == "all_to_all" else size
        res, _ = _busbw(cluster, prof, collective, data if collective == "all_to_all" else size)
        assert (res.algorithm, res.protocol) == (a, p)
        assert res.time_s == pytest.approx(model.predict(collective, a, p, size), rel=1e-3)


def test_point_to_point_channels_are_halved_as_nccl_halves_them_for_many_peers():
    """NCCL (ncclTopoComputeP2pChannels, more than one server): the channels per network peer
    are halved while they times ceil(ranks / 8) exceed the point-to-point channels, so 80 ranks
    get half the per-peer rate of 40 or 10 (the cluster's sendrecv logs: 15 vs 25 GB/s)."""
    prof = load_profile("h100-nccl")
    p2p = prof.p2p
    rate = {}
    for nodes, gpus in ((10, 8), (10, 4), (10, 1)):
        cluster = load_topology("h100-leaf-spine", {"nodes": nodes, "gpus_per_node": gpus,
                                                    "nics_per_node": gpus})
        model = Model(cluster, prof)
        ranks = nodes * gpus
        rounds = -(-ranks // 8)
        want = p2p.net_channels
        while want > 1 and want * rounds > p2p.channels:
            want //= 2
        assert model.net_peer_channels() == want
        cap = model.p2p_cap_Bps(np.array([2.0**30]), np.array([True]))[0]
        assert cap == pytest.approx(want * p2p.net_channel_gbps * 1e9 / 8)
        res, _ = _busbw(cluster, prof, "sendrecv", 2**30)
        rate[gpus] = 2**30 / res.time_s
    assert rate[4] == pytest.approx(2 * rate[8], rel=0.02)
    assert rate[1] == pytest.approx(rate[4], rel=0.02)


@pytest.mark.parametrize("log", ["calibration/h100-cluster01-nccl_N1_G8.log",
                                 "validation/h100-cluster01-nccl_N1_G4.log"])
def test_point_to_point_transfers_split_over_channels_as_nccl_splits_them(log):
    """NCCL's enqueue: per-peer channels halved while they x ranks exceed the 32 point-to-point
    channels (8 ranks: 4, 4 ranks: 8), then doubled while a part exceeds 32 chunks of 512 KiB.
    The single-server sendrecv logs step with exactly these counts: the measured rate per
    channel is the same at every size until the NVLink rate caps it."""
    ms = [m for m in read_measurements(REPO / "data" / log) if m.collective == "sendrecv"
          and m.size_bytes <= 2**28]
    ranks = ms[0].ranks
    cluster = load_topology("h100-leaf-spine", {"nodes": 1, "gpus_per_node": ranks,
                                                "nics_per_node": ranks})
    model = Model(cluster, load_profile("h100-nccl"))
    sizes = np.array([m.size_bytes for m in ms], float)
    channels = model.p2p_channels(sizes)
    low = 32 // ranks
    assert channels[0] == low and set(channels) <= {low, 2 * low, 4 * low, 8 * low}
    for m, n in zip(ms, channels, strict=True):
        parts = m.size_bytes / n
        assert parts <= 32 * 2**19 and (n == low or parts > 16 * 2**19)
    per_channel = sizes / np.array([m.time_s for m in ms]) / channels
    assert per_channel.max() / per_channel.min() < 1.15


def test_nvls_competes_with_the_ring_whatever_protocol_the_thresholds_pick():
    """The thresholds pick a ring's protocol; NVLS (Simple only) still competes by time at
    sizes where the ring would run LL128, as NCCL's tuner weighs every pair it supports."""
    cluster, prof = load_topology("dgx-h100"), load_profile("h100-nccl")
    slow_nvls = prof.model_copy(update={"protocol_max_bytes": {"LL": 4096, "LL128": 2**34}})
    model = Model(cluster, slow_nvls)
    size = 2**28
    assert model.protocol_for(size) == "LL128"
    ring = model.predict("all_reduce", "ring", "LL128", size)
    nvls = model.predict("all_reduce", "nvls", "Simple", size)
    assert nvls < ring  # NVLink SHARP moves each byte once each way, the ring twice
    assert model.choose("all_reduce", size) == ("nvls", "Simple")
    assert model.best_time("all_reduce", [size])[0] == pytest.approx(min(ring, nvls))
    # pinned, the protocol is obeyed; one the algorithm cannot run is refused, naming the rest
    assert model.choose("all_reduce", size, protocol="LL128") == ("ring", "LL128")
    with pytest.raises(ValueError, match=r"offers no direct/LL128 .*\(it offers direct/Simple"):
        model.choose("all_to_all", size, "direct", "LL128")


def test_a_ring_across_servers_pays_the_network_overhead_on_every_step():
    """NCCL's tuner: on a ring that spans servers no step is shorter than the protocol's
    network overhead, the steps inside a server included; on one server it does not apply."""
    from sim.comm.profile import CommProfile

    prof = CommProfile.model_validate({
        "launch_us": 10.0, "protocols": {"Simple": {"step_us": 2.0, "net_step_us": 9.0,
                                                    "net_overhead_us": 5.0}}})
    for nodes, gpus, step in ((10, 8, 5.0), (10, 1, 5.0), (1, 8, 2.0)):
        cluster = load_topology("h100-leaf-spine", {"nodes": nodes, "gpus_per_node": gpus,
                                                    "nics_per_node": gpus})
        model = Model(cluster, prof)
        p, n = nodes * gpus, nodes
        for collective, steps, cross in (("all_reduce", 2 * (p - 1), 2 * (n - 1)),
                                         ("all_gather", p - 1, n - 1)):
            want = (10.0 + (steps - cross) * step + cross * 9.0) * 1e-6
            assert model.fixed_cost_s(collective, "ring", "Simple") == pytest.approx(want)
            assert model.group_delay_s(collective, "Simple", p, n) == pytest.approx(want)


def test_an_alltoall_pays_one_step_per_round_of_eight_peers():
    """The library serves an alltoall's P - 1 peers 8 at a time: ceil((P - 1) / 8) network
    steps across servers (80 ranks: 10), one for sendrecv."""
    from sim.comm.profile import CommProfile, P2PCost

    prof = CommProfile.model_validate({
        "launch_us": 10.0, "protocols": {"Simple": {"step_us": 2.0, "net_step_us": 9.0}}})
    for nodes, rounds in ((10, 10), (2, 2), (1, 1)):
        model = Model(load_topology("h100-leaf-spine", {"nodes": nodes}), prof)
        step = 9.0 if nodes > 1 else 2.0
        assert model.fixed_cost_s("all_to_all", "direct", "Simple") == \
            pytest.approx((10.0 + rounds * step) * 1e-6)
        assert model.fixed_cost_s("sendrecv", "direct", "Simple") == \
            pytest.approx((10.0 + step) * 1e-6)
    # a profile with its own round latency across servers uses it for every round
    with_rounds = prof.model_copy(update={"p2p": P2PCost(
        channel_gbps=100.0, net_channels=4, net_channel_gbps=60.0, round_us=30.0)})
    model = Model(load_topology("h100-leaf-spine", {"nodes": 10}), with_rounds)
    assert model.fixed_cost_s("all_to_all", "direct", "Simple") == \
        pytest.approx((10.0 + 10 * 30.0) * 1e-6)
    assert model.group_delay_s("all_to_all", "Simple", 17, 3) == \
        pytest.approx((10.0 + 2 * 30.0) * 1e-6)


def test_ideal_is_the_fluid_model(tmp_path):
    cluster = load_topology("dgx-h100")
    plain = run_collective(cluster, "all_gather", None, 2**26)
    with_model = run_collective(cluster, "all_gather", None, 2**26,
                                model=Model(cluster, IDEAL))
    assert plain.time_s == with_model.time_s and with_model.protocol == "Simple"


def _known_profile() -> dict:
    return {"name": "known", "launch_us": 17.0, "link_efficiency": {"nvlink": 0.7},
            "protocols": {"Simple": {"efficiency": 1.0, "step_us": 3.0}}}


def test_calibrate_gives_back_the_profile_that_made_the_log(tmp_path, moesim):
    known = tmp_path / "known.yaml"
    known.write_text(yaml.safe_dump(_known_profile()))
    cluster = load_topology("dgx-h100")
    prof = load_profile(known)
    rows = []
    for collective in ("all_reduce", "all_gather"):
        for size in 2.0 ** np.arange(10, 32, 3):
            res, _ = _busbw(cluster, prof, collective, float(size))
            rows.append(Measurement(collective, int(size), res.time_s, 8, 1, "sim"))
    log = tmp_path / "sim.log"
    log.write_text(format_log(rows))
    assert [(m.collective, m.size_bytes) for m in read_measurements(log)] == \
        [(m.collective, m.size_bytes) for m in rows]
    start = tmp_path / "start.yaml"
    start.write_text(yaml.safe_dump({**_known_profile(), "launch_us": 40.0,
                                     "link_efficiency": {"nvlink": 0.95},
                                     "protocols": {"Simple": {"step_us": 9.0}}}))
    out = tmp_path / "fitted.yaml"
    proc = moesim("calibrate", log, "--topology", "dgx-h100", "--start", start, "--out", out,
                  "--fit", "launch_us,link_efficiency.nvlink,protocols.Simple.step_us",
                  "--maxiter", "40")
    assert proc.returncode == 0, proc.stderr
    fitted = load_profile(out)
    assert fitted.launch_us == pytest.approx(17.0, rel=0.02)
    assert fitted.link_efficiency["nvlink"] == pytest.approx(0.7, rel=0.01)
    assert fitted.protocols["Simple"].step_us == pytest.approx(3.0, rel=0.05)
    assert "# calibrated: median |error| 0.0%" in proc.stdout


def test_restarts_keep_the_fit_of_least_error(tmp_path, monkeypatch):
    """--restarts N fits from seeds seed .. seed+N-1 and keeps the least RMS log error."""
    import dataclasses

    import sim.calibrate.run as run

    cluster = load_topology("dgx-h100")
    prof = load_profile("h100-nccl")
    rows = [Measurement("all_gather", int(size), _busbw(cluster, prof, "all_gather",
                                                        float(size))[0].time_s, 8, 1, "sim")
            for size in 2.0 ** np.arange(10, 32, 3)]
    log = tmp_path / "sim.log"
    log.write_text(format_log(rows))
    real, seeds = run.fit, []
    rms = {5: 0.3, 6: 0.1, 7: 0.2}  # the middle seed is the best

    def fit(*args, seed, **kw):
        seeds.append(seed)
        return dataclasses.replace(real(*args, seed=seed, **kw), rms=rms[seed])

    monkeypatch.setattr(run, "fit", fit)
    kw = {"maxiter": 3, "only": ["launch_us", "link_efficiency.nvlink",
                                 "protocols.Simple.step_us"]}
    assert run.calibrate([log], "dgx-h100", seed=5, restarts=3, **kw).fit.rms == 0.1
    assert seeds == [5, 6, 7]
    assert run.calibrate([log], "dgx-h100", seed=7, **kw).fit.rms == 0.2


@pytest.mark.parametrize("case", ["not_nccl", "no_rows", "ranks", "bad_profile",
                                  "unphysical", "bad_fit"])
def test_calibrate_bad_input_is_one_line_and_writes_nothing(tmp_path, moesim, case):
    log = tmp_path / "x.log"
    good = read_measurements(DATA / "h100-cluster01-nccl_N1_G8.log")[:3]
    log.write_text(format_log(good))
    args = ["--topology", "dgx-h100"]
    if case == "not_nccl":
        log.write_text("nothing here\n")
    elif case == "no_rows":
        log.write_text("\n".join(format_log(good).splitlines()[:15]) + "\n")
    elif case == "ranks":
        log.write_text(format_log([Measurement("all_reduce", 1024, 1e-5, 12, 1, "x")]))
    elif case in ("bad_profile", "unphysical"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("launch_usec: 3\n" if case == "bad_profile" else
                       "link_efficiency: {nvlink: 2}\n")
        args += ["--start", str(bad)]
    else:
        args += ["--fit", "launch_us,no_such_thing"]
    out = tmp_path / "p.yaml"
    proc = moesim("calibrate", log, *args, "--out", out, "--maxiter", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not out.exists()


def test_validation_doc_is_what_its_script_writes():
    """docs/validation.md is generated; the script's tables must match the profile in use."""
    text = (REPO / "docs" / "validation.md").read_text()
    assert text.startswith("# Validation against measurements")
    assert "python benchmarks/validate.py" in text
    for name in ("h100-cluster01-nccl_N1_G8", "h100-cluster01-nccl_N10_G8",
                 "h100-together-allgather-ring"):
        assert (REPO / "docs" / "validation" / f"{name}.html").is_file()
    assert Path(REPO / "profiles" / "h100-nccl.yaml").is_file()


def test_a_training_step_pays_the_library_on_every_exchange(training_scenario):
    from sim.moe.run import run_training

    cluster = load_topology("dgx-h100")
    ideal = run_training(training_scenario(), cluster).summary
    nccl = run_training(training_scenario(["comm_profile=h100-nccl"]), cluster).summary
    assert (ideal["comm_profile"], nccl["comm_profile"]) == ("ideal", "h100-nccl")
    prof = load_profile("h100-nccl")
    exchanges = 2 * 4  # two MoE layers: dispatch and combine, forward and backward
    fixed = (prof.launch_us + prof.protocols["Simple"].step_us) * 1e-6  # one server
    assert nccl["a2a_time_s"] - ideal["a2a_time_s"] >= exchanges * fixed * 0.999
    assert nccl["step_time_s"] > ideal["step_time_s"]
    assert nccl["intra_node_bytes"] == ideal["intra_node_bytes"]  # the same traffic, slower
