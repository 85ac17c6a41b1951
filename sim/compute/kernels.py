"""Kernel-shaped compute model: GEMMs timed by their output tiles, waves and streams.

A GEMM C[m,n] = A[m,k] B[k,n] runs as one kernel that cuts C into BLOCK_M x BLOCK_N output
tiles and hands them to the GPU's ``num_sms`` streaming multiprocessors in waves (a persistent
kernel: ``waves = ceil(tiles / num_sms)``; the last wave may leave SMs idle, and the kernel
takes as long as if it had not). Its time is

    kernel_us + p-norm(main loops, HBM stream) + epilogues,  p = ``overlap``

* **main loops**: waves x one tile's main loop on one SM, which walks k: the tensor cores do
  2 BLOCK_M BLOCK_N k FLOP at ``mma_efficiency`` of the dtype's peak (per SM: peak / num_sms),
  fed from L2 with (BLOCK_M + BLOCK_N) k input elements at the SM's share of ``l2_gbps``; the
  slower of the two sets the pace;
* **HBM stream**: the kernel's traffic (A and B read once, C written once) at
  ``hbm_efficiency`` x HBM bandwidth, shared by all SMs; it overlaps the main loops, the two
  combined as a p-norm (p = 1: one after the other; large p: the slower alone);
* **epilogues**: waves x one output tile stored at the SM's share of HBM, not overlapped with
  the next main loop (DeepGEMM's kernel of 2025-04-09, which the shipped measurements are of,
  waits for its store; "Overlap TMA store" came on 2025-04-18).

C's bytes thus count twice: in the stream HBM must absorb and in the epilogue each SM waits
for. Counting them once fits the shipped table worse (worst row 15 % with C in the epilogues
only, 13 % in the stream only, against 9 %; see ``sim/calibrate/gemm.py``). With
``num_sms == 0`` (unknown) there is no wave quantisation: the tiles run back to back at the
whole GPU's rates. The tile is the candidate of least predicted time among DeepGEMM's
(BLOCK_M 64, 128 or 256; BLOCK_N 16 to 128 in steps of 8, 144, 160; at most one side above
128), as DeepGEMM's and CUTLASS's heuristics pick by waves. More rows never take less time:
for each tile the waves and the traffic only grow.

A **grouped GEMM** (the experts of one GPU in one MoE layer: ``groups`` GEMMs sharing n and k,
m_g rows each, one kernel) counts tiles per group: ceil(m_g / 128) row blocks per group
(DeepGEMM's contiguous layout aligns each group to 128 rows), so an expert with few tokens
wastes most of its tile rows; a group without rows has no tiles and its weights are not read.

FP8 GEMMs use ``peak_fp8_flops`` and 1 byte per input element (the output is BF16); BF16
GEMMs ``peak_bf16_flops`` and 2 bytes. The attention core (QK^T and PV) is one fused
FlashAttention-style kernel in BF16 at ``attention_efficiency`` of the BF16 peak (not fitted),
its HBM traffic as in :func:`sim.compute.roofline.attention_time_s`; its projections go through
the GEMM model. Norms are memory-bound kernels at ``hbm_efficiency``.

Units are SI (seconds, FLOP/s, bytes); sizes are element counts. Functions accept scalars or
numpy arrays of row counts and are vectorised: a training step calls them per layer with every
GPU's experts at once. Without a compute profile (``compute=None``) the step-level functions
are exactly the roofline's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from sim.compute import roofline
from sim.compute.profile import ComputeProfile
from sim.topology.catalog import GpuSpec

GemmDtype = Literal["bf16", "fp8"]

#: DeepGEMM's tile candidates (deep_gemm/jit_kernels/gemm.py, get_best_configs, 2025-04-09).
BLOCK_M = (64, 128, 256)
BLOCK_N = (*range(16, 129, 8), 144, 160)
#: Grouped GEMMs: DeepGEMM's contiguous layout pads every group to 128 rows.
GROUPED_BLOCK_M = 128
OUT_BYTES = 2  # C is BF16 for both input dtypes


def _tiles(block_ms) -> tuple[np.ndarray, np.ndarray]:
    bm = np.array([m for m in block_ms for n in BLOCK_N if m <= 128 or n <= 128], dtype=float)
    bn = np.array([n for m in block_ms for n in BLOCK_N if m <= 128 or n <= 128], dtype=float)
    return bm, bn


_DENSE = _tiles(BLOCK_M)
_GROUPED = _tiles((GROUPED_BLOCK_M,))


def _dtype(spec: GpuSpec, dtype: str) -> tuple[float, int]:
    """(tensor peak FLOP/s, bytes per input element) of ``dtype`` on ``spec``."""
    if dtype == "bf16":
        return spec.peak_bf16_flops, 2
    if dtype == "fp8":
        if spec.peak_fp8_flops <= 0:
            raise ValueError(f"{spec.name} has no FP8 tensor peak (peak_fp8_flops = 0)")
        return spec.peak_fp8_flops, 1
    raise ValueError(f"gemm dtype must be bf16 or fp8, got {dtype!r}")


def _out(x):
    return float(x) if np.ndim(x) == 0 else x


def _pnorm(a, b, p: float):
    """(a^p + b^p)^(1/p), scaled so that large p neither underflows nor overflows."""
    a, b = np.broadcast_arrays(a, b)
    top = np.maximum(a, b)
    safe = np.where(top > 0, top, 1.0)
    return top * ((a / safe) ** p + (b / safe) ** p) ** (1.0 / p)


def _kernel(rows, row_blocks, active, n: float, k: float, spec: GpuSpec, c: ComputeProfile,
            dtype: str, tiles: tuple[np.ndarray, np.ndarray]):
    """Time of kernels over candidate tiles: ``rows`` (...,) rows of A in all, ``row_blocks``
    (..., M) row blocks per BLOCK_M candidate (the distinct values of ``tiles[0]``, ascending),
    ``active`` (...,) groups with rows. Returns (seconds, BLOCK_M, BLOCK_N, waves), each (...,),
    the tile of least time chosen."""
    peak, in_b = _dtype(spec, dtype)
    bm, bn = tiles
    which = np.searchsorted(np.unique(bm), bm)
    rows = np.asarray(rows, dtype=float)[..., None]
    active = np.asarray(active, dtype=float)[..., None]
    tiles_n = np.asarray(row_blocks, dtype=float)[..., which] * np.ceil(n / bn)  # (..., C)
    hbm = spec.hbm_bandwidth_Bps * c.hbm_efficiency
    # one tile's main loop and epilogue at the whole GPU's rates (an SM takes num_sms x as long)
    mma = 2.0 * bm * bn * k / (peak * c.mma_efficiency)
    feed = (bm + bn) * k * in_b / (c.l2_gbps * 1e9 / 8)
    epilogue = bm * bn * OUT_BYTES / hbm
    s = spec.num_sms
    waves = np.ceil(tiles_n / s) if s else tiles_n
    slots = waves * s if s else tiles_n  # SM-tiles the waves take, idle SMs of the last included
    stream = ((rows * k + active * k * n) * in_b + rows * n * OUT_BYTES) / hbm
    t = c.kernel_us * 1e-6 + _pnorm(slots * np.maximum(mma, feed), stream, c.overlap) \
        + slots * epilogue
    best = np.argmin(t, axis=-1)[..., None]

    def pick(a):
        return np.take_along_axis(np.broadcast_to(a, t.shape), best, axis=-1)[..., 0]

    return np.where(rows[..., 0] > 0, pick(t), 0.0), pick(bm), pick(bn), pick(waves)


def gemm_time_s(m, n: int, k: int, spec: GpuSpec, compute: ComputeProfile,
                dtype: GemmDtype = "bf16"):
    """Seconds of one GEMM kernel C[m,n] = A[m,k] B[k,n] (``m`` scalar or array: one kernel
    each); 0 for m == 0."""
    m = np.asarray(m, dtype=float)
    blocks = np.ceil(m[..., None] / np.unique(_DENSE[0]))
    return _out(_kernel(m, blocks, (m > 0).astype(float), n, k, spec, compute, dtype,
                        _DENSE)[0])


def grouped_gemm_time_s(m, n: int, k: int, spec: GpuSpec, compute: ComputeProfile,
                        dtype: GemmDtype = "bf16"):
    """Seconds of grouped GEMM kernels: ``m`` (..., groups) rows per group (the last axis is
    one kernel's groups, leading axes are separate kernels), every group's B being [k, n].
    Returns (...,); 0 for a kernel without rows."""
    m = np.asarray(m, dtype=float)
    blocks = np.ceil(m / GROUPED_BLOCK_M).sum(axis=-1)[..., None]
    return _out(_kernel(m.sum(axis=-1), blocks, (m > 0).sum(axis=-1), n, k, spec, compute,
                        dtype, _GROUPED)[0])


def shapes_time_s(groups, m, n, k, spec: GpuSpec, compute: ComputeProfile,
                  dtype: GemmDtype = "bf16", grouped: bool = False) -> dict:
    """Many kernels at once, one per element of the equal-length arrays: ``groups`` GEMMs of
    ``m`` rows each sharing [k, n] (a grouped kernel when ``grouped``, else ``groups`` must be
    1). Returns arrays: seconds, block_m, block_n, waves (the chosen tiles)."""
    g, m = np.asarray(groups, dtype=float), np.asarray(m, dtype=float)
    n, k = np.asarray(n, dtype=float)[:, None], np.asarray(k, dtype=float)[:, None]
    if grouped:
        blocks, tiles = (g * np.ceil(m / GROUPED_BLOCK_M))[:, None], _GROUPED
    else:
        if np.any(g != 1):
            raise ValueError("a dense GEMM has one group")
        blocks, tiles = np.ceil(m[:, None] / np.unique(_DENSE[0])), _DENSE
    out = _kernel(g * m, blocks, np.where(m > 0, g, 0.0), n, k, spec, compute, dtype, tiles)
    return dict(zip(("seconds", "block_m", "block_n", "waves"), out, strict=True))


def memory_time_s(bytes_moved, spec: GpuSpec, compute: ComputeProfile):
    """Seconds of one memory-bound kernel moving ``bytes_moved`` (0 bytes: no kernel)."""
    b = np.asarray(bytes_moved, dtype=float)
    t = compute.kernel_us * 1e-6 + b / (spec.hbm_bandwidth_Bps * compute.hbm_efficiency)
    return _out(np.where(b > 0, t, 0.0))


def expert_ffn_time_s(tokens, hidden: int, ffn_hidden: float, spec: GpuSpec,
                      compute: ComputeProfile, gated: bool = False,
                      dtype: GemmDtype = "bf16"):
    """Forward seconds of the experts of one GPU: ``tokens`` (..., experts) tokens per expert,
    one grouped GEMM per projection: up [t,d]x[d,f] (gate and up fused, [d,2f], when
    ``gated``) and down [t,f]x[f,d]. ``ffn_hidden`` may be an expert's 1/etp shard (rounded
    up). Returns (...,)."""
    f = int(np.ceil(ffn_hidden))
    up = grouped_gemm_time_s(tokens, f * (2 if gated else 1), hidden, spec, compute, dtype)
    down = grouped_gemm_time_s(tokens, hidden, f, spec, compute, dtype)
    return _out(np.asarray(up) + np.asarray(down))


def attention_core_time_s(tokens, seq_len: int, hidden: int, heads: int, spec: GpuSpec,
                          compute: ComputeProfile, *, kv_heads: int | None = None,
                          query_len: int | None = None, causal: bool = True,
                          dtype_bytes: int = 2):
    """Seconds of the fused attention core (QK^T, softmax, PV) over ``tokens`` query tokens of
    ``heads`` heads of width hidden/heads (FLOP and bytes as the roofline's; BF16)."""
    t = np.asarray(tokens, dtype=float)
    flops, core_bytes, _ = roofline.attention_core_work(
        t, seq_len, hidden, heads, kv_heads=kv_heads, query_len=query_len, causal=causal,
        dtype_bytes=dtype_bytes)
    hbm = spec.hbm_bandwidth_Bps * compute.hbm_efficiency
    core = np.maximum(flops / (spec.peak_bf16_flops * compute.attention_efficiency),
                      core_bytes / hbm)
    return _out(np.where(t > 0, compute.kernel_us * 1e-6 + core, 0.0))


def dense_layer_time_s(tokens, seq_len: int, hidden: int, heads: int, spec: GpuSpec,
                       compute: ComputeProfile | None, *, tp: int = 1,
                       ffn_hidden: int | None = None, gated: bool = False,
                       num_experts: int | None = None, kv_heads: int | None = None,
                       causal: bool = True, dtype_bytes: int = 2,
                       gemm_dtype: GemmDtype = "bf16", mla=None) -> float:
    """Forward seconds of one rank's share of a transformer block's non-MoE part, ``tokens``
    being its tensor-parallel group's micro-batch (training: query_len = seq_len).

    With ``compute``: tensor parallelism as Megatron's: QKV and up projections column-parallel
    (n / tp), output and down projections row-parallel (k / tp), heads / tp heads per rank,
    norms and the router on the sequence-parallel shard (tokens / tp); ``gemm_dtype`` applies
    to the projections and the FFN, the router GEMM and the attention core stay BF16. Without:
    the roofline's time of the whole block over tp (``sim.compute.roofline``), as before.
    ``mla`` (``sim.training.dims.MlaDims``, compute profile only): multi-head latent attention
    (:func:`mla_attention_time_s`) instead of MHA/GQA.
    """
    if compute is None:
        if mla is not None:
            raise ValueError("multi-head latent attention needs a compute profile")
        if gemm_dtype != "bf16":
            raise ValueError("fp8 GEMMs need a compute profile (the roofline times BF16)")
        return float(roofline.dense_layer_time_s(
            tokens, seq_len, hidden, heads, spec, ffn_hidden=ffn_hidden, gated=gated,
            num_experts=num_experts, kv_heads=kv_heads, causal=causal,
            dtype_bytes=dtype_bytes)) / tp
    kv_heads = heads if kv_heads is None else kv_heads
    if heads % tp or hidden % heads:
        raise ValueError("attention: need tp | heads and heads | hidden")
    t = float(tokens)
    d_kv = hidden // heads * kv_heads
    heads_r = heads // tp  # a rank's heads; KV heads are replicated when fewer than tp
    kv_r = max(kv_heads // tp, 1) if heads_r % max(kv_heads // tp, 1) == 0 else heads_r

    def gemm(m, n, k):
        return gemm_time_s(m, n, k, spec, compute, gemm_dtype)

    if mla is not None:
        total = mla_attention_time_s(t, seq_len, hidden, heads, mla, spec, compute, tp=tp,
                                     causal=causal, dtype_bytes=dtype_bytes,
                                     gemm_dtype=gemm_dtype)
    else:
        total = gemm(t, -(-(hidden + 2 * d_kv) // tp), hidden) + gemm(t, hidden, hidden // tp)
        total += attention_core_time_s(t, seq_len, hidden // tp, heads_r, spec, compute,
                                       kv_heads=kv_r, causal=causal, dtype_bytes=dtype_bytes)
    shard = t / tp
    total += 2 * memory_time_s(2.0 * shard * hidden * dtype_bytes, spec, compute)  # norms
    if num_experts is not None:  # the gate stays BF16 (DeepSeek-V3's FP8 recipe keeps it high)
        total += gemm_time_s(shard, num_experts, hidden, spec, compute)
    if ffn_hidden is not None:
        f = ffn_hidden // tp
        total += gemm(t, f * (2 if gated else 1), hidden) + gemm(t, hidden, f)
    return float(total)


def mla_core_width(mla) -> int:
    """Per-head width of an MLA attention core timed as a plain one: its FLOP are
    2 t keys heads (qk + rope + v), a core of heads of their mean width."""
    return (mla.qk_head_dim + mla.qk_pos_emb_head_dim + mla.v_head_dim) // 2


def mla_attention_time_s(tokens: float, seq_len: int, hidden: int, heads: int, mla,
                         spec: GpuSpec, compute: ComputeProfile, *, tp: int = 1,
                         causal: bool = True, dtype_bytes: int = 2,
                         gemm_dtype: GemmDtype = "bf16") -> float:
    """Forward seconds of one rank's multi-head latent attention (DeepSeek-V2 Sec. 2.1): query
    down- and up-projection (or one projection without ``q_lora_rank``), the joint KV
    down-projection (+ the shared rotary key), its up-projection to every head's key and value,
    the core over heads / tp heads (QK^T at qk + rope width, PV at v width) and the output
    projection; the down-projections are replicated over TP, the rest split as Megatron's."""
    t, heads_r = float(tokens), heads // tp
    qk = mla.qk_head_dim + mla.qk_pos_emb_head_dim

    def gemm(m, n, k):
        return gemm_time_s(m, n, k, spec, compute, gemm_dtype)

    if mla.q_lora_rank:
        total = gemm(t, mla.q_lora_rank, hidden) + gemm(t, heads_r * qk, mla.q_lora_rank)
    else:
        total = gemm(t, heads_r * qk, hidden)
    total += gemm(t, mla.kv_lora_rank + mla.qk_pos_emb_head_dim, hidden)
    total += gemm(t, heads_r * (mla.qk_head_dim + mla.v_head_dim), mla.kv_lora_rank)
    total += gemm(t, hidden, heads_r * mla.v_head_dim)
    width = mla_core_width(mla)
    total += attention_core_time_s(t, seq_len, heads_r * width, heads_r, spec, compute,
                                   causal=causal, dtype_bytes=dtype_bytes)
    return float(total)


def experts_time_s(tokens, hidden: int, ffn_hidden: float, spec: GpuSpec,
                   compute: ComputeProfile | None, *, gated: bool = False, dtype_bytes: int = 2,
                   gemm_dtype: GemmDtype = "bf16"):
    """Forward seconds of each GPU's experts: ``tokens`` (..., experts) tokens per expert, the
    last axis one GPU's (zeros for experts elsewhere). With ``compute``: one grouped GEMM per
    projection (:func:`expert_ffn_time_s`). Without: the sum of the roofline's per-expert
    times (``sim.compute.roofline.expert_ffn_time_s``), as before. Returns (...,)."""
    if compute is None:
        if gemm_dtype != "bf16":
            raise ValueError("fp8 GEMMs need a compute profile (the roofline times BF16)")
        return roofline.expert_ffn_time_s(tokens, hidden, ffn_hidden, spec, gated=gated,
                                          dtype_bytes=dtype_bytes).sum(axis=-1)
    return expert_ffn_time_s(tokens, hidden, ffn_hidden, spec, compute, gated, gemm_dtype)
