"""Scenario section ``serving:``: requests, batching and expert offload for an inference run."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from sim.scenario.schema_base import StrictModel

TokenRange = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]


class PoissonRequests(StrictModel):
    """``n`` requests arriving as a Poisson process; token counts fixed or uniform in a range."""

    n: int = Field(gt=0)
    rate_per_s: float = Field(gt=0)
    prompt_tokens: Annotated[int, Field(ge=1)] | TokenRange = 256
    """Fixed, or [low, high] drawn uniformly (inclusive)."""
    output_tokens: Annotated[int, Field(ge=1)] | TokenRange = 256


class Requests(StrictModel):
    """Where requests come from: ``poisson`` or a ``file`` (CSV or JSONL with arrival_s,
    prompt_tokens, output_tokens; path relative to the working directory)."""

    poisson: PoissonRequests | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Requests:
        if (self.poisson is None) == (self.file is None):
            raise ValueError("give exactly one of poisson: or file:")
        return self


class Offload(StrictModel):
    """Where expert weights live and when they move over the host-to-device (PCIe) link."""

    mode: Literal["gpu_only", "on_demand", "prefetch_all", "pregated"] = "gpu_only"
    """gpu_only: every expert resident. on_demand: load a block's selected experts after its
    gate, then compute. prefetch_all: load every expert of the next MoE block while this one
    computes. pregated: load the next block's selected experts while this one computes (the
    gate of block N picks block N+1's experts: Pre-gated MoE; Read-ME's lookahead)."""
    cache_experts_per_layer: int = Field(0, ge=0)
    """Experts of each MoE layer kept on the GPU after use (beyond the working buffers)."""
    cache_policy: Literal["lru", "lfu", "random", "belady"] = "lru"
    """Eviction among cached experts; belady evicts the one needed farthest in the known
    future (the queued requests' pre-gated experts)."""
    h2d_efficiency: float = Field(1.0, gt=0, le=1)
    """Share of the GPU catalog's PCIe bandwidth an expert copy achieves."""
    h2d_latency_us: float = Field(5.0, ge=0)
    """Start-up of one copy, microseconds."""


class Serving(StrictModel):
    """An inference run on one GPU of the topology."""

    requests: Requests
    batcher: Literal["decode_first", "prefill_first", "expert_aware"] = "decode_first"
    max_batch_tokens: int = Field(256, gt=0)
    """Token budget of one model step (a prefill costs its prompt, a decode 1 per beam)."""
    max_running: int = Field(64, gt=0)
    """Requests decoding at once (KV cache slots)."""
    beam_width: int = Field(1, gt=0)
    """Rows per decoding request (beam search keeps this many hypotheses)."""
    attention_overhead_us: float = Field(0.0, ge=0)
    """Fixed cost per layer on top of the attention roofline (kernel launches, framework),
    microseconds; decode at small batch is dominated by it."""
    expert_overhead_us: float = Field(0.0, ge=0)
    """Fixed cost per layer on top of the FFN/expert roofline (gating, permutation kernels)."""
    router: Literal["layerwise", "layer_aligned"] = "layerwise"
    """layerwise: each MoE layer routes on its own gate. layer_aligned: one pre-gating router
    for all layers, a token uses the same expert index in every layer (Read-ME)."""
    offload: Offload = Offload()


_DROPLESS = "serving is dropless: every token reaches its top-k experts"

#: Fields a serving run does not use, with what it uses instead. A serving scenario that sets
#: one (to anything but its default) is refused, so that nothing is silently ignored.
TRAINING_ONLY: dict[str, str] = {
    "model.seq_length": "a request's length is its prompt_tokens + output_tokens",
    "model.micro_batch_size": "serving.max_batch_tokens and max_running size the batches",
    "moe.moe_expert_capacity_factor": _DROPLESS,
    "moe.critical_capacity_delta": _DROPLESS,
    "moe.moe_token_drop_policy": _DROPLESS,
    "moe.moe_pad_expert_input_to_capacity": _DROPLESS,
    "moe.capacity_convention": _DROPLESS,
    "moe.rectify": "Rectify corrects tokens that capacity dropped, and serving drops none",
    "parallel": "serving runs on one GPU",
    "training.grad_dtype_bytes": "serving has no backward pass",
    "training.overlap_grad_reduce": "serving has no backward pass",
    "training.a2a_algorithm": "serving runs on one GPU, with no All-to-All",
    "training.dispatcher": "serving runs on one GPU, with no dispatch across GPUs",
    "training.gemm_dtype": "serving times its kernels with the BF16 roofline",
    "training.step": "serving draws its gate per request",
    "gating.trace": "serving routes its requests with the gate generator",
    "gating.routing_groups": "serving routes every request on its own",
    "placement": "serving runs on one GPU, where every expert is local",
    "fabric": "serving's only link is the GPU's PCIe (serving.offload.h2d_efficiency, "
              "h2d_latency_us)",
    "comm_profile": "serving's only link is the GPU's PCIe, no collective runs",
}

#: Routers whose choice is each token's own top-k experts by gate score: what serving does.
SERVING_ROUTERS = ("topk", "switch")
