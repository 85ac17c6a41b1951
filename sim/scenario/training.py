"""Scenario sections of an MoE training run, in Megatron-Core vocabulary where it has a name.

``model`` is the transformer, ``moe`` the expert layers (router, capacity, dropping),
``parallel`` the layout over the cluster's GPUs, ``training`` the step, ``gating`` the synthetic
gate workload (or a recorded trace). Sizes are counts; ``dtype_bytes`` is bytes per element.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sim.scenario.schema_base import StrictModel


class Model(StrictModel):
    """The transformer. One token = ``hidden_size`` activations of ``dtype_bytes`` each."""

    hidden_size: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0)
    """FFN width of dense layers (and of experts unless ``moe_ffn_hidden_size`` is set)."""
    num_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_query_groups: int | None = Field(None, gt=0)
    """Grouped-query attention KV heads; None = multi-head (as many as attention heads)."""
    seq_length: int | None = Field(None, gt=0)
    """Tokens per sequence (required for a training step; a serving request has its own)."""
    micro_batch_size: int = Field(1, gt=0)
    gated_linear_unit: bool = False
    """SwiGLU-style FFN: three weight matrices instead of two."""
    moe_layer_freq: int | list[int] = 1
    """Every k-th layer is MoE (k = 1: all), or a 0/1 list with one entry per layer."""
    vocab_size: int | None = Field(None, gt=0)
    """Padded vocabulary of the embedding and output layer; None: neither is modelled (no
    logits GEMM on the last stage, no embedding parameters)."""
    untie_embeddings_and_output_weights: bool = True
    """Separate input embedding and output layer matrices (Megatron's flag)."""
    multi_latent_attention: bool = False
    """DeepSeek-V2/V3's MLA instead of MHA/GQA (the fields below)."""
    q_lora_rank: int | None = Field(None, gt=0)
    """MLA: rank of the query compression; None: queries projected from the hidden state."""
    kv_lora_rank: int = Field(512, gt=0)
    qk_head_dim: int = Field(128, gt=0)
    """MLA: per-head query/key width without the rotary part."""
    qk_pos_emb_head_dim: int = Field(64, gt=0)
    """MLA: per-head rotary part (one key shared by the heads)."""
    v_head_dim: int = Field(128, gt=0)
    mtp_num_layers: int = Field(0, ge=0)
    """DeepSeek-V3's multi-token prediction modules, on the last pipeline stage: each timed as
    one more layer like the last (on its routing) with its own logits GEMM, and counted by
    the FLOP formula and the memory model."""

    @model_validator(mode="after")
    def _freq_fits(self) -> Model:
        f = self.moe_layer_freq
        if isinstance(f, list):
            if len(f) != self.num_layers or any(v not in (0, 1) for v in f):
                raise ValueError(f"moe_layer_freq: a list needs {self.num_layers} entries of 0/1")
        elif f < 1:
            raise ValueError("moe_layer_freq: must be >= 1 or a 0/1 list")
        return self

    def moe_layers(self) -> list[bool]:
        """Which layers are MoE."""
        f = self.moe_layer_freq
        if isinstance(f, list):
            return [bool(v) for v in f]
        return [i % f == 0 for i in range(self.num_layers)]


class Router(StrictModel):
    name: str = "topk"
    """A registered router (``moesim list``): switch, gshard, topk, expert_choice, hash, base,
    node_limited, ..."""
    params: dict[str, Any] = {}


class Rectify(StrictModel):
    """Rectify-Router corrections after capacity (``sim/moe/rectify.py``)."""

    intra_gpu: bool = False
    """IR: tokens that lost their slots go to the best expert on their own GPU, no traffic."""
    fill_in: bool = False
    """FR: each token's next-best expert fills slots the top-k rows left empty."""
    unrouted: Literal["all", "any"] = "all"
    """IR takes tokens that lost all (or any) of their top-k slots."""


class Moe(StrictModel):
    """The expert layers."""

    num_experts: int = Field(gt=0)
    moe_router_topk: int = Field(2, gt=0)
    moe_ffn_hidden_size: int | None = Field(None, gt=0)
    moe_expert_capacity_factor: Annotated[float, Field(gt=0)] | Literal["critical"] | None = None
    """None = dropless; "critical" = LocMoE's minimum capacity (Theorem 1): C = ceil(ec_min)
    tokens per expert per routing group, ec_min from hidden_size, num_experts and
    critical_capacity_delta (``sim.moe.capacity.critical_capacity_tokens``)."""
    critical_capacity_delta: float = Field(0.03, gt=0, lt=1)
    """LocMoE's delta (cosine threshold of a class-discriminative token; paper: about 0.03)."""
    moe_token_drop_policy: Literal["probs", "position"] = "probs"
    moe_pad_expert_input_to_capacity: bool = False
    """Padded dispatch: every expert gets exactly its capacity in slots, whatever the routing."""
    capacity_convention: Literal["megatron", "deepspeed", "tutel", "gshard"] = "megatron"
    moe_shared_expert_intermediate_size: int | None = Field(None, gt=0)
    """Width of the shared experts of every MoE layer summed (DeepSeek-V3: one of 2048); each
    GPU computes them on its own tokens (sequence-parallel shard, split over TP)."""
    moe_shared_expert_overlap: bool = False
    """Compute the shared experts while the dispatch is in flight (Megatron-Core's flag)."""
    router: Router = Router()
    rectify: Rectify = Rectify()

    @model_validator(mode="after")
    def _topk_fits(self) -> Moe:
        if self.moe_router_topk > self.num_experts:
            raise ValueError(f"moe_router_topk: must be <= num_experts ({self.num_experts})")
        return self


class Parallel(StrictModel):
    """Layout over the cluster's GPUs: data parallel size = GPUs / tensor parallel size."""

    tensor_model_parallel_size: int = Field(1, ge=1)
    """Attention and dense FFNs split over this many GPUs of one server (sequence parallel)."""
    expert_model_parallel_size: int = Field(1, ge=1)
    expert_tensor_parallel_size: int | None = Field(None, ge=1)
    """Each expert split over 1 or tensor_model_parallel_size GPUs; None = the latter."""
    pipeline_model_parallel_size: int = Field(1, ge=1)
    """Pipeline stages; ranks in Megatron-Core's order (TP fastest, then EP/DP, PP slowest):
    stage s holds the s-th block of gpus / pp consecutive ranks."""
    virtual_pipeline_model_parallel_size: int | None = Field(None, ge=1)
    """Model chunks per stage (interleaved schedule); None: one."""
    decoder_first_pipeline_num_layers: int | None = Field(None, ge=1)
    """Layers of the first stage when it differs (uneven split); None: an even share."""
    decoder_last_pipeline_num_layers: int | None = Field(None, ge=1)
    """Layers of the last stage when it differs; None: an even share."""


class Training(StrictModel):
    dtype_bytes: int = Field(2, gt=0)
    """Bytes per activation element (2 = bf16)."""
    gemm_dtype: Literal["bf16", "fp8"] = "bf16"
    """Precision of the GEMMs (projections, FFNs, experts) under a communication profile with a
    ``compute`` section: ``fp8`` times them at the FP8 tensor peak with 1-byte inputs (BF16
    outputs); the router and the attention core stay BF16. The roofline (no ``compute``
    section) times BF16 only, so ``fp8`` needs one."""
    grad_dtype_bytes: int = Field(4, gt=0)
    """Bytes per gradient element in the data-parallel AllReduce (4 = fp32 reduction)."""
    overlap_grad_reduce: bool = True
    """Start each layer's gradient AllReduce as soon as its backward is done."""
    a2a_algorithm: Literal["direct", "hierarchical", "bilevel"] = "direct"
    """Dispatch and combine: straight to the destination GPU; hierarchical (gather to the GPU of
    the destination's local rank, exchange on that rail, scatter); or bilevel (SMILE: across
    nodes between GPUs of the same local rank, then inside the destination node)."""
    step: int = Field(0, ge=0)
    """Which training step's routing to simulate (drift moves with it)."""
    global_batch_size: int | None = Field(None, gt=0)
    """Sequences per iteration; None: micro_batch_size x data-parallel size (one micro-batch
    per iteration). Micro-batches per pipeline = global / (micro_batch_size x DP)."""
    pipeline_schedule: str | None = None
    """A registered schedule (``moesim list``): 1f1b, interleaved, dualpipe; None: interleaved
    with virtual stages, else 1f1b."""
    use_distributed_optimizer: bool = False
    """Megatron's distributed optimizer (ZeRO-1): gradients reduce-scattered and parameters
    all-gathered over the data-parallel group, optimizer states sharded; else an AllReduce and
    replicated states."""
    overlap_param_gather: bool = False
    """Distributed optimizer: gather each chunk's parameters under the next iteration's forward
    (the first chunk's gather stays exposed)."""
    recompute_granularity: Literal["none", "selective", "full"] = "none"
    """Activation recomputation (Korthikanti et al. 2022): selective recomputes the attention
    core, full recomputes each layer from its input in the backward pass."""
    overlap_moe_expert_parallel_comm: bool = False
    """Pair the steady state's forward and backward chunks and hide each one's dispatch and
    combine under the other's compute (Megatron-Core's 1F1B all-to-all overlap; DualPipe
    always overlaps its F&B pairs)."""
    communication_sms: int = Field(0, ge=0)
    """SMs the communication kernels take from compute while a pair overlaps (DeepSeek-V3: 20
    of 132); its compute then runs at (SMs - communication_sms) / SMs of the rate."""
    fp8_dispatch: bool = False
    """alltoall dispatcher: dispatch tokens in FP8 (hidden + hidden / 128 x 4 bytes of scales
    per token); the combine stays in dtype_bytes."""
    representative_microbatches: int = Field(4, ge=1)
    """Routing samples timed per model chunk; micro-batch i takes sample i mod this (each has
    its own routing). Equal to the micro-batches: every one timed."""
    reuse_equivalent_chunks: bool = False
    """Time model chunks of the same layer kinds once per sample, on the first such chunk's
    layers (stages are identical GPU blocks), instead of every chunk on its own routing:
    faster, but layers differ (each has its own expert popularity), so it is off by default
    (on Mixtral-8x22B it adds 3 %: ``benchmarks/bench_iteration.py``)."""
    timing_block_layers: int | None = Field(None, gt=0)
    """Time each model chunk as blocks of at most this many consecutive layers, blocks of
    the same layer kinds once per sample (with reuse_equivalent_chunks): a chunk's times are
    its blocks' summed. None: whole chunks (one micro-batch on one stage: the step itself)."""
    allow_oom: bool = False
    """Run a layout that does not fit in the GPU's memory anyway (and report it) instead of
    refusing it."""
    dispatcher: Literal["alltoall", "deepep", "allgather"] = "alltoall"
    """How dispatch and combine move tokens (``sim.moe.dispatchers``): ``alltoall``, one copy
    per (token, expert) (Megatron-Core's all-to-all dispatcher; ``a2a_algorithm`` applies);
    ``deepep``, DeepEP's normal kernels (once per destination node over the network, then over
    NVLink; FP8 dispatch, BF16 combine); ``allgather``, every GPU gathers its expert-parallel
    group's tokens (and reduce-scatters the outputs back)."""


class Gating(StrictModel):
    """The synthetic gate workload (``sim.workload.GateConfig``) or a recorded trace."""

    trace: str | None = None
    """Path of a routing trace (.npz or .jsonl); replaces the generator and the router."""
    vocab_size: int = Field(32000, gt=0)
    zipf_exponent: float = Field(1.1, gt=0)
    alpha_id: float = Field(0.2, gt=0)
    sigma_ctx: float = Field(0.5, ge=0)
    popularity_skew: float = Field(0.0, ge=0)
    collapse_fraction: float = Field(0.0, ge=0, lt=1)
    affinity: float = Field(0.0, ge=0)
    temporal_locality: float = Field(0.0, ge=0, le=1)
    drift: float = Field(0.0, ge=0)
    domain_shift: bool = False
    routing_groups: int | None = Field(None, gt=0)
    """Route only this many distinct micro-batches and give GPU g the routing of group
    g mod routing_groups (None: every GPU its own). Routing costs O(GPUs x tokens x experts);
    this bounds it for big sweeps, at the price of repeating load patterns across GPUs."""


class Placement(StrictModel):
    """Where experts live instead of the default blocks: a solver's answer ``file`` (JSON with
    ``assign``: MoE layers x experts of GPU indices inside the expert-parallel group), or a
    ``solver`` run before the step (``moesim solve placement`` does the same on its own)."""

    file: str | None = None
    solver: Literal["ilp", "ga", "greedy"] | None = None
    time_limit_s: float = Field(60.0, gt=0)
    """ILP and GA time budget, seconds."""

    @model_validator(mode="after")
    def _one(self) -> Placement:
        if (self.file is None) == (self.solver is None):
            raise ValueError("give exactly one of file: or solver:")
        return self
