"""Flow-level network: routes, max-min fair sharing and the SimPy fabric process."""

from sim.network.fabric import Fabric, FabricOptions, FabricStats, Transfer
from sim.network.maxmin import max_min_rates
from sim.network.routing import ECMP_MODES, Routes

__all__ = [
    "ECMP_MODES", "Fabric", "FabricOptions", "FabricStats", "Routes", "Transfer", "max_min_rates",
]
