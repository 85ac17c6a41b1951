"""Memory per GPU of a training run, per pipeline stage, by part: parameters, gradients,
optimizer state, activations and communication buffers. Units: bytes (``*_bytes``); parameter
counts are element counts (``*_params``).

**Parameters** (:func:`layer_params`, :func:`stage_params`, :func:`model_params`), no biases
(none of Mixtral, DeepSeek-V3 or Llama has any), RMSNorm (one weight per channel):

* attention, grouped-query: Q and O ``h x heads*hd``, K and V ``h x kv_heads*hd``
  (``hd = hidden / heads``). Multi-head latent attention (DeepSeek-V2/V3): q_down
  ``h x q_lora`` + its norm ``q_lora`` + q_up ``q_lora x heads*(qk+rope)`` (or one
  ``h x heads*(qk+rope)`` projection without ``q_lora_rank``), kv_down ``h x (kv_lora+rope)``
  + its norm ``kv_lora``, kv_up ``kv_lora x heads*(qk+v)``, O ``heads*v x h``; the same terms
  as ``compute_weight_and_optimizer_memory`` in Megatron-LM's
  ``megatron/training/theoretical_memory_usage.py``;
* the two layer norms, ``2h``;
* a dense layer's FFN, (3 if ``gated`` else 2) x ``h x ffn``; an MoE layer's router ``h x E``,
  its shared experts (3 or 2) x ``h x shared_expert_ffn`` and its experts
  ``E x (3 or 2) x h x moe_ffn`` (``moe_ffn_hidden`` 0 falls back to ``ffn_hidden``, as
  Megatron does; a layer is MoE only when the model has experts);
* the embedding ``vocab x h`` on the first stage, the output layer ``vocab x h`` and the final
  norm ``h`` on the last; a tied model holds one matrix when ``pp == 1`` and a copy on each end
  stage when ``pp > 1`` (Megatron keeps both copies and all-reduces their gradients);
* DeepSeek-V3's MTP modules sit on the last stage (Megatron's placement): each is one more
  layer (MoE when the model's last layer is), its ``2h x h`` projection and three norms
  (``3h``); the last stage also holds an embedding copy for them when it is not the first
  stage and has no tied copy already. :func:`model_params` leaves them out unless asked (the
  671B DeepSeek-V3 publishes excludes its 14B MTP module).

Per GPU, Megatron's layout: attention, dense FFN, shared experts, embedding and output layer
(vocabulary-parallel) are split over ``tp``; norms, the router and MLA's two down projections
(Transformer Engine ``parallel_mode='duplicated'`` in ``multi_latent_attention.py``) are
replicated; experts are split over ``ep x etp``.

**State** (:func:`state_bytes`): mixed-precision Adam as in Megatron-LM's
``docs/user-guide/features/dist_optimizer.md``: bf16 parameters (2 bytes), fp32 main gradients
(4 bytes), fp32 master parameters and Adam's two moments (12 bytes) = 18 bytes/param; the
distributed optimizer shards the 12 bytes over the data-parallel ranks (``dp`` for dense
parameters, ``edp`` for experts): 6 + 12/d. The same table's other rows follow from
``param_bytes``, ``grad_bytes`` and ``optimizer_bytes_per_param`` (fp16/fp16: 2, 2, 16;
fp32/fp32: 4, 4, 8). ``copies=2`` is DualPipe, which keeps two copies of the parameters
(DeepSeek-V3 technical report, Sec. 3.2.1): parameters, gradients and optimizer state double.

**Activations** (:func:`activation_bytes_per_layer`): Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models", Sec. 4 and Table 2: a GPT layer keeps
``s b h (34 + 5 a s / h)`` bytes, all divided by ``t`` with tensor + sequence parallelism,
``34 s b h / t`` with selective recomputation (the core attention, whose ``s^2`` tensors
FlashAttention-style kernels do not keep either) and ``2 s b h / t`` (the layer input) with
full recomputation. The 34 generalised (d = ``dtype_bytes``, per token; masks 1 byte):

* layer norms: their two inputs, ``2 d h`` (the paper's 4);
* attention (11): the QKV input ``d h``, Q ``d heads hd``, K and V ``d kv_heads hd`` each, the
  output projection's input ``d heads hd``, the dropout mask ``h``; core attention (``5 a s``
  per token): softmax output ``d a s``, its dropout mask ``a s`` and dropout output ``d a s``.
  MLA instead keeps: the input ``d h``; with ``q_lora_rank`` the query latent before and after
  its norm, ``2 d q_lora``; the KV latent with the rotary key, ``d (kv_lora + rope)``, and the
  normed KV latent ``d kv_lora``; Q and K after RoPE, ``d heads (qk + rope)`` each; V
  ``d heads v``; the output projection's input ``d heads v``; the dropout mask ``h``;
* dense MLP (19): its input ``d h``, the first linear's output ``d F`` (``2 d F`` gated), the
  activation's output ``d F``, the dropout mask ``h``;
* MoE MLP: its input ``d h`` (router and shared-expert input), the router's scores of all
  experts in fp32 ``4 E``; per routed copy (``topk`` per token): the permuted input ``d h``
  (``etp`` times: tokens are all-gathered within the expert-tensor group), the first linear's
  output ``d F_moe`` (``2 d F_moe`` gated) and the prob-weighted activation output ``d F_moe``
  (Megatron applies the routing probabilities inside the activation, so the expert outputs
  are not kept); the shared expert's first-linear and activation outputs as for a dense MLP at
  ``shared_expert_ffn``; the dropout mask ``h``.

``dropout=False`` (most MoE recipes train without dropout) drops the masks and the dropout
output of the attention scores. Left out: RoPE tables, softmax statistics of fused attention
kernels, routing indices and permutation maps (a few bytes per token), the fp32 router input of
``moe_router_dtype=fp32`` and the embedding layer's dropout mask. Without sequence parallelism
the layer-norm inputs, the attention and MLP inputs, the MLA latents and the masks are
replicated over ``t`` (the paper's ``10 + 24/t``); MoE layers with ``tp > 1`` need sequence
parallelism (Megatron-Core's ``model_parallel_config.py`` says so) and are refused without.
The last stage adds, for one micro-batch, the final norm's and the output layer's inputs
(``2 d h``) and the fp32 logits the vocabulary-parallel cross entropy keeps (``4 V / t``),
Korthikanti's ``4 s b h (1 + V / h)``. With full recomputation one layer's recomputed
activations (selective level) are added once, for the backward pass that rebuilds them.

In flight (:func:`inflight_activation_bytes`, :func:`default_layers_in_flight`): a schedule
says how many (micro-batch, layer) activations a stage holds at its peak. Without one:
Megatron's 1F1B warm-up, ``min(pp - rank, m)`` micro-batches of every layer of the stage, and
with ``vpp`` virtual stages ``min(2 (pp - rank - 1) + (vpp - 1) pp + 1, m vpp)`` model chunks
(``forward_backward_pipelining_with_interleaving``), which for rank 0 is Megatron's interleaved
penalty ``1 + (pp - 1) / (pp vpp)``.

**Communication buffers** (:func:`comm_buffer_bytes`): an estimate. The dispatch and combine
receive buffers of one MoE layer, ``tokens topk etp h d`` each with ``tokens = s b / tp``; the
pipeline send and receive buffers, ``2 s b h d / tp`` when ``pp > 1``; and a per-GPU reserve for
NCCL and the framework, :data:`FRAMEWORK_RESERVE_BYTES` = 0 by default: it depends on channels,
peers and ``NCCL_BUFFSIZE`` (4 MiB per channel and peer by default, NCCL's "Environment
Variables" documentation) and on the CUDA context, so a profile should set a measured figure.
Preallocated all-to-all libraries (DeepEP) size their buffers by their own configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from sim.training.dims import ModelDims, ParallelDims

RECOMPUTE = ("none", "selective", "full")
"""Activation recomputation modes of :func:`activation_bytes_per_layer`."""

ADAM_STATE_BYTES_PER_PARAM = 12
"""fp32 master parameter + Adam's first and second moments."""

ROUTER_SCORE_BYTES = 4
"""Bytes of one router score kept for the backward pass (fp32, Megatron's recommended
``moe_router_dtype``)."""

LOGIT_BYTES = 4
"""Bytes of one logit kept by the vocabulary-parallel cross entropy (fp32)."""

MASK_BYTES = 1
"""Bytes of one dropout-mask element (Korthikanti et al. count one byte)."""

FRAMEWORK_RESERVE_BYTES = 0
"""Per-GPU NCCL/framework reserve added to the communication buffers; 0 until a profile sets
a measured figure (see the module docstring)."""

STAGE_KEYS = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes",
              "comm_buffers_bytes", "total_bytes")
"""Keys of each stage's dict from :func:`stage_memory`."""


# --- parameters -------------------------------------------------------------------------------

def _is_moe(dims: ModelDims, moe: bool) -> bool:
    return moe and dims.num_experts > 0


def _matrices(dims: ModelDims) -> int:
    return 3 if dims.gated else 2


def _moe_ffn(dims: ModelDims) -> int:
    return dims.moe_ffn_hidden or dims.ffn_hidden


def _layer_parts(dims: ModelDims, moe: bool) -> tuple[int, int, int]:
    """One layer's (tensor-parallel, replicated, expert) parameters."""
    h = dims.hidden
    mla = dims.mla
    if mla is None:
        q = dims.heads * dims.head_dim
        kv = dims.kv_heads * dims.head_dim
        split = h * q + 2 * h * kv + q * h
        replicated = 0
    else:
        qk = dims.heads * (mla.qk_head_dim + mla.qk_pos_emb_head_dim)
        split = (mla.kv_lora_rank * dims.heads * (mla.qk_head_dim + mla.v_head_dim)
                 + dims.heads * mla.v_head_dim * h)
        replicated = h * (mla.kv_lora_rank + mla.qk_pos_emb_head_dim) + mla.kv_lora_rank
        if mla.q_lora_rank is None:
            split += h * qk
        else:
            split += mla.q_lora_rank * qk
            replicated += h * mla.q_lora_rank + mla.q_lora_rank
    replicated += 2 * h  # the two layer norms
    experts = 0
    if _is_moe(dims, moe):
        replicated += h * dims.num_experts
        split += _matrices(dims) * h * dims.shared_expert_ffn
        experts = dims.num_experts * _matrices(dims) * h * _moe_ffn(dims)
    else:
        split += _matrices(dims) * h * dims.ffn_hidden
    return split, replicated, experts


def layer_params(dims: ModelDims, moe: bool) -> tuple[int, int]:
    """(non-expert, expert) parameters of one transformer layer, all shards together:
    attention, norms and the dense FFN or the router and shared experts; the routed experts."""
    split, replicated, experts = _layer_parts(dims, moe)
    return split + replicated, experts


def _mtp_module_parts(dims: ModelDims) -> tuple[int, int, int]:
    """(tensor-parallel, replicated, expert) parameters of one MTP module, without the
    embedding and output layer it shares with the main model."""
    split, replicated, experts = _layer_parts(dims, bool(dims.moe_layers[-1]))
    h = dims.hidden
    return split + 2 * h * h, replicated + 3 * h, experts


def _check_layers(dims: ModelDims) -> None:
    if len(dims.moe_layers) != dims.num_layers:
        raise ValueError(f"moe_layers: {len(dims.moe_layers)} entries for "
                         f"{dims.num_layers} layers")


def model_params(dims: ModelDims, mtp: bool = False) -> tuple[int, int]:
    """(total, active) parameters of the whole model: every layer, the final norm, the
    embedding and (untied) the output layer; ``mtp`` adds the MTP modules (their embedding and
    output layer are the main model's). Active counts ``topk`` of the ``num_experts`` experts
    of each MoE layer."""
    _check_layers(dims)
    h = dims.hidden
    total = h + dims.vocab * h * (1 if dims.tied_embeddings else 2)
    active = total
    parts = [_layer_parts(dims, m) for m in dims.moe_layers]
    if mtp:
        parts += [_mtp_module_parts(dims)] * dims.mtp_layers
    for split, replicated, experts in parts:
        total += split + replicated + experts
        per_expert = experts // dims.num_experts if experts else 0
        active += split + replicated + per_expert * dims.topk
    return total, active


def stage_params(dims: ModelDims, par: ParallelDims, layers: list[int], first: bool,
                 last: bool) -> dict[str, float]:
    """Parameters per GPU of one pipeline stage holding ``layers`` (indices into the model's
    layers): ``dense_params`` (tensor-parallel parts / tp + replicated parts, embedding and
    output layer vocabulary-parallel / tp) and ``expert_params`` (experts / (ep etp)). The
    last stage holds the final norm and the MTP modules (see the module docstring)."""
    _check_layers(dims)
    h = dims.hidden
    split = replicated = experts = 0
    for i in layers:
        s, r, e = _layer_parts(dims, bool(dims.moe_layers[i]))
        split, replicated, experts = split + s, replicated + r, experts + e
    embedding = dims.vocab * h
    if first:
        split += embedding
    if last:
        if not (dims.tied_embeddings and par.pp == 1):
            split += embedding  # the output layer (a tied copy when pp > 1)
        replicated += h
        if dims.mtp_layers:
            if not first and not dims.tied_embeddings:
                split += embedding  # the MTP modules' copy of the embedding
            s, r, e = _mtp_module_parts(dims)
            split += dims.mtp_layers * s
            replicated += dims.mtp_layers * r
            experts += dims.mtp_layers * e
    return {"dense_params": split / par.tp + replicated,
            "expert_params": experts / (par.ep * par.etp)}


# --- optimizer state --------------------------------------------------------------------------

def state_bytes(dense_params: float, expert_params: float, par: ParallelDims,
                distributed_optimizer: bool, param_bytes: float = 2, grad_bytes: float = 4,
                copies: int = 1,
                optimizer_bytes_per_param: float = ADAM_STATE_BYTES_PER_PARAM,
                ) -> dict[str, float]:
    """Bytes per GPU of parameters, main gradients and optimizer state for ``dense_params`` and
    ``expert_params`` per GPU (:func:`stage_params`): ``params_bytes`` = params x
    ``param_bytes``, ``grads_bytes`` = params x ``grad_bytes``, ``optimizer_bytes`` = params x
    ``optimizer_bytes_per_param``, sharded over ``par.dp`` (dense) and ``par.edp`` (experts)
    with the distributed optimizer; all times ``copies`` (2 for DualPipe)."""
    if copies < 1:
        raise ValueError(f"copies: must be >= 1, got {copies}")
    if par.dp < 1 or par.edp < 1:
        raise ValueError(f"gpus={par.gpus} too few for tp={par.tp} pp={par.pp} ep={par.ep} "
                         f"etp={par.etp}")
    params = dense_params + expert_params
    if distributed_optimizer:
        sharded = dense_params / par.dp + expert_params / par.edp
    else:
        sharded = params
    return {"params_bytes": copies * params * param_bytes,
            "grads_bytes": copies * params * grad_bytes,
            "optimizer_bytes": copies * sharded * optimizer_bytes_per_param}


# --- activations ------------------------------------------------------------------------------

def _attention_per_token(dims: ModelDims, d: float, mask: float) -> tuple[float, float]:
    """Bytes per token of one layer's attention outside the core (scores): (replicated
    without sequence parallelism, split over tp)."""
    h = dims.hidden
    mla = dims.mla
    if mla is None:
        q = dims.heads * dims.head_dim
        kv = dims.kv_heads * dims.head_dim
        return d * h + mask * h, d * (q + 2 * kv + q)
    latents = d * (mla.kv_lora_rank + mla.qk_pos_emb_head_dim) + d * mla.kv_lora_rank
    if mla.q_lora_rank is not None:
        latents += 2 * d * mla.q_lora_rank
    qk = dims.heads * (mla.qk_head_dim + mla.qk_pos_emb_head_dim)
    v = dims.heads * mla.v_head_dim
    return d * h + latents + mask * h, d * (2 * qk + 2 * v)


def _mlp_per_token(dims: ModelDims, moe: bool, d: float, mask: float,
                   etp: int) -> tuple[float, float]:
    """Bytes per token of one layer's MLP: (replicated without sequence parallelism, split
    over tp)."""
    h = dims.hidden
    glu = 2 if dims.gated else 1
    if not moe:
        f = dims.ffn_hidden
        return d * h + mask * h, d * glu * f + d * f
    fm = _moe_ffn(dims)
    fs = dims.shared_expert_ffn
    routed = dims.topk * (etp * d * h + d * glu * fm + d * fm)
    shared = d * glu * fs + d * fs
    return d * h + ROUTER_SCORE_BYTES * dims.num_experts + mask * h, routed + shared


def activation_bytes_per_layer(dims: ModelDims, moe: bool, micro_batch_size: int, tp: int,
                               recompute: str, sequence_parallel: bool = True,
                               dtype_bytes: float = 2, *, etp: int = 1,
                               dropout: bool = True) -> float:
    """Bytes of activations one transformer layer keeps for the backward pass of one
    micro-batch of ``micro_batch_size`` sequences of ``dims.seq_len`` tokens, per GPU of a
    ``tp``-way tensor-parallel group (Korthikanti et al. 2022, Table 2, generalised as the
    module docstring lists). ``recompute``: ``"none"``, ``"selective"`` (core attention
    recomputed) or ``"full"`` (only the layer input kept); ``etp``: expert tensor parallelism
    of MoE layers."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute: one of {RECOMPUTE}, got {recompute!r}")
    if micro_batch_size < 0 or tp < 1 or etp < 1:
        raise ValueError(f"micro_batch_size >= 0, tp >= 1, etp >= 1; got {micro_batch_size}, "
                         f"{tp}, {etp}")
    moe = _is_moe(dims, moe)
    if moe and tp > 1 and not sequence_parallel:
        raise ValueError("an MoE layer with tp > 1 needs sequence parallelism")
    s, h, d = dims.seq_len, dims.hidden, dtype_bytes
    tokens = s * micro_batch_size
    sp = tp if sequence_parallel else 1  # what the replicated parts are divided by
    if recompute == "full":
        return tokens * d * h / sp
    mask = MASK_BYTES if dropout else 0
    attn_rep, attn_split = _attention_per_token(dims, d, mask)
    mlp_rep, mlp_split = _mlp_per_token(dims, moe, d, mask, etp)
    norms = 2 * d * h
    per_token = (norms + attn_rep + mlp_rep) / sp + (attn_split + mlp_split) / tp
    total = tokens * per_token
    if recompute == "none":
        # softmax output, its dropout mask and dropout output: a s^2 b elements each
        scores = dims.heads * s * tokens
        total += scores * (d + mask + (d if dropout else 0)) / tp
    return total


def output_activation_bytes(dims: ModelDims, micro_batch_size: int, tp: int,
                            sequence_parallel: bool = True, dtype_bytes: float = 2) -> float:
    """Bytes the last stage keeps for one micro-batch beyond its layers: the final norm's and
    the output layer's inputs and the fp32 logits of the vocabulary-parallel cross entropy."""
    tokens = dims.seq_len * micro_batch_size
    sp = tp if sequence_parallel else 1
    return tokens * (2 * dtype_bytes * dims.hidden / sp + LOGIT_BYTES * dims.vocab / tp)


def inflight_activation_bytes(per_layer_bytes: float | Sequence[float],
                              layers_in_flight: float | Sequence[float],
                              ) -> float | list[float]:
    """Activation bytes held at once: ``per_layer_bytes`` x ``layers_in_flight`` (the number of
    (micro-batch, layer) activations held). Either may be a list with one entry per stage (a
    schedule's peak per stage); the other is then applied to every stage, or, also a list,
    taken element by element."""
    seq_bytes = isinstance(per_layer_bytes, Sequence)
    seq_layers = isinstance(layers_in_flight, Sequence)
    if not seq_bytes and not seq_layers:
        if layers_in_flight < 0:
            raise ValueError(f"layers_in_flight: must be >= 0, got {layers_in_flight}")
        return per_layer_bytes * layers_in_flight
    n = len(per_layer_bytes) if seq_bytes else len(layers_in_flight)
    b = list(per_layer_bytes) if seq_bytes else [per_layer_bytes] * n
    k = list(layers_in_flight) if seq_layers else [layers_in_flight] * n
    if len(b) != len(k):
        raise ValueError(f"{len(b)} per-layer sizes for {len(k)} in-flight counts")
    if any(x < 0 for x in k):
        raise ValueError(f"layers_in_flight: must be >= 0, got {k}")
    return [x * y for x, y in zip(b, k, strict=True)]


# --- pipeline layout --------------------------------------------------------------------------

def pipeline_layers(dims: ModelDims, par: ParallelDims) -> list[list[int]]:
    """The layers of each of the ``pp`` pipeline ranks: the model cut into ``pp x vpp``
    consecutive chunks (the first ``num_layers mod (pp vpp)`` one layer longer), chunk ``c``
    on rank ``c mod pp``. Pass explicit lists to :func:`stage_memory` for other splits."""
    chunks = par.pp * par.vpp
    base, extra = divmod(dims.num_layers, chunks)
    ranks: list[list[int]] = [[] for _ in range(par.pp)]
    start = 0
    for c in range(chunks):
        n = base + (1 if c < extra else 0)
        ranks[c % par.pp].extend(range(start, start + n))
        start += n
    return ranks


def default_layers_in_flight(par: ParallelDims, rank: int, num_layers_on_stage: int,
                             num_microbatches: int | None = None) -> float:
    """Peak (micro-batch, layer) activations of pipeline ``rank`` under Megatron's 1F1B
    (``vpp == 1``) or interleaved 1F1B schedule, ``num_microbatches`` None = unbounded."""
    if par.vpp == 1:
        mbs = par.pp - rank
        if num_microbatches is not None:
            mbs = min(mbs, num_microbatches)
        return mbs * num_layers_on_stage
    chunks = 2 * (par.pp - rank - 1) + (par.vpp - 1) * par.pp + 1
    if num_microbatches is not None:
        chunks = min(chunks, num_microbatches * par.vpp)
    return chunks * num_layers_on_stage / par.vpp


# --- communication buffers --------------------------------------------------------------------

def comm_buffer_bytes(dims: ModelDims, par: ParallelDims, micro_batch_size: int,
                      dtype_bytes: float = 2, moe: bool = True,
                      reserve_bytes: float = FRAMEWORK_RESERVE_BYTES) -> dict[str, float]:
    """Communication buffers per GPU (an estimate, see the module docstring):
    ``dispatch_bytes`` and ``combine_bytes`` (one MoE layer's receive buffers, 0 unless
    ``moe``), ``pipeline_bytes`` (send + receive of one activation, 0 when ``pp == 1``),
    ``reserve_bytes`` and their sum ``total_bytes``."""
    tokens = dims.seq_len * micro_batch_size / par.tp
    h, d = dims.hidden, dtype_bytes
    routed = tokens * dims.topk * par.etp * h * d if _is_moe(dims, moe) else 0.0
    pipeline = 2 * tokens * h * d if par.pp > 1 else 0.0
    out = {"dispatch_bytes": routed, "combine_bytes": routed, "pipeline_bytes": pipeline,
           "reserve_bytes": float(reserve_bytes)}
    out["total_bytes"] = sum(out.values())
    return out


# --- per stage --------------------------------------------------------------------------------

def stage_memory(dims: ModelDims, par: ParallelDims, micro_batch_size: int, *,
                 stages: Sequence[Sequence[int]] | None = None,
                 layers_in_flight: Sequence[float] | None = None,
                 num_microbatches: int | None = None, recompute: str = "selective",
                 sequence_parallel: bool = True, distributed_optimizer: bool = True,
                 copies: int = 1, param_bytes: float = 2, grad_bytes: float = 4,
                 dtype_bytes: float = 2, dropout: bool = True,
                 reserve_bytes: float = FRAMEWORK_RESERVE_BYTES,
                 ends: Sequence[tuple[bool, bool]] | None = None) -> list[dict[str, float]]:
    """Memory per GPU of each pipeline rank, keys :data:`STAGE_KEYS`. ``stages``: the layers of
    each rank (default :func:`pipeline_layers`); rank 0 holds the embedding, rank ``pp - 1``
    the output layer. ``layers_in_flight``: a schedule's peak (micro-batch, layer) activations
    per rank (default :func:`default_layers_in_flight`), times the mean per-layer activation of
    the rank's layers (exact when a rank's layers are alike or each in-flight micro-batch holds
    all of them). ``ends``: per rank, (holds the embedding, holds the output layer); default
    rank 0 and rank pp - 1 (DualPipe: both ends on each of them)."""
    _check_layers(dims)
    stages = [list(s) for s in (pipeline_layers(dims, par) if stages is None else stages)]
    if len(stages) != par.pp:
        raise ValueError(f"stages: {len(stages)} lists for pp={par.pp}")
    if layers_in_flight is not None and len(layers_in_flight) != par.pp:
        raise ValueError(f"layers_in_flight: {len(layers_in_flight)} counts for pp={par.pp}")
    out = []
    for rank, layers in enumerate(stages):
        first, last = (rank == 0, rank == par.pp - 1) if ends is None else ends[rank]
        params = stage_params(dims, par, layers, first, last)
        state = state_bytes(params["dense_params"], params["expert_params"], par,
                            distributed_optimizer, param_bytes, grad_bytes, copies)
        moe_flags = [bool(dims.moe_layers[i]) for i in layers]
        if last and dims.mtp_layers:
            moe_flags += [bool(dims.moe_layers[-1])] * dims.mtp_layers

        def per_layer(moe: bool, mode: str) -> float:
            return activation_bytes_per_layer(dims, moe, micro_batch_size, par.tp, mode,
                                              sequence_parallel, dtype_bytes, etp=par.etp,
                                              dropout=dropout)

        sizes = [per_layer(m, recompute) for m in moe_flags]
        if layers_in_flight is None:
            held = default_layers_in_flight(par, rank, len(sizes), num_microbatches)
        else:
            held = layers_in_flight[rank]
        mean = sum(sizes) / len(sizes) if sizes else 0.0
        activations = inflight_activation_bytes(mean, held)
        if recompute == "full" and sizes:
            activations += max(per_layer(m, "selective") for m in moe_flags)
        if last:
            activations += output_activation_bytes(dims, micro_batch_size, par.tp,
                                                   sequence_parallel, dtype_bytes)
        comm = comm_buffer_bytes(dims, par, micro_batch_size, dtype_bytes,
                                 moe=any(moe_flags), reserve_bytes=reserve_bytes)
        stage = {**state, "activations_bytes": activations,
                 "comm_buffers_bytes": comm["total_bytes"]}
        stage["total_bytes"] = sum(stage[k] for k in STAGE_KEYS[:-1])
        out.append(stage)
    return out


def check_fits(stages: Sequence[dict[str, float]],
               hbm_bytes: float) -> tuple[int, dict[str, float]] | None:
    """The first stage (index, its dict) whose ``total_bytes`` exceeds ``hbm_bytes``; None
    when every stage fits."""
    for i, stage in enumerate(stages):
        if stage["total_bytes"] > hbm_bytes:
            return i, stage
    return None
