"""Solvers beside the simulation, timed: flow admission (PFAR) and expert placement.

PFAR (priority flow admission and routing, ``sim.solve.pfar``): for each (nodes, flows) size and
each instance family, one instance from ``generate(nodes, flows, seed, ...)`` (linear weights):

* ``equal``: every flow the same rate (``demand_sigma=0``) at offered load 0.6, so that 19-39 %
  of the flows must be rejected (fixed-rate SDN flows);
* ``skewed``: lognormal rates (``demand_sigma=1``) at offered load 1.0 (14-30 % rejected).

The ILP runs with a wall-clock limit (default 60 s); the GA then gets the same budget the ILP used
(its wall time, capped at the limit) and unlimited generations, so both sides had equal time.
Columns: candidate-path time (shared, outside both budgets), ILP status / wall / objective / best
bound / gap, the fraction of flows the ILP rejects, greedy and GA objectives over the ILP's (the
ratio to the optimum when the ILP status is "optimal"), and GA over the ILP bound (a guaranteed
lower bound on the GA's ratio to the unknown optimum otherwise).

Placement: 64 experts on 32 GPUs, ILP vs GA vs greedy vs the default layout, and the simulated
step of each placement (``benchmarks/bench_placement.py``, which also runs alone).

    python benchmarks/bench_solvers.py              # both families, 9 sizes, HiGHS; placement
    python benchmarks/bench_solvers.py --families equal --sizes 50x2000 --placement-layers 0
    python benchmarks/bench_solvers.py --backend cbc --limit 20
"""

from __future__ import annotations

import argparse
import time

PFAR_SIZES = [(n, f) for n in (10, 25, 50) for f in (500, 2000, 5000)]


def pfar_rows(sizes=PFAR_SIZES, limit_s: float = 60.0, backend: str = "cbc", seed: int = 1,
              ga_seed: int = 0, **generate_kw) -> list[dict]:
    """One measured row per (nodes, flows) size; every answer passes ``check``.
    ``generate_kw`` go to ``pfar.generate`` (e.g. ``load``, ``demand_sigma``)."""
    from sim.solve import pfar

    pfar.solve_ga(pfar.generate(6, 20, 0), seed=0, generations=2)  # load the compiled kernels
    rows = []
    for nodes, flows in sizes:
        p = pfar.generate(nodes, flows, seed, **generate_kw)
        t0 = time.perf_counter()
        p.candidate_paths()
        paths_s = time.perf_counter() - t0
        greedy = pfar.greedy(p)
        ilp = pfar.solve_ilp(p, time_limit_s=limit_s, backend=backend)
        budget = min(ilp.wall_s, limit_s)
        ga = pfar.solve_ga(p, seed=ga_seed, time_limit_s=budget, generations=10**9)
        for ans in (greedy, ilp, ga):
            pfar.check(p, ans)
        rows.append({
            "nodes": nodes, "flows": flows, "paths_s": paths_s, "status": ilp.status,
            "ilp_s": ilp.wall_s, "ilp_obj": ilp.objective, "bound": ilp.bound, "gap": ilp.gap,
            "rejected": 1 - ilp.admitted / flows, "greedy_ratio": greedy.objective / ilp.objective,
            "ga_ratio": ga.objective / ilp.objective, "ga_s": ga.wall_s,
            "ga_bound_ratio": ga.objective / ilp.bound if ilp.bound else None,
        })
    return rows


def pfar_table(rows: list[dict], backend: str, limit_s: float) -> str:
    head = (f"| nodes | flows | paths s | ILP ({backend}, {limit_s:g} s limit) | ILP s | ILP obj "
            "| bound | gap | rejected | greedy/ILP | GA/ILP | GA/bound | GA s |")
    lines = [head, "|" + "---:|" * 13]
    for r in rows:
        bound = "-" if r["bound"] is None else f"{r['bound']:.0f}"
        gap = "-" if r["gap"] is None else f"{100 * r['gap']:.2f} %"
        gb = "-" if r["ga_bound_ratio"] is None else f"{r['ga_bound_ratio']:.4f}"
        lines.append(
            f"| {r['nodes']} | {r['flows']:,} | {r['paths_s']:.2f} | {r['status']} "
            f"| {r['ilp_s']:.1f} | {r['ilp_obj']:.0f} | {bound} | {gap} "
            f"| {100 * r['rejected']:.1f} % | {r['greedy_ratio']:.4f} | {r['ga_ratio']:.4f} "
            f"| {gb} | {r['ga_s']:.1f} |")
    return "\n".join(lines)


#: Instance families: ``generate`` keywords of each.
FAMILIES = {"equal": {"demand_sigma": 0.0, "load": 0.6},
            "skewed": {"demand_sigma": 1.0, "load": 1.0}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(f"{n}x{f}" for n, f in PFAR_SIZES),
                    help="comma-separated NODESxFLOWS (default: all 9 combinations)")
    ap.add_argument("--limit", type=float, default=60.0, help="ILP wall-clock limit, s")
    ap.add_argument("--backend", default="highs", choices=["cbc", "highs"])
    ap.add_argument("--seed", type=int, default=1, help="instance seed")
    ap.add_argument("--families", default="equal,skewed",
                    help=f"comma-separated instance families: {', '.join(FAMILIES)}")
    ap.add_argument("--placement-layers", type=int, default=2,
                    help="MoE layers of the placement benchmark (0: skip it)")
    args = ap.parse_args(argv)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    families = args.families.split(",")
    if set(families) - FAMILIES.keys():
        ap.error(f"--families: allowed {', '.join(FAMILIES)}")
    for family in families:
        rows = pfar_rows(sizes, args.limit, args.backend, args.seed, **FAMILIES[family])
        print(f"## PFAR, {family} demands ({FAMILIES[family]})\n")
        print(pfar_table(rows, args.backend, args.limit), "\n", flush=True)
    if args.placement_layers:
        from bench_placement import report

        print(f"## Expert placement, {args.placement_layers} layers\n")
        print(report(layers=args.placement_layers, time_limit_s=args.limit))


if __name__ == "__main__":
    main()
