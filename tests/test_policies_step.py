"""The seed routing policies inside a full training step: locality, bi-level exchange, capacity."""

import math

import pytest

from sim.moe.capacity import critical_capacity_tokens
from sim.moe.run import run_training
from sim.topology import load_topology

TWO_NODES = {"topology": {"name": "h100-leaf-spine", "nodes": 2},
             "parallel": {"expert_model_parallel_size": 16},
             "moe": {"moe_router_topk": 1}, "training": {"overlap_grad_reduce": False}}


def _run(training_scenario, **sections):
    merged = {k: {**TWO_NODES.get(k, {}), **sections.get(k, {})}
              for k in {*TWO_NODES, *sections}}
    sc = training_scenario(**merged)
    return run_training(sc, load_topology("h100-leaf-spine", {"nodes": 2})).summary


def test_locmoe_moves_tokens_and_bytes_onto_the_node(training_scenario):
    runs = [_run(training_scenario, moe={"router": {"name": "locmoe",
                                           "params": {"locality_bias": b}}})
            for b in (0.0, 1.0, 3.0)]
    local = [r["node_local_fraction"] for r in runs]
    inter = [r["inter_node_bytes"] for r in runs]
    assert local[0] == pytest.approx(0.5, abs=0.1)  # 2 nodes, experts spread evenly
    assert local[0] < local[1] < local[2]
    assert inter[0] > inter[1] > inter[2]
    a2a = [r["a2a_inter_node_bytes"] for r in runs]
    assert a2a[0] > a2a[1] > a2a[2] > 0
    # the gradient AllReduce is the same in all three: only the All-to-All bytes moved
    rest = [i - a for i, a in zip(inter, a2a, strict=True)]
    assert rest == pytest.approx([rest[0]] * 3)


def test_smile_bilevel_crosses_nodes_no_more_than_flat(training_scenario):
    smile = {"router": {"name": "smile"}}
    flat = _run(training_scenario, moe=smile)
    two = _run(training_scenario, moe=smile, training={"a2a_algorithm": "bilevel"})
    assert two["inter_node_bytes"] == pytest.approx(flat["inter_node_bytes"])
    assert two["a2a_inter_node_bytes"] == pytest.approx(flat["a2a_inter_node_bytes"])
    assert flat["a2a_inter_node_bytes"] > 0
    assert two["intra_node_bytes"] > flat["intra_node_bytes"]
    assert flat["smile_node_balance"] >= 1.0 - 1e-9 and flat["smile_gpu_balance"] >= 1.0 - 1e-9
    assert flat["drop_fraction"] == two["drop_fraction"]  # same routing, different exchange


def test_critical_capacity_runs_at_the_theorem_bound(training_scenario):
    s = _run(training_scenario, moe={"moe_expert_capacity_factor": "critical",
                            "critical_capacity_delta": 0.05, "router": {"name": "locmoe"}})
    bound = critical_capacity_tokens(512, 16, 0.05)
    assert s["capacity_slots"] == max(1, math.ceil(bound))
    assert s["drop_fraction"] > 0.5  # a handful of slots per expert: most tokens pass through


def test_bad_router_parameter_names_the_file(training_scenario, tmp_path):
    from sim.errors import UserError

    sc = training_scenario(moe={"router": {"name": "locmoe",
                                            "params": {"locality_bias": -1}}})
    with pytest.raises(UserError, match=r"s\.yaml: moe\.router: .*locality_bias"):
        run_training(sc, load_topology("dgx-h100"), str(tmp_path / "s.yaml"))
