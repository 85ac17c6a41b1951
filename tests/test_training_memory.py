"""Memory per GPU of a training run: parameter counts against hand formulas and published model
sizes, Megatron's bytes per parameter, Korthikanti et al.'s activation formula, and the per-stage
sums."""

from dataclasses import replace

import pytest

from sim.training.dims import MlaDims, ModelDims, ParallelDims
from sim.training.memory import (
    STAGE_KEYS,
    activation_bytes_per_layer,
    check_fits,
    comm_buffer_bytes,
    default_layers_in_flight,
    inflight_activation_bytes,
    layer_params,
    model_params,
    output_activation_bytes,
    pipeline_layers,
    stage_memory,
    stage_params,
    state_bytes,
)
from sim.units import GIB

# A small GQA MoE model: layer 0 dense, layer 1 MoE.
H, HEADS, KV_HEADS, FFN, MOE_FFN, E, K, SHARED, VOCAB = 64, 4, 2, 128, 32, 4, 2, 16, 100
SMALL = ModelDims(num_layers=2, hidden=H, ffn_hidden=FFN, heads=HEADS, kv_heads=KV_HEADS,
                  seq_len=32, vocab=VOCAB, moe_layers=(False, True), num_experts=E, topk=K,
                  moe_ffn_hidden=MOE_FFN, shared_expert_ffn=SHARED, gated=True)
HD = H // HEADS
ATTN = H * H + 2 * H * (KV_HEADS * HD) + H * H  # Q, K, V, O
NORMS = 2 * H
DENSE_LAYER = ATTN + NORMS + 3 * H * FFN
MOE_NON_EXPERT = ATTN + NORMS + H * E + 3 * H * SHARED
EXPERTS = E * 3 * H * MOE_FFN

MIXTRAL_8X22B = ModelDims(num_layers=56, hidden=6144, ffn_hidden=16384, heads=48, kv_heads=8,
                          seq_len=4096, vocab=32768, moe_layers=(True,) * 56, num_experts=8,
                          topk=2, moe_ffn_hidden=16384)
DEEPSEEK_V3 = ModelDims(num_layers=61, hidden=7168, ffn_hidden=18432, heads=128, kv_heads=128,
                        seq_len=4096, vocab=129280, moe_layers=(False,) * 3 + (True,) * 58,
                        num_experts=256, topk=8, moe_ffn_hidden=2048, shared_expert_ffn=2048,
                        mla=MlaDims(kv_lora_rank=512, qk_head_dim=128, qk_pos_emb_head_dim=64,
                                    v_head_dim=128, q_lora_rank=1536),
                        mtp_layers=1)


def gpt(s=2048, h=1024, a=16, kv_heads=None, gated=False, layers=4):
    """Korthikanti et al.'s GPT layer: ffn 4h, multi-head attention, no GLU."""
    return ModelDims(num_layers=layers, hidden=h, ffn_hidden=4 * h, heads=a,
                     kv_heads=kv_heads or a, seq_len=s, vocab=51200,
                     moe_layers=(False,) * layers, gated=gated)


# --- parameters -------------------------------------------------------------------------------

def test_small_layer_params_match_the_hand_formula():
    assert layer_params(SMALL, moe=False) == (DENSE_LAYER, 0)
    assert layer_params(SMALL, moe=True) == (MOE_NON_EXPERT, EXPERTS)


def test_small_model_total_and_active_match_the_hand_formula():
    embeddings = 2 * VOCAB * H  # untied: embedding + output layer
    total = DENSE_LAYER + MOE_NON_EXPERT + EXPERTS + embeddings + H
    active = total - EXPERTS + EXPERTS * K // E
    assert model_params(SMALL) == (total, active)


def test_mla_attention_params_match_the_hand_formula():
    h, n, ql, kvl, qk, rope, v = 64, 4, 16, 8, 8, 4, 8
    mla = MlaDims(kv_lora_rank=kvl, qk_head_dim=qk, qk_pos_emb_head_dim=rope, v_head_dim=v,
                  q_lora_rank=ql)
    dims = ModelDims(num_layers=1, hidden=h, ffn_hidden=32, heads=n, kv_heads=n, seq_len=8,
                     vocab=10, moe_layers=(False,), gated=False, mla=mla)
    kv_and_o = h * (kvl + rope) + kvl + kvl * n * (qk + v) + n * v * h
    ffn_and_norms = 2 * h * 32 + 2 * h
    with_lora = h * ql + ql + ql * n * (qk + rope) + kv_and_o
    assert layer_params(dims, False) == (with_lora + ffn_and_norms, 0)
    no_lora = replace(dims, mla=MlaDims(kvl, qk, rope, v))
    assert layer_params(no_lora, False) == (h * n * (qk + rope) + kv_and_o + ffn_and_norms, 0)


def test_mixtral_8x22b_is_141b_total_39b_active():
    total, active = model_params(MIXTRAL_8X22B)
    assert total == pytest.approx(141e9, rel=0.01)
    assert active == pytest.approx(39e9, rel=0.01)


def test_deepseek_v3_is_671b_without_its_mtp_module():
    total, active = model_params(DEEPSEEK_V3)
    assert total == pytest.approx(671e9, rel=0.01)
    assert active == pytest.approx(37e9, rel=0.02)  # published "37B", rounded
    # The published 685B (checkpoint) adds the 14B MTP module with its own copies of the
    # embedding and output head; model_params counts those shared matrices once.
    with_mtp, _ = model_params(DEEPSEEK_V3, mtp=True)
    assert with_mtp + 2 * 129280 * 7168 == pytest.approx(685e9, rel=0.01)
    # one more MoE layer, the 2h -> h projection and three norms
    assert with_mtp - total == sum(layer_params(DEEPSEEK_V3, True)) + 2 * 7168**2 + 3 * 7168


def test_stage_params_split_over_tp_and_ep():
    par = ParallelDims(gpus=8, tp=2, pp=2, ep=2)
    emb = VOCAB * H
    first = stage_params(SMALL, par, [0], first=True, last=False)
    assert first == {"dense_params": (ATTN + 3 * H * FFN + emb) / 2 + NORMS,
                     "expert_params": 0}
    last = stage_params(SMALL, par, [1], first=False, last=True)
    assert last == {"dense_params": (ATTN + 3 * H * SHARED + emb) / 2 + NORMS + H * E + H,
                    "expert_params": EXPERTS / 2}
    etp = ParallelDims(gpus=8, tp=2, pp=1, ep=2, etp=2)
    assert stage_params(SMALL, etp, [1], False, False)["expert_params"] == EXPERTS / 4


def test_tied_embeddings_one_matrix_with_pp1_and_a_copy_per_end_stage_with_pp2():
    tied = replace(SMALL, tied_embeddings=True)
    emb = VOCAB * H
    one = stage_params(tied, ParallelDims(gpus=1), [0, 1], True, True)["dense_params"]
    untied = stage_params(SMALL, ParallelDims(gpus=1), [0, 1], True, True)["dense_params"]
    assert untied - one == emb
    par = ParallelDims(gpus=2, pp=2)
    assert (stage_params(tied, par, [0], True, False)["dense_params"]
            == stage_params(SMALL, par, [0], True, False)["dense_params"])
    assert (stage_params(tied, par, [1], False, True)["dense_params"]
            == stage_params(SMALL, par, [1], False, True)["dense_params"])
    experts = stage_params(tied, ParallelDims(gpus=1), [0, 1], True, True)["expert_params"]
    assert one + experts == model_params(tied)[0]


def test_mtp_modules_sit_on_the_last_stage_with_an_embedding_copy():
    mtp = replace(SMALL, mtp_layers=1)
    par = ParallelDims(gpus=2, pp=2)
    plain = stage_params(SMALL, par, [1], False, True)
    extra = stage_params(mtp, par, [1], False, True)
    module = MOE_NON_EXPERT + 2 * H * H + 3 * H
    assert extra["dense_params"] - plain["dense_params"] == module + VOCAB * H
    assert extra["expert_params"] - plain["expert_params"] == EXPERTS
    assert stage_params(mtp, par, [0], True, False) == stage_params(SMALL, par, [0], True, False)


# --- optimizer state --------------------------------------------------------------------------

@pytest.mark.parametrize("param_bytes, grad_bytes, opt, without, fixed, sharded", [
    (2, 4, 12, 18, 6, 12),   # bf16 params, fp32 grads
    (2, 2, 16, 20, 4, 16),   # fp16 params, fp16 grads
    (4, 4, 8, 16, 8, 8),     # fp32 params, fp32 grads
])
def test_bytes_per_param_are_megatrons(param_bytes, grad_bytes, opt, without, fixed, sharded):
    par = ParallelDims(gpus=64, tp=2, pp=2, ep=4)
    assert (par.dp, par.edp) == (16, 8)
    dense, expert = 1000, 3000
    plain = state_bytes(dense, expert, par, False, param_bytes, grad_bytes,
                        optimizer_bytes_per_param=opt)
    assert sum(plain.values()) == without * (dense + expert)
    dist = state_bytes(dense, expert, par, True, param_bytes, grad_bytes,
                       optimizer_bytes_per_param=opt)
    assert sum(dist.values()) == (fixed * (dense + expert)
                                  + sharded * (dense / par.dp + expert / par.edp))


def test_bf16_default_is_18_and_6_plus_12_over_d():
    par = ParallelDims(gpus=8)
    n = 1_000_000
    assert state_bytes(n, 0, par, False) == {"params_bytes": 2 * n, "grads_bytes": 4 * n,
                                             "optimizer_bytes": 12 * n}
    assert sum(state_bytes(n, 0, par, True).values()) == (6 + 12 / 8) * n


def test_dualpipe_copies_double_everything():
    par = ParallelDims(gpus=16, ep=4)
    for dist in (False, True):
        one = state_bytes(1234, 5678, par, dist)
        two = state_bytes(1234, 5678, par, dist, copies=2)
        assert two == {k: 2 * v for k, v in one.items()}


# --- activations ------------------------------------------------------------------------------

S, B, HID, A, T = 2048, 2, 1024, 16, 4


def test_korthikanti_table_2_exactly():
    dims = gpt(S, HID, A)
    sbh = S * B * HID
    assert activation_bytes_per_layer(dims, False, B, 1, "none") == sbh * (34 + 5 * A * S / HID)
    assert (activation_bytes_per_layer(dims, False, B, T, "none")
            == sbh * (34 + 5 * A * S / HID) / T)
    assert (activation_bytes_per_layer(dims, False, B, T, "none", sequence_parallel=False)
            == sbh * (10 + 24 / T + 5 * A * S / (HID * T)))
    assert activation_bytes_per_layer(dims, False, B, T, "selective") == 34 * sbh / T
    assert activation_bytes_per_layer(dims, False, B, T, "full") == 2 * sbh / T
    assert activation_bytes_per_layer(dims, False, B, 1, "full") == 2 * sbh


def test_glu_gqa_and_dropout_change_what_the_formula_says():
    sb = S * B
    f = 4 * HID
    base = activation_bytes_per_layer(gpt(S, HID, A), False, B, T, "selective")
    glu = activation_bytes_per_layer(gpt(S, HID, A, gated=True), False, B, T, "selective")
    assert glu - base == 2 * sb * f / T  # the first linear's output is 2F wide
    gqa = activation_bytes_per_layer(gpt(S, HID, A, kv_heads=A // 4), False, B, T, "selective")
    assert base - gqa == 2 * 2 * sb * (HID - HID // 4) / T  # K and V shrink
    nodrop = activation_bytes_per_layer(gpt(S, HID, A), False, B, T, "none", dropout=False)
    assert nodrop == sb * HID * (32 + 2 * A * S / HID) / T


def test_moe_layer_activations_match_the_listed_terms():
    d = 2
    sb = SMALL.seq_len * B
    # input, Q, K and V (kv_heads of them), the output projection's input, the dropout mask
    attention = d * H + d * H + 2 * d * (KV_HEADS * HD) + d * H + H
    norms = 2 * d * H
    mlp = (d * H + 4 * E + K * (d * H + d * 2 * MOE_FFN + d * MOE_FFN)
           + d * 2 * SHARED + d * SHARED + H)
    got = activation_bytes_per_layer(SMALL, True, B, 2, "selective")
    assert got == sb * (attention + norms + mlp) / 2
    etp = activation_bytes_per_layer(SMALL, True, B, 2, "selective", etp=2)
    assert etp - got == sb * K * d * H / 2  # the permuted tokens, all-gathered over etp
    with pytest.raises(ValueError):
        activation_bytes_per_layer(SMALL, True, B, 2, "selective", sequence_parallel=False)


def test_mla_activations_match_the_listed_terms():
    h, n, ql, kvl, qk, rope, v, s = 64, 4, 16, 8, 8, 4, 8, 16
    dims = ModelDims(num_layers=1, hidden=h, ffn_hidden=4 * h, heads=n, kv_heads=n, seq_len=s,
                     vocab=10, moe_layers=(False,), gated=False,
                     mla=MlaDims(kvl, qk, rope, v, q_lora_rank=ql))
    attention = (2 * h + 2 * 2 * ql + 2 * (kvl + rope) + 2 * kvl + 2 * 2 * n * (qk + rope)
                 + 2 * n * v + 2 * n * v + h)
    per_token = 4 * h + attention + 19 * h
    assert activation_bytes_per_layer(dims, False, 1, 1, "selective") == s * per_token
    assert (activation_bytes_per_layer(dims, False, 1, 1, "none")
            == s * per_token + 5 * n * s * s)


def test_inflight_bytes_scalar_and_per_stage_lists():
    assert inflight_activation_bytes(10.0, 3) == 30.0
    assert inflight_activation_bytes(10.0, [4, 3, 2]) == [40.0, 30.0, 20.0]
    assert inflight_activation_bytes([1.0, 2.0], [5, 7]) == [5.0, 14.0]
    with pytest.raises(ValueError):
        inflight_activation_bytes([1.0, 2.0], [5, 7, 9])


def test_default_in_flight_is_1f1b_and_megatrons_interleaved_penalty():
    par = ParallelDims(gpus=4, pp=4)
    assert [default_layers_in_flight(par, r, 6) for r in range(4)] == [24, 18, 12, 6]
    assert default_layers_in_flight(par, 0, 6, num_microbatches=2) == 12
    pp, vpp, total = 4, 2, 32
    inter = ParallelDims(gpus=4, pp=pp, vpp=vpp)
    assert default_layers_in_flight(inter, 0, total // pp) == total * (1 + (pp - 1) / (pp * vpp))


def test_pipeline_layers_cut_into_chunks_round_robin():
    dims = gpt(layers=10)
    assert pipeline_layers(dims, ParallelDims(gpus=2, pp=2)) == [[0, 1, 2, 3, 4],
                                                                 [5, 6, 7, 8, 9]]
    assert pipeline_layers(dims, ParallelDims(gpus=2, pp=2, vpp=2)) == [[0, 1, 2, 6, 7],
                                                                        [3, 4, 5, 8, 9]]


# --- buffers and stages -----------------------------------------------------------------------

def test_comm_buffers_hand_formula():
    par = ParallelDims(gpus=16, tp=2, pp=2, ep=4)
    tokens = SMALL.seq_len * B / 2
    got = comm_buffer_bytes(SMALL, par, B, reserve_bytes=1000)
    assert got["dispatch_bytes"] == got["combine_bytes"] == tokens * K * H * 2
    assert got["pipeline_bytes"] == 2 * tokens * H * 2
    assert got["total_bytes"] == 2 * tokens * K * H * 2 + 2 * tokens * H * 2 + 1000
    alone = comm_buffer_bytes(SMALL, ParallelDims(gpus=4, ep=4), B, moe=False)
    assert alone["total_bytes"] == 0


def test_stage_memory_sums_its_parts():
    dims = gpt(layers=8)
    par = ParallelDims(gpus=32, tp=2, pp=4)
    stages = stage_memory(dims, par, B, recompute="selective")
    per_layer = activation_bytes_per_layer(dims, False, B, 2, "selective")
    for rank, stage in enumerate(stages):
        assert set(stage) == set(STAGE_KEYS)
        assert stage["total_bytes"] == sum(stage[k] for k in STAGE_KEYS[:-1])
        p = stage_params(dims, par, [2 * rank, 2 * rank + 1], rank == 0, rank == 3)
        state = state_bytes(p["dense_params"], p["expert_params"], par, True)
        assert {k: stage[k] for k in state} == state
        held = (4 - rank) * 2 * per_layer
        if rank == 3:
            held += output_activation_bytes(dims, B, 2)
        assert stage["activations_bytes"] == pytest.approx(held, rel=1e-12)
    # first stage holds most activations; a schedule's counts replace the default
    scheduled = stage_memory(dims, par, B, layers_in_flight=[1, 1, 1, 1])
    assert scheduled[0]["activations_bytes"] == pytest.approx(per_layer, rel=1e-12)
    dual = stage_memory(dims, par, B, copies=2)
    assert dual[1]["params_bytes"] == 2 * stages[1]["params_bytes"]


def test_check_fits_finds_the_first_stage_over_hbm():
    stages = [{"total_bytes": 5.0}, {"total_bytes": 12.0}, {"total_bytes": 20.0}]
    assert check_fits(stages, 10.0) == (1, stages[1])
    assert check_fits(stages, 15.0) == (2, stages[2])
    assert check_fits(stages, 20.0) is None
    par = ParallelDims(gpus=2048, pp=16, ep=64)
    real = stage_memory(DEEPSEEK_V3, par, 1, num_microbatches=64,
                        stages=[list(range(4))] + [list(range(4 + 4 * i, 8 + 4 * i))
                                                   for i in range(14)] + [[60]])
    totals = [s["total_bytes"] for s in real]
    hbm = 115 * GIB  # stage 0 (three dense layers, the embedding) fits, stage 1 does not
    over = [i for i, t in enumerate(totals) if t > hbm]
    assert over[0] == 1
    assert check_fits(real, hbm) == (1, real[1])
    assert check_fits(real, max(totals)) is None
