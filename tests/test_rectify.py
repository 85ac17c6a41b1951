"""Rectify-Router: intra-GPU (IR) and fill-in (FR) rectification after capacity."""

import numpy as np
import pytest

from sim.moe.capacity import apply_capacity
from sim.moe.rectify import fill_in, intra_gpu, next_choice
from sim.moe.run import run_training
from sim.routing import RouterContext, route
from sim.routing.common import softmax
from sim.topology import load_topology


def _group(k=1, cap=8, seed=0, t=64, e=8, skew=1.5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, e)) + skew * np.linspace(1, 0, e)  # popular low ids
    a = route("topk", logits, RouterContext(topk=k, rng=rng))
    return a, apply_capacity(a, cap, "position", "megatron"), softmax(logits)


def test_fill_in_takes_only_slots_the_top_k_left_empty():
    for k in (1, 2):
        a, kept, probs = _group(k=k, cap=12)
        filled = fill_in(a, kept, probs, 12)
        assert np.all(kept.load + filled <= 12)  # never above capacity: replaces padding only
        cand = np.bincount(next_choice(a, probs), minlength=8)
        assert np.array_equal(filled, np.minimum(cand, 12 - kept.load))
        assert filled.sum() > 0
        # the next choice is never one of the token's own choices
        chosen = np.zeros((a.num_tokens, 8), bool)
        chosen[a.token, a.expert] = True
        assert not chosen[np.arange(a.num_tokens), next_choice(a, probs)].any()
    a, kept, probs = _group()
    assert fill_in(a, kept, probs, None).sum() == 0  # dropless: no padding to fill


def test_intra_gpu_processes_every_unrouted_token_on_its_best_local_expert():
    a, kept, probs = _group(k=1, cap=6)
    local = np.zeros(8, bool)
    local[[2, 5]] = True
    got = intra_gpu(a, kept, probs, local)
    assert got.sum() == kept.dropped > 0  # top-1: every dropped token is rectified
    assert got[~local].sum() == 0  # only experts on the token's own GPU
    dropped_tokens = a.token[~kept.kept]
    best = np.where(probs[dropped_tokens, 2] >= probs[dropped_tokens, 5], 2, 5)
    assert np.array_equal(got, np.bincount(best, minlength=8))
    assert intra_gpu(a, kept, probs, np.zeros(8, bool)).sum() == 0  # no local expert


def test_intra_gpu_any_takes_more_tokens_than_all_with_top2():
    a, kept, probs = _group(k=2, cap=10)
    local = np.zeros(8, bool)
    local[0] = True
    lost = np.bincount(a.token, weights=~kept.kept, minlength=a.num_tokens)
    all_, any_ = intra_gpu(a, kept, probs, local, "all"), intra_gpu(a, kept, probs, local, "any")
    assert all_.sum() == np.sum(lost == 2) and any_.sum() == np.sum(lost >= 1)
    assert any_.sum() > all_.sum()


def _run(training_scenario, rect, pad=False, cf=1.0, k=1, tol=0.0):
    sc = training_scenario(moe={"moe_router_topk": k, "moe_expert_capacity_factor": cf,
                                 "moe_pad_expert_input_to_capacity": pad, "rectify": rect},
                  gating={"popularity_skew": 1.5}, training={"overlap_grad_reduce": False},
                  fabric={"rate_tolerance": tol})
    return sc, run_training(sc, load_topology("dgx-h100")).summary


def test_ir_drops_nothing_with_a_local_expert_and_adds_no_traffic(training_scenario, routing_plan):
    sc, vanilla = _run(training_scenario, {})
    sc_ir, ir = _run(training_scenario, {"intra_gpu": True})
    layers = routing_plan(sc_ir)
    for r in layers:
        dropped = r.routed.sum(axis=1) - r.kept.sum(axis=1)  # per GPU, top-1 rows = tokens
        assert np.array_equal(r.local.sum(axis=1), dropped)  # every GPU hosts experts
        # only the GPU's own experts work on its rectified tokens
        own = np.zeros_like(r.local, dtype=bool)
        own[np.arange(8)[:, None], np.arange(16)[None, :].reshape(8, 2)] = True
        assert r.local[~own].sum() == 0
    assert ir["drop_fraction"] == vanilla["drop_fraction"] > 0
    assert ir["local_rectified_fraction"] == pytest.approx(vanilla["drop_fraction"])
    assert ir["intra_node_bytes"] == vanilla["intra_node_bytes"]  # no extra bytes
    assert ir["inter_node_bytes"] == vanilla["inter_node_bytes"] == 0
    assert ir["breakdown_s"]["expert"] > vanilla["breakdown_s"]["expert"]  # extra local work
    assert ir["step_time_s"] > vanilla["step_time_s"]


def test_fr_is_free_when_padded_and_costs_bytes_when_variable(training_scenario, routing_plan):
    _, van_pad = _run(training_scenario, {}, pad=True)
    _, fr_pad = _run(training_scenario, {"fill_in": True}, pad=True)
    assert fr_pad["fill_in_fraction"] > 0
    assert fr_pad["intra_node_bytes"] == van_pad["intra_node_bytes"]
    assert fr_pad["padding_fraction"] == pytest.approx(
        van_pad["padding_fraction"] - fr_pad["fill_in_fraction"])
    assert fr_pad["drop_fraction"] == van_pad["drop_fraction"]
    _, van = _run(training_scenario, {})
    sc, fr = _run(training_scenario, {"fill_in": True})
    filled = sum(float(r.filled.sum()) for r in routing_plan(sc))
    own = sum(float(np.trace(r.filled.reshape(8, 8, 2).sum(axis=2))) for r in routing_plan(sc))
    act = sc.model.hidden_size * sc.training.dtype_bytes
    # 4 exchanges per layer (dispatch, combine, forward and backward) of the filled slots
    assert fr["intra_node_bytes"] - van["intra_node_bytes"] == pytest.approx(
        4 * (filled - own) * act)


def test_rectify_with_a_trace_is_a_user_error(training_scenario, tmp_path):
    from sim.errors import UserError
    from sim.workload import RoutingTrace, save_trace

    path = tmp_path / "t.npz"
    experts = np.zeros((2, 512, 1), dtype=np.int64)
    save_trace(RoutingTrace(experts, np.ones((2, 512, 1), np.float32), 16), path)
    sc = training_scenario(moe={"moe_router_topk": 1, "rectify": {"intra_gpu": True}},
                  gating={"trace": str(path)})
    with pytest.raises(UserError, match="moe.rectify needs"):
        run_training(sc, load_topology("dgx-h100"))
