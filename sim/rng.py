"""Named random streams: one scenario seed drives everything, each consumer gets its own stream.

``stream(seed, "traffic")`` always yields the same generator for the same seed and name, and
streams with different names are statistically independent (numpy ``SeedSequence`` spawn keys).
Every name in use is listed in :data:`STREAMS`, with who draws from it; any other name is a
programming error. Nothing in moe-sim reads numpy's or Python's global random state.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: Every stream, with what draws from it.
STREAMS: dict[str, str] = {
    "traffic": "collective benchmarks: Zipf traffic matrices (sim.collectives.traffic)",
    "gating": "the gate-score generator and its sub-streams (sim.workload.generator)",
    "routing": "routers that draw: GShard's random second expert, BASE's shuffle (sim.routing)",
    "arrivals": "serving: Poisson arrival times and token counts (sim.serving.requests)",
    "cache": "serving: the random eviction policy of expert caches (sim.serving.cache)",
    "placement_ga": "the expert placement genetic algorithm (sim.solve.placement.ga)",
    "ga": "the flow admission genetic algorithm (sim.solve.pfar.ga)",
    "instances": "semi-random flow admission instances (sim.solve.pfar.instances)",
    "dispatch": "the dispatch benchmark's random gate scores (sim.moe.dispatch_benchmark)",
    "calibration": "the global search of a communication profile's fit (sim.calibrate.fit) "
                   "and of the GEMM model's (sim.calibrate.gemm)",
}


def stream(seed: int, name: str) -> np.random.Generator:
    """The generator of stream ``name`` (one of :data:`STREAMS`) under scenario ``seed``."""
    if name not in STREAMS:
        raise ValueError(f"unknown random stream {name!r}; add it to sim.rng.STREAMS "
                         f"(known: {', '.join(STREAMS)})")
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))
