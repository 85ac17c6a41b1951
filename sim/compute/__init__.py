"""Compute-time models: roofline GEMM, expert FFN and attention costs on one GPU (SI units)."""

from sim.compute.roofline import (
    DEFAULT_EFFICIENCY,
    Efficiency,
    attention_time_s,
    backward_time_s,
    dense_layer_time_s,
    expert_ffn_time_s,
    gemm_time_s,
    roofline_time_s,
)

__all__ = [
    "DEFAULT_EFFICIENCY",
    "Efficiency",
    "attention_time_s",
    "backward_time_s",
    "dense_layer_time_s",
    "expert_ffn_time_s",
    "gemm_time_s",
    "roofline_time_s",
]
