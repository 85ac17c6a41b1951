"""The training iteration (``sim.training``): pipeline schedules against closed forms, the
single-stage iteration against the old step, memory and FLOP formulas by hand, the distributed
optimizer's bytes, routing per micro-batch, EP overlap, DualPipe, recomputation, shared experts
and the CLI's refusals of bad layouts.

Closed forms run on the ideal communication profile with an exact fabric
(``rate_tolerance: 0``), where a chunk's forward is its roofline time, its backward twice that,
and a pipeline send its bytes over the NVLink rate plus the path latency.
"""

from __future__ import annotations

import csv
import json

import pytest
import simpy

from sim.compute import dense_layer_time_s
from sim.compute.roofline import DEFAULT_EFFICIENCY
from sim.moe.clocks import GpuClocks
from sim.moe.gradients import GradientReduction
from sim.moe.run import run_step, run_training, step_inputs
from sim.network import Fabric, FabricOptions
from sim.topology import load_topology
from sim.topology.catalog import get_gpu
from sim.training.schedules import SCHEDULES, Op, Plan
from sim.training.timeline import run as run_plan
from tests.conftest import TWO_SERVERS

EXACT = {"rate_tolerance": 0.0}

# TRAINING's model: hidden 512, FFN 1024 (not gated), 8 heads, seq 512, micro-batch 1, bf16.
H, FFN, HEADS, SEQ, DTYPE = 512, 1024, 8, 512, 2
EXPERTS, TOPK = 16, 2
ADAM_BYTES = 12  # fp32 master + Adam's two moments
OPT_TRAFFIC = 30  # HBM bytes per updated parameter in the optimizer step


@pytest.fixture(scope="module")
def dgx():
    return load_topology("dgx-h100")


@pytest.fixture(scope="module")
def two_servers():
    return load_topology("h100-leaf-spine", {"nodes": 2})


def dense(layers: int, pp: int, m: int, vpp: int | None = None, **sections) -> dict:
    """Sections of a model of ``layers`` identical dense layers over ``pp`` stages of the
    8-GPU server (tp 1, dp 8 / pp), ``m`` micro-batches of one sequence per pipeline."""
    par = {"expert_model_parallel_size": 1, "pipeline_model_parallel_size": pp}
    if vpp is not None:
        par["virtual_pipeline_model_parallel_size"] = vpp
    out = {"model": {"num_layers": layers, "moe_layer_freq": [0] * layers},
           "parallel": par, "training": {"global_batch_size": m * (8 // pp)},
           "fabric": EXACT}
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value}
    return out


def durations(rows, kind: str, stage: int | None = None) -> list[float]:
    return [r["end_s"] - r["start_s"] for r in rows
            if r["kind"] == kind and (stage is None or r["stage"] == stage)]


def p2p_closed_form(cluster, tokens: int, hidden: int) -> float:
    """One pipeline send on the one-server NVSwitch: GPU -> switch -> GPU, every link alike."""
    links = cluster.links
    assert len(set(links.capacity_Bps)) == 1 and len(set(links.latency_s)) == 1
    return tokens * hidden * DTYPE / links.capacity_Bps[0] + 2 * links.latency_s[0]


def hop_count_1f1b(pp: int, m: int) -> int:
    """Sends on the critical path of 1F1B with equal ops and a send time small against them."""
    return 2 * ((pp - 1) + (pp - 1) * (m - 1) // pp)


def dependency_violations(rows, hop: float = 0.0) -> list:
    """Ops of a schedule table that start before their inputs exist: a forward of (mb, k)
    before that of (mb, k-1) arrived, a backward (B, I, the backward half of FB) of (mb, k)
    before that of (mb, k+1) arrived or, for the last chunk, before its own forward ended."""
    chunks = 1 + max(max(r["chunk"], r["chunk_b"]) for r in rows)
    f_end, b_end, where = {}, {}, {}
    for r in rows:
        if r["kind"] in ("F", "FB"):
            f_end[(r["microbatch"], r["chunk"])] = r["end_s"]
            where[(r["microbatch"], r["chunk"])] = r["stage"]
        if r["kind"] in ("B", "I"):
            b_end[(r["microbatch"], r["chunk"])] = r["end_s"]
        if r["kind"] == "FB":
            b_end[(r["microbatch_b"], r["chunk_b"])] = r["end_s"]
    bad = []
    for r in rows:
        halves = []
        if r["kind"] in ("F", "FB"):
            halves.append(("F", r["microbatch"], r["chunk"]))
        if r["kind"] in ("B", "I"):
            halves.append(("B", r["microbatch"], r["chunk"]))
        if r["kind"] == "FB":
            halves.append(("B", r["microbatch_b"], r["chunk_b"]))
        for kind, mb, k in halves:
            if kind == "F":
                if k == 0:
                    continue
                need = f_end[(mb, k - 1)] + (hop if where[(mb, k - 1)] != r["stage"] else 0)
            elif k == chunks - 1:
                need = f_end[(mb, k)]
            else:
                need = b_end[(mb, k + 1)] + (hop if where[(mb, k + 1)] != r["stage"] else 0)
            if r["start_s"] < need * (1 - 1e-12):
                bad.append((r["stage"], r["kind"], kind, mb, k, r["start_s"], need))
    return bad


# --- 1. 1F1B against its closed form ---------------------------------------------------------

@pytest.mark.parametrize("m", [2, 5, 8])
def test_1f1b_pipeline_time_closed_form(training_scenario, dgx, m):
    """pp 4 x 2 GPUs (dp 2) of 8 dense layers: T = (m + pp - 1)(tf + tb)
    + 2d [(pp - 1) + floor((pp - 1)(m - 1) / pp)], bubble 1 - m (tf + tb) / T."""
    pp, layers = 4, 8
    res = run_training(training_scenario(**dense(layers, pp, m)), dgx)
    s, rows = res.summary, res.tables["schedule"]
    assert s["pipeline_schedule"] == "1f1b" and s["microbatches"] == m
    assert s["parallel"]["dp"] == 2 and s["parallel"]["tp"] == 1
    # every chunk's forward / backward is its two layers' roofline time / twice that
    tf = layers // pp * dense_layer_time_s(SEQ, SEQ, H, HEADS, dgx.gpu, ffn_hidden=FFN)
    tb = 2 * tf
    fwd, bwd = durations(rows, "F"), durations(rows, "B")
    assert len(fwd) == len(bwd) == m * pp
    assert fwd == pytest.approx([tf] * len(fwd), rel=1e-12)
    assert bwd == pytest.approx([tb] * len(bwd), rel=1e-12)
    # one send: an activation shard (micro-batch x seq x hidden bf16) over one NVLink
    d = s["p2p_time_s"]
    assert d == pytest.approx(p2p_closed_form(dgx, SEQ, H), rel=1e-12)
    hops = hop_count_1f1b(pp, m)
    expect = (m + pp - 1) * (tf + tb) + hops * d
    assert s["pipeline_time_s"] == pytest.approx(expect, rel=1e-12)
    assert s["exposed_comm_s"]["pp"] == pytest.approx(hops * d, rel=1e-9)
    assert s["bubble_fraction"] == pytest.approx(1 - m * (tf + tb) / expect, rel=1e-12)
    # with the sends taken out, the textbook (pp - 1) / (m + pp - 1)
    no_p2p = s["pipeline_time_s"] - s["exposed_comm_s"]["pp"]
    assert 1 - m * (tf + tb) / no_p2p == pytest.approx((pp - 1) / (m + pp - 1), rel=1e-9)


# --- 2. interleaved 1F1B ---------------------------------------------------------------------

def test_interleaved_bubble_shrinks_by_vpp(training_scenario, dgx):
    """8 layers over pp 4 x vpp 2 (one layer a chunk), m 8: the bubble without the sends is
    (pp - 1)(tf + tb) of a chunk, 1/vpp of 1F1B's. With the sends: each of a micro-batch's
    pp vpp - 1 forward and as many backward sends adds at most d to the critical path."""
    pp, vpp, m, layers = 4, 2, 8, 8
    one = run_training(training_scenario(**dense(layers, pp, m)), dgx)
    two = run_training(training_scenario(**dense(layers, pp, m, vpp)), dgx)
    assert two.summary["pipeline_schedule"] == "interleaved"  # the default with vpp > 1
    bubbles = {}
    for v, res in ((1, one), (vpp, two)):
        s, rows = res.summary, res.tables["schedule"]
        tf, tb = max(durations(rows, "F")), max(durations(rows, "B"))
        assert len(durations(rows, "F")) == m * pp * v
        busy = m * v * (tf + tb)  # a stage's own work
        bubbles[v] = (s["pipeline_time_s"] - busy,
                      s["pipeline_time_s"] - s["exposed_comm_s"]["pp"] - busy, tf + tb)
    chunk_1f1b, chunk_vpp = bubbles[1][2], bubbles[vpp][2]
    assert chunk_vpp == pytest.approx(chunk_1f1b / vpp, rel=1e-12)
    assert bubbles[1][1] == pytest.approx((pp - 1) * chunk_1f1b, rel=1e-9)
    assert bubbles[vpp][1] == pytest.approx((pp - 1) * chunk_vpp, rel=1e-9)
    assert bubbles[vpp][1] == pytest.approx(bubbles[1][1] / vpp, rel=1e-9)
    d = two.summary["p2p_time_s"]
    assert bubbles[vpp][0] < bubbles[1][0]
    assert bubbles[vpp][0] <= (bubbles[1][1] / vpp + 2 * (pp * vpp - 1) * d) * (1 + 1e-9)


# --- 3. one stage, one micro-batch: the old step -----------------------------------------------

def _params_per_gpu_training(distributed: bool) -> float:
    """Parameters one GPU updates in TRAINING (2 MoE layers, EP 8 on 8 GPUs, no vocabulary):
    per layer attention 4h^2, two norms 2h, router hE (replicated), 16 / 8 experts of 2 h F;
    the final norm h. The distributed optimizer shards the dense part over dp 8 (experts:
    edp = 8 / (etp 1 x ep 8) = 1)."""
    dense_part = 2 * (4 * H * H + 2 * H + H * EXPERTS) + H
    experts = 2 * (EXPERTS // 8) * 2 * H * FFN
    return dense_part / 8 + experts if distributed else dense_part + experts


def test_single_stage_iteration_is_the_step(training_scenario, dgx):
    sc = training_scenario(fabric=EXACT)
    it = run_training(sc, dgx).summary
    step = run_step(sc, dgx).summary
    assert it["step_time_s"] == step["step_time_s"]
    assert it["pipeline_time_s"] == step["step_time_s"] and it["bubble_fraction"] == 0.0
    assert it["param_gather_time_s"] == 0.0 and it["p2p_time_s"] == 0.0
    assert it["iteration_time_s"] == pytest.approx(it["step_time_s"] + it["optimizer_time_s"],
                                                   rel=1e-15)
    hbm = dgx.gpu.hbm_bandwidth_Bps * DEFAULT_EFFICIENCY.memory
    assert it["optimizer_time_s"] == pytest.approx(
        _params_per_gpu_training(False) * OPT_TRAFFIC / hbm, rel=1e-12)


def test_single_stage_iteration_with_distributed_optimizer(training_scenario, dgx):
    it = run_training(training_scenario(training={"use_distributed_optimizer": True},
                                        fabric=EXACT), dgx).summary
    assert it["iteration_time_s"] == pytest.approx(
        it["step_time_s"] + it["optimizer_time_s"] + it["param_gather_time_s"], rel=1e-15)
    hbm = dgx.gpu.hbm_bandwidth_Bps * DEFAULT_EFFICIENCY.memory
    assert it["optimizer_time_s"] == pytest.approx(
        _params_per_gpu_training(True) * OPT_TRAFFIC / hbm, rel=1e-12)
    # the parameter AllGather: bf16 attention + router weights of both layers over the ring
    # of 8 (experts have no data-parallel replica): 7 pipelined steps of 1/8 the bytes after
    # 6 extra hop latencies, each hop GPU -> NVSwitch -> GPU
    nbytes = 2 * (4 * H * H + H * EXPERTS) * DTYPE
    lat = 2 * dgx.links.latency_s[0]
    expect = 6 * lat + lat + 7 * nbytes / 8 / dgx.links.capacity_Bps[0]
    assert it["param_gather_time_s"] == pytest.approx(expect, rel=1e-12)


def test_single_stage_distributed_optimizer_reduce_scatters(training_scenario, dgx):
    plain = run_training(training_scenario(fabric=EXACT), dgx).summary
    dist = run_training(training_scenario(training={"use_distributed_optimizer": True},
                                          fabric=EXACT), dgx).summary
    # the dense gradients (fp32) of both layers: AllReduce 14/8, ReduceScatter 7/8 per rank
    grads = 2 * (4 * H * H + H * EXPERTS) * 4
    assert plain["intra_node_bytes"] - dist["intra_node_bytes"] == pytest.approx(7 * grads)


def test_dense_model_on_one_stage(training_scenario, dgx):
    s = run_training(training_scenario(model={"moe_layer_freq": [0, 0]}, fabric=EXACT),
                     dgx).summary
    tf = 2 * dense_layer_time_s(SEQ, SEQ, H, HEADS, dgx.gpu, ffn_hidden=FFN)
    assert s["step_time_s"] >= 3 * tf


def test_dense_model_runs_pipelined(training_scenario, dgx):
    """The same model without MoE layers runs once the pipelined path takes it."""
    s = run_training(training_scenario(model={"moe_layer_freq": [0, 0]},
                                       training={"global_batch_size": 16}, fabric=EXACT),
                     dgx).summary
    tf = 2 * dense_layer_time_s(SEQ, SEQ, H, HEADS, dgx.gpu, ffn_hidden=FFN)
    assert s["pipeline_time_s"] == pytest.approx(2 * 3 * tf, rel=1e-12)
    assert s["a2a_time_s"] == 0.0 and s["drop_fraction"] == 0.0


# --- 4. memory per stage ------------------------------------------------------------------------

#: 4 layers (0 and 2 MoE), a vocabulary of 1024, pp 2 x 4 GPUs with EP 2: dp 4, edp 2, m 2.
MOE_PP2 = {"model": {"num_layers": 4, "moe_layer_freq": [1, 0, 1, 0], "vocab_size": 1024},
           "parallel": {"pipeline_model_parallel_size": 2, "expert_model_parallel_size": 2},
           "training": {"global_batch_size": 8}, "fabric": EXACT}
VOCAB = 1024


def _moe_pp2_params() -> list[tuple[int, int]]:
    """(dense, expert) parameters per GPU of each stage of MOE_PP2 (tp 1: nothing split)."""
    attention, norms = 4 * H * H, 2 * H
    dense_layer = attention + norms + 2 * H * FFN
    moe_layer = attention + norms + H * EXPERTS  # + the router
    experts = EXPERTS // 2 * 2 * H * FFN  # 8 of the 16 experts on each GPU (EP 2)
    embedding = VOCAB * H
    first = (moe_layer + dense_layer + embedding, experts)
    last = (moe_layer + dense_layer + embedding + H, experts)  # output layer, final norm
    return [first, last]


@pytest.mark.parametrize("distributed", [False, True])
def test_stage_state_bytes(training_scenario, dgx, distributed):
    sc = training_scenario(**{**MOE_PP2, "training": {
        **MOE_PP2["training"], "use_distributed_optimizer": distributed}})
    res = run_training(sc, dgx)
    s = res.summary
    dp, edp = 4, 2
    assert (s["parallel"]["dp"], s["parallel"]["edp"]) == (dp, edp)
    stages = res.tables["stages"]
    assert [r["stage"] for r in stages] == [0, 1]
    for row, (d, e) in zip(stages, _moe_pp2_params(), strict=True):
        assert row["params_bytes"] == 2 * (d + e)
        assert row["grads_bytes"] == 4 * (d + e)
        sharded = d / dp + e / edp if distributed else d + e
        assert row["optimizer_bytes"] == pytest.approx(ADAM_BYTES * sharded, rel=1e-15)
        parts = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes",
                 "comm_buffers_bytes")
        assert row["total_bytes"] == pytest.approx(sum(row[k] for k in parts), rel=1e-15)
    # the optimizer step on the GPU updating the most parameters (the last stage)
    d, e = _moe_pp2_params()[1]
    updated = d / dp + e / edp if distributed else d + e
    hbm = dgx.gpu.hbm_bandwidth_Bps * DEFAULT_EFFICIENCY.memory
    assert s["optimizer_time_s"] == pytest.approx(updated * OPT_TRAFFIC / hbm, rel=1e-12)


@pytest.mark.parametrize("m", [2, 8])
def test_activations_follow_1f1b_in_flight(training_scenario, dgx, m):
    """Stage s of 1F1B holds min(pp - s, m) micro-batches of its layers' activations
    (Korthikanti et al., no dropout, no recomputation: per token the norms' inputs 2dh, the
    QKV input dh, Q K V and the projection input 4dh, the MLP input dh, its two activations
    2dF, and the softmax output d a s); the last stage adds the final norm's and the output
    layer's inputs (2dh per token, no vocabulary)."""
    pp, layers = 4, 8
    res = run_training(training_scenario(**dense(layers, pp, m)), dgx)
    d = DTYPE
    per_token = 2 * d * H + d * H + 4 * d * H + d * H + 2 * d * FFN + d * HEADS * SEQ
    per_layer = SEQ * per_token
    for row in res.tables["stages"]:
        s = row["stage"]
        expect = per_layer * (layers // pp) * min(pp - s, m)
        if s == pp - 1:
            expect += SEQ * 2 * d * H
        assert row["activations_bytes"] == expect, s


# --- 5. throughput -----------------------------------------------------------------------------

def test_tflops_and_mfu(training_scenario, dgx):
    s = run_training(training_scenario(**MOE_PP2), dgx).summary
    batch, tokens = 8, 8 * SEQ
    # Megatron's count, 6 FLOP per weight element per token (forward + two backward GEMMs):
    attention = 6 * tokens * 4 * H * H  # Q, K, V, O of h x h
    core = 6 * batch * SEQ * SEQ * 2 * H // 2  # QK^T and PV, halved by the causal mask
    dense_mlp = 6 * tokens * 2 * H * FFN
    routed = 6 * tokens * TOPK * 2 * H * FFN
    logits = 6 * tokens * H * VOCAB
    flops = 4 * (attention + core) + 2 * dense_mlp + 2 * routed + logits
    assert flops == 296_352_743_424
    assert s["iteration_flops"] == flops
    t, gpus = s["iteration_time_s"], s["gpus"]
    assert gpus == 8
    assert s["tflops_per_gpu"] == pytest.approx(flops / (t * gpus) / 1e12, rel=1e-12)
    peak = get_gpu("h100_sxm").peak_bf16_flops
    assert peak == dgx.gpu.peak_bf16_flops == 989.4e12
    assert s["mfu"] == pytest.approx(s["tflops_per_gpu"] * 1e12 / peak, rel=1e-12)
    assert s["tokens_per_s"] == pytest.approx(tokens / t, rel=1e-12)


# --- 6. the distributed optimizer's collectives --------------------------------------------------

@pytest.mark.parametrize(("collective", "steps"),
                         [("all_reduce", 14), ("reduce_scatter", 7), ("all_gather", 7)])
def test_gradient_reduction_ring_bytes_and_time(training_scenario, dgx, collective, steps):
    """Two dense layers' fp32 gradients on the ring of 8: each rank sends steps / 8 of them,
    2(n-1) steps for the AllReduce, n-1 for ReduceScatter and AllGather, pipelined: steps - 1
    extra hop latencies, then one stream."""
    sc = training_scenario(model={"moe_layer_freq": [0, 0]},
                           parallel={"expert_model_parallel_size": 1})
    inp = step_inputs(sc, dgx, plan=False)
    env = simpy.Environment()
    fabric = Fabric(env, dgx, FabricOptions(rate_tolerance=0.0))
    clocks = GpuClocks(fabric, 8)
    red = GradientReduction(clocks, inp, collective)
    env.run(red.start([0, 1], 0.0))
    nbytes = 2 * (4 * H * H + 2 * H * FFN) * 4
    n = 8
    assert steps == (2 * (n - 1) if collective == "all_reduce" else n - 1)
    assert clocks.inter_node_bytes == 0.0
    assert clocks.intra_node_bytes == pytest.approx(n * steps / n * nbytes, rel=1e-12)
    lat = 2 * dgx.links.latency_s[0]
    expect = (steps - 1) * lat + lat + steps * nbytes / n / dgx.links.capacity_Bps[0]
    assert env.now == pytest.approx(expect, rel=1e-12)


def test_distributed_optimizer_halves_pipelined_gradient_bytes(training_scenario, dgx):
    """pp 4 of 2 dense layers, dp 2 per stage: the AllReduce counts 2 x 1/2 of a chunk's
    gradients per rank, the ReduceScatter 1/2: the iteration moves one chunk's gradient bytes
    less per stage."""
    pp, layers, m = 4, 8, 4
    ar = run_training(training_scenario(**dense(layers, pp, m)), dgx).summary
    rs = run_training(training_scenario(**dense(
        layers, pp, m, training={"use_distributed_optimizer": True})), dgx).summary
    chunk_grads = layers // pp * (4 * H * H + 2 * H * FFN) * 4
    assert ar["intra_node_bytes"] - rs["intra_node_bytes"] == pytest.approx(
        pp * 2 * chunk_grads / 2, rel=1e-12)
    assert rs["param_gather_time_s"] > 0.0 and ar["param_gather_time_s"] == 0.0
    assert rs["iteration_time_s"] == pytest.approx(
        rs["step_time_s"] + rs["param_gather_time_s"] + rs["optimizer_time_s"], rel=1e-15)


# --- 7. determinism ------------------------------------------------------------------------------

PIPELINED_MOE = {"model": {"num_layers": 4},
                 "parallel": {"pipeline_model_parallel_size": 2,
                              "expert_model_parallel_size": 4},
                 "gating": {"popularity_skew": 1.0},
                 "training": {"global_batch_size": 16, "representative_microbatches": 4},
                 "fabric": EXACT}


def test_same_seed_same_iteration_other_seed_other_routing(training_scenario, dgx):
    a = run_training(training_scenario(**PIPELINED_MOE), dgx)
    b = run_training(training_scenario(**PIPELINED_MOE), dgx)
    c = run_training(training_scenario(seed=1, **PIPELINED_MOE), dgx)
    assert a.summary["microbatches"] == 4
    assert a.summary == b.summary
    assert a.tables["schedule"] == b.tables["schedule"]
    assert a.tables["stages"] == b.tables["stages"]
    assert c.summary["expert_load_imbalance"] != a.summary["expert_load_imbalance"]
    assert durations(c.tables["schedule"], "F") != durations(a.tables["schedule"], "F")


# --- 8. routing per micro-batch ------------------------------------------------------------------

def test_each_microbatch_has_its_own_routing(training_scenario, dgx):
    def forwards(samples):
        sc = training_scenario(**{**PIPELINED_MOE, "training": {
            **PIPELINED_MOE["training"], "representative_microbatches": samples}})
        rows = run_training(sc, dgx).tables["schedule"]
        f = {r["microbatch"]: r["end_s"] - r["start_s"] for r in rows
             if r["kind"] == "F" and r["stage"] == 0}
        return [f[mb] for mb in range(4)]

    every = forwards(4)
    assert len({round(x, 15) for x in every}) == 4  # four routings, four times
    one = forwards(1)
    assert one == pytest.approx([one[0]] * 4, rel=1e-12)
    two = forwards(2)  # micro-batch i takes sample i mod 2
    assert two[2] == pytest.approx(two[0], rel=1e-12)
    assert two[3] == pytest.approx(two[1], rel=1e-12)
    assert two[0] != pytest.approx(two[1], rel=1e-9)
    assert two[:2] == pytest.approx(every[:2], rel=1e-12)


# --- 9. EP overlap and DualPipe -----------------------------------------------------------------

def _two_server_moe(overlap: bool) -> dict:
    """TWO_SERVERS (EP 16 over both servers, top-1, skewed) on one stage, two micro-batches."""
    return {**TWO_SERVERS, "training": {"global_batch_size": 32,
                                        "overlap_moe_expert_parallel_comm": overlap},
            "fabric": EXACT}


def test_ep_overlap_is_not_slower_and_hides_ep(training_scenario, two_servers):
    off = run_training(training_scenario(**_two_server_moe(False)), two_servers).summary
    on = run_training(training_scenario(**_two_server_moe(True)), two_servers).summary
    assert off["a2a_inter_node_bytes"] > 0  # real all-to-all traffic between the servers
    assert on["iteration_time_s"] <= off["iteration_time_s"]
    assert on["exposed_comm_s"]["ep"] < off["exposed_comm_s"]["ep"]


def test_schedules_respect_dependencies(training_scenario, dgx):
    """The timeline's ops start after their inputs arrived (1F1B, interleaved, DualPipe)."""
    for sections in (dense(8, 4, 8), dense(8, 4, 8, 2),
                     {**PIPELINED_MOE, "training": {"global_batch_size": 16,
                                                    "pipeline_schedule": "dualpipe"}}):
        res = run_training(training_scenario(**sections), dgx)
        assert dependency_violations(res.tables["schedule"], res.summary["p2p_time_s"]) == []


def test_ep_overlap_pairs_respect_dependencies(training_scenario, dgx):
    sections = {**PIPELINED_MOE, "training": {"global_batch_size": 16,
                                              "overlap_moe_expert_parallel_comm": True}}
    rows = run_training(training_scenario(**sections), dgx).tables["schedule"]
    assert any(r["kind"] == "FB" for r in rows)
    assert [(r["stage"], r["microbatch"]) for r in rows
            if r["kind"] == "FB" and r["microbatch"] == r["microbatch_b"]
            and r["chunk"] == r["chunk_b"]] == []
    assert dependency_violations(rows) == []


def test_ep_overlap_pairing_never_deadlocks_nor_pairs_a_microbatch_with_itself():
    from sim.training.iteration import pair_steady_state

    for name, pps, vpps in (("1f1b", (1, 2, 3, 4, 8), (1,)), ("interleaved", (2, 3, 4), (2, 3))):
        for pp in pps:
            for vpp in vpps:
                for m in range(1, 17):
                    if name == "interleaved" and m % pp:
                        continue
                    plan = pair_steady_state(SCHEDULES.get(name)(pp, vpp, m))
                    plan.check()
                    tl = run_plan(plan, lambda s, op: 1.0, lambda *a: 0.1)  # raises on deadlock
                    fb = [op for _, op, _, _ in tl.ops if op.kind == "FB"]
                    assert all(op.mb != op.mb_b for op in fb), (name, pp, vpp, m)
                    if m > pp:  # a steady state: most backwards overlap a forward
                        assert len(fb) >= (m - pp) * vpp, (name, pp, vpp, m)


def test_dualpipe_end_ranks_hold_embedding_and_output_layer(training_scenario, dgx):
    from sim.training import memory as mem
    from sim.training.iteration import memory, model_dims
    from sim.training.pipeline import build_pipeline

    sections = {**PIPELINED_MOE, "training": {"global_batch_size": 16,
                                              "pipeline_schedule": "dualpipe"},
                "model": {**PIPELINED_MOE["model"], "vocab_size": 4096}}
    sc = training_scenario(**sections)
    pipe, dims = build_pipeline(sc, dgx.num_gpus), model_dims(sc)
    rows = memory(sc, dims, pipe)
    plain = mem.stage_memory(dims, pipe.par, 1, stages=[pipe.stage_layers(s) for s in
                                                        range(pipe.par.pp)],
                             layers_in_flight=[1.0] * pipe.par.pp, distributed_optimizer=False,
                             dropout=False)
    matrix = 4096 * sc.model.hidden_size * 2  # one vocab x hidden matrix in bf16 (tp 1)
    # DualPipe: ranks 0 and pp-1 each hold the first and the last chunk, so both vocab matrices
    # (and the final norm); the default layout gives rank 0 the embedding, pp-1 the output
    for s in (0, pipe.par.pp - 1):
        extra = rows[s]["params_bytes"] - plain[s]["params_bytes"]
        assert matrix <= extra <= matrix + 4 * sc.model.hidden_size


def test_timeline_refuses_fb_needing_its_own_forward():
    plan = Plan("self-pair", 1, 1, ((Op("FB", 0, 0, 0, 0),),), (((0, 0),),), 1)
    plan.check()  # each (mb, chunk) has its forward and backward
    try:
        run_plan(plan, lambda s, op: 1.0, lambda *a: 0.0)
    except RuntimeError as e:
        assert "deadlock" in str(e)
        return
    raise AssertionError("an FB whose backward needs its own forward ran")


def test_dualpipe_runs_every_op_and_pays_for_comm_sms(training_scenario, dgx):
    pp, m = 2, 4

    def dualpipe(sms):
        sc = training_scenario(**{**PIPELINED_MOE, "training": {
            "global_batch_size": m * 4, "pipeline_schedule": "dualpipe",
            "communication_sms": sms}})
        return run_training(sc, dgx)

    res = dualpipe(0)
    rows = res.tables["schedule"]
    assert res.summary["pipeline_schedule"] == "dualpipe"
    forwards, backwards, weights = [], [], []
    for r in rows:
        if r["kind"] in ("F", "FB"):
            forwards.append((r["microbatch"], r["chunk"]))
        if r["kind"] in ("B", "I"):
            backwards.append((r["microbatch"], r["chunk"]))
        if r["kind"] == "FB":
            backwards.append((r["microbatch_b"], r["chunk_b"]))
        if r["kind"] == "W":
            weights.append((r["microbatch"], r["chunk"]))
    every = sorted((mb, k) for mb in range(m) for k in range(pp))
    assert sorted(forwards) == every and sorted(backwards) == every
    assert sorted(weights) == sorted({(r["microbatch"], r["chunk"]) for r in rows
                                      if r["kind"] == "I"})
    assert {r["kind"] for r in rows} >= {"F", "FB"}
    # micro-batches 0..m/2-1 enter at stage 0, the others at stage pp-1
    first = {r["microbatch"]: r["stage"] for r in rows if r["kind"] in ("F", "FB")
             and r["chunk"] == 0}
    assert first == {0: 0, 1: 0, 2: 1, 3: 1}
    assert dependency_violations(rows, res.summary["p2p_time_s"]) == []
    times = [res.summary["iteration_time_s"]] + [dualpipe(sms).summary["iteration_time_s"]
                                                 for sms in (20, 60)]
    assert times == sorted(times)


# --- 10. bad input through the CLI ----------------------------------------------------------------

BIG = {"model": {"hidden_size": 8192, "ffn_hidden_size": 28672, "num_layers": 16,
                 "num_attention_heads": 64}}

BAD = {
    "pp_not_dividing": ({"parallel": {"pipeline_model_parallel_size": 3}},
                        ["parallel.pipeline_model_parallel_size", "8 GPUs", "got 3"]),
    "layers_not_splitting": ({"parallel": {"pipeline_model_parallel_size": 4,
                                           "expert_model_parallel_size": 2},
                              "model": {"num_layers": 6}},
                             ["model.num_layers", "parallel.pipeline_model_parallel_size",
                              "6 layers", "4 stages"]),
    "global_batch": ({"parallel": {"pipeline_model_parallel_size": 2,
                                   "expert_model_parallel_size": 4},
                      "model": {"num_layers": 4}, "training": {"global_batch_size": 6}},
                     ["training.global_batch_size", "1 x 4", "got 6"]),
    "interleaved_without_vpp": ({"parallel": {"pipeline_model_parallel_size": 2,
                                              "expert_model_parallel_size": 4},
                                 "model": {"num_layers": 4},
                                 "training": {"pipeline_schedule": "interleaved"}},
                                ["training.pipeline_schedule",
                                 "virtual_pipeline_model_parallel_size"]),
    "vpp_with_1f1b": ({"parallel": {"pipeline_model_parallel_size": 2,
                                    "expert_model_parallel_size": 4,
                                    "virtual_pipeline_model_parallel_size": 2},
                       "model": {"num_layers": 4}, "training": {"pipeline_schedule": "1f1b"}},
                      ["parallel.virtual_pipeline_model_parallel_size", "1f1b"]),
    "unknown_schedule": ({"training": {"pipeline_schedule": "zb-v"}},
                         ["training.pipeline_schedule", "'zb-v'",
                          ", ".join(SCHEDULES.names())]),
    "dualpipe_too_few_microbatches": ({"parallel": {"pipeline_model_parallel_size": 2,
                                                    "expert_model_parallel_size": 4},
                                       "model": {"num_layers": 4},
                                       "training": {"pipeline_schedule": "dualpipe",
                                                    "global_batch_size": 8}},
                                      ["training.pipeline_schedule", "dualpipe",
                                       "2 micro-batches", ">= 2 pp = 4"]),
    "memory": (BIG, ["memory: pipeline stage 0 needs", "GiB per GPU", "h100_sxm has 80 GiB",
                     "training.allow_oom"]),
}


def _assert_one_line_error(proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", BAD, ids=str)
def test_cli_refuses_bad_iteration(moesim, training_file, tmp_path, case):
    sections, fragments = BAD[case]
    path = training_file(**sections)
    out = tmp_path / "out"
    proc = moesim("run", path, "--out", out)
    line = _assert_one_line_error(proc, f"{path}: ", *fragments)
    assert proc.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    if case == "memory":
        # parameters alone: per layer 4h^2 + 2h + hE and two experts of 2hF, the final norm;
        # 2 + 4 + 12 bytes each
        params = 16 * (4 * 8192**2 + 2 * 8192 + 8192 * 16 + 2 * 2 * 8192 * 28672) + 8192
        assert f"parameters {params * 2 / 2**30:.1f}," in line
        assert f"optimizer {params * 12 / 2**30:.1f}," in line
        needed = float(line.split("needs ")[1].split(" GiB")[0])
        assert needed >= round(params * 18 / 2**30, 1) > 80


def test_allow_oom_runs_and_reports(moesim, training_file, tmp_path):
    path = training_file(**{**BIG, "training": {"allow_oom": True}})
    out = tmp_path / "out"
    proc = moesim("run", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory_fits"] is False
    assert summary["memory_stage"] == 0
    assert summary["memory_per_gpu_bytes"]["total"] > summary["hbm_bytes"] == 80 * 2**30
    with open(out / "stages.csv") as f:
        stages = list(csv.DictReader(f))
    assert len(stages) == 1
    assert float(stages[0]["total_bytes"]) == summary["memory_per_gpu_bytes"]["total"]


# --- 11. shared experts -------------------------------------------------------------------------

@pytest.mark.parametrize("pipelined", [False, True])
def test_shared_experts_add_compute_and_overlap_helps(training_scenario, dgx, pipelined):
    base = PIPELINED_MOE if pipelined else {"fabric": EXACT}

    def step(**moe):
        sc = training_scenario(**{**base, "moe": moe})
        return run_training(sc, dgx).summary["step_time_s"]

    without = step()
    shared = step(moe_shared_expert_intermediate_size=1024)
    overlapped = step(moe_shared_expert_intermediate_size=1024, moe_shared_expert_overlap=True)
    assert shared > without
    assert overlapped <= shared


# --- 12. recomputation --------------------------------------------------------------------------

def test_recompute_costs_time_and_saves_memory(training_scenario, dgx):
    res = {}
    for mode in ("none", "selective", "full"):
        sc = training_scenario(**{**PIPELINED_MOE, "training": {
            "global_batch_size": 8, "recompute_granularity": mode}})
        res[mode] = run_training(sc, dgx)
    t = {k: r.summary["iteration_time_s"] for k, r in res.items()}
    assert t["full"] > t["selective"] >= t["none"]
    for s in range(2):
        act = {k: r.tables["stages"][s]["activations_bytes"] for k, r in res.items()}
        assert act["none"] > act["selective"] > act["full"] > 0, s
    # full recomputation keeps the layer inputs only: stage 0 holds 2 micro-batches x 2
    # layers of s h d, plus one layer's selective activations for the backward that rebuilds
    sel0 = res["selective"].tables["stages"][0]["activations_bytes"] / (2 * 2)
    assert res["full"].tables["stages"][0]["activations_bytes"] == pytest.approx(
        2 * 2 * SEQ * H * DTYPE + sel0, rel=1e-12)


# --- timing blocks -----------------------------------------------------------------------------

def test_timing_blocks_of_a_whole_chunk_change_nothing(training_scenario, dgx):
    base = run_training(training_scenario(**PIPELINED_MOE), dgx).summary
    whole = {**PIPELINED_MOE, "training": {**PIPELINED_MOE["training"],
                                           "timing_block_layers": 2}}  # 2 layers per chunk
    blocked = run_training(training_scenario(**whole), dgx).summary
    assert blocked["iteration_time_s"] == base["iteration_time_s"]
    assert blocked["intra_node_bytes"] == base["intra_node_bytes"]


def test_timing_blocks_of_identical_dense_layers_add_up_exactly(training_scenario, dgx):
    # no exchange inside a layer (tp 1, no MoE): a chunk's passes are its layers' compute, so
    # one layer timed once and counted per layer gives the same pipeline, to rounding
    sections = dense(8, 2, 4)
    full = run_training(training_scenario(**sections), dgx).summary
    sections["training"] = {**sections["training"], "timing_block_layers": 1}
    blocked = run_training(training_scenario(**sections), dgx).summary
    assert blocked["pipeline_time_s"] == pytest.approx(full["pipeline_time_s"], rel=1e-12)
    # the gradient tails of the blocks queue behind each other: never shorter than the chunk's
    assert blocked["step_time_s"] >= full["pipeline_time_s"]


def test_timing_blocks_route_and_simulate_only_representatives(training_scenario, dgx):
    from sim.training import iteration

    calls = []
    real = iteration.time_chunk

    def counting(factory, inp, profile, **kw):
        calls.append(len(inp.shape.moe_layers))
        return real(factory, inp, profile, **kw)

    sections = {"model": {"num_layers": 8}, "fabric": EXACT,
                "training": {"timing_block_layers": 2, "reuse_equivalent_chunks": True}}
    iteration.time_chunk = counting
    try:
        res = run_training(training_scenario(**sections), dgx).summary
    finally:
        iteration.time_chunk = real
    # one stage, one micro-batch: 4 blocks of 2 MoE layers, of which the first and the last
    # (with the model's last layer) are timed, each once (the backward with the reduction)
    assert calls == [2, 2]
    assert res["step_time_s"] > 0
