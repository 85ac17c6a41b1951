"""Wall time of one simulated MoE training step at growing scale.

A 16-layer model, every layer MoE with 64 experts (top-2, dropless, hidden 2048, expert FFN 8192,
sequence 2048 per GPU), on the H100 leaf-spine with 8 GPUs per node; expert parallel size
min(64, GPUs). Each case runs in its own process; wall time covers routing, the SimPy step on the
fabric and the summary (not the report files).

    python benchmarks/bench_step.py                       # 8, 128, 1,024 GPUs
    python benchmarks/bench_step.py --gpus 8,128 --routing-groups 0   # every GPU routed
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def scenario(gpus: int, routing_groups: int, tol: float) -> dict:
    return {
        "name": f"bench-step-{gpus}", "seed": 0, "fabric": {"rate_tolerance": tol},
        "topology": {"name": "h100-leaf-spine", "nodes": max(1, gpus // 8)},
        "model": {"hidden_size": 2048, "ffn_hidden_size": 8192, "num_layers": 16,
                  "num_attention_heads": 16, "seq_length": 2048, "micro_batch_size": 1},
        "moe": {"num_experts": 64, "moe_router_topk": 2},
        "parallel": {"expert_model_parallel_size": min(64, gpus)},
        "gating": {"routing_groups": routing_groups or None},
        "training": {"allow_oom": True},  # one step of a layout that needs more than 80 GB
    }


def run_case(gpus: int, routing_groups: int, tol: float = 0.003) -> dict:
    from sim.moe.run import run_training
    from sim.scenario.load import load_scenario
    from sim.topology import load_topology

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(yaml.safe_dump(scenario(gpus, routing_groups, tol)))
        t0 = time.perf_counter()
        sc = load_scenario(path)
        res = run_training(sc, load_topology(sc.topology.name, sc.topology.overrides))
    s = res.summary
    return {"gpus": gpus, "wall_s": time.perf_counter() - t0, "step_ms": s["step_time_s"] * 1e3,
            "a2a_fraction": s["a2a_fraction"], "flows": s["flows"],
            "recomputes": s["recomputes"],
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="8,128,1024")
    ap.add_argument("--routing-groups", type=int, default=64,
                    help="distinct routed micro-batches (gating.routing_groups); 0 = every GPU")
    ap.add_argument("--tol", type=float, default=0.003, help="fabric.rate_tolerance")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case), args.routing_groups, args.tol)))
        return
    print(f"16 layers x 64 experts, top-2, routing_groups {args.routing_groups or 'all'}, "
          f"rate_tolerance {args.tol}")
    print("| GPUs | wall s | simulated step ms | A2A share | flows | re-solves | peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for g in (int(x) for x in args.gpus.split(",")):
        out = subprocess.run([sys.executable, __file__, "--case", str(g),
                              "--routing-groups", str(args.routing_groups),
                              "--tol", str(args.tol)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout)
        print(f"| {g:,} | {r['wall_s']:.1f} | {r['step_ms']:.2f} | {r['a2a_fraction']:.1%} | "
              f"{r['flows']:,} | {r['recomputes']:,} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
