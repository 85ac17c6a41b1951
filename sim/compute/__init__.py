"""Compute-time models: GEMM, expert FFN and attention costs on one GPU (SI units).

Two models. The **roofline** (:mod:`sim.compute.roofline`) times every kernel as
max(FLOP / (70 % of the BF16 peak), bytes / (80 % of HBM)), no launch cost. The **kernel model**
(:mod:`sim.compute.kernels`) times a GEMM as the kernel it is: output tiles (BLOCK_M x BLOCK_N,
the candidate of least time) in waves over the GPU's SMs, each tile's main loop (tensor cores at
a fitted share of the BF16 or FP8 peak, fed from L2, overlapped with its share of the HBM
stream) and epilogue (its output tile stored), plus a fixed cost per kernel; grouped GEMMs (MoE
experts) count tiles per group; the attention core is a fused FlashAttention-style kernel. Its
parameters (:class:`sim.compute.profile.ComputeProfile`: shares in (0, 1], ``*_us``
microseconds, ``*_gbps`` Gbit/s) are the ``compute`` section of a communication profile,
fitted by ``python -m sim.calibrate.gemm``; without one, training steps keep the roofline.
Times are seconds, sizes element counts.
"""

from sim.compute.profile import ComputeProfile
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
    "ComputeProfile",
    "DEFAULT_EFFICIENCY",
    "Efficiency",
    "attention_time_s",
    "backward_time_s",
    "dense_layer_time_s",
    "expert_ffn_time_s",
    "gemm_time_s",
    "roofline_time_s",
]
