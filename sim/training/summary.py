"""The summary fields and tables of a pipelined iteration, from its timed schedule: exposed
communication of the busiest stage, bytes of the whole iteration, routing statistics,
throughput in a training log's words, memory of the fullest stage, and the schedule as rows
and timeline spans. Plain functions of what :mod:`sim.training.iteration` timed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sim.metrics import Span
from sim.moe.plan import POSITION_BINS, drop_by_position
from sim.moe.run import locality
from sim.training import flops as flop_formula
from sim.training.dims import ModelDims
from sim.training.overlap import ChunkTimes, op_parts
from sim.training.pipeline import Pipeline
from sim.training.schedules import Op
from sim.training.timeline import Timeline


def exposed_parts(tl: Timeline, chunk_time: ChunkTimes, slow: float) -> dict:
    """Exposed seconds by part (compute, ep, tp) of the busiest stage's ops."""
    busiest = int(np.argmax(tl.busy_s))
    out = {"compute": 0.0, "ep": 0.0, "tp": 0.0}
    for _, op, _, _ in tl.stage_ops(busiest):
        for part, seconds in op_parts(op, chunk_time, slow)[1].items():
            out[part] += seconds
    return out


def iteration_bytes(scenario, cluster, pipe: Pipeline, chunk_time: ChunkTimes, tails: dict,
                    base) -> dict:
    """Bytes of the whole iteration between servers and inside them: every chunk's exchanges
    for every micro-batch, the gradient reductions (``tails[k]``: chunk k's last backward with
    them) and the pipeline sends."""
    inter = intra = a2a = a2a_intra = 0.0
    last = pipe.microbatches - 1
    for k in range(len(pipe.chunk_layers)):
        for mb in range(pipe.microbatches):
            t = chunk_time(k, mb)
            inter, intra = inter + t.inter_node_bytes, intra + t.intra_node_bytes
            a2a += t.a2a_inter_node_bytes
            a2a_intra += t.a2a_intra_node_bytes
        inter += tails[k].inter_node_bytes - chunk_time(k, last).inter_node_bytes
        intra += tails[k].intra_node_bytes - chunk_time(k, last).intra_node_bytes
    n = pipe.stage_gpus
    if pipe.par.pp > 1:
        sends = 2 * pipe.microbatches * (len(pipe.chunk_layers) - 1) * n
        per = base.tokens * base.shape.hidden * scenario.training.dtype_bytes
        if cluster.node_of[0] != cluster.node_of[n]:
            inter += sends * per
        else:
            intra += sends * per
    return {"inter_node_bytes": inter, "intra_node_bytes": intra, "a2a_inter_node_bytes": a2a,
            "a2a_intra_node_bytes": a2a_intra}


def schedule_spans(tl: Timeline, pipe: Pipeline) -> list[Span]:
    """Timeline spans of the schedule: one lane per stage (its first GPU), one span per op,
    ``layer`` the model chunk, ``phase`` the op and its micro-batch(es) (``F mb 3``,
    ``FB mb 5 / mb 2``)."""
    names = {"F": "forward", "B": "backward", "I": "backward", "W": "backward",
             "FB": "forward+backward"}

    def phase(op: Op) -> str:
        return f"{op.kind} mb {op.mb}" + (f" / mb {op.mb_b}" if op.kind == "FB" else "")

    return [Span(stage * pipe.stage_gpus, names[op.kind], phase(op), op.chunk, start, end)
            for stage, op, start, end in tl.ops]


def schedule_rows(tl: Timeline) -> list[dict]:
    """One row per schedule op: stage, kind, micro-batch, model chunk, start and end (s)."""
    return [{"stage": stage, "kind": op.kind, "microbatch": op.mb, "chunk": op.chunk,
             "microbatch_b": op.mb_b, "chunk_b": op.chunk_b, "start_s": start, "end_s": end}
            for stage, op, start, end in tl.ops]


def routing_stats(base, samples: list, cluster) -> dict:
    """Drop, padding and balance statistics of the routed layers of every sample (one stage's
    GPUs), as the step's summary counts them."""
    layers = [routing[i] for routing, only in samples for i in sorted(only)]
    if not layers:
        return {"drop_fraction": 0.0, "padding_fraction": 0.0, "fill_in_fraction": 0.0,
                "no_expert_fraction": 0.0, "local_rectified_fraction": 0.0,
                "expert_load_imbalance": 1.0, "capacity_slots": None,
                "node_local_fraction": 0.0, "drop_fraction_by_position": [0.0] * POSITION_BINS}
    routed = sum(float(r.routed.sum()) for r in layers)
    kept = sum(float(r.kept.sum()) for r in layers)
    filled = sum(float(r.filled.sum()) for r in layers)
    sent = sum(float(r.slots.sum()) for r in layers)
    tokens = base.tokens * base.layout.gpus * len(layers)
    inp = replace(base, routing=layers, shape=replace(
        base.shape, moe_layers=(True,) * len(layers)))
    out = {"drop_fraction": (routed - kept) / routed if routed else 0.0,
           "drop_fraction_by_position": drop_by_position(layers),
           "padding_fraction": (sent - kept - filled) / sent if sent else 0.0,
           "fill_in_fraction": filled / sent if sent else 0.0,
           "no_expert_fraction": sum(float(r.no_expert.sum()) for r in layers) / tokens,
           "local_rectified_fraction": sum(float(r.local.sum()) for r in layers) / tokens,
           "expert_load_imbalance": float(np.mean([r.imbalance for r in layers])),
           "capacity_slots": layers[0].capacity}
    if base.layout.placement is None:
        out.update(locality(inp, cluster.node_of))
    return out


def throughput(scenario, cluster, dims: ModelDims, pipe: Pipeline, iteration_s: float) -> dict:
    """Tokens/s, TFLOP/s per GPU by Megatron-LM's formula and MFU against the BF16 peak."""
    tokens = pipe.global_batch_size * scenario.model.seq_length
    gpus = cluster.num_gpus
    f = flop_formula.training_flops(dims, pipe.global_batch_size)
    out = {"tokens_per_s": tokens / iteration_s if iteration_s else 0.0,
           "tokens_per_s_per_gpu": tokens / iteration_s / gpus if iteration_s else 0.0,
           "iteration_flops": f,
           "tflops_per_gpu": flop_formula.tflops_per_gpu(f, iteration_s, gpus)
           if iteration_s else 0.0,
           "mfu": flop_formula.mfu(f, iteration_s, gpus, cluster.gpu.peak_bf16_flops)
           if iteration_s else 0.0,
           "global_batch_size": pipe.global_batch_size, "microbatches": pipe.microbatches,
           "pipeline_schedule": pipe.schedule,
           "parallel": {"tp": pipe.par.tp, "pp": pipe.par.pp, "vpp": pipe.par.vpp,
                        "ep": pipe.par.ep, "etp": pipe.par.etp, "dp": pipe.par.dp,
                        "edp": pipe.par.edp}}
    return out


def memory_summary(stages: list[dict], cluster, fits) -> dict:
    """The fullest stage's memory per GPU by part, and whether every stage fits."""
    worst = max(range(len(stages)), key=lambda s: stages[s]["total_bytes"])
    row = stages[worst]
    return {"memory_per_gpu_bytes": {k[:-6]: v for k, v in row.items() if k.endswith("_bytes")},
            "memory_stage": worst, "memory_fits": fits is None,
            "hbm_bytes": cluster.gpu.hbm_gib * 2**30}
