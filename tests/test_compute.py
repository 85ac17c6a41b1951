"""Roofline compute-time model: closed forms on an H100."""

from __future__ import annotations

import numpy as np
import pytest

from sim.compute import (
    Efficiency,
    attention_time_s,
    backward_time_s,
    dense_layer_time_s,
    expert_ffn_time_s,
    gemm_time_s,
)
from sim.topology.catalog import get_gpu

H100 = get_gpu("h100_sxm")
EFF = Efficiency(flops=0.7, memory=0.8)


def test_big_square_gemm_is_compute_bound():
    n = 8192
    expected = 2 * n**3 / (H100.peak_bf16_flops * 0.7)  # ~1.588 ms
    assert gemm_time_s(n, n, n, H100, efficiency=EFF) == pytest.approx(expected, rel=1e-12)
    memory = 3 * n * n * 2 / (H100.hbm_bandwidth_Bps * 0.8)  # ~0.150 ms
    assert expected > 5 * memory


def test_skinny_gemm_is_memory_bound():
    n = 8192
    expected = (n + n * n + n) * 2 / (H100.hbm_bandwidth_Bps * 0.8)  # ~50 us
    assert gemm_time_s(1, n, n, H100, efficiency=EFF) == pytest.approx(expected, rel=1e-12)
    assert expected > 100 * 2 * n * n / (H100.peak_bf16_flops * 0.7)


def test_efficiency_scales_compute_bound_time():
    fast = gemm_time_s(8192, 8192, 8192, H100, efficiency=Efficiency(flops=1.0, memory=1.0))
    assert gemm_time_s(8192, 8192, 8192, H100, efficiency=EFF) == pytest.approx(fast / 0.7)
    with pytest.raises(ValueError):
        Efficiency(flops=1.5)


def test_ffn_linear_in_tokens_once_compute_bound():
    t1 = expert_ffn_time_s(8192, 4096, 14336, H100)
    t2 = expert_ffn_time_s(16384, 4096, 14336, H100)
    assert t2 == pytest.approx(2 * t1, rel=1e-12)
    # two GEMMs of 2*t*d*f FLOP each, compute-bound
    assert t1 == pytest.approx(2 * 2 * 8192 * 4096 * 14336 / (H100.peak_bf16_flops * 0.7))
    gated = expert_ffn_time_s(8192, 4096, 14336, H100, gated=True)
    assert gated == pytest.approx(1.5 * t1)


def test_ffn_zero_tokens_zero_time_and_weights_read_for_one_token():
    assert expert_ffn_time_s(0, 4096, 14336, H100) == 0.0
    one = expert_ffn_time_s(1, 4096, 14336, H100)
    weight_bytes = 2 * 4096 * 14336 * 2
    assert one >= weight_bytes / (H100.hbm_bandwidth_Bps * 0.8)
    # per-expert arrays: each entry equals the scalar call
    loads = np.array([0, 1, 8192])
    out = expert_ffn_time_s(loads, 4096, 14336, H100)
    np.testing.assert_allclose(out, [0.0, one, expert_ffn_time_s(8192, 4096, 14336, H100)])
    assert gemm_time_s(0, 4096, 4096, H100) == 0.0


def test_attention_causal_and_decode():
    args = (8 * 4096, 4096, 4096, 32, H100)
    full = attention_time_s(*args, causal=False)
    causal = attention_time_s(*args, causal=True)
    proj = gemm_time_s(8 * 4096, 3 * 4096, 4096, H100) + gemm_time_s(8 * 4096, 4096, 4096, H100)
    core_full = 4 * 8 * 4096 * 4096 * 4096 / (H100.peak_bf16_flops * 0.7)
    assert full == pytest.approx(proj + core_full)
    assert causal == pytest.approx(proj + core_full * (4096 + 1) / 2 / 4096)
    assert attention_time_s(0, 4096, 4096, 32, H100) == 0.0
    # decode: 64 sequences, one new token each, reading a 4096-token KV cache (memory-bound)
    decode = attention_time_s(64, 4096, 4096, 32, H100, query_len=1)
    kv_bytes = 64 * 4096 * 2 * 4096 * 2
    assert decode >= kv_bytes / (H100.hbm_bandwidth_Bps * 0.8)
    gqa = attention_time_s(64, 4096, 4096, 32, H100, query_len=1, kv_heads=8)
    assert gqa < decode


def test_dense_layer_and_backward():
    att = attention_time_s(4096, 4096, 4096, 32, H100)
    moe_block = dense_layer_time_s(4096, 4096, 4096, 32, H100, num_experts=64)
    dense_block = dense_layer_time_s(4096, 4096, 4096, 32, H100, ffn_hidden=14336, gated=True)
    assert att < moe_block < dense_block
    assert dense_block - moe_block > expert_ffn_time_s(4096, 4096, 14336, H100)
    assert backward_time_s(1.5e-3) == pytest.approx(3e-3)
    np.testing.assert_allclose(backward_time_s(np.array([1.0, 2.0]), factor=3), [3.0, 6.0])
