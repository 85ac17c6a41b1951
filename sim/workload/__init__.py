"""Workload inputs: synthetic gate scores and recorded routing traces (numpy only)."""

from sim.workload.generator import GateConfig, GateGenerator
from sim.workload.trace import RoutingTrace, load_trace, save_trace

__all__ = ["GateConfig", "GateGenerator", "RoutingTrace", "load_trace", "save_trace"]
