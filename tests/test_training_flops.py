"""Training FLOPs as Megatron-LM's ``num_floating_point_operations`` counts them: hand-counted
figures for a dense GPT, Mixtral-8x22B and DeepSeek-V3, and the bookkeeping around them.

The hand counts below use 6 FLOP per weight element per token (2 per multiply-accumulate, times
forward + two backward passes) and write every term out from the model's published sizes; they
do not call the module's helpers."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from sim.training.dims import MlaDims, ModelDims
from sim.training.flops import (
    BREAKDOWN_TERMS,
    flops_breakdown,
    mfu,
    tflops_per_gpu,
    training_flops,
)

SEQ = 4096

# Mixtral-8x22B: 56 layers, hidden 6144, FFN 16384 (SwiGLU), 48 heads in 8 query groups
# (head dim 128), 8 experts top-2 in every layer, no shared expert, vocabulary 32768.
MIXTRAL_8X22B = ModelDims(
    num_layers=56, hidden=6144, ffn_hidden=16384, heads=48, kv_heads=8, seq_len=SEQ,
    vocab=32768, moe_layers=(True,) * 56, num_experts=8, topk=2, moe_ffn_hidden=16384,
    gated=True)

# DeepSeek-V3: 61 layers (first 3 dense, FFN 18432), hidden 7168, 128 heads with MLA, 256 routed
# experts top-8 of width 2048 plus one shared expert of 2048, vocabulary 129280, 1 MTP module.
DEEPSEEK_V3 = ModelDims(
    num_layers=61, hidden=7168, ffn_hidden=18432, heads=128, kv_heads=128, seq_len=SEQ,
    vocab=129280, moe_layers=(False,) * 3 + (True,) * 58, num_experts=256, topk=8,
    moe_ffn_hidden=2048, shared_expert_ffn=2048, gated=True,
    mla=MlaDims(kv_lora_rank=512, qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128,
                q_lora_rank=1536),
    mtp_layers=1)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_dense_gpt_matches_the_closed_form_with_the_causal_core():
    """Dense GPT (MHA, no GLU, FFN = 4h): 72 B s L h^2 (1 + s/(12h) + V/(12 L h)).

    The classic closed form (Narayanan et al. 2021, arXiv:2104.04473) has s/(6h): it counts the
    full s x s attention square. Megatron's current code halves Q K^T and (softmax) V for the
    causal mask (since March 2025), which halves that term to s/(12h); the 24 h^2 of the
    projections, the 48 h^2 of the MLP and the 6 h V of the logits per token and layer are
    unchanged."""
    B, s, L, h, V = 3, 512, 4, 256, 1000
    dims = ModelDims(num_layers=L, hidden=h, ffn_hidden=4 * h, heads=8, kv_heads=8, seq_len=s,
                     vocab=V, moe_layers=(False,) * L, gated=False)
    causal = 72 * B * s * L * h**2 * (1 + Fraction(s, 12 * h) + Fraction(V, 12 * L * h))
    assert causal == 36_182_163_456  # integer here; also what Megatron's own function gives
    assert training_flops(dims, B) == pytest.approx(float(causal), rel=1e-15)
    full_square = 72 * B * s * L * h**2 * (1 + Fraction(s, 6 * h) + Fraction(V, 12 * L * h))
    assert _rel(training_flops(dims, B), float(full_square)) > 0.05


def test_mixtral_8x22b_term_by_term():
    L, s = 56, SEQ
    # per token and layer: Q (6144 x 48*128) + K, V (6144 x 8*128 each) + O (48*128 x 6144)
    attn_proj = 6 * s * L * (6144 * (48 * 128 + 2 * 8 * 128) + 48 * 128 * 6144)
    # per sequence and layer: Q K^T and (softmax) V, 48*128 wide each, over half of s^2 pairs
    attn_core = 6 * L * (s * s // 2) * (48 * 128 + 48 * 128)
    # per token and layer: 2 experts x 3 matrices (gate, up, down) of 6144 x 16384
    routed = 6 * s * L * 2 * 3 * 6144 * 16384
    logits = 6 * s * 6144 * 32768
    expected = attn_proj + attn_core + routed + logits
    assert expected == 992_034_366_160_896  # 2.42e11 FLOP per token

    got = flops_breakdown(MIXTRAL_8X22B, 1)
    assert got["attention_projections"] == attn_proj
    assert got["attention_core"] == attn_core
    assert got["moe_routed"] == routed
    assert got["logits"] == logits
    assert got["dense_mlp"] == got["moe_shared"] == got["mtp"] == 0
    assert training_flops(MIXTRAL_8X22B, 1) == pytest.approx(expected, rel=1e-15)
    # Mistral AI gives 39B active parameters: 6 x 39e9 per token for the token-linear work
    # (everything but the attention core; the router and embedding lookup are not counted)
    token_linear = (attn_proj + routed + logits) / s
    assert _rel(token_linear, 6 * 39e9) < 0.02


def test_deepseek_v3_term_by_term():
    s = SEQ
    # MLA projections per token and layer (Megatron's terms, "+ 1" its norm stand-ins):
    q = 1536 * (7168 + 128 * (128 + 64) + 1)      # q down 7168->1536, q up 1536->128*(128+64)
    kv = 512 * (7168 + 128 * (128 + 128) + 1)     # kv down 7168->512, kv up 512->128*(128+128)
    rope_k = 7168 * 64                            # shared rotary key 7168->64
    out = 128 * 128 * 7168                        # output 128*128->7168
    assert q + kv + rope_k + out == 187_107_328
    attn_proj = 6 * s * 61 * (q + kv + rope_k + out)
    # core per sequence and layer: scores 128*(128+64) wide, values 128*128, causal half of s^2
    attn_core = 6 * 61 * (s * s // 2) * (128 * (128 + 64) + 128 * 128)
    dense = 6 * s * 3 * 3 * 7168 * 18432          # 3 dense layers, 3 SwiGLU matrices
    routed = 6 * s * 58 * 8 * 3 * 7168 * 2048     # 58 MoE layers, top-8
    shared = 6 * s * 58 * 1 * 3 * 7168 * 2048     # 58 MoE layers, 1 shared expert
    logits = 6 * s * 7168 * 129280
    # the MTP module: one more (MoE, as the last layer is) transformer layer, its three norms
    # (3 x 7168) and 2*7168 -> 7168 projection, and one more output layer
    mtp = (6 * s * (q + kv + rope_k + out)
           + 6 * (s * s // 2) * (128 * (128 + 64) + 128 * 128)
           + 6 * s * (8 + 1) * 3 * 7168 * 2048
           + 6 * s * (3 * 7168 + 2 * 7168 * 7168)
           + 6 * s * 7168 * 129280)
    expected = attn_proj + attn_core + dense + routed + shared + logits + mtp
    assert expected == 1_064_931_126_411_264  # 2.60e11 FLOP per token

    got = flops_breakdown(DEEPSEEK_V3, 1)
    assert got == {"attention_projections": attn_proj, "attention_core": attn_core,
                   "dense_mlp": dense, "moe_routed": routed, "moe_shared": shared,
                   "logits": logits, "mtp": mtp}
    assert training_flops(DEEPSEEK_V3, 1) == pytest.approx(expected, rel=1e-15)


def test_deepseek_v3_is_near_six_times_its_reported_active_parameters():
    """The DeepSeek-V3 report gives 37B activated parameters per token (main model, MTP apart);
    6 FLOP per active weight per token is then a rough figure for the main model's token-linear
    FLOPs (all but the attention core and MTP). Loose: 37B is rounded and includes the embedding
    table, router and norms, which Megatron's count leaves out."""
    got = flops_breakdown(DEEPSEEK_V3, 1)
    token_linear = sum(v for k, v in got.items() if k not in ("attention_core", "mtp")) / SEQ
    assert _rel(token_linear, 6 * 37e9) < 0.03


@pytest.mark.parametrize("dims", [MIXTRAL_8X22B, DEEPSEEK_V3], ids=["mixtral", "dsv3"])
@pytest.mark.parametrize("batch", [1, 7])
def test_breakdown_sums_to_the_total(dims, batch):
    parts = flops_breakdown(dims, batch)
    assert tuple(parts) == BREAKDOWN_TERMS
    assert sum(parts.values()) == training_flops(dims, batch)
    assert all(v >= 0 for v in parts.values())


def test_mtp_term_is_all_mtp_adds():
    no_mtp = dataclasses.replace(DEEPSEEK_V3, mtp_layers=0)
    two = dataclasses.replace(DEEPSEEK_V3, mtp_layers=2)
    base, one, both = (flops_breakdown(d, 1) for d in (no_mtp, DEEPSEEK_V3, two))
    assert base["mtp"] == 0
    assert {k: v for k, v in one.items() if k != "mtp"} == {
        k: v for k, v in base.items() if k != "mtp"}
    assert both["mtp"] == 2 * one["mtp"]
    # a dense last layer makes the MTP layer dense: FFN 18432 instead of 9 experts of 2048
    dense_last = dataclasses.replace(DEEPSEEK_V3, moe_layers=(False,) * 3 + (True,) * 57
                                     + (False,))
    diff = flops_breakdown(dense_last, 1)["mtp"] - one["mtp"]
    assert diff == 6 * SEQ * 3 * 7168 * (18432 - 9 * 2048)


def test_mla_without_query_compression():
    direct = dataclasses.replace(
        DEEPSEEK_V3, mla=dataclasses.replace(DEEPSEEK_V3.mla, q_lora_rank=None))
    diff = (flops_breakdown(DEEPSEEK_V3, 1)["attention_projections"]
            - flops_breakdown(direct, 1)["attention_projections"])
    lora_q = 1536 * (7168 + 128 * 192 + 1)
    direct_q = 7168 * 128 * 192
    assert diff == 6 * SEQ * 61 * (lora_q - direct_q)


def test_doubling_the_batch_doubles_the_flops():
    for dims in (MIXTRAL_8X22B, DEEPSEEK_V3):
        assert training_flops(dims, 2) == 2 * training_flops(dims, 1)
        assert training_flops(dims, 0) == 0


def test_topk_scales_exactly_the_routed_term():
    parts = flops_breakdown(MIXTRAL_8X22B, 1)
    per_expert = parts["moe_routed"] / MIXTRAL_8X22B.topk
    top3 = dataclasses.replace(MIXTRAL_8X22B, topk=3)
    top0 = dataclasses.replace(MIXTRAL_8X22B, topk=0)
    assert training_flops(top3, 1) - training_flops(MIXTRAL_8X22B, 1) == per_expert
    assert training_flops(top0, 1) == training_flops(MIXTRAL_8X22B, 1) - parts["moe_routed"]
    # DeepSeek-V3: the MTP module's MoE layer routes too, so 59 layers carry the extra expert
    top9 = dataclasses.replace(DEEPSEEK_V3, topk=9)
    assert (training_flops(top9, 1) - training_flops(DEEPSEEK_V3, 1)
            == 6 * SEQ * 59 * 3 * 7168 * 2048)


def test_expert_width_falls_back_to_ffn_and_no_experts_means_dense():
    unset = dataclasses.replace(MIXTRAL_8X22B, moe_ffn_hidden=0)
    assert training_flops(unset, 1) == training_flops(MIXTRAL_8X22B, 1)
    no_experts = dataclasses.replace(MIXTRAL_8X22B, num_experts=0)
    parts = flops_breakdown(no_experts, 1)
    assert parts["moe_routed"] == 0
    assert parts["dense_mlp"] == 6 * SEQ * 56 * 3 * 6144 * 16384


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        training_flops(dataclasses.replace(MIXTRAL_8X22B, moe_layers=(True,) * 55), 1)
    with pytest.raises(ValueError):
        training_flops(MIXTRAL_8X22B, -1)
    with pytest.raises(ValueError):
        tflops_per_gpu(1.0, 0.0, 8)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 8, 0.0)


def test_throughput_and_mfu():
    # 2.5e18 FLOP in 5 s on 1024 GPUs: 2.5e18 / (5 x 1024) = 4.8828125e14 FLOP/s per GPU
    assert tflops_per_gpu(2.5e18, 5.0, 1024) == pytest.approx(488.28125, rel=1e-15)
    assert mfu(2.5e18, 5.0, 1024, 976.5625e12) == pytest.approx(0.5, rel=1e-15)
    # Megatron's log line: FLOPs of the iteration / (seconds x 1e12 x world size)
    flops = training_flops(MIXTRAL_8X22B, 256)
    assert tflops_per_gpu(flops, 10.0, 256) == pytest.approx(flops / (10.0 * 1e12 * 256))
    assert mfu(flops, 10.0, 256, 989e12) == pytest.approx(
        tflops_per_gpu(flops, 10.0, 256) / 989)
