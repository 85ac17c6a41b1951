"""The ``benchmark`` run kind: one collective over a list of message sizes, as nccl-tests runs
it; summary.json holds one row per size and the terminal an nccl-tests style table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sim.runs.kinds import RunKind, Simulated, register, summary_head


def table(scenario: Any, cluster: Any, results: Sequence[Mapping]) -> str:
    """An nccl-tests style table: size (B), time (us), algbw and busbw in GB/s (bytes!)."""
    b = scenario.benchmark
    traffic = f"zipf({b.zipf_exponent:g})" if b.traffic == "zipf" else b.traffic
    algorithm = b.algorithm or "library's choice"
    what = f"{algorithm}, {traffic} traffic" if b.collective == "all_to_all" else algorithm
    nodes = f"{cluster.num_nodes} node" + ("s" if cluster.num_nodes != 1 else "")
    lines = [
        f"# {scenario.name}: {b.collective} ({what}) "
        f"on {cluster.name}: {cluster.num_gpus} GPUs on {nodes}",
        "# GB/s = 10^9 bytes/s as in nccl-tests; summary.json has these rates in Gbit/s (*_gbps)",
    ]
    chosen = sorted({f"{r['algorithm']}/{r['protocol']}" for r in results
                     if r.get("algorithm") and r.get("protocol")})
    if chosen:
        lines.append(f"# algorithm/protocol run: {', '.join(chosen)} (per size in summary.json)")
    lines += ["#", f"# {'size(B)':>12} {'time(us)':>12} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}"]
    for r in results:
        lines.append(
            f"  {int(r['bytes_per_rank']):>12d} {r['time_s'] * 1e6:>12.2f} "
            f"{r['algbw_gbps'] / 8:>12.2f} {r['busbw_gbps'] / 8:>12.2f}"
        )
    return "\n".join(lines)


def _run(scenario: Any, cluster: Any, source: str = "", progress: Callable | None = None,
         reports: bool = True) -> Simulated:
    from sim.collectives import run_benchmark
    from sim.comm.profile import load_profile

    profile = load_profile(scenario.comm_profile or cluster.comm_profile)
    results = run_benchmark(scenario, cluster, profile)
    summary = {**summary_head("benchmark", scenario, cluster), "comm_profile": profile.name,
               "results": [dict(r) for r in results]}
    return Simulated({"summary.json": summary}, table(scenario, cluster, results))


BENCHMARK = register(RunKind(
    "benchmark", "one collective over message sizes (nccl-tests' counterpart)", (), False, _run))
