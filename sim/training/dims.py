"""The sizes a training iteration is computed from, in Megatron-Core's vocabulary: the model's
dimensions (:class:`ModelDims`) and the parallel layout (:class:`ParallelDims`). Element counts;
no units."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MlaDims:
    """Multi-head latent attention (DeepSeek-V2/V3): ``q_lora_rank`` None = no query
    compression (Q projected straight from the hidden state)."""

    kv_lora_rank: int
    qk_head_dim: int  # per head, without the rotary part
    qk_pos_emb_head_dim: int  # per head, the rotary part (shared key across heads)
    v_head_dim: int
    q_lora_rank: int | None = None


@dataclass(frozen=True)
class ModelDims:
    """A decoder-only MoE transformer. ``moe_layers[i]``: layer i is MoE (else dense FFN of
    ``ffn_hidden``); ``shared_expert_ffn``: width of the shared experts of an MoE layer summed
    (Megatron's ``moe_shared_expert_intermediate_size``; 0 = none); ``mla`` None = MHA/GQA
    with ``kv_heads`` query groups; ``mtp_layers``: DeepSeek-V3 multi-token prediction
    modules; ``tied_embeddings``: input embedding and output layer share one matrix."""

    num_layers: int
    hidden: int
    ffn_hidden: int
    heads: int
    kv_heads: int
    seq_len: int
    vocab: int
    moe_layers: tuple[bool, ...]
    num_experts: int = 0
    topk: int = 1
    moe_ffn_hidden: int = 0
    shared_expert_ffn: int = 0
    gated: bool = True
    mla: MlaDims | None = None
    mtp_layers: int = 0
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class ParallelDims:
    """Megatron-Core's layout of ``gpus`` ranks: tensor ``tp``, pipeline ``pp`` (``vpp``
    virtual stages per rank), expert ``ep`` with expert tensor ``etp``, data ``dp`` =
    gpus / (tp pp) and expert data ``edp`` = gpus / (etp ep pp)."""

    gpus: int
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    ep: int = 1
    etp: int = 1

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)

    @property
    def edp(self) -> int:
        return self.gpus // (self.etp * self.ep * self.pp)
