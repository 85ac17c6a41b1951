"""Model FLOPs of one training iteration, counted the way Megatron-LM counts the throughput it
logs (``throughput per GPU (TFLOP/s/GPU)``).

The count follows the transformer branch of ``num_floating_point_operations`` in
``megatron/training/training.py`` of NVIDIA/Megatron-LM (the nested ``transformer_flops``), for
sequences that are all ``seq_len`` tokens long and unpacked (its BSHD defaults). Only matrix
multiplications are counted: an (m x n) by (n x k) product costs 2 m n k FLOP, and each one runs
three times in an iteration (forward, backward data gradient, backward weight gradient), so a
weight matrix of n x k elements costs 6 n k FLOP per token. The terms, all per token except the
attention core:

* attention projections: Q, K, V and output projections. Grouped-query attention has
  ``kv_heads`` K/V heads of ``hidden / heads`` channels each. Multi-head latent attention counts
  the query down/up projections (or the direct query projection when ``q_lora_rank`` is None),
  the KV down/up projections, the shared rotary key projection and the output projection,
  plus the one-element-per-rank stand-in for the q/kv norms that Megatron adds (``rank x 1``).
* attention core: Q K^T and (softmax) V, which scale with the square of the sequence length. The
  causal mask halves both (Megatron has done so since March 2025; the older code and the
  classic 72 B s L h^2 (1 + s/(6h) + V/(12 L h)) closed form count the full square).
* MLP: a dense layer has two matrices of ``hidden x ffn_hidden``, three when ``gated``
  (SwiGLU: Megatron's factor 3/2). An MoE layer runs ``topk`` routed experts of
  ``moe_ffn_hidden`` (``ffn_hidden`` when that is 0, as Megatron falls back when
  ``moe_ffn_hidden_size`` is unset) and the shared experts of ``shared_expert_ffn`` in total.
  A layer is MoE when ``moe_layers`` says so and the model has experts at all
  (``num_experts`` > 0; Megatron treats every MLP as dense when ``num_experts`` is None).
* logits: the output layer, ``hidden x vocab``. Megatron uses the padded vocabulary: pass the
  padded size in ``vocab`` to match its log.
* MTP: each of DeepSeek-V3's ``mtp_layers`` multi-token-prediction modules adds one more
  transformer layer (with attention; its MLP is MoE when the main model's last layer is),
  its norms and the 2h -> h projection that joins embedding and hidden state (Megatron counts
  the three norms as 3 x hidden and the projection as 2 hidden^2 elements, both at 6 FLOP each per
  token), and one more output layer. :func:`flops_breakdown` keeps all of that under ``"mtp"``;
  its other terms are the main model's.

Left out, as Megatron leaves them out: the router (``hidden x num_experts`` per MoE layer), the
embedding lookup, norms other than those above, softmax, activations, the loss and the
optimizer step; tied embeddings change nothing (the output layer is computed either way).
Left out because :class:`~sim.training.dims.ModelDims` does not describe them: Megatron's
hybrid-model branch (Mamba, gated delta product/net layers), linear-attention variants, the
attention output gate, ``moe_latent_size``, a ``kv_channels`` other than ``hidden / heads``,
and packed (THD) batches whose attention core scales with the sum of the squared sub-sequence
lengths instead of ``batch x seq_len^2``.

Units: FLOP (floating-point operations, a count) for :func:`training_flops` and
:func:`flops_breakdown`; seconds for an iteration's time; FLOP/s for a GPU's peak;
10^12 FLOP/s for :func:`tflops_per_gpu`.
"""

from __future__ import annotations

from sim.training.dims import ModelDims

# One multiply-accumulate is 2 FLOP, and every matmul runs 3 times per iteration (forward,
# backward dgrad, backward wgrad): 6 FLOP per weight element per token.
_FLOP_PER_MAC = 2
_PASSES = 3
_TRAIN_FLOP_PER_MAC = _FLOP_PER_MAC * _PASSES

BREAKDOWN_TERMS = ("attention_projections", "attention_core", "dense_mlp", "moe_routed",
                   "moe_shared", "logits", "mtp")
"""Keys of :func:`flops_breakdown`, in the order they are summed."""


def _check(dims: ModelDims, batch_size: int) -> None:
    if batch_size < 0:
        raise ValueError(f"batch_size: must be >= 0, got {batch_size}")
    if len(dims.moe_layers) != dims.num_layers:
        raise ValueError(f"moe_layers: {len(dims.moe_layers)} entries for "
                         f"{dims.num_layers} layers")
    if dims.mtp_layers < 0 or dims.topk < 0:
        raise ValueError("mtp_layers and topk must be >= 0")


def _is_moe(dims: ModelDims, layer_is_moe: bool) -> bool:
    return layer_is_moe and dims.num_experts > 0


def _projection_macs(dims: ModelDims) -> int:
    """Multiply-accumulates per token of one layer's attention projections."""
    h, n = dims.hidden, dims.heads
    mla = dims.mla
    if mla is None:
        q_width = n * dims.head_dim
        kv_width = dims.kv_heads * dims.head_dim
        return h * (q_width + 2 * kv_width) + q_width * h
    qk_width = n * (mla.qk_head_dim + mla.qk_pos_emb_head_dim)
    if mla.q_lora_rank is None:
        query = h * qk_width
    else:
        # down to the rank, up to all heads, and the rank-sized norm term Megatron adds
        query = mla.q_lora_rank * (h + qk_width + 1)
    key_value = mla.kv_lora_rank * (h + n * (mla.qk_head_dim + mla.v_head_dim) + 1)
    rotary_key = h * mla.qk_pos_emb_head_dim
    output = n * mla.v_head_dim * h
    return query + key_value + rotary_key + output


def _core_macs_per_pair(dims: ModelDims) -> int:
    """Multiply-accumulates per (query, key) pair of one layer's attention core: the score
    width (Q K^T) plus the value width (probabilities x V)."""
    mla = dims.mla
    if mla is None:
        width = dims.heads * dims.head_dim
        return width + width
    return dims.heads * (mla.qk_head_dim + mla.qk_pos_emb_head_dim + mla.v_head_dim)


def _layer_flops(dims: ModelDims, batch_size: int, moe: bool) -> dict[str, int]:
    """Training FLOP of one transformer layer over the batch, by term."""
    tokens = batch_size * dims.seq_len
    h = dims.hidden
    matrices = 3 if dims.gated else 2
    # the causal mask keeps half of each sequence's seq_len^2 (query, key) pairs (the halving
    # is exact: 6 FLOP per multiply-accumulate is even)
    core = _TRAIN_FLOP_PER_MAC * batch_size * dims.seq_len**2 * _core_macs_per_pair(dims) // 2
    flops = {"attention_projections": _TRAIN_FLOP_PER_MAC * tokens * _projection_macs(dims),
             "attention_core": core,
             "dense_mlp": 0, "moe_routed": 0, "moe_shared": 0}
    if moe:
        expert_width = dims.moe_ffn_hidden or dims.ffn_hidden
        flops["moe_routed"] = (_TRAIN_FLOP_PER_MAC * tokens * h * expert_width * dims.topk
                               * matrices)
        flops["moe_shared"] = (_TRAIN_FLOP_PER_MAC * tokens * h * dims.shared_expert_ffn
                               * matrices)
    else:
        flops["dense_mlp"] = _TRAIN_FLOP_PER_MAC * tokens * h * dims.ffn_hidden * matrices
    return flops


def flops_breakdown(dims: ModelDims, batch_size: int) -> dict[str, float]:
    """FLOP of one training iteration over ``batch_size`` sequences of ``dims.seq_len`` tokens,
    by term (keys :data:`BREAKDOWN_TERMS`). ``"mtp"`` holds everything the MTP modules add
    (their transformer layers, norms, joining projections and output layers); the other terms
    are the main model's ``num_layers`` layers and its output layer. The values sum to
    :func:`training_flops` exactly."""
    _check(dims, batch_size)
    tokens = batch_size * dims.seq_len
    h = dims.hidden
    totals = dict.fromkeys(BREAKDOWN_TERMS, 0)
    for layer_is_moe in dims.moe_layers:
        for term, flop in _layer_flops(dims, batch_size, _is_moe(dims, layer_is_moe)).items():
            totals[term] += flop
    output_layer = _TRAIN_FLOP_PER_MAC * tokens * h * dims.vocab
    totals["logits"] = output_layer
    if dims.mtp_layers:
        # an MTP module's layer is MoE exactly when the main model's last layer is
        last_is_moe = bool(dims.moe_layers) and _is_moe(dims, dims.moe_layers[-1])
        layer = sum(_layer_flops(dims, batch_size, last_is_moe).values())
        norms_and_join = _TRAIN_FLOP_PER_MAC * tokens * (3 * h + 2 * h * h)
        totals["mtp"] = dims.mtp_layers * (layer + norms_and_join + output_layer)
    return {term: float(totals[term]) for term in BREAKDOWN_TERMS}


def training_flops(dims: ModelDims, batch_size: int) -> float:
    """FLOP of one training iteration (forward and backward, 3x the forward's matmuls) over
    ``batch_size`` sequences of ``dims.seq_len`` tokens, as Megatron-LM's logged throughput
    counts them (see the module docstring): the sum of :func:`flops_breakdown`."""
    return sum(flops_breakdown(dims, batch_size).values())


def tflops_per_gpu(flops: float, iteration_s: float, gpus: int) -> float:
    """Achieved 10^12 FLOP/s per GPU: ``flops`` (FLOP of one iteration) over ``iteration_s``
    seconds on ``gpus`` GPUs, Megatron's ``throughput per GPU (TFLOP/s/GPU)``."""
    if iteration_s <= 0 or gpus <= 0:
        raise ValueError("iteration_s and gpus must be > 0")
    return flops / (iteration_s * gpus * 1e12)


def mfu(flops: float, iteration_s: float, gpus: int, peak_flops_per_gpu: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per GPU over ``peak_flops_per_gpu`` (FLOP/s,
    the dense peak of the datatype trained in). A fraction, 1.0 = peak."""
    if iteration_s <= 0 or gpus <= 0 or peak_flops_per_gpu <= 0:
        raise ValueError("iteration_s, gpus and peak_flops_per_gpu must be > 0")
    return flops / (iteration_s * gpus * peak_flops_per_gpu)
