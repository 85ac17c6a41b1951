"""The MoE training step: routing invariants, capacity, padding, and a hand-computed step."""

import numpy as np
import pytest

from sim.collectives.algorithms import ring_order
from sim.compute import dense_layer_time_s, expert_ffn_time_s
from sim.moe.layout import Layout
from sim.moe.run import run_training
from sim.topology import load_topology
from tests.conftest import TRAINING


@pytest.mark.parametrize("router", ["switch", "gshard", "topk", "expert_choice", "hash", "base",
                                    "top_p"])
@pytest.mark.parametrize("cf", [None, 1.0])
def test_every_choice_is_processed_or_dropped_once(routing_plan, training_scenario, router, cf):
    sc = training_scenario(moe={"router": {"name": router}, "moe_expert_capacity_factor": cf})
    tokens = sc.model.seq_length
    for r in routing_plan(sc):
        assert np.all(r.kept <= r.routed)
        if cf is None:
            assert np.array_equal(r.kept, r.routed) and r.drop_fraction == 0.0
        else:
            assert np.all(r.kept <= r.capacity)
        if router in ("topk", "switch", "hash", "base"):
            k = 1 if router in ("switch", "hash", "base") else 2
            assert np.all(r.routed.sum(axis=1) == tokens * k)  # every token's k choices


@pytest.mark.parametrize("router", ["switch", "topk", "expert_choice"])
def test_tokens_left_without_an_expert(routing_plan, training_scenario, router):
    """Every token either keeps at least one expert or is counted in ``no_expert``; with top-1
    that is exactly the dropped tokens; expert choice drops nothing yet leaves tokens unpicked."""
    from sim.moe.capacity import apply_capacity
    from sim.moe.plan import _Counts
    from sim.routing import RouterContext, route

    sc = training_scenario(moe={"router": {"name": router}, "moe_expert_capacity_factor": 1.0},
                  gating={"popularity_skew": 1.0})
    tokens = sc.model.seq_length
    layers = routing_plan(sc)
    for r in layers:
        assert np.all((0 <= r.no_expert) & (r.no_expert <= tokens))
        if router == "switch":
            assert np.array_equal(r.no_expert, r.routed.sum(axis=1) - r.kept.sum(axis=1))
        if router == "expert_choice":
            assert r.drop_fraction == 0.0 and r.no_expert.sum() > 0
        if router == "topk":  # a token is lost only when both its choices are
            dropped = r.routed.sum(axis=1) - r.kept.sum(axis=1)
            assert np.all(r.no_expert <= dropped) and r.no_expert.sum() > 0
    # an independent count for one routing group: tokens with no surviving row
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(tokens, 16)) * 2.0 + np.where(np.arange(16) < 4, 3.0, 0.0)
    ctx = RouterContext(topk=2, rng=np.random.default_rng(1), capacity=tokens // 16)
    a = route(router, logits, ctx)
    kept = apply_capacity(a, ctx.capacity, sc.moe.moe_token_drop_policy,
                          sc.moe.capacity_convention)
    survivors = {int(t) for t, k in zip(a.token, kept.kept, strict=True) if k}
    counts = _Counts(1, 1, 16)
    counts.add(0, 0, a, logits, ctx.capacity, sc.moe, np.zeros(16, bool))
    assert counts.no_expert[0, 0] == tokens - len(survivors) > 0
    res = run_training(sc, load_topology("dgx-h100")).summary
    expect = sum(r.no_expert.sum() for r in layers) / (tokens * 8 * len(layers))
    assert res["no_expert_fraction"] == pytest.approx(expect, rel=1e-12)


def test_drop_fraction_rises_with_skew_and_falls_with_capacity(routing_plan, training_scenario):
    def drop(skew, cf):
        sc = training_scenario(moe={"moe_expert_capacity_factor": cf},
                      gating={"popularity_skew": skew})
        return np.mean([r.drop_fraction for r in routing_plan(sc)])

    assert drop(0.0, 1.0) < drop(1.0, 1.0) < drop(2.0, 1.0)
    assert drop(1.0, 2.0) < drop(1.0, 1.25) < drop(1.0, 1.0)


def test_padded_dispatch_sends_capacity_whatever_the_skew(routing_plan, training_scenario):
    for skew in (0.0, 2.0):
        sc = training_scenario(moe={"moe_expert_capacity_factor": 1.0,
                                     "moe_pad_expert_input_to_capacity": True},
                      gating={"popularity_skew": skew})
        for r in routing_plan(sc):
            assert np.all(r.slots == r.capacity)  # E * C slots from every GPU
            assert r.padding_fraction == pytest.approx(1 - r.kept.sum() / r.slots.sum())


def test_bytes_counted_across_servers_with_rings_sharing_hops(training_scenario):
    # 2 servers: 8 AllReduce rings share the hops inside a server; every byte is counted once
    sc = training_scenario(topology={"name": "h100-leaf-spine", "nodes": 2},
                  parallel={"expert_model_parallel_size": 16},
                  gating={"popularity_skew": 1.0}, training={"overlap_grad_reduce": False})
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    res = run_training(sc, cl).summary
    from sim.moe.run import step_inputs

    inp = step_inputs(sc, cl)
    act = sc.model.hidden_size * sc.training.dtype_bytes
    gpus = np.arange(16)
    a2a = 0.0
    for li, r in enumerate(inp.routing):
        off = inp.layout.expert_gpu(gpus, li) != gpus[:, None]
        a2a += (r.slots * off).sum() * act
    n = 16  # one dense data-parallel group of all GPUs; experts are not replicated
    ar = sum(inp.shape.dense_params(m) for m in inp.shape.moe_layers) * 4 * 2 * (n - 1) / n * n
    total = res["inter_node_bytes"] + res["intra_node_bytes"]
    assert total == pytest.approx(4 * a2a + ar, rel=1e-12)


def test_bytes_dispatched_equal_bytes_combined(routing_plan, training_scenario):
    sc = training_scenario(gating={"popularity_skew": 1.0},
                  training={"overlap_grad_reduce": False})
    res = run_training(sc, load_topology("dgx-h100"))
    d = [s for s in res.spans if s.category == "dispatch"]
    c = [s for s in res.spans if s.category == "combine"]
    assert len(d) == len(c) > 0
    # one node: all traffic is intra-node; 4 exchanges of the dispatch bytes + the AllReduce
    act = sc.model.hidden_size * sc.training.dtype_bytes
    a2a = 0.0
    for r in routing_plan(sc):
        own = np.repeat(np.arange(8), 2)  # EP = 8 on 8 GPUs, 2 experts per GPU
        off = own[None, :] != np.arange(8)[:, None]
        a2a += (r.slots * off).sum() * act
    ar = sum(_inputs(sc).shape.dense_params(True) for _ in range(2)) * 4 * 2 * 7 / 8 * 8
    assert res.summary["inter_node_bytes"] == 0
    assert res.summary["intra_node_bytes"] == pytest.approx(4 * a2a + ar)


def _inputs(sc):
    from sim.moe.run import step_inputs

    return step_inputs(sc, load_topology("dgx-h100"))


def test_uniform_routing_step_matches_hand_computed_time(training_scenario):
    # expert choice fills every expert with exactly C tokens from every GPU: a uniform A2A
    sc = training_scenario(moe={"router": {"name": "expert_choice",
                                            "params": {"capacity_factor": 2.0}}},
                  model={"num_layers": 1}, training={"overlap_grad_reduce": False},
                  fabric={"rate_tolerance": 0.0})
    cl = load_topology("dgx-h100")
    res = run_training(sc, cl)
    spec, m = cl.gpu, sc.model
    p, e, t = 8, 16, m.seq_length
    c = round(2.0 * t / e)
    act = m.hidden_size * 2
    bw = cl.links.capacity_Bps.min()  # every NVLink is the same
    lat = 2 * 0.5e-6  # GPU -> NVSwitch -> GPU
    pair = (e // p) * c * act  # bytes from one GPU to another per exchange
    a2a = lat + (p - 1) * pair / bw
    attn = float(dense_layer_time_s(t, t, m.hidden_size, m.num_attention_heads, spec,
                                    num_experts=e))
    expert = float(expert_ffn_time_s(np.full(e // p, p * c), m.hidden_size,
                                     m.ffn_hidden_size, spec).sum())
    grads = _inputs(sc).shape.dense_params(True) * 4
    allreduce = 2 * (p - 1) * (lat + grads / p / bw)
    expect = 3 * attn + 4 * a2a + 3 * expert + allreduce
    assert res.summary["step_time_s"] == pytest.approx(expect, rel=1e-9)
    assert res.summary["drop_fraction"] == 0.0 and res.summary["expert_load_imbalance"] == 1.0
    assert len(ring_order(cl)) == p


def test_same_seed_same_step(training_scenario):
    sc = training_scenario(gating={"popularity_skew": 1.0})
    a = run_training(sc, load_topology("dgx-h100")).summary
    b = run_training(sc, load_topology("dgx-h100")).summary
    assert a == b


def test_bad_layout_is_a_one_line_user_error(training_scenario):
    from sim.errors import UserError

    sc = training_scenario(parallel={"expert_model_parallel_size": 3})
    with pytest.raises(UserError, match="expert_model_parallel_size: must divide"):
        run_training(sc, load_topology("dgx-h100"))


def test_routing_groups_repeat_the_routing_round_robin(routing_plan, training_scenario):
    sc = training_scenario(gating={"routing_groups": 3, "popularity_skew": 1.0})
    for r in routing_plan(sc):
        for g in range(8):
            assert np.array_equal(r.routed[g], r.routed[g % 3])
    full = routing_plan(training_scenario(gating={"popularity_skew": 1.0}))
    assert np.array_equal(full[0].routed[:3], routing_plan(sc)[0].routed[:3])  # same first groups
    assert not np.array_equal(full[0].routed[3], full[0].routed[0])


def test_progress_reports_routing_and_every_layer(training_scenario):
    sc = training_scenario()
    seen = []
    run_training(sc, load_topology("dgx-h100"), progress=lambda *a: seen.append(a))
    assert ("routing", 8, 8) in seen
    assert [a for a in seen if a[0] == "forward"] == [("forward", i, 2) for i in (1, 2)]
    assert seen[-1] == ("backward", 2, 2)


def test_a_recorded_trace_replaces_generator_and_router(routing_plan, training_scenario, tmp_path):
    from sim.errors import UserError
    from sim.workload import RoutingTrace, save_trace

    rng = np.random.default_rng(0)
    tokens = TRAINING["model"]["seq_length"]
    logits = rng.normal(size=(2, 8 * tokens, 16)).astype(np.float32)
    trace = RoutingTrace.from_logits(logits, top_k=2)
    path = tmp_path / "trace.npz"
    save_trace(trace, path)
    sc = training_scenario(gating={"trace": str(path)})
    for li, r in enumerate(routing_plan(sc)):
        for g in (0, 5):
            chosen = trace.experts[li, g * tokens:(g + 1) * tokens].ravel()
            assert np.array_equal(r.routed[g], np.bincount(chosen, minlength=16))
    res = run_training(sc, load_topology("dgx-h100"))
    assert res.summary["step_time_s"] > 0
    bad = training_scenario(gating={"trace": str(path)}, moe={"num_experts": 8})
    with pytest.raises(UserError, match="num_experts"):
        routing_plan(bad)


def test_dropless_padded_dispatch_pads_everyone_to_the_largest_load(routing_plan,
                                                                    training_scenario):
    sc = training_scenario(moe={"moe_pad_expert_input_to_capacity": True},
                  gating={"popularity_skew": 1.0})
    for r in routing_plan(sc):
        assert np.all(r.slots == r.kept.max()) and r.drop_fraction == 0.0


@pytest.mark.parametrize(("tp", "etp"), [(2, 2), (2, 1), (4, 4)])
def test_tensor_parallel_step_matches_hand_computed_time(training_scenario, tp, etp):
    # sequence parallel: each rank routes t/tp tokens; expert choice fills every expert evenly
    p, e = 8, 16
    units = p // etp
    sc = training_scenario(moe={"router": {"name": "expert_choice",
                                            "params": {"capacity_factor": 2.0}}},
                  model={"num_layers": 1}, training={"overlap_grad_reduce": False},
                  fabric={"rate_tolerance": 0.0},
                  parallel={"tensor_model_parallel_size": tp, "expert_tensor_parallel_size": etp,
                            "expert_model_parallel_size": units})
    cl = load_topology("dgx-h100")
    res = run_training(sc, cl)
    spec, m = cl.gpu, sc.model
    t = m.seq_length // tp
    c = round(2.0 * t / e)
    act = m.hidden_size * 2
    bw = cl.links.capacity_Bps.min()
    lat = 2 * 0.5e-6
    epu = e // units  # experts per unit
    pair = epu * c * act
    a2a = lat + (units - 1) * pair / bw
    unit_gather = lat + (etp - 1) * units * pair / bw if etp > 1 else 0.0
    tp_gather = lat + (tp - 1) * t * act / bw
    attn = float(dense_layer_time_s(m.seq_length, m.seq_length, m.hidden_size,
                                    m.num_attention_heads, spec, num_experts=e)) / tp
    expert = float(expert_ffn_time_s(np.full(epu, p * c), m.hidden_size,
                                     m.ffn_hidden_size / etp, spec).sum())
    grads = _inputs(sc).shape.dense_params(True) / tp * 4
    n = p // tp  # data-parallel ranks per dense shard
    allreduce = 2 * (n - 1) * (lat + grads / n / bw)
    expect = (3 * attn + 4 * a2a + 3 * expert + 4 * tp_gather + 4 * unit_gather + allreduce)
    assert res.summary["step_time_s"] == pytest.approx(expect, rel=1e-9)
    assert res.summary["tp_time_s"] == pytest.approx(4 * tp_gather + 4 * unit_gather, rel=1e-9)
    # the iteration: this one micro-batch's step, then the optimizer step
    it = res.summary["iteration_time_s"]
    assert it == pytest.approx(expect + res.summary["optimizer_time_s"], rel=1e-12)
    assert res.summary["tokens_per_s"] == pytest.approx(p // tp * m.seq_length / it)


def test_expert_tensor_parallel_layout():
    lay = Layout.build(16, 2, 8, tp=4, etp=4, gpus_per_node=8)
    dest = lay.expert_gpu(np.array([0, 5, 9]))
    # unit = TP group of 4; EP group = 2 units = 8 GPUs; 4 experts per unit; same TP rank
    assert dest[0].tolist() == [0, 0, 0, 0, 4, 4, 4, 4]
    assert dest[1].tolist() == [1, 1, 1, 1, 5, 5, 5, 5]
    assert dest[2].tolist() == [9, 9, 9, 9, 13, 13, 13, 13]
    groups = lay.expert_dp_groups()  # the same shard of the same experts: rank r and r + 8
    assert groups.shape == (8, 2) and groups[3].tolist() == [3, 11]
    assert lay.dense_dp_groups(np.arange(16)).tolist() == [[0, 4, 8, 12], [1, 5, 9, 13],
                                                           [2, 6, 10, 14], [3, 7, 11, 15]]


@pytest.mark.parametrize(("par", "match"), [
    ({"tensor_model_parallel_size": 3}, "tensor_model_parallel_size: must divide the 8 GPUs"),
    ({"tensor_model_parallel_size": 2, "expert_tensor_parallel_size": 4},
     "expert_tensor_parallel_size: must be 1 or"),
    ({"tensor_model_parallel_size": 4, "expert_model_parallel_size": 8},
     "must divide the 2 TP groups"),
])
def test_bad_tensor_parallel_layout_is_a_user_error(training_scenario, par, match):
    from sim.errors import UserError

    sc = training_scenario(parallel=par)
    with pytest.raises(UserError, match=match):
        run_training(sc, load_topology("dgx-h100"))


def test_tensor_parallel_must_divide_the_heads(training_scenario):
    from sim.errors import UserError

    sc = training_scenario(model={"num_attention_heads": 6},
                  parallel={"tensor_model_parallel_size": 4, "expert_model_parallel_size": 2})
    with pytest.raises(UserError, match="num_attention_heads = 6"):
        run_training(sc, load_topology("dgx-h100"))


def test_hierarchical_dispatch_moves_the_same_inter_node_bytes(training_scenario):
    base = {"topology": {"name": "h100-leaf-spine", "nodes": 2},
            "parallel": {"expert_model_parallel_size": 16}, "gating": {"popularity_skew": 1.0},
            "training": {"overlap_grad_reduce": False}}
    direct = run_training(s := training_scenario(**base),
                          load_topology("h100-leaf-spine", {"nodes": 2})).summary
    base["training"]["a2a_algorithm"] = "hierarchical"
    hier = run_training(training_scenario(**base),
                        load_topology("h100-leaf-spine", {"nodes": 2})).summary
    assert s.training.a2a_algorithm == "direct"
    assert hier["inter_node_bytes"] == pytest.approx(direct["inter_node_bytes"])
    # the gather and scatter stages add intra-node copies
    assert hier["intra_node_bytes"] > direct["intra_node_bytes"]
    assert hier["a2a_time_s"] != direct["a2a_time_s"]


def test_bilevel_dispatch_crosses_nodes_once_on_the_source_rail(training_scenario):
    from sim.collectives.algorithms import hierarchical_stages

    base = {"topology": {"name": "h100-leaf-spine", "nodes": 2},
            "parallel": {"expert_model_parallel_size": 16}, "gating": {"popularity_skew": 1.0},
            "training": {"overlap_grad_reduce": False, "a2a_algorithm": "bilevel"}}
    cl = load_topology("h100-leaf-spine", {"nodes": 2})
    bilevel = run_training(training_scenario(**base), cl).summary
    base["training"]["a2a_algorithm"] = "direct"
    direct = run_training(training_scenario(**base), cl).summary
    assert bilevel["inter_node_bytes"] == pytest.approx(direct["inter_node_bytes"])
    assert bilevel["intra_node_bytes"] > direct["intra_node_bytes"]  # the second hop
    # the stages: across nodes only between equal local ranks, then only inside a node
    m = np.random.default_rng(0).random((16, 16))
    first, cross, last = hierarchical_stages(cl, m, relay="source")
    node, local = cl.node_of, cl.local_rank
    assert len(first[0]) == 0  # no gather: the source itself is the relay
    assert np.all(node[cross[0]] != node[cross[1]]) and np.all(local[cross[0]] == local[cross[1]])
    assert np.all(node[last[0]] == node[last[1]])
    off = node[:, None] != node[None, :]
    assert cross[2].sum() == pytest.approx(m[off].sum())  # every cross-node byte once


def test_placement_moves_experts_and_their_traffic(training_scenario):
    sc = training_scenario(gating={"popularity_skew": 1.0}, moe={"moe_router_topk": 1})
    cl = load_topology("dgx-h100")
    default = run_training(sc, cl)
    block = np.repeat(np.arange(8), 2)  # the default: experts 2g, 2g+1 on GPU g
    same = run_training(sc, cl, placement=np.stack([block, block]))
    assert same.summary == default.summary
    # everything on GPU 0: no GPU but 0 receives tokens, GPU 0 computes every expert
    zero = run_training(sc, cl, placement=np.zeros((2, 16), dtype=int))
    assert zero.summary["step_time_s"] > default.summary["step_time_s"]
    lay = Layout.build(8, 8, 16).with_placement(np.zeros((2, 16), dtype=int), 2)
    assert np.all(lay.expert_gpu(np.arange(8), 1) == 0)


@pytest.mark.parametrize(("placement", "match"), [
    (np.zeros((3, 16), dtype=int), "must be 2 MoE layers x 16 experts"),
    (np.full((2, 16), 8), "must be in 0..7"),
    (np.zeros((2, 16)), "integer GPU indices"),
])
def test_bad_placement_is_a_user_error(training_scenario, placement, match):
    from sim.errors import UserError

    sc = training_scenario()
    with pytest.raises(UserError, match=match):
        run_training(sc, load_topology("dgx-h100"), placement=placement)


@pytest.mark.parametrize("policy", ["position", "probs"])
def test_drops_by_position_add_up_to_the_drops_and_rise_only_in_position_order(
        routing_plan, training_scenario, policy):
    # OpenMoE's drop-towards-the-end: capacity filled in position order drops late tokens
    from sim.moe.plan import POSITION_BINS, drop_by_position

    sc = training_scenario(moe={"router": {"name": "switch"}, "moe_expert_capacity_factor": 1.0,
                                "moe_token_drop_policy": policy},
                           gating={"popularity_skew": 1.0})
    plan = routing_plan(sc)
    shard = sc.model.seq_length  # tp 1: a GPU's tokens are its micro-batch's sequences
    for r in plan:
        assert r.position_routed.shape == (len(r.routed), POSITION_BINS)
        assert np.array_equal(r.position_routed.sum(axis=1), r.routed.sum(axis=1))
        assert np.array_equal(r.position_kept.sum(axis=1), r.kept.sum(axis=1))
        # top-1: each bin routes exactly its tokens (512 positions: bins of 51 or 52)
        per_bin = np.bincount(np.arange(shard) * POSITION_BINS // shard) \
            * sc.model.micro_batch_size
        assert np.all(r.position_routed == per_bin)
    by_pos = np.array(drop_by_position(plan))
    routed = sum(r.position_routed.sum(axis=0) for r in plan)
    total = sum(float(r.routed.sum() - r.kept.sum()) for r in plan)
    assert float((by_pos * routed).sum()) == pytest.approx(total, rel=1e-12)
    assert total > 0
    if policy == "position":
        assert by_pos[-1] > 2 * by_pos[0] and np.all(np.diff(by_pos) >= 0)
    else:  # the probability order does not look at positions
        assert by_pos.max() - by_pos.min() < 0.5 * by_pos.mean()


def test_all_to_all_bytes_inside_a_server_are_counted_apart(training_scenario, routing_plan):
    # one DGX: every dispatch and combine byte stays inside the server, and is part of (not all
    # of) the intra-node bytes, which also carry the gradient AllReduce
    from sim.topology import load_topology as topo

    sc = training_scenario(moe={"moe_expert_capacity_factor": 1.0})
    s = run_training(sc, topo(sc.topology.name, sc.topology.overrides)).summary
    assert s["a2a_inter_node_bytes"] == 0.0
    assert 0.0 < s["a2a_intra_node_bytes"] < s["intra_node_bytes"]
    # forward and backward, dispatch and combine: four times the slots each GPU sends to the
    # experts of the other GPUs (block placement: expert e on GPU e // (E / EP))
    e, ep = sc.moe.num_experts, sc.parallel.expert_model_parallel_size
    remote = np.arange(ep)[:, None] != (np.arange(e) // (e // ep))[None, :]
    slots = sum(float(r.slots[remote].sum()) for r in routing_plan(sc))
    per_token = sc.model.hidden_size * sc.training.dtype_bytes
    assert s["a2a_intra_node_bytes"] == pytest.approx(4 * slots * per_token, rel=1e-12)
