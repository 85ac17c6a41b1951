"""The ``dispatch:`` section: an MoE dispatch/combine benchmark as DeepEP's test runs it
(``tests/test_internode.py`` of deepseek-ai/DeepEP): every GPU holds ``tokens_per_gpu`` tokens,
each routed to its ``topk`` best experts by uniform random gate scores, limited to the best
``topk_nodes`` nodes (the node-limited gating of DeepSeek-V3), then one dispatch and one
combine are timed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sim.inputs.messages import FieldProblem
from sim.scenario.schema_base import StrictModel


class Dispatch(StrictModel):
    """One dispatch and one combine of a single MoE layer (no compute)."""

    dispatcher: Literal["alltoall", "deepep", "allgather"] = "deepep"
    """As ``training.dispatcher``."""
    tokens_per_gpu: int = Field(4096, gt=0)
    hidden_size: int = Field(7168, gt=0)
    num_experts: int = Field(256, gt=0)
    """Rounded down to a multiple of the GPU count, as DeepEP's test does:
    ``(num_experts // gpus) * gpus``."""
    topk: int = Field(8, gt=0)
    topk_nodes: int | None = Field(4, ge=1)
    """A token's experts lie on at most this many nodes (its nodes of highest best score);
    None: no limit."""
    dispatch_dtype: Literal["fp8", "bf16"] = "fp8"
    """fp8: hidden + 4 x hidden / 128 bytes per token (a float32 scale per 128 values);
    bf16: 2 x hidden."""
    combine_dtype: Literal["fp8", "bf16"] = "bf16"

    @model_validator(mode="after")
    def _topk_fits(self) -> Dispatch:
        if self.topk > self.num_experts:
            raise FieldProblem(("topk",), f"must be at most num_experts ({self.num_experts})",
                               self.topk)
        return self
