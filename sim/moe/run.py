"""Run one MoE training step from a scenario: plan the routing, time it on the fabric, summarise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from sim.comm import load_profile
from sim.comm.model import Model
from sim.errors import UserError
from sim.metrics import CATEGORIES, ListRecorder, Span
from sim.model import Shape
from sim.moe.layout import Layout
from sim.moe.plan import drop_by_position, plan_step
from sim.moe.step import StepInputs, training_step
from sim.network import Fabric, FabricOptions
from sim.topology.cluster import Cluster
from sim.units import bytes_per_s_to_gbps


@dataclass
class TrainingResult:
    """Flat results: the summary, one row per layer, one row per link, the timeline spans."""

    summary: dict
    layers: list[dict]
    links: list[dict]
    spans: list[Span]
    tables: dict = field(default_factory=dict)
    """Further tables of an iteration: ``stages`` (memory per stage), ``schedule`` (its ops)."""


def step_inputs(scenario, cluster: Cluster, source: str = "", progress=None,
                placement=None, compute=None, gpus: int | None = None,
                plan: bool = True) -> StepInputs:
    """Sizes, layout and routing plan of ``scenario`` on ``cluster``; ``placement`` (MoE
    layers, E) puts expert e of layer l on GPU ``placement[l][e]`` of each EP group;
    ``compute``: the profile's compute section (None: the roofline times the compute);
    ``gpus``: the step's GPUs, the first of the cluster (one pipeline stage; None: all);
    ``plan`` False: no routing yet (``routing`` empty)."""
    model, moe, par, tr = scenario.model, scenario.moe, scenario.parallel, scenario.training
    tp = par.tensor_model_parallel_size
    layout = Layout.build(gpus or cluster.num_gpus, par.expert_model_parallel_size,
                          moe.num_experts, tp, source, par.expert_tensor_parallel_size,
                          cluster.gpus_per_node)
    if placement is not None:
        layout = layout.with_placement(placement, sum(model.moe_layers()), source)
    where = f"{source}: " if source else ""
    tokens = model.micro_batch_size * model.seq_length
    for name, value in (("model.seq_length x micro_batch_size", tokens),
                        ("model.num_attention_heads", model.num_attention_heads),
                        ("model.ffn_hidden_size", model.ffn_hidden_size)):
        if value % tp:
            raise UserError(f"{where}parallel.tensor_model_parallel_size: must divide "
                            f"{name} = {value} (got {tp})")
    if moe.rectify.intra_gpu and layout.etp > 1:
        raise UserError(f"{where}moe.rectify.intra_gpu: needs expert_tensor_parallel_size 1 "
                        f"(a GPU holds whole experts only then; got {layout.etp})")
    _check_dispatcher(scenario, layout, where)
    if model.multi_latent_attention and compute is None:
        raise UserError(f"{where}model.multi_latent_attention: needs a communication profile "
                        "with a compute section (the roofline times MHA/GQA only)")
    if tr.fp8_dispatch and tr.dispatcher != "alltoall":
        raise UserError(f"{where}training.fp8_dispatch: an alltoall dispatcher setting "
                        f"({tr.dispatcher} sets its own precision); remove it")
    shape = Shape.of(model, moe)
    return StepInputs(
        shape=shape, seq_len=model.seq_length, tokens=tokens // tp,
        dtype_bytes=tr.dtype_bytes, grad_dtype_bytes=tr.grad_dtype_bytes,
        overlap_grad_reduce=tr.overlap_grad_reduce, layout=layout,
        routing=plan_routing(scenario, layout, cluster, source, progress) if plan else [],
        a2a_algorithm=tr.a2a_algorithm, dispatcher=tr.dispatcher,
        gpu_node=cluster.node_of[:layout.gpus], local_rank=cluster.local_rank[:layout.gpus],
        compute=compute, gemm_dtype=tr.gemm_dtype,
        shared_ffn=shape.shared_ffn, shared_overlap=moe.moe_shared_expert_overlap,
        mla=shape.mla, fp8_dispatch=tr.fp8_dispatch,
        grad_collective="reduce_scatter" if tr.use_distributed_optimizer else "all_reduce")


def _check_dispatcher(scenario, layout: Layout, where: str) -> None:
    """The deepep and allgather dispatchers send whole tokens: no a2a_algorithm stages, no
    padded slots, no Rectify, whole experts per GPU."""
    tr, moe = scenario.training, scenario.moe
    if tr.dispatcher == "alltoall":
        return
    clash = ("training.a2a_algorithm" if tr.a2a_algorithm != "direct" else
             "moe.moe_pad_expert_input_to_capacity" if moe.moe_pad_expert_input_to_capacity
             else "moe.rectify" if moe.rectify.fill_in or moe.rectify.intra_gpu else
             "parallel.expert_tensor_parallel_size" if layout.etp > 1 else None)
    if clash is not None:
        raise UserError(f"{where}training.dispatcher: {tr.dispatcher} sends whole tokens to "
                        f"whole experts; {clash} is an alltoall setting (use dispatcher "
                        "alltoall, or remove it)")


def _check_gemm_dtype(scenario, cluster: Cluster, profile, source: str) -> None:
    """FP8 GEMMs need the kernel model (the roofline times BF16) and an FP8 tensor peak."""
    if scenario.training.gemm_dtype != "fp8":
        return
    where = f"{source}: " if source else ""
    if profile.compute is None:
        raise UserError(f"{where}training.gemm_dtype: fp8 needs a communication profile with a "
                        f"compute section (profile {profile.name} has none; the roofline "
                        "times BF16 only)")
    if cluster.gpu.peak_fp8_flops <= 0:
        raise UserError(f"{where}training.gemm_dtype: fp8, but GPU {cluster.gpu.name} has no "
                        "FP8 tensor peak in the catalog")


def plan_routing(scenario, layout, cluster, source: str = "", progress=None, microbatch: int = 0,
                 only=None):
    """The routing plan; a router's complaint about its parameters names the scenario file."""
    try:
        return plan_step(scenario, layout, cluster.node_of, progress, microbatch, only)
    except UserError as e:
        if source and not str(e).startswith(source):
            raise UserError(f"{source}: moe.router: {e}") from None
        raise


def run_training(scenario, cluster: Cluster, source: str = "", progress=None,
                 placement=None) -> TrainingResult:
    """Simulate one training iteration of ``scenario`` (``sim.training.iteration``); every
    number in the summary is SI.

    ``progress(stage, done, total)``: optional callback (routing groups, then layers).
    ``placement``: expert -> GPU per MoE layer (see ``step_inputs``), default block placement."""
    from sim.training.iteration import run_iteration

    return run_iteration(scenario, cluster, source, progress, placement)


def run_step(scenario, cluster: Cluster, source: str = "", progress=None,
             placement=None, profile=None) -> TrainingResult:
    """Simulate one training step of ``scenario`` (one micro-batch's forward and backward
    and the gradient reduction on every GPU); ``profile``: the communication profile (None:
    the scenario's or topology's)."""
    if profile is None:
        profile = load_profile(scenario.comm_profile or cluster.comm_profile)
        _check_gemm_dtype(scenario, cluster, profile, source)
    inp = step_inputs(scenario, cluster, source, progress, placement, profile.compute)
    options = FabricOptions.from_settings(scenario.fabric, profile)
    env = simpy.Environment()
    fabric = Fabric(env, cluster, options)
    model = None if profile.is_ideal else Model(cluster, profile, routes=fabric.routes)
    rec = ListRecorder()
    proc = env.process(training_step(fabric, inp, rec, progress, model))
    env.run(proc)
    times = proc.value
    summary = summarise(inp, times, rec.spans, fabric)
    summary.update(locality(inp, cluster.node_of))
    summary["comm_profile"] = profile.name
    return TrainingResult(
        summary, layer_rows(inp, times),
        link_rows(cluster, fabric, times.step_time_s), rec.spans)


def summarise(inp: StepInputs, times, spans: list[Span], fabric: Fabric) -> dict:
    """The summary of one step (see README for the fields)."""
    step = times.step_time_s
    # the critical GPU: the one that finished its own work last
    critical = int(np.argmax(times.ready_s))
    breakdown = dict.fromkeys(CATEGORIES, 0.0)
    for s in spans:
        if s.gpu == critical and s.category != "allreduce":
            breakdown[s.category] += s.end_s - s.start_s
    breakdown["allreduce"] = times.allreduce_exposed_s
    routing = inp.routing
    routed = sum(float(r.routed.sum()) for r in routing)
    kept = sum(float(r.kept.sum()) for r in routing)
    filled = sum(float(r.filled.sum()) for r in routing)
    local = sum(float(r.local.sum()) for r in routing)
    sent = sum(float(r.slots.sum()) for r in routing)
    # All-to-All time: mean over GPUs of the time each spends in dispatch and combine (waiting
    # for its data included). The critical GPU alone is a poor measure: when it is late, its
    # partners' data has already arrived and its own exchanges look short.
    a2a_per_gpu = np.zeros(inp.layout.gpus)
    for s in spans:
        if s.category in ("dispatch", "combine"):
            a2a_per_gpu[s.gpu] += s.end_s - s.start_s
    a2a = float(a2a_per_gpu.mean()) if len(a2a_per_gpu) else 0.0
    tokens = inp.tokens * inp.layout.gpus
    return {
        "step_time_s": step,
        "tokens_per_s": tokens / step if step > 0 else 0.0,
        "a2a_time_s": a2a,
        "a2a_fraction": a2a / step if step > 0 else 0.0,
        "compute_time_s": breakdown["attention"] + breakdown["gate"] + breakdown["expert"],
        "tp_time_s": breakdown["tp"],
        "allreduce_time_s": times.allreduce_exposed_s,
        "drop_fraction": (routed - kept) / routed if routed else 0.0,
        "drop_fraction_by_position": drop_by_position(routing),
        "padding_fraction": (sent - kept - filled) / sent if sent else 0.0,
        "fill_in_fraction": filled / sent if sent else 0.0,
        "capacity_slots": routing[0].capacity if routing else None,
        "local_rectified_fraction": local / (tokens * len(routing)) if routing else 0.0,
        "no_expert_fraction": (sum(float(r.no_expert.sum()) for r in routing)
                               / (tokens * len(routing))) if routing else 0.0,
        "expert_load_imbalance": float(np.mean([r.imbalance for r in routing])) if routing
        else 1.0,
        "inter_node_bytes": times.inter_node_bytes,
        "a2a_inter_node_bytes": times.a2a_inter_node_bytes,
        "a2a_intra_node_bytes": times.a2a_intra_node_bytes,
        "intra_node_bytes": times.intra_node_bytes,
        "gpus": inp.layout.gpus,
        "critical_gpu": critical,
        "flows": fabric.stats.flows,
        "recomputes": fabric.stats.recomputes,
        "breakdown_s": breakdown,
    }


def locality(inp: StepInputs, node_of: np.ndarray) -> dict:
    """Share of routed (token, expert) pairs whose expert is on the token's own node, and the
    router's own statistics (mean over MoE layers)."""
    p = inp.layout.gpus
    routed = sum(float(r.routed.sum()) for r in inp.routing)
    local = 0.0
    for i, r in enumerate(inp.routing):
        dest = inp.layout.expert_gpu(np.arange(p), i)
        local += float(r.routed[node_of[dest] == node_of[:p, None]].sum())
    out = {"node_local_fraction": local / routed if routed else 0.0}
    for key in sorted({k for r in inp.routing for k in r.stats}):
        out[key] = float(np.mean([r.stats[key] for r in inp.routing if key in r.stats]))
    return out


def layer_rows(inp: StepInputs, times) -> list[dict]:
    """One row per layer: forward phase times (max over GPUs) and routing statistics."""
    rows, k = [], 0
    for t in times.layer_times:
        row = {"layer": t["layer"], "moe": t["moe"], "attention_s": t["attention_s"],
               "dispatch_s": t.get("dispatch_s", 0.0), "expert_s": t.get("expert_s", 0.0),
               "combine_s": t.get("combine_s", 0.0), "tp_s": t.get("tp_s", 0.0),
               "drop_fraction": 0.0,
               "padding_fraction": 0.0, "imbalance": 0.0, "expert_load": []}
        if t["moe"]:
            r = inp.routing[k]
            k += 1
            row.update(drop_fraction=r.drop_fraction, padding_fraction=r.padding_fraction,
                       imbalance=r.imbalance, expert_load=r.expert_load.tolist())
        rows.append(row)
    return rows


def link_rows(cluster: Cluster, fabric: Fabric, step_s: float) -> list[dict]:
    """One row per directed link, named by its ends (``n0.g3 -> n0.nvswitch``): bytes carried
    in the step and mean utilisation."""
    links, names = cluster.links, cluster.node_names
    carried = fabric.stats.link_bytes
    util = carried / (links.capacity_Bps * step_s) if step_s > 0 else carried * 0
    return [{"link": i, "name": f"{names[links.src[i]]} -> {names[links.dst[i]]}",
             "src": str(names[links.src[i]]), "dst": str(names[links.dst[i]]),
             "tier": str(links.tier[i]),
             "capacity_gbps": bytes_per_s_to_gbps(float(links.capacity_Bps[i])),
             "bytes": float(carried[i]), "utilisation": float(util[i])}
            for i in range(len(links))]
