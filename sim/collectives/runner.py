"""Run one collective on a fresh fabric, and the nccl-tests-like size sweep behind `moesim run`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import simpy

from sim.collectives import algorithms, traffic
from sim.collectives.metrics import algbw_bytes_per_s, busbw_bytes_per_s
from sim.network import Fabric, FabricOptions, FabricStats, Routes
from sim.rng import stream
from sim.scenario.schema import COLLECTIVES  # names only; the schema validates against them
from sim.topology.cluster import Cluster
from sim.units import bytes_per_s_to_gbps


@dataclass
class CollectiveResult:
    """One simulated collective: duration (s), fabric counters, wall time of the simulation (s)."""

    collective: str
    algorithm: str
    time_s: float
    stats: FabricStats
    wall_s: float


def run_collective(
    cluster: Cluster,
    collective: str,
    algorithm: str,
    data,
    options: FabricOptions | None = None,
    routes: Routes | None = None,
) -> CollectiveResult:
    """Simulate one collective from time 0 on an idle fabric.

    ``data`` is the (P, P) byte matrix for all_to_all, else the per-rank byte count.
    """
    if algorithm not in COLLECTIVES.get(collective, ()):
        raise ValueError(f"unknown collective/algorithm {collective}/{algorithm}")
    wall = time.perf_counter()
    env = simpy.Environment()
    fabric = Fabric(env, cluster, options, routes)
    if collective == "all_to_all":
        gen = algorithms.all_to_all(fabric, np.asarray(data, dtype=float), algorithm)
    elif collective == "all_reduce":
        gen = algorithms.ring_all_reduce(fabric, float(data))
    else:
        gen = algorithms.ring_all_gather(fabric, float(data))
    proc = env.process(gen)
    env.run(proc)
    return CollectiveResult(collective, algorithm, proc.value, fabric.stats,
                            time.perf_counter() - wall)


def run_benchmark(scenario, cluster: Cluster) -> list[dict]:
    """One row per message size of ``scenario.benchmark``: time, algbw and busbw (Gbit/s)."""
    bench, fab = scenario.benchmark, scenario.fabric
    options = FabricOptions.from_settings(fab)
    routes = Routes(cluster, options.ecmp)
    rng = stream(scenario.seed, "traffic")
    p = cluster.num_gpus
    rows = []
    for size in bench.sizes:
        size = float(size)
        if bench.collective == "all_to_all":
            data = (traffic.zipf(p, size, bench.zipf_exponent, rng) if bench.traffic == "zipf"
                    else traffic.uniform(p, size))
        else:
            data = size
        res = run_collective(cluster, bench.collective, bench.algorithm, data, options, routes)
        rows.append({
            "collective": bench.collective,
            "algorithm": bench.algorithm,
            "bytes_per_rank": int(size),
            "time_s": res.time_s,
            "algbw_gbps": bytes_per_s_to_gbps(algbw_bytes_per_s(size, res.time_s)),
            "busbw_gbps": bytes_per_s_to_gbps(
                busbw_bytes_per_s(bench.collective, size, res.time_s, p)),
            "flows": res.stats.flows,
            "recomputes": res.stats.recomputes,
        })
    return rows
