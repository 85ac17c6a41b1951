"""MoE dispatchers (training.dispatcher) and the dispatch benchmark (DeepEP's test): DeepEP
moves one copy per (token, destination node) across servers and one per (token, destination
GPU) over NVLink, at the bytes per token of its FP8 dispatch and BF16 combine; the fitted
DeepEP profile reproduces the published table and the row it never saw."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sim.comm import IDEAL, load_profile
from sim.errors import UserError
from sim.moe.dispatch_benchmark import choices, route, run_dispatch
from sim.moe.dispatchers import deepep_matrix, distinct_tokens, relay, token_bytes
from sim.scenario import load_scenario
from sim.topology import load_topology
from tests.conftest import REPO, TWO_SERVERS

DEEPEP = REPO / "scenarios" / "deepep-h800.yaml"


def test_token_bytes_are_fp8_with_a_scale_per_128_values_and_bf16():
    assert token_bytes(7168, "fp8") == 7168 + 7168 / 128 * 4 == 7392
    assert token_bytes(7168, "bf16") == 2 * 7168
    assert token_bytes(100, "fp8") == 104  # one scale for the partial block too


def test_distinct_tokens_count_each_token_once_per_gpu_and_per_node():
    node = np.array([0, 0, 1, 1])
    # token 0 -> experts on GPUs 2 and 3 (one node), token 1 -> GPUs 2, 2 and 0
    gpu_tokens, node_tokens = distinct_tokens([0, 0, 1, 1, 1], [2, 3, 2, 2, 0], 4, node)
    assert gpu_tokens.tolist() == [1, 0, 2, 1]
    assert node_tokens.tolist() == [1, 2]


def test_deepep_crosses_the_network_once_per_node_then_forwards_on_nvlink():
    node, local = np.repeat([0, 1], 4), np.tile(np.arange(4), 2)
    assert relay(node, local)[1].tolist() == [1, 5]  # GPU 1's peer on node 1 is GPU 5
    gpu_tokens = np.zeros((8, 8))
    node_tokens = np.zeros((8, 2))
    gpu_tokens[1, [2, 5, 6]] = [3, 4, 2]  # GPU 1: 3 tokens to GPU 2, 4 to 5, 2 to 6
    node_tokens[1] = [3, 5]  # 5 distinct tokens for node 1 (some go to both 5 and 6)
    m = deepep_matrix(gpu_tokens, node_tokens, node, local, 10.0)
    assert m[1, 5] == 50  # the network stage, to the relay (which keeps its own 4)
    assert m[5, 6] == 20  # the relay forwards over NVLink
    assert m[1, 2] == 30  # the own node: NVLink only
    assert m.sum() == 100
    assert m[node[:, None] != node[None, :]].sum() == 50  # one copy per (token, node)


def _dispatch(tmp_path, nodes: int, **dispatch) -> object:
    data = yaml.safe_load(DEEPEP.read_text())
    data["topology"]["nodes"] = nodes
    data["dispatch"].update(dispatch)
    path = tmp_path / f"d{nodes}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_scenario(path)


def test_the_routing_is_node_limited_and_counted_by_brute_force(tmp_path):
    sc = _dispatch(tmp_path, 8, tokens_per_gpu=64, num_experts=128)
    cluster = load_topology(*(sc.topology.name, sc.topology.overrides))
    node = cluster.node_of
    r = route(sc.dispatch, node, sc.seed)
    per_gpu = 128 // 64
    for g, chosen in enumerate(choices(sc.dispatch, node, sc.seed)):
        assert chosen.shape == (64, 8)
        gpus = [set(row // per_gpu) for row in chosen]
        nodes = [{int(node[x]) for x in s} for s in gpus]
        assert max(map(len, nodes)) <= 4  # topk_nodes
        assert r.gpu_tokens[g].tolist() == [sum(d in s for s in gpus) for d in range(64)]
        assert r.node_tokens[g].tolist() == [sum(n in s for s in nodes) for n in range(8)]
        assert r.pairs[g].sum() == 64 * 8


def test_deepep_moves_one_network_copy_per_token_and_node_at_its_bytes(tmp_path):
    sc = _dispatch(tmp_path, 2, tokens_per_gpu=256)
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    r = route(sc.dispatch, cluster.node_of, sc.seed)
    out = run_dispatch(sc, cluster, IDEAL, r)
    remote = sum(r.node_tokens[g, n] for g in range(16) for n in range(2)
                 if n != cluster.node_of[g])
    assert out["inter_node_bytes"] == pytest.approx(remote * (7392 + 2 * 7168), rel=1e-12)
    # the same routing through the all-to-all dispatcher sends every (token, expert) copy
    a2a = run_dispatch(sc.model_copy(update={"dispatch": sc.dispatch.model_copy(
        update={"dispatcher": "alltoall"})}), cluster, IDEAL, r)
    pairs_remote = sum(r.pairs[g, d] for g in range(16) for d in range(16)
                       if cluster.node_of[g] != cluster.node_of[d])
    assert a2a["inter_node_bytes"] == pytest.approx(pairs_remote * (7392 + 2 * 7168))
    assert out["inter_node_bytes"] < a2a["inter_node_bytes"]


def test_deepep_bandwidth_is_counted_as_deepeps_test_counts_it(tmp_path):
    sc = _dispatch(tmp_path, 2, tokens_per_gpu=256)
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    r = route(sc.dispatch, cluster.node_of, sc.seed)
    out = run_dispatch(sc, cluster, IDEAL, r)
    assert out["nodes_per_token"] == pytest.approx(r.node_tokens.sum() / (16 * 256))
    # on an ideal fabric the dispatch takes at least its busiest link's bytes / rate
    m = deepep_matrix(r.gpu_tokens, r.node_tokens, cluster.node_of, cluster.local_rank, 7392)
    nic_out = max(m[g][cluster.node_of != cluster.node_of[g]].sum() for g in range(16))
    assert out["dispatch_time_s"] >= nic_out / 50e9 * (1 - 1e-9)
    assert out["dispatch_time_s"] <= 1.5 * max(nic_out / 50e9, m.sum(axis=1).max() / 200e9)


def test_deepep_kernel_floor_and_fixed_cost_bound_each_gpu(tmp_path):
    sc = _dispatch(tmp_path, 1, tokens_per_gpu=256)
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    prof = load_profile("h800-nccl")
    r = route(sc.dispatch, cluster.node_of, sc.seed)
    out = run_dispatch(sc, cluster, prof, r)
    received = r.gpu_tokens.sum(axis=0) * 7392.0
    floor = prof.deepep.launch_us * 1e-6 + received.max() / (prof.deepep.nvlink_gbps * 1e9 / 8)
    assert out["dispatch_time_s"] >= floor * (1 - 1e-12)
    ideal = run_dispatch(sc, cluster, IDEAL, r)
    assert out["dispatch_time_s"] > ideal["dispatch_time_s"]


def test_the_fitted_deepep_profile_reproduces_the_table_and_the_row_it_never_saw():
    from sim.calibrate.deepep import Bench, error, read_table

    target = 0.15  # issue 14: every row of DeepEP's table within 15 %
    prof = load_profile("h800-nccl")
    fitted = Bench(read_table()).predict(prof)
    assert max(abs(error(r)) for r in fitted) <= target
    held_out = Bench(read_table(REPO / "data" / "validation" / "deepep-h800-normal-64.csv"))
    assert max(abs(error(r)) for r in held_out.predict(prof)) <= target


def test_fit_recovers_the_deepep_parameters_that_made_the_table(tmp_path):
    from sim.calibrate.deepep import Bench, Row, fit_deepep, with_deepep

    base = load_profile("h800-nccl").model_copy(update={"deepep": None})
    truth = with_deepep(base, [60.0, 300.0, 1100.0])
    shapes = [Row("intranode", 8, 1, "nvlink", 1, 1), Row("internode", 16, 2, "rdma", 1, 1),
              Row("internode", 32, 4, "rdma", 1, 1)]  # the table's shapes, fewer tokens
    sets = ["dispatch.tokens_per_gpu=1024"]
    made = Bench(shapes, sets=sets).predict(truth)
    rows = [Row(s.kernel, s.ranks, s.nodes, s.link, d["predicted_GBps"], c["predicted_GBps"])
            for s, d, c in zip(shapes, made[::2], made[1::2], strict=True)]
    got = fit_deepep(Bench(rows, sets=sets), base).deepep
    assert got.forward_gbps == pytest.approx(300.0, rel=0.01)
    assert got.nvlink_gbps == pytest.approx(1100.0, rel=0.01)
    assert got.launch_us == pytest.approx(60.0, abs=1.0)


@pytest.mark.parametrize("body, words", [
    ("kernel,ranks\nx,1\n", "header must be kernel,ranks,nodes,link"),
    ("# only comments\n", "no table"),
    ("kernel,ranks,nodes,link,dispatch_GBps,combine_GBps\n", "no data rows"),
    ("kernel,ranks,nodes,link,dispatch_GBps,combine_GBps\nx,8,1,pcie,1,1\n", "link must be"),
    ("kernel,ranks,nodes,link,dispatch_GBps,combine_GBps\nx,eight,1,nvlink,1,1\n", "integers"),
])
def test_bad_deepep_tables_are_one_line_errors(tmp_path, body, words):
    from sim.calibrate.deepep import read_table

    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(UserError, match=words) as e:
        read_table(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_the_deepep_scenario_runs_from_the_cli(moesim, tmp_path):
    out = tmp_path / "run"
    proc = moesim("run", DEEPEP, "--out", out, "--set", "dispatch.tokens_per_gpu=256")
    assert proc.returncode == 0, proc.stderr
    assert "dispatch RDMA bandwidth (DeepEP's counting)" in proc.stdout
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["kind"] == "dispatch" and summary["dispatcher"] == "deepep"


@pytest.mark.parametrize("sets, words", [
    (["dispatch.topk=300"], "dispatch.topk: must be at most num_experts"),
    (["dispatch.dispatcher=nccl"], "dispatch.dispatcher"),
])
def test_bad_dispatch_scenarios_are_one_line_errors(moesim, sets, words):
    proc = moesim("run", DEEPEP, *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert words in proc.stderr


@pytest.mark.parametrize("key, value, words", [
    ("benchmark", {"collective": "all_reduce", "sizes": [1024]}, "benchmark: a dispatch"),
    ("training", {"dispatcher": "deepep"}, "training: not used by a dispatch benchmark"),
])
def test_a_dispatch_scenario_stands_alone(tmp_path, key, value, words):
    data = yaml.safe_load(DEEPEP.read_text())
    data[key] = value
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=words) as e:
        load_scenario(path)
    assert "\n" not in str(e.value)


# -- the dispatcher of a training step ---------------------------------------------------


def _step(training_scenario, dispatcher, **extra):
    from sim.moe.run import run_training

    sc = training_scenario([f"training.dispatcher={dispatcher}"], **{**TWO_SERVERS, **extra})
    return run_training(sc, load_topology(sc.topology.name, sc.topology.overrides))


def test_deepep_in_a_training_step_sends_one_copy_per_token_and_node(training_scenario,
                                                                       routing_plan):
    deepep = _step(training_scenario, "deepep", moe={"moe_router_topk": 2})
    a2a = _step(training_scenario, "alltoall", moe={"moe_router_topk": 2})
    sc = training_scenario(["training.dispatcher=deepep"],
                           **{**TWO_SERVERS, "moe": {"moe_router_topk": 2}})
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    plan = routing_plan(sc)
    remote = 0
    for r in plan:
        for g in range(16):
            # node_tokens are counted from the EP group's first server (here: server 0)
            remote += r.node_tokens[g].sum() - r.node_tokens[g, cluster.node_of[g]]
    hidden = sc.model.hidden_size
    # forward: FP8 dispatch and BF16 combine; backward: both BF16
    per_copy = token_bytes(hidden, "fp8") + 3 * token_bytes(hidden, "bf16")
    assert deepep.summary["a2a_inter_node_bytes"] == pytest.approx(remote * per_copy)
    assert deepep.summary["drop_fraction"] == a2a.summary["drop_fraction"]  # same routing


def test_allgather_sends_every_token_to_every_gpu_of_its_group(training_scenario):
    res = _step(training_scenario, "allgather")
    sc = training_scenario(**TWO_SERVERS)
    tokens = sc.model.micro_batch_size * sc.model.seq_length
    per_gpu_remote = 8 * tokens * sc.model.hidden_size * sc.training.dtype_bytes
    # every MoE layer: gather, its reduce-scatter, and both again in the backward
    layers = sum(sc.model.moe_layers())
    assert res.summary["a2a_inter_node_bytes"] == pytest.approx(16 * per_gpu_remote * 4 * layers)


@pytest.mark.parametrize("extra, clash", [
    ({"training": {"a2a_algorithm": "hierarchical"}}, "training.a2a_algorithm"),
    ({"moe": {"moe_pad_expert_input_to_capacity": True, "moe_expert_capacity_factor": 1.0}},
     "moe.moe_pad_expert_input_to_capacity"),
])
def test_alltoall_only_settings_are_refused_with_deepep(training_scenario, extra, clash):
    with pytest.raises(UserError, match=f"training.dispatcher: deepep .*{clash}"):
        _step(training_scenario, "deepep", **extra)
