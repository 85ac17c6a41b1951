"""One training iteration: pipeline stages running a schedule over the micro-batches, gradients
reduced over the data-parallel groups, the optimizer step.

How it is timed (``sim.training.chunks`` for a chunk, ``sim.training.timeline`` for the
schedule):

1. The layout (:func:`sim.training.pipeline.build_pipeline`) gives the model chunks, the
   micro-batches m per pipeline and the schedule.
2. ``representative_microbatches`` = R routing samples (micro-batch i takes sample i mod R),
   each its own tokens and gate noise. Every model chunk is simulated on the fabric for each
   sample: forward and backward on the first stage's GPUs (every stage is the same block of
   GPUs). With ``reuse_equivalent_chunks`` the chunks of the same layer kinds (and the last,
   with the logits) are timed once per sample, on the first such chunk's layers.
3. Pipeline sends: every GPU of a stage sends its activation shard (micro_batch x seq x hidden
   / tp elements) to the same rank of the next stage, all at once on the fabric; the backward's
   gradients are the same size.
4. The schedule's plan is timed with those durations. Overlapped pairs (``FB``: DualPipe, or
   1F1B with ``overlap_moe_expert_parallel_comm``) take
   ``max(k (compute_F + compute_B), ep_F + ep_B) + tp_F + tp_B`` with
   k = SMs / (SMs - communication_sms): each one's dispatch and combine under the other's
   compute.
5. Gradients: each stage's last backward of each of its chunks is re-simulated with the
   chunk's gradient reduction (AllReduce, or ReduceScatter with the distributed optimizer,
   per layer under the backward with ``overlap_grad_reduce``); what runs past the backward is
   the chunk's tail, the stage's tails one after another.
6. The distributed optimizer gathers the parameters (its chunks' AllGather, alone on the
   fabric): with ``overlap_param_gather`` only the first chunk's is exposed.
7. The optimizer step is memory bound: per parameter a GPU updates, 30 bytes of HBM traffic
   (fp32 gradient read 4, fp32 master, Adam m and v read and written 24, bf16 parameter
   written 2) at the compute profile's HBM efficiency (the roofline's 80 % without).

A single-stage iteration of one micro-batch (without logits, MTP or recompute, which the step
does not model) is the training step of ``sim.moe.step`` plus the optimizer step
(``step_time_s`` is the same number as before).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from sim.comm import load_profile
from sim.comm.model import Model
from sim.compute.roofline import DEFAULT_EFFICIENCY
from sim.errors import UserError
from sim.moe.run import TrainingResult, _check_gemm_dtype, plan_routing, run_step, step_inputs
from sim.network import Fabric, FabricOptions
from sim.training import memory as mem
from sim.training.chunks import (
    ChunkTime,
    blocks,
    chunk_inputs,
    combine,
    core_time_s,
    gather_time_s,
    logits_time_s,
    time_chunk,
)
from sim.training.dims import ModelDims
from sim.training.overlap import op_time_s, pair_steady_state
from sim.training.pipeline import Pipeline, build_pipeline
from sim.training.schedules import Plan, build
from sim.training.summary import (
    exposed_parts,
    iteration_bytes,
    memory_summary,
    routing_stats,
    schedule_rows,
    schedule_spans,
    throughput,
)
from sim.training.timeline import Timeline, run

OPTIMIZER_BYTES_PER_PARAM = 30


@dataclass
class Iteration:
    """A timed pipelined iteration: ``times[(k, r)]`` chunk k's times on routing sample r,
    ``tails[k]`` its last backward with the gradient reduction, ``hop`` one pipeline send
    (s), ``slow`` an overlapped pair's compute slow-down, ``routing`` per sample (its
    LayerRoutings, the MoE layers routed), ``base`` the stage's step inputs."""

    plan: Plan
    timeline: Timeline
    times: dict
    tails: dict
    samples: int
    hop: float
    slow: float
    routing: list
    base: object

    def chunk_time(self, k: int, mb: int) -> ChunkTime:
        """Chunk k's times for micro-batch mb (its routing sample)."""
        return self.times[(k, mb % self.samples)]


def run_iteration(scenario, cluster, source: str = "", progress=None,
                  placement=None) -> TrainingResult:
    """Simulate one training iteration of ``scenario`` on ``cluster`` (SI units throughout)."""
    where = f"{source}: " if source else ""
    profile = load_profile(scenario.comm_profile or cluster.comm_profile)
    _check_gemm_dtype(scenario, cluster, profile, source)
    pipe = build_pipeline(scenario, cluster.num_gpus, where, cluster.gpus_per_node)
    if placement is not None and pipe.par.pp > 1:
        raise UserError(f"{where}placement: expert placements are for one pipeline stage "
                        "(parallel.pipeline_model_parallel_size 1)")
    dims = model_dims(scenario)
    stages_mem = memory(scenario, dims, pipe)
    fits = mem.check_fits(stages_mem, cluster.gpu.hbm_gib * 2**30)
    if fits is not None and not scenario.training.allow_oom:
        s, row = fits
        raise UserError(f"{where}memory: pipeline stage {s} needs "
                        f"{row['total_bytes'] / 2**30:.1f} GiB per GPU (parameters "
                        f"{row['params_bytes'] / 2**30:.1f}, gradients "
                        f"{row['grads_bytes'] / 2**30:.1f}, optimizer "
                        f"{row['optimizer_bytes'] / 2**30:.1f}, activations "
                        f"{row['activations_bytes'] / 2**30:.1f}), the {cluster.gpu.name} has "
                        f"{cluster.gpu.hbm_gib:.0f} GiB (training.allow_oom: true runs it "
                        "anyway)")
    m, tr = scenario.model, scenario.training
    if (pipe.par.pp == 1 and pipe.microbatches == 1 and m.vocab_size is None
            and m.mtp_num_layers == 0 and tr.recompute_granularity == "none"
            and tr.timing_block_layers is None):
        result = run_step(scenario, cluster, source, progress, placement, profile)
        step = result.summary["step_time_s"]
        timeline = None
        extra = _single(scenario, cluster, profile, pipe, result, step)
    else:
        it = _pipelined(scenario, cluster, profile, pipe, source, progress)
        result, extra = _pipelined_result(scenario, cluster, profile, pipe, it)
        timeline = it.timeline
    summary = result.summary
    summary.update(extra)
    summary.update(throughput(scenario, cluster, dims, pipe, summary["iteration_time_s"]))
    summary.update(memory_summary(stages_mem, cluster, fits))
    stages = [{"stage": s, **row} for s, row in enumerate(stages_mem)]
    result.tables["stages"] = stages
    if timeline is not None:
        result.tables["schedule"] = schedule_rows(timeline)
    return result


def model_dims(scenario) -> ModelDims:
    """The FLOP formula's and the memory model's view of the scenario's model."""
    from sim.model.params import mla_of

    m, moe = scenario.model, scenario.moe
    return ModelDims(
        num_layers=m.num_layers, hidden=m.hidden_size, ffn_hidden=m.ffn_hidden_size,
        heads=m.num_attention_heads, kv_heads=m.num_query_groups or m.num_attention_heads,
        seq_len=m.seq_length, vocab=m.vocab_size or 0, moe_layers=tuple(m.moe_layers()),
        num_experts=moe.num_experts, topk=moe.moe_router_topk,
        moe_ffn_hidden=moe.moe_ffn_hidden_size or m.ffn_hidden_size,
        shared_expert_ffn=moe.moe_shared_expert_intermediate_size or 0,
        gated=m.gated_linear_unit, mla=mla_of(m), mtp_layers=m.mtp_num_layers,
        tied_embeddings=not m.untie_embeddings_and_output_weights)


def memory(scenario, dims: ModelDims, pipe: Pipeline, inflight=None) -> list[dict]:
    """Per stage, memory per GPU by part (bytes). ``inflight``: per stage, the (micro-batch,
    layer) activations the schedule holds at its peak; None: from the schedule's plan with
    every chunk's ops taking equal time."""
    tr, par = scenario.training, pipe.par
    if inflight is None:
        inflight = layers_in_flight(pipe, overlap=tr.overlap_moe_expert_parallel_comm)
    # no dropout: MoE recipes (Mixtral's, DeepSeek-V3's) train without it
    return mem.stage_memory(
        dims, par, pipe.micro_batch_size, stages=[pipe.stage_layers(s) for s in range(par.pp)],
        layers_in_flight=inflight, recompute=tr.recompute_granularity,
        distributed_optimizer=tr.use_distributed_optimizer, dtype_bytes=tr.dtype_bytes,
        grad_bytes=tr.grad_dtype_bytes, dropout=False,
        ends=[pipe.ends(s) for s in range(par.pp)])


def layers_in_flight(pipe: Pipeline, timeline: Timeline | None = None,
                     overlap: bool = False) -> list[float]:
    """Per stage, the peak of (micro-batch, layer) activations held (forward done, backward
    not), from ``timeline`` or the plan timed with unit ops (``overlap``: with the 1F1B
    all-to-all overlap's pairs, one forward more in flight)."""
    if timeline is None:
        plan = build(pipe.schedule, pipe.par.pp, pipe.par.vpp, pipe.microbatches)
        if overlap and pipe.schedule != "dualpipe":
            plan = pair_steady_state(plan)
        timeline = run(plan, lambda s, op: 1.0, lambda *a: 0.0)
    plan = timeline.plan
    weights = np.zeros((plan.pp, plan.local_chunks))
    for k, layers in enumerate(pipe.chunk_layers):
        for path in plan.paths[:1] + plan.paths[-1:]:
            s, local = path[k]
            weights[s, local] = len(layers)
    return list(timeline.in_flight_peak(weights))


def _single(scenario, cluster, profile, pipe: Pipeline, result, step: float) -> dict:
    """Iteration fields of a one-stage, one-micro-batch run (today's step)."""
    base = step_inputs(scenario, cluster, compute=profile.compute, plan=False)
    ag = 0.0
    if scenario.training.use_distributed_optimizer:
        ag = _gather(scenario, cluster, profile, base, tuple(range(scenario.model.num_layers)))
    opt = optimizer_time_s(scenario, cluster, profile, pipe)
    return {"iteration_time_s": step + ag + opt, "optimizer_time_s": opt,
            "param_gather_time_s": ag, "bubble_fraction": 0.0, "pipeline_time_s": step,
            "p2p_time_s": 0.0,
            "exposed_comm_s": {"tp": result.summary["tp_time_s"],
                               "ep": result.summary["breakdown_s"]["dispatch"]
                               + result.summary["breakdown_s"]["combine"],
                               "pp": 0.0, "dp": result.summary["allreduce_time_s"] + ag}}


def _fabric_factory(scenario, cluster, profile):
    options = FabricOptions.from_settings(scenario.fabric, profile)
    return lambda env: Fabric(env, cluster, options)


def _gather(scenario, cluster, profile, base, layers) -> float:
    inp = chunk_inputs(base, layers, [None] * sum(base.shape.moe_layers))
    return gather_time_s(_fabric_factory(scenario, cluster, profile), inp, profile,
                         scenario.training.dtype_bytes)


def optimizer_time_s(scenario, cluster, profile, pipe: Pipeline) -> float:
    """Seconds of the optimizer step on the GPU updating the most parameters (see module)."""
    dims = model_dims(scenario)
    par, tr = pipe.par, scenario.training
    worst = 0.0
    for s in range(par.pp):
        p = mem.stage_params(dims, par, pipe.stage_layers(s), *pipe.ends(s))
        dense, expert = p["dense_params"], p["expert_params"]
        if tr.use_distributed_optimizer:
            dense, expert = dense / par.dp, expert / par.edp
        worst = max(worst, dense + expert)  # DualPipe's stage_layers hold both copies
    eff = profile.compute.hbm_efficiency if profile.compute is not None \
        else DEFAULT_EFFICIENCY.memory
    return worst * OPTIMIZER_BYTES_PER_PARAM / (cluster.gpu.hbm_bandwidth_Bps * eff)


def _kinds(layers: tuple[int, ...], moe_flags) -> tuple:
    """What makes layers time alike: their MoE flags, and whether the model's last is among
    them (the logits, the MTP modules)."""
    return tuple(moe_flags[i] for i in layers), layers[-1] == len(moe_flags) - 1


def _pipelined(scenario, cluster, profile, pipe: Pipeline, source: str, progress) -> Iteration:
    tr, model = scenario.training, scenario.model
    base = step_inputs(scenario, cluster, source, compute=profile.compute, gpus=pipe.stage_gpus,
                       plan=False)
    flags = base.shape.moe_layers
    chunks = len(pipe.chunk_layers)
    # timing units: each chunk's blocks of at most timing_block_layers layers (whole chunks
    # by default), units of the same layer kinds timed once per sample
    units = {k: blocks(pipe.chunk_layers[k], tr.timing_block_layers) for k in range(chunks)}
    rep: dict[tuple[int, int], tuple[int, int]] = {}
    first_of: dict[tuple, tuple[int, int]] = {}
    for k in range(chunks):
        for j, layers in enumerate(units[k]):
            sig = _kinds(layers, flags) if tr.reuse_equivalent_chunks else (k, j)
            rep[(k, j)] = first_of.setdefault(sig, (k, j))
    reps = sorted(set(rep.values()))
    index = np.cumsum(flags) - 1
    only = {int(index[i]) for k, j in reps for i in units[k][j] if flags[i]}
    samples = min(tr.representative_microbatches, pipe.microbatches)
    factory = _fabric_factory(scenario, cluster, profile)
    spec = cluster.gpu
    logits = (logits_time_s(base.tokens * base.layout.tp, base.shape.hidden, model.vocab_size,
                            base.layout.tp, spec, profile.compute, tr.gemm_dtype)
              if model.vocab_size else 0.0)
    core = core_time_s(base, spec) if tr.recompute_granularity == "selective" else 0.0
    collective = "reduce_scatter" if tr.use_distributed_optimizer else "all_reduce"
    unit_times: dict[tuple, ChunkTime] = {}
    unit_tails: dict[tuple, ChunkTime] = {}
    samples_routing: list = []
    last_sample = (pipe.microbatches - 1) % samples
    for r in range(samples):
        routing = (plan_routing(scenario, base.layout, cluster, source, None, r, only)
                   if only else [])
        samples_routing.append((routing, only))
        for u in reps:
            layers = units[u[0]][u[1]]
            last = layers[-1] == len(flags) - 1
            if last:  # the MTP modules: a layer like the last (its routing) and their logits
                layers = layers + (layers[-1],) * model.mtp_num_layers
            inp = chunk_inputs(base, layers, routing)
            kw = {"logits_s": logits * (1 + model.mtp_num_layers) if last else 0.0,
                  "recompute": tr.recompute_granularity, "core_s": core}
            if r == last_sample:
                unit_tails[u] = time_chunk(factory, inp, profile, grads=collective, **kw)
            # one micro-batch: its only backward is the one with the reduction
            unit_times[(u, r)] = (unit_tails[u] if pipe.microbatches == 1
                                  else time_chunk(factory, inp, profile, **kw))
        if progress is not None:
            progress("micro-batch samples", r + 1, samples)
    times = {(k, r): combine([unit_times[(rep[(k, j)], r)] for j in range(len(units[k]))])
             for k in range(chunks) for r in range(samples)}
    tails = {k: combine([unit_tails[rep[(k, j)]] for j in range(len(units[k]))],
                        tr.overlap_grad_reduce) for k in range(chunks)}
    plan = build(pipe.schedule, pipe.par.pp, pipe.par.vpp, pipe.microbatches)
    if tr.overlap_moe_expert_parallel_comm and pipe.schedule != "dualpipe":
        plan = pair_steady_state(plan)
    hop = p2p_time_s(scenario, cluster, profile, pipe, base)
    sms = spec.num_sms or 1
    slow = sms / max(sms - tr.communication_sms, 1)
    it = Iteration(plan, None, times, tails, samples, hop, slow, samples_routing, base)
    it.timeline = run(plan, lambda s, op: op_time_s(op, it.chunk_time, slow), lambda *a: hop)
    return it


def p2p_time_s(scenario, cluster, profile, pipe: Pipeline, base) -> float:
    """Seconds of one pipeline send: every GPU of stage 0 sends its activation shard to the
    same rank of stage 1, all at once on the fabric (under the library's point-to-point cost);
    0 with one stage."""
    if pipe.par.pp == 1:
        return 0.0
    env = simpy.Environment()
    fabric = _fabric_factory(scenario, cluster, profile)(env)
    n = pipe.stage_gpus
    src = np.arange(n)
    dst = src + n
    nbytes = np.full(n, float(base.tokens * base.shape.hidden * scenario.training.dtype_bytes))
    cross = cluster.node_of[src] != cluster.node_of[dst]
    cap, delay = None, 0.0
    if not profile.is_ideal:
        model = Model(cluster, profile, routes=fabric.routes)
        cap = model.p2p_cap_Bps(nbytes, cross, 2)
        delay = model.group_delay_s("sendrecv", "Simple", 2, 2 if cross.any() else 1)
    env.run(fabric.transfer(src, dst, nbytes, cap, delay))
    return float(env.now)


def _pipelined_result(scenario, cluster, profile, pipe: Pipeline, it: Iteration):
    """The TrainingResult and iteration fields of a pipelined iteration."""
    tl, plan, tr = it.timeline, it.plan, scenario.training
    # gradient tails: each stage's chunks in the order their last backward ends
    last_b: dict[tuple[int, int], float] = {}
    for stage, op, _, end in tl.ops:
        k = op.chunk_b if op.kind == "FB" else op.chunk if op.kind in ("B", "I", "W") else -1
        if k >= 0:
            last_b[(stage, k)] = max(last_b.get((stage, k), 0.0), end)
    stage_end = [0.0] * plan.pp
    for stage in range(plan.pp):
        mine = sorted((end, k) for (s, k), end in last_b.items() if s == stage)
        finish = 0.0
        for end, k in mine:
            finish = max(finish, end) + it.tails[k].reduce_tail_s
        stage_end[stage] = max(finish, max(e for _, _, _, e in tl.stage_ops(stage)))
    fwd_bwd = max(stage_end)
    dp_exposed = fwd_bwd - tl.makespan_s
    no_p2p = run(plan, lambda s, op: op_time_s(op, it.chunk_time, it.slow),
                 lambda *a: 0.0).makespan_s
    ag = 0.0
    if tr.use_distributed_optimizer:
        flags = it.base.shape.moe_layers
        stage0 = [k for k in range(len(pipe.chunk_layers)) if pipe.stage_of_chunk(k) == 0]
        cache: dict[tuple, float] = {}  # chunks of the same layer kinds gather the same bytes
        for k in stage0:
            sig = _kinds(pipe.chunk_layers[k], flags)
            if sig not in cache:
                cache[sig] = _gather(scenario, cluster, profile, it.base, pipe.chunk_layers[k])
        gathers = [cache[_kinds(pipe.chunk_layers[k], flags)] for k in stage0]
        ag = gathers[0] if tr.overlap_param_gather else sum(gathers)
    opt = optimizer_time_s(scenario, cluster, profile, pipe)
    iteration = fwd_bwd + ag + opt
    exposed = exposed_parts(tl, it.chunk_time, it.slow)
    ep, tpc = exposed["ep"], exposed["tp"]
    summary = {
        "step_time_s": fwd_bwd, "iteration_time_s": iteration, "pipeline_time_s": tl.makespan_s,
        "optimizer_time_s": opt, "param_gather_time_s": ag,
        "bubble_fraction": tl.bubble_fraction,
        "exposed_comm_s": {"tp": tpc, "ep": ep, "pp": tl.makespan_s - no_p2p,
                           "dp": dp_exposed + ag},
        "a2a_time_s": ep, "a2a_fraction": ep / iteration if iteration else 0.0,
        "compute_time_s": exposed["compute"], "tp_time_s": tpc, "allreduce_time_s": dp_exposed,
        "p2p_time_s": it.hop, "gpus": cluster.num_gpus,
        **iteration_bytes(scenario, cluster, pipe, it.chunk_time, it.tails, it.base),
    }
    summary.update(routing_stats(it.base, it.routing, cluster))
    summary["comm_profile"] = profile.name
    # no per-link or per-layer rows: a pipelined iteration's chunks run on separate fabrics
    return TrainingResult(summary, [], [], schedule_spans(tl, pipe)), {}
