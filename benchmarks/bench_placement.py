"""Expert placement at 64 experts x 32 GPUs: ILP (CBC, time-limited) vs GA vs greedy.

The scenario: 4 x DGX H100 on the rail-optimized leaf-spine (32 GPUs, 8 per server), 64 experts
per MoE layer, top-2, EP 32, every layer MoE; a skewed gate (Zipf popularity 0.5) with strong
inter-layer affinity (beta 2.5), so that the straggler, the dispatch and the ExFlow inter-layer
term all depend on the placement. Placement limits: at most 3 experts of a layer per GPU (the
simulator's layout puts 2) and memory for 7 experts per GPU over all layers (6 on average).
The row "layout" is the simulator's default placement (expert e on GPU e // 2).

    python benchmarks/bench_placement.py                      # 3 layers, ILP and GA 60 s each
    python benchmarks/bench_placement.py --layers 2 --time-limit 30 --out runs/placement
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def scenario(layers: int) -> dict:
    return {
        "name": "bench-placement", "seed": 0,
        "topology": {"name": "h100-leaf-spine", "nodes": 4},
        "model": {"hidden_size": 2048, "ffn_hidden_size": 8192, "num_layers": layers,
                  "num_attention_heads": 16, "seq_length": 2048, "micro_batch_size": 1},
        "moe": {"num_experts": 64, "moe_router_topk": 2},
        "parallel": {"expert_model_parallel_size": 32},
        "gating": {"popularity_skew": 0.5, "affinity": 2.5},
    }


def build(layers: int, per_gpu: int, memory_experts: int):
    from sim.scenario.load import load_scenario
    from sim.solve.placement import from_scenario
    from sim.topology import load_topology

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench-placement.yaml"
        path.write_text(yaml.safe_dump(scenario(layers)))
        sc = load_scenario(path)
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    p = from_scenario(sc, cluster, max_experts_per_gpu=per_gpu)
    return dataclasses.replace(p, gpu_memory_bytes=memory_experts * p.expert_bytes), sc, cluster


def step_ms(sc, cluster, assign) -> float:
    """Simulated training step with this placement (every EP group placed alike), ms."""
    from sim.moe.run import run_training

    return run_training(sc, cluster, placement=np.asarray(assign)).summary["step_time_s"] * 1e3


def row(name: str, a, layout_total: float, step: float) -> str:
    c = a.cost
    ms = {k: f"{v * 1e3:.3f}" for k, v in c.items()}
    bound = "" if a.bound is None else f"{a.bound * 1e3:.3f}"
    gap = "" if a.gap is None else f"{a.gap:.2%}"
    return (f"| {name} | {a.status} | {ms['total']} | {ms['dispatch']} | {ms['interlayer']} | "
            f"{ms['balance']} | {c['total'] / layout_total:.3f} | {bound} | {gap} | "
            f"{a.wall_s:.1f} | {step:.2f} |")


def report(layers: int = 3, per_gpu: int = 3, memory_experts: int = 7,
           time_limit_s: float = 60.0, seed: int = 0, out: Path | None = None) -> str:
    """Solve the benchmark problem with every solver; the measured table as markdown text
    (every answer passes ``check``). ``out``: also write problem.json and one answer each."""
    from sim.solve.placement import block_placement, check, greedy, solve_ga, solve_ilp

    t0 = time.perf_counter()
    p, sc, cluster = build(layers, per_gpu, memory_experts)
    lines = [f"problem: {p.layers} layers x {p.experts} experts on {p.gpus} GPUs "
             f"({len(set(p.gpu_node))} servers), <= {p.max_experts_per_gpu} per layer per GPU, "
             f"<= {p.memory_slots} per GPU; load max/mean per layer "
             f"{np.round(p.load.max(axis=1) / p.load.mean(axis=1), 2).tolist()}; "
             f"built in {time.perf_counter() - t0:.1f} s"]
    base = block_placement(p)
    answers = {"layout": base, "greedy": greedy(p),
               "ga": solve_ga(p, seed=seed, time_limit_s=time_limit_s, generations=10**6),
               "ilp": solve_ilp(p, time_limit_s=time_limit_s)}
    for a in answers.values():
        check(p, a)
    info = answers["ilp"].info
    lines += [f"ILP: {info['binaries']} binaries, {info['continuous']} continuous, "
              f"{info['constraints']} constraints, {info['nonzeros']} nonzeros; CBC: "
              f"{info['cbc_result']}; GA: {answers['ga'].info['generations']} generations", "",
              "Objective terms in ms (link-seconds and GPU-seconds, see sim/solve/placement); "
              "vs layout = total / layout's total.", "",
              "| solver | status | total | dispatch | interlayer | balance | vs layout | bound "
              "| gap | wall s | simulated step ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(name, a, base.cost["total"], step_ms(sc, cluster, a.assign))
              for name, a in answers.items()]
    if out:
        out.mkdir(parents=True, exist_ok=True)
        p.save(out / "problem.json")
        for name, a in answers.items():
            a.save(out / f"{name}.json")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3, help="MoE layers (all layers are MoE)")
    ap.add_argument("--per-gpu", type=int, default=3, help="max experts of a layer per GPU")
    ap.add_argument("--memory-experts", type=int, default=7,
                    help="experts one GPU can hold over all layers")
    ap.add_argument("--time-limit", type=float, default=60.0, help="ILP and GA limit, s")
    ap.add_argument("--seed", type=int, default=0, help="GA seed")
    ap.add_argument("--out", type=Path, help="write problem.json and one answer JSON per solver")
    args = ap.parse_args()
    print(report(args.layers, args.per_gpu, args.memory_experts, args.time_limit, args.seed,
                 args.out))


if __name__ == "__main__":
    main()
