"""Run one collective on a fresh fabric, and the nccl-tests-like size sweep behind `moesim run`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import simpy

from sim.collectives import algorithms, library, traffic
from sim.collectives.metrics import algbw_bytes_per_s, busbw_bytes_per_s
from sim.comm.model import Model
from sim.comm.profile import IDEAL, CommProfile
from sim.errors import UserError
from sim.network import Fabric, FabricOptions, FabricStats, Routes
from sim.rng import stream
from sim.scenario.schema import COLLECTIVES  # names only; the schema validates against them
from sim.topology.cluster import Cluster
from sim.units import bytes_per_s_to_gbps


@dataclass
class CollectiveResult:
    """One simulated collective: the algorithm and protocol run, duration (s), fabric counters,
    wall time of the simulation (s)."""

    collective: str
    algorithm: str
    time_s: float
    stats: FabricStats
    wall_s: float
    protocol: str = "Simple"


def run_collective(
    cluster: Cluster,
    collective: str,
    algorithm: str | None,
    data,
    options: FabricOptions | None = None,
    routes: Routes | None = None,
    model: Model | None = None,
    protocol: str | None = None,
) -> CollectiveResult:
    """Simulate one collective from time 0 on an idle fabric.

    ``data`` is the (P, P) byte matrix for all_to_all, else the per-rank byte count (nccl-tests'
    size). With a ``model`` (a communication profile on this cluster) the library chooses the
    algorithm and protocol (unless given) and adds its costs (``sim.collectives.library``);
    without one, or under ``ideal`` with neither pinned, the plain algorithm runs.
    """
    if algorithm is not None and algorithm not in COLLECTIVES.get(collective, ()):
        raise ValueError(f"unknown collective/algorithm {collective}/{algorithm}")
    wall = time.perf_counter()
    env = simpy.Environment()
    fabric = Fabric(env, cluster, options, routes)
    size = float(np.asarray(data).sum() / cluster.num_gpus) if collective == "all_to_all" \
        else float(data)
    if model is None or (model.profile.is_ideal and protocol is None and algorithm != "nvls"):
        algorithm = algorithm or COLLECTIVES[collective][0]
        protocol = "Simple"
        gen = _plain(fabric, collective, algorithm, data)
    else:
        try:
            algorithm, protocol = model.choose(collective, size, algorithm, protocol)
        except ValueError as e:
            raise UserError(f"{collective}: {e}") from None
        cost = model.cost(collective, algorithm, protocol, size)
        matrix = np.asarray(data, dtype=float) if collective == "all_to_all" else None
        gen = library.run(fabric, model, collective, cost, size, matrix)
    proc = env.process(gen)
    env.run(proc)
    return CollectiveResult(collective, algorithm, proc.value, fabric.stats,
                            time.perf_counter() - wall, protocol)


def _plain(fabric: Fabric, collective: str, algorithm: str, data):
    """The fluid model's algorithm, without the library's costs."""
    if collective == "all_to_all":
        return algorithms.all_to_all(fabric, np.asarray(data, dtype=float), algorithm)
    run = {"all_reduce": algorithms.ring_all_reduce, "all_gather": algorithms.ring_all_gather,
           "reduce_scatter": algorithms.ring_reduce_scatter, "sendrecv": algorithms.sendrecv}
    return run[collective](fabric, float(data))


def run_benchmark(scenario, cluster: Cluster, profile: CommProfile = IDEAL) -> list[dict]:
    """One row per message size of ``scenario.benchmark``: the algorithm and protocol run, time,
    algbw and busbw (Gbit/s), under the communication ``profile``."""
    bench, fab = scenario.benchmark, scenario.fabric
    options = FabricOptions.from_settings(fab, profile)
    routes = Routes(cluster, options.ecmp)
    model = Model(cluster, profile, options.ecmp, routes)
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
        res = run_collective(cluster, bench.collective, bench.algorithm, data, options, routes,
                             model, bench.protocol)
        rows.append({
            "collective": bench.collective,
            "algorithm": res.algorithm,
            "protocol": res.protocol,
            "bytes_per_rank": int(size),
            "time_s": res.time_s,
            "algbw_gbps": bytes_per_s_to_gbps(algbw_bytes_per_s(size, res.time_s)),
            "busbw_gbps": bytes_per_s_to_gbps(
                busbw_bytes_per_s(bench.collective, size, res.time_s, p)),
            "flows": res.stats.flows,
            "recomputes": res.stats.recomputes,
        })
    return rows
