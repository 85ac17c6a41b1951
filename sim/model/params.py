"""Parameter counts of an MoE transformer, from its shapes alone, as the step's gradient
reductions size them (the iteration's memory model counts per stage, norms and embeddings
included, in ``sim/training/memory.py``).

Per layer: attention = Q and O projections (d x d each) + K and V projections (d x d_kv each,
d_kv = d x kv_heads / heads: grouped-query attention; with multi-head latent attention its
down- and up-projections instead, :attr:`Shape.attention_params`); an MoE layer adds its router
(d x E), its shared experts and E experts, a dense layer its FFN. An FFN (a dense one, or one
expert) has two weight matrices, three with a gated linear unit (SwiGLU): (2 or 3) x d x ffn.
Norms and biases are left out (under 0.1 % of any shipped model). The embedding is tied (one
vocab x d matrix).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """Sizes of a transformer (element counts): ``moe_layers`` says which layers are MoE."""

    hidden: int
    ffn_hidden: int
    moe_ffn_hidden: int
    heads: int
    kv_heads: int
    gated: bool
    experts: int
    moe_layers: tuple[bool, ...]
    vocab: int = 0
    shared_ffn: int = 0  # the shared experts' width summed (0: none)
    mla: object | None = None  # sim.training.dims.MlaDims: multi-head latent attention

    @classmethod
    def of(cls, model, moe, vocab: int = 0) -> Shape:
        """The shape of a scenario's ``model`` and ``moe`` sections (``vocab``: embedding rows)."""
        return cls(hidden=model.hidden_size, ffn_hidden=model.ffn_hidden_size,
                   moe_ffn_hidden=moe.moe_ffn_hidden_size or model.ffn_hidden_size,
                   heads=model.num_attention_heads,
                   kv_heads=model.num_query_groups or model.num_attention_heads,
                   gated=model.gated_linear_unit, experts=moe.num_experts,
                   moe_layers=tuple(model.moe_layers()), vocab=vocab,
                   shared_ffn=getattr(moe, "moe_shared_expert_intermediate_size", None) or 0,
                   mla=mla_of(model))

    @property
    def kv_hidden(self) -> int:
        """Width of K (and of V): hidden x kv_heads / heads."""
        return self.hidden * self.kv_heads // self.heads

    @property
    def matrices_per_ffn(self) -> int:
        """Weight matrices of one FFN: 3 with a gated linear unit, else 2."""
        return 3 if self.gated else 2

    @property
    def expert_params(self) -> int:
        """Weights of one expert (all its shards)."""
        return self.matrices_per_ffn * self.hidden * self.moe_ffn_hidden

    @property
    def attention_params(self) -> int:
        """Q, K, V and O projections of one layer (MLA: its down- and up-projections)."""
        d, a = self.hidden, self.mla
        if a is not None:
            qk = a.qk_head_dim + a.qk_pos_emb_head_dim
            q = (a.q_lora_rank * (d + self.heads * qk) if a.q_lora_rank
                 else d * self.heads * qk)
            kv = d * (a.kv_lora_rank + a.qk_pos_emb_head_dim) + a.kv_lora_rank * self.heads * (
                a.qk_head_dim + a.v_head_dim)
            return q + kv + self.heads * a.v_head_dim * d
        return d * (d + 2 * self.kv_hidden) + d * d

    def dense_params(self, moe: bool) -> int:
        """Weights of one layer outside its routed experts: attention + router and shared
        experts (MoE) or + FFN."""
        d = self.hidden
        return self.attention_params + (
            d * self.experts + self.matrices_per_ffn * d * self.shared_ffn if moe
            else self.matrices_per_ffn * d * self.ffn_hidden)

    @property
    def non_expert_params(self) -> int:
        """Every weight outside the experts: each layer's dense part and the embedding."""
        return sum(self.dense_params(m) for m in self.moe_layers) + self.vocab * self.hidden


def mla_of(model):
    """The ``sim.training.dims.MlaDims`` of a scenario's ``model`` section (None: MHA/GQA)."""
    if not getattr(model, "multi_latent_attention", False):
        return None
    from sim.training.dims import MlaDims

    return MlaDims(model.kv_lora_rank, model.qk_head_dim, model.qk_pos_emb_head_dim,
                   model.v_head_dim, model.q_lora_rank)
