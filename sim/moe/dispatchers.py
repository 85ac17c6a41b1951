"""How MoE dispatch and combine move tokens: the three dispatchers of ``training.dispatcher``.

* ``alltoall`` (Megatron-Core's all-to-all dispatcher): one copy per kept (token, expert) pair
  from the token's GPU to the expert's GPU; the combine returns the same copies.
* ``deepep`` (DeepEP's normal kernels, its ``internode.cu``): a token crosses the network once
  per destination node, to the GPU of the same local rank there (the relay), which forwards it
  over NVLink once to each GPU of its node holding one of the token's experts; a token's own
  node takes the NVLink stage only. The combine mirrors it (partial sums reduced at the relay,
  one copy back across the network per (token, node)). Dispatch moves FP8 activations (one
  byte per value and a 4-byte scale per 128 values), combine BF16 (2 bytes per value). The two
  stages are pipelined in chunks inside one kernel, so they run as one batch of flows.
* ``allgather`` (Megatron-Core's all-gather dispatcher): every GPU gathers every token of its
  expert-parallel group, keeps what its experts need; the combine is the reduce-scatter back.

Counts are distinct tokens: ``gpu_tokens[s, d]`` tokens of GPU s with at least one kept
expert on GPU d, ``node_tokens[s, n]`` with one on node n. Bytes are SI (bytes per token).
"""

from __future__ import annotations

import numpy as np

DISPATCHERS = ("alltoall", "deepep", "allgather")


def token_bytes(hidden: int, dtype: str) -> float:
    """Bytes of one token's activations: ``fp8`` = hidden + 4 x ceil(hidden / 128) (a float32
    scale per 128 values), ``bf16`` = 2 x hidden."""
    if dtype == "fp8":
        return float(hidden + 4 * -(-hidden // 128))
    if dtype == "bf16":
        return 2.0 * hidden
    raise ValueError(f"unknown dtype {dtype!r}; fp8 or bf16")


def distinct_tokens(token: np.ndarray, gpu: np.ndarray, gpus: int,
                    gpu_node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One source's kept (token, expert) pairs as ``token`` ids and their experts' ``gpu``:
    ``(gpu_tokens (gpus,), node_tokens (nodes,))``, distinct tokens per destination GPU and
    per destination node."""
    nodes = int(gpu_node.max()) + 1
    token = np.asarray(token, dtype=np.int64)
    gpu = np.asarray(gpu, dtype=np.int64)
    per_gpu = np.unique(token * gpus + gpu)
    per_node = np.unique(token * nodes + gpu_node[gpu])
    return (np.bincount(per_gpu % gpus, minlength=gpus),
            np.bincount(per_node % nodes, minlength=nodes))


def relay(gpu_node: np.ndarray, local_rank: np.ndarray) -> np.ndarray:
    """(P, N): the GPU of node n with GPU s's local rank (DeepEP's network peer of s on n)."""
    nodes, ranks = int(gpu_node.max()) + 1, int(local_rank.max()) + 1
    at = np.full((nodes, ranks), -1, dtype=np.int64)
    at[gpu_node, local_rank] = np.arange(gpu_node.size)
    if (at < 0).any():
        raise ValueError("deepep needs the same local ranks on every node")
    return at[:, local_rank].T


def deepep_matrix(gpu_tokens: np.ndarray, node_tokens: np.ndarray, gpu_node: np.ndarray,
                  local_rank: np.ndarray, nbytes: float) -> np.ndarray:
    """(P, P) bytes of a DeepEP dispatch (the combine is its transpose): the network stage
    s -> relay(s, n) carries ``node_tokens[s, n]`` tokens for every other node n, the NVLink
    stage relay(s, node(d)) -> d carries ``gpu_tokens[s, d]`` (nothing when the relay is d)."""
    p = gpu_node.size
    rel = relay(gpu_node, local_rank)
    m = np.zeros((p, p))
    src = np.repeat(np.arange(p), rel.shape[1])
    dst = rel.ravel()
    remote = gpu_node[src] != np.tile(np.arange(rel.shape[1]), p)
    np.add.at(m, (src[remote], dst[remote]), node_tokens.ravel()[remote] * nbytes)
    fwd_src = rel[:, gpu_node]  # (P sources, P destinations): the relay on d's node
    s, d = np.nonzero(gpu_tokens)
    np.add.at(m, (fwd_src[s, d], d), gpu_tokens[s, d] * nbytes)
    np.fill_diagonal(m, 0.0)
    return m


def deepep_loads(gpu_tokens: np.ndarray,
                 node_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per GPU, what DeepEP's kernel itself moves (its own node and own tokens included, as
    DeepEP's test counts): ``(forwarded (P,), received (P,))`` tokens: (token, node) pairs
    that pass through GPU g's network sender (the sender's own node included; none on a single
    node, where DeepEP runs its NVLink-only kernel), and tokens its NVLink stage delivers to g."""
    forwarded = node_tokens.sum(axis=1).astype(float)
    if node_tokens.shape[1] == 1:
        forwarded[:] = 0.0
    return forwarded, gpu_tokens.sum(axis=0).astype(float)
