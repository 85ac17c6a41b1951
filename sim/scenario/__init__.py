"""Scenario files: pydantic models, YAML loading with ``--set`` overrides, one-line errors.

Imports nothing of the engine, so that loading and checking a scenario stays cheap.
"""

from sim.scenario.load import (
    apply_sets,
    find_scenario,
    load_scenario,
    topology_overrides,
)
from sim.scenario.schema import COLLECTIVES, Benchmark, Fabric, Scenario, TopologyRef

__all__ = [
    "COLLECTIVES",
    "Benchmark",
    "Fabric",
    "Scenario",
    "TopologyRef",
    "apply_sets",
    "find_scenario",
    "load_scenario",
    "topology_overrides",
]
