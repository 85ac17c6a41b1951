"""Offline expert-cache study (Read-ME Table 4): hit rates of each eviction policy.

The requests of a serving scenario are routed as in a run (``route_requests``) and served one
after another at batch 1: every decode token needs one expert set (the first MoE layer's
experts; with the layer-aligned router every layer needs the same). That sequence of steps is
replayed through an empty cache of each capacity under each policy (``sim.serving.cache``);
Belady sees the whole sequence, as Read-ME's pre-gating lets it.

    python -m sim.serving.study scenarios/readme-llama2-serving.yaml --capacities 2,3,4,5
"""

from __future__ import annotations

import argparse
import sys

from sim.errors import UserError
from sim.rng import stream
from sim.serving.cache import POLICIES, replay


def decode_steps(scenario) -> list[frozenset]:
    """The experts of every decode token of every request at the first MoE layer, in order."""
    from sim.serving.engine import route_requests
    from sim.serving.requests import load_requests, poisson_requests

    srv = scenario.serving
    if srv.requests.file is not None:
        requests = load_requests(srv.requests.file)
    else:
        p = srv.requests.poisson
        requests = poisson_requests(p.n, p.rate_per_s, p.prompt_tokens, p.output_tokens,
                                    stream(scenario.seed, "arrivals"))
    experts = route_requests(scenario, requests)
    k = scenario.moe.moe_router_topk
    steps = []
    for r in requests:
        row = experts[r.rid][0]
        for pos in range(r.prompt_tokens, r.prompt_tokens + r.output_tokens - 1):
            steps.append(frozenset(row[pos * k:(pos + 1) * k].tolist()))
    return steps


def cache_study(scenario, capacities, policies=POLICIES) -> list[dict]:
    """One row per (capacity, policy): hit rate of the decode expert sequence."""
    steps = decode_steps(scenario)
    rows = []
    for c in capacities:
        for policy in policies:
            stats = replay(steps, c, policy, rng=stream(scenario.seed, "cache"))
            rows.append({"capacity": c, "policy": policy, "hit_rate": stats.hit_rate,
                         "steps": len(steps)})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the hit-rate table of a serving scenario."""
    from sim.scenario import load_scenario

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--capacities", default="2,3,4,5")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)
    try:
        sc = load_scenario(args.scenario, args.sets)
        if sc.kind != "serving":
            raise UserError(f"{args.scenario}: serving: required (a serving scenario)")
        caps = [int(c) for c in args.capacities.split(",")]
        rows = cache_study(sc, caps)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"# {sc.name}: {rows[0]['steps']:,} decode steps, hit rate by cached experts")
    print("| cached experts | " + " | ".join(POLICIES) + " |")
    print("|---:|" + "---:|" * len(POLICIES))
    for c in caps:
        mine = {r["policy"]: r["hit_rate"] for r in rows if r["capacity"] == c}
        print(f"| {c} | " + " | ".join(f"{mine[p]:.2%}" for p in POLICIES) + " |")


if __name__ == "__main__":
    main()
