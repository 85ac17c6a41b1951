"""moe-sim: a discrete-event simulator of Mixture-of-Experts workloads on GPU clusters.

Units inside the engine are SI: seconds, bytes, bytes per second, FLOP/s. Files and the CLI use
readable units carried in field names (``bandwidth_gbps`` is gigabits per second per direction,
``latency_us`` microseconds, ``hbm_gib`` gibibytes); :mod:`sim.units` converts at the boundary.
"""

__version__ = "0.1.0"
