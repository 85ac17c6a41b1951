"""The parameters of the kernel-shaped compute model (:mod:`sim.compute.kernels`).

A communication profile (``profiles/<name>.yaml``, ``sim.comm.profile``) may carry them as its
``compute:`` section; without one, every compute time is the roofline's
(:mod:`sim.compute.roofline`). Units are in the names: ``*_us`` microseconds, ``*_gbps``
gigabits per second; efficiencies are shares of a peak, in (0, 1].
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sim.scenario.schema_base import StrictModel

Share = Annotated[float, Field(gt=0, le=1)]


class ComputeProfile(StrictModel):
    """How one GPU model's GEMM and attention kernels perform (see sim.compute.kernels)."""

    source: str = ""
    """Where the numbers come from (the fitted measurements and the command)."""
    mma_efficiency: Share
    """Share of the tensor peak (BF16 or FP8, as the GEMM's dtype) a tile's main loop reaches
    when nothing else limits it (issue, FP8 scale promotion, pipeline bubbles)."""
    hbm_efficiency: Share
    """Share of the HBM bandwidth a kernel's streams reach (reads, writes of finished tiles)."""
    l2_gbps: float = Field(gt=0, le=1e6)
    """The rate the L2 cache feeds tiles to all SMs together (each SM its 1/num_sms), Gbit/s."""
    overlap: float = Field(ge=1, le=64)
    """How well a tile's main loop overlaps its compute with its HBM stream: their times
    combine as a p-norm with this p (1: one after the other, large: the slower alone)."""
    kernel_us: float = Field(ge=0, le=100)
    """Fixed cost of one kernel (prologue: barriers, descriptors, pipeline fill; drain),
    microseconds; measured kernel durations include it, CPU launch gaps are not modelled."""
    attention_efficiency: Share = 0.5
    """Share of the BF16 tensor peak a fused (FlashAttention-style) attention core reaches in
    the forward. Not fitted: no attention measurement is shipped; 0.5 sits between
    FlashAttention-2 (about 35 % on H100) and FlashAttention-3 (about 75 %)."""
