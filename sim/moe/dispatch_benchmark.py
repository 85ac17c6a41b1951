"""A dispatch/combine benchmark of one MoE layer, as DeepEP's test runs it (the ``dispatch``
run kind): every GPU routes ``tokens_per_gpu`` tokens by uniform random gate scores
(``|N(0,1)| + 1``) to its ``topk`` best experts among the ``topk_nodes`` nodes of highest best
score, then one dispatch and, after it, one combine are timed on the fabric.

Bandwidths are counted as DeepEP's ``tests/test_internode.py`` counts them, so that they
compare with its published table: ``rdma`` = (token, destination node) pairs, the sender's own
node included, x bytes per token / time; ``nvl`` = tokens a GPU receives (its own included) x
bytes per token / time; both per GPU, averaged over GPUs; in Gbit/s as every rate in moe-sim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from sim.errors import UserError
from sim.moe.clocks import GpuClocks
from sim.moe.dispatchers import (
    deepep_loads,
    deepep_matrix,
    distinct_tokens,
    token_bytes,
)
from sim.moe.work import group_matrix
from sim.network import Fabric, FabricOptions
from sim.rng import stream
from sim.units import bytes_per_s_to_gbps


@dataclass(frozen=True)
class DispatchRouting:
    """Where every GPU's tokens go. P GPUs, N nodes, E experts."""

    pairs: np.ndarray  # (P, P) kept (token, expert) pairs from GPU s to experts on GPU d
    gpu_tokens: np.ndarray  # (P, P) distinct tokens of s with an expert on d
    node_tokens: np.ndarray  # (P, N) distinct tokens of s with an expert on node n
    experts: int


def choices(d, gpu_node: np.ndarray, seed: int):
    """Per GPU g (in order): ``(t, topk)`` experts chosen for its tokens, as DeepEP's test
    chooses them (module docstring); also yields nothing else. ``d``: the ``dispatch`` section.
    """
    p = gpu_node.size
    experts = (d.num_experts // p) * p
    if experts == 0 or d.topk > experts:
        raise UserError(f"dispatch.num_experts: {d.num_experts} experts on {p} GPUs leave "
                        f"{experts} (a multiple of the GPU count), fewer than topk {d.topk}")
    nodes = int(gpu_node.max()) + 1
    expert_node = gpu_node[np.arange(experts) // (experts // p)]
    if np.any(np.diff(expert_node) < 0) or len(set(np.bincount(expert_node))) != 1:
        raise UserError("dispatch: the node-limited routing needs every node to hold the same "
                        "number of GPUs, numbered node by node")
    rng = stream(seed, "dispatch")
    t, k = d.tokens_per_gpu, d.topk
    limit = d.topk_nodes if d.topk_nodes is not None else nodes
    for _ in range(p):
        scores = np.abs(rng.standard_normal((t, experts))) + 1.0
        if limit < nodes:
            best = scores.reshape(t, nodes, -1).max(axis=2)  # experts in node blocks
            keep = np.argpartition(-best, limit - 1, axis=1)[:, :limit]
            allowed = np.zeros((t, nodes), dtype=bool)
            allowed[np.arange(t)[:, None], keep] = True
            scores = np.where(allowed[:, expert_node], scores, -np.inf)
        yield np.argpartition(-scores, k - 1, axis=1)[:, :k]


def route(d, gpu_node: np.ndarray, seed: int) -> DispatchRouting:
    """Route every GPU's tokens as DeepEP's test does (:func:`choices`) and count them."""
    p = gpu_node.size
    experts = (d.num_experts // p) * p
    nodes = int(gpu_node.max()) + 1
    pairs = np.zeros((p, p), dtype=np.int64)
    gpu_tokens = np.zeros((p, p), dtype=np.int64)
    node_tokens = np.zeros((p, nodes), dtype=np.int64)
    token = np.repeat(np.arange(d.tokens_per_gpu), d.topk)
    for g, chosen in enumerate(choices(d, gpu_node, seed)):
        gpu = chosen.ravel() // (experts // p)
        pairs[g] = np.bincount(gpu, minlength=p)
        gpu_tokens[g], node_tokens[g] = distinct_tokens(token, gpu, p, gpu_node)
    return DispatchRouting(pairs, gpu_tokens, node_tokens, experts)


def matrices(dispatcher: str, r: DispatchRouting, cluster, dispatch_b: float,
             combine_b: float, tokens: int):
    """(dispatch matrix, combine matrix, DeepEP loads of dispatch or None, of combine or
    None); matrices in bytes, loads in bytes per GPU."""
    p = cluster.num_gpus
    if dispatcher == "alltoall":
        base = r.pairs.astype(float)
        return base * dispatch_b, base.T * combine_b, None, None
    if dispatcher == "allgather":
        everyone = np.arange(p)[None, :]
        m = group_matrix(everyone, np.full(p, float(tokens)))
        return m * dispatch_b, m.T * combine_b, None, None
    base = deepep_matrix(r.gpu_tokens, r.node_tokens, cluster.node_of, cluster.local_rank, 1.0)
    fwd, recv = deepep_loads(r.gpu_tokens, r.node_tokens)
    return (base * dispatch_b, base.T * combine_b, (fwd * dispatch_b, recv * dispatch_b),
            (fwd * combine_b, recv * combine_b))


def run_dispatch(scenario, cluster, profile, routing: DispatchRouting | None = None) -> dict:
    """Time one dispatch and one combine of ``scenario.dispatch`` on ``cluster`` under the
    communication ``profile``; the summary's metrics (SI; rates in Gbit/s). ``routing``: the
    scenario's own (:func:`route`), when the caller has it already."""
    from sim.comm.model import Model

    d = scenario.dispatch
    if d.dispatcher == "deepep" and len(set(np.bincount(cluster.node_of))) != 1:
        raise UserError(f"dispatch.dispatcher: deepep needs the same number of GPUs on every "
                        f"node of {cluster.name}")
    r = routing if routing is not None else route(d, cluster.node_of, scenario.seed)
    dispatch_b = token_bytes(d.hidden_size, d.dispatch_dtype)
    combine_b = token_bytes(d.hidden_size, d.combine_dtype)
    m_disp, m_comb, l_disp, l_comb = matrices(d.dispatcher, r, cluster, dispatch_b, combine_b,
                                              d.tokens_per_gpu)
    env = simpy.Environment()
    fabric = Fabric(env, cluster, FabricOptions.from_settings(scenario.fabric, profile))
    model = None if profile.is_ideal else Model(cluster, profile, routes=fabric.routes)
    clocks = GpuClocks(fabric, cluster.num_gpus, model=model)
    times = {}

    def both():
        for name, m, loads in (("dispatch", m_disp, l_disp), ("combine", m_comb, l_comb)):
            clocks.ready[:] = clocks.ready.max()  # a barrier between the two, as the test
            start = clocks.ready.copy()
            yield from clocks.exchange(m.copy(), name, "fwd", 0, deepep=loads)
            times[name] = clocks.ready - start

    env.run(env.process(both()))
    rdma_pairs = r.node_tokens.sum(axis=1)  # DeepEP's count: the own node included
    received = r.gpu_tokens.sum(axis=0)
    out = {"dispatcher": d.dispatcher, "comm_profile": profile.name, "experts": r.experts,
           "gpus": int(cluster.num_gpus), "nodes": int(cluster.num_nodes)}
    for name, nbytes in (("dispatch", dispatch_b), ("combine", combine_b)):
        t = times[name]
        busy = t > 0  # a GPU with nothing to wait for (no flows, no kernel cost) has no rate
        out[f"{name}_time_s"] = float(t.max())
        for key, count in (("rdma", rdma_pairs), ("nvl", received)):
            rate = float(np.mean(count[busy] * nbytes / t[busy])) if busy.any() else 0.0
            out[f"{name}_{key}_gbps"] = bytes_per_s_to_gbps(rate)
    out["nodes_per_token"] = float(rdma_pairs.sum() / (cluster.num_gpus * d.tokens_per_gpu))
    out["gpus_per_token"] = float(r.gpu_tokens.sum() / (cluster.num_gpus * d.tokens_per_gpu))
    out["inter_node_bytes"] = clocks.inter_node_bytes
    out["intra_node_bytes"] = clocks.intra_node_bytes
    return out
