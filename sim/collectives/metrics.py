"""nccl-tests bandwidth definitions (see nccl-tests doc/PERFORMANCE.md).

``algbw = size / time`` with size the per-rank buffer size nccl-tests prints; ``busbw`` scales
it so it compares with link bandwidth: AllReduce 2(P-1)/P, AllGather, ReduceScatter and
All-to-All (P-1)/P, SendRecv 1.
"""

BUS_FACTOR = {
    "all_reduce": lambda p: 2.0 * (p - 1) / p,
    "all_gather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
    "all_to_all": lambda p: (p - 1) / p,
    "sendrecv": lambda p: 1.0,
}


def algbw_bytes_per_s(size_bytes: float, time_s: float) -> float:
    """Algorithm bandwidth in bytes/s."""
    return size_bytes / time_s if time_s > 0 else float("inf")


def busbw_bytes_per_s(collective: str, size_bytes: float, time_s: float, ranks: int) -> float:
    """Bus bandwidth in bytes/s, nccl-tests definition."""
    return algbw_bytes_per_s(size_bytes, time_s) * BUS_FACTOR[collective](ranks)
