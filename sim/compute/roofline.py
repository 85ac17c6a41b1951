"""Roofline time model for GEMMs, expert FFNs and attention on one GPU.

A kernel takes ``max(flops / (peak * flops_eff), bytes / (hbm_bw * memory_eff))`` seconds: it is
either compute-bound or HBM-bound, never both, and launch overheads are ignored. Units are SI:
seconds, FLOP, FLOP/s, bytes, bytes/s. Sizes (tokens, hidden, ...) are element counts.

The default efficiencies (70% of the dense BF16 tensor peak, 80% of HBM bandwidth) are a modelling
choice, not a measured figure: they sit in the range large, well-shaped GEMMs and streaming
kernels commonly reach on H100/A100-class parts. Calibrate them per GPU when measurements exist.

Functions accept scalars or numpy arrays for token counts and return a float or an array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.topology.catalog import GpuSpec


@dataclass(frozen=True)
class Efficiency:
    """Achieved fraction of peak: ``flops`` of ``peak_bf16_flops``, ``memory`` of HBM bandwidth."""

    flops: float = 0.7
    memory: float = 0.8

    def __post_init__(self) -> None:
        if not (0 < self.flops <= 1 and 0 < self.memory <= 1):
            raise ValueError(f"efficiencies must be in (0, 1], got {self}")


DEFAULT_EFFICIENCY = Efficiency()


def _out(x):
    return float(x) if np.ndim(x) == 0 else x


def roofline_time_s(flops, bytes_moved, spec: GpuSpec, efficiency: Efficiency = DEFAULT_EFFICIENCY):
    """Seconds for a kernel doing ``flops`` FLOP and moving ``bytes_moved`` bytes through HBM."""
    compute = np.asarray(flops, dtype=np.float64) / (spec.peak_bf16_flops * efficiency.flops)
    memory = np.asarray(bytes_moved, dtype=np.float64) / (
        spec.hbm_bandwidth_Bps * efficiency.memory
    )
    return _out(np.maximum(compute, memory))


def gemm_time_s(
    m,
    n,
    k,
    spec: GpuSpec,
    dtype_bytes: int = 2,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
):
    """Seconds for C[m,n] = A[m,k] @ B[k,n]: 2mnk FLOP, (mk + kn + mn) * dtype_bytes bytes.

    A GEMM with ``m == 0`` (no rows) takes 0 s; otherwise B is read in full even for one row.
    """
    m = np.asarray(m, dtype=np.float64)
    flops = 2.0 * m * n * k
    bytes_moved = (m * k + k * n + m * n) * dtype_bytes
    t = np.asarray(roofline_time_s(flops, bytes_moved, spec, efficiency))
    return _out(np.where(m > 0, t, 0.0))


def expert_ffn_time_s(
    tokens,
    hidden: int,
    ffn_hidden: int,
    spec: GpuSpec,
    gated: bool = False,
    dtype_bytes: int = 2,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
):
    """Forward seconds of one expert FFN on ``tokens`` tokens (scalar or (E,) array).

    Up projection [t,d]x[d,f], down projection [t,f]x[f,d]; ``gated`` (SwiGLU) adds a second up
    projection. Each GEMM is timed on its own roofline; the activation is ignored.
    """
    up = gemm_time_s(tokens, ffn_hidden, hidden, spec, dtype_bytes, efficiency)
    down = gemm_time_s(tokens, hidden, ffn_hidden, spec, dtype_bytes, efficiency)
    return _out(np.asarray(up) * (2 if gated else 1) + np.asarray(down))


def attention_core_work(tokens, seq_len: int, hidden: int, heads: int, *,
                        kv_heads: int | None = None, query_len: int | None = None,
                        causal: bool = True, dtype_bytes: int = 2):
    """(FLOP, HBM bytes, d_kv) of the fused attention core (QK^T, softmax, PV) over ``tokens``
    query tokens (see :func:`attention_time_s`); ValueError for inconsistent head counts."""
    kv_heads = heads if kv_heads is None else kv_heads
    query_len = seq_len if query_len is None else query_len
    if not (0 < query_len <= seq_len) or hidden % heads or heads % kv_heads:
        raise ValueError("attention: need 0 < query_len <= seq_len, heads | hidden, kv | heads")
    t = np.asarray(tokens, dtype=np.float64)
    d_kv = hidden // heads * kv_heads
    keys = seq_len - (query_len - 1) / 2.0 if causal else float(seq_len)
    flops = 4.0 * t * keys * hidden
    nbytes = (2.0 * t * hidden + 2.0 * t / query_len * seq_len * d_kv) * dtype_bytes
    return flops, nbytes, d_kv


def attention_time_s(
    tokens,
    seq_len: int,
    hidden: int,
    heads: int,
    spec: GpuSpec,
    *,
    kv_heads: int | None = None,
    query_len: int | None = None,
    causal: bool = True,
    dtype_bytes: int = 2,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
):
    """Forward seconds of self-attention over ``tokens`` query tokens.

    QKV projection [t,d]x[d, d + 2*d_kv] and output projection [t,d]x[d,d] (d_kv = d/heads *
    kv_heads, grouped-query attention when kv_heads < heads), plus the score (QK^T) and context
    (PV) matmuls: 4 * t * keys * d FLOP, where each query sees ``keys`` = seq_len keys, or
    seq_len - (query_len - 1)/2 on average when ``causal`` (about half for training/prefill).
    The core is fused (FlashAttention-style): its HBM traffic is Q and O once plus K and V once
    per sequence, no seq_len^2 score matrix.

    ``query_len`` is the new tokens per sequence: None = seq_len (training, prefill); 1 = decode,
    where each of ``tokens`` sequences reads its whole KV cache of ``seq_len`` tokens.
    """
    t = np.asarray(tokens, dtype=np.float64)
    core_flops, core_bytes, d_kv = attention_core_work(
        t, seq_len, hidden, heads, kv_heads=kv_heads, query_len=query_len, causal=causal,
        dtype_bytes=dtype_bytes)
    qkv = gemm_time_s(t, hidden + 2 * d_kv, hidden, spec, dtype_bytes, efficiency)
    out = gemm_time_s(t, hidden, hidden, spec, dtype_bytes, efficiency)
    core = np.asarray(roofline_time_s(core_flops, core_bytes, spec, efficiency))
    total = np.asarray(qkv) + np.asarray(out) + np.where(t > 0, core, 0.0)
    return _out(total)


def dense_layer_time_s(
    tokens,
    seq_len: int,
    hidden: int,
    heads: int,
    spec: GpuSpec,
    *,
    ffn_hidden: int | None = None,
    gated: bool = False,
    num_experts: int | None = None,
    kv_heads: int | None = None,
    query_len: int | None = None,
    causal: bool = True,
    dtype_bytes: int = 2,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
):
    """Forward seconds of a transformer block's non-MoE part on one GPU.

    Attention (:func:`attention_time_s`) + two norms (each reads and writes t*d elements, memory
    bound) + a router GEMM [t,d]x[d,E] when ``num_experts`` is given (MoE blocks) + a dense FFN
    when ``ffn_hidden`` is given (dense blocks). Residual adds are folded into the norms.
    """
    t = np.asarray(tokens, dtype=np.float64)
    total = np.asarray(
        attention_time_s(
            t, seq_len, hidden, heads, spec, kv_heads=kv_heads, query_len=query_len,
            causal=causal, dtype_bytes=dtype_bytes, efficiency=efficiency,
        )
    )
    norm_bytes = 2.0 * t * hidden * dtype_bytes  # read and write t*d elements
    total = total + 2 * np.asarray(roofline_time_s(0.0, norm_bytes, spec, efficiency))
    if num_experts is not None:
        total = total + gemm_time_s(t, num_experts, hidden, spec, dtype_bytes, efficiency)
    if ffn_hidden is not None:
        ffn = expert_ffn_time_s(t, hidden, ffn_hidden, spec, gated, dtype_bytes, efficiency)
        total = total + ffn
    return _out(total)


def backward_time_s(forward_s, factor: float = 2.0):
    """Backward seconds from forward seconds: ``factor`` x (2 = input and weight gradients)."""
    return _out(np.asarray(forward_s, dtype=np.float64) * factor)
