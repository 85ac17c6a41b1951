"""Speed of the flow-level fabric: one direct All-to-All on the H100 leaf-spine at growing scale.

For each (GPUs, traffic) case, in a fresh subprocess so peak memory is that case's own:
flows, max-min re-solves, filling rounds, wall seconds (topology + routing + simulation), peak
resident memory, and the simulated time. Skewed cases (Zipf-sized pairs, exponent 1.1) are
compared with the exact model (``rate_tolerance = 0``) where that is affordable
(``--exact-up-to``), and with a ten times tighter tolerance otherwise (``--reference``).

    python benchmarks/bench_fabric.py                      # 64 .. 1,024 GPUs
    python benchmarks/bench_fabric.py --gpus 64,256,1024,4096 --reference
    python benchmarks/bench_fabric.py --gpus 64,256 --gap-us 1   # with a 1 us issue gap

``--gap-us``: the per-message issue gap (``fabric.message_gap_us``), whose staggered starts
the lazy rule lets wait for a solve (``sim.network.fabric``); 0 = off.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

BYTES_PER_RANK = 64 * 2**20


def run_case(gpus: int, traffic: str, tol: float, gap_us: float = 0.0) -> dict:
    """Simulate one All-to-All; returns the measurements as a dict."""
    from sim.collectives import run_collective
    from sim.collectives.traffic import uniform, zipf
    from sim.network import FabricOptions
    from sim.rng import stream
    from sim.topology import load_topology

    t0 = time.perf_counter()
    cluster = load_topology("h100-leaf-spine", {"nodes": gpus // 8})
    if traffic == "uniform":
        matrix = uniform(gpus, BYTES_PER_RANK)
    else:
        matrix = zipf(gpus, BYTES_PER_RANK, 1.1, stream(0, "traffic"))
    res = run_collective(cluster, "all_to_all", "direct", matrix,
                         FabricOptions(rate_tolerance=tol, message_gap_s=gap_us * 1e-6))
    return {
        "gpus": gpus, "traffic": traffic, "tol": tol, "flows": res.stats.flows,
        "recomputes": res.stats.recomputes, "rounds": res.stats.filling_rounds,
        "wall_s": time.perf_counter() - t0, "sim_time_s": res.time_s,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _subprocess(gpus: int, traffic: str, tol: float, gap_us: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", f"{gpus},{traffic},{tol},{gap_us}"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="64,256,1024", help="comma-separated GPU counts")
    ap.add_argument("--traffic", default="uniform,zipf")
    ap.add_argument("--tol", type=float, default=3e-3, help="rate_tolerance under test")
    ap.add_argument("--exact-up-to", type=int, default=64,
                    help="compare skewed cases with the exact model up to this many GPUs")
    ap.add_argument("--reference", action="store_true",
                    help="above that, compare with tol/10 (slow: minutes at 1,024 GPUs)")
    ap.add_argument("--gap-us", type=float, default=0.0, help="issue gap per message, us")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        g, t, tol, gap = args.case.split(",")
        print(json.dumps(run_case(int(g), t, float(tol), float(gap))))
        return
    print(f"direct All-to-All, {BYTES_PER_RANK // 2**20} MiB per GPU, h100-leaf-spine, "
          f"rate_tolerance {args.tol}, issue gap {args.gap_us} us")
    print("| GPUs | traffic | flows | re-solves | filling rounds | wall s | peak MiB "
          "| simulated ms | vs reference |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for gpus in (int(x) for x in args.gpus.split(",")):
        for traffic in args.traffic.split(","):
            r = _subprocess(gpus, traffic, args.tol, args.gap_us)
            ref = ""
            if traffic != "uniform" or args.gap_us > 0:
                if gpus <= args.exact_up_to:
                    e = _subprocess(gpus, traffic, 0.0, args.gap_us)
                    ref = f"{r['sim_time_s'] / e['sim_time_s'] - 1:+.2%} vs exact"
                elif args.reference:
                    e = _subprocess(gpus, traffic, args.tol / 10, args.gap_us)
                    ref = f"{r['sim_time_s'] / e['sim_time_s'] - 1:+.2%} vs tol/10"
            print(f"| {gpus:,} | {traffic} | {r['flows']:,} | {r['recomputes']} | "
                  f"{r['rounds']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} | "
                  f"{r['sim_time_s'] * 1e3:.3f} | {ref} |", flush=True)


if __name__ == "__main__":
    main()
