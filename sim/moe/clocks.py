"""The shared bookkeeping of a training step: one clock per GPU, advanced by compute and by
exchanges on the fabric, with timeline spans and byte counters.

A GPU's flows start when it is ready and it continues when all its incoming flows have arrived.
GPUs that become ready for an exchange within ``START_MERGE`` x (spread of the ready times) of
each other start it together, at the latest of their times (never early): a few batches per
exchange instead of one per GPU, which is what keeps large steps fast.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from sim.collectives.algorithms import hierarchical_stages, staggered_transfer
from sim.metrics import NullRecorder
from sim.network.fabric import Fabric
from sim.units import gbps_to_bytes_per_s

START_MERGE = 0.05


class GpuClocks:
    """``ready`` (P,) seconds: when each GPU is free; byte counters of what crossed servers.
    With a communication ``model`` (``sim.comm.model.Model``) every exchange pays the library's
    fixed cost and its point-to-point caps."""

    def __init__(self, fabric: Fabric, gpus: int, recorder=None, a2a_algorithm: str = "direct",
                 model=None):
        self.fabric, self.rec = fabric, recorder or NullRecorder()
        self.p, self.a2a_algorithm, self.model = gpus, a2a_algorithm, model
        self.gpus = np.arange(gpus)
        self.ready = np.zeros(gpus)
        node = fabric.cluster.node_of[:gpus]  # the first ``gpus`` GPUs of the cluster
        self.cross = node[:, None] != node[None, :]
        self.inter_node_bytes = self.intra_node_bytes = 0.0
        self.a2a_inter_node_bytes = self.a2a_intra_node_bytes = 0.0  # dispatch and combine

    def spans(self, cat: str, phase: str, layer: int, start, end) -> None:
        for g in self.gpus:
            self.rec.span(g, cat, phase, layer, start[g], end[g])

    def count(self, matrix: np.ndarray, a2a: bool = False) -> None:
        """Add a (P, P) byte matrix to the inter- and intra-node counters (its diagonal
        zeroed in place)."""
        np.fill_diagonal(matrix, 0.0)
        inter, intra = float(matrix[self.cross].sum()), float(matrix[~self.cross].sum())
        self.inter_node_bytes += inter
        self.intra_node_bytes += intra
        if a2a:
            self.a2a_inter_node_bytes += inter
            self.a2a_intra_node_bytes += intra

    def stages(self, matrix: np.ndarray, a2a: bool) -> list[np.ndarray]:
        """The exchange as the matrices it is sent in (staged for hierarchical or bilevel
        dispatch and combine)."""
        if not a2a or self.a2a_algorithm == "direct":
            return [matrix]
        relay = "destination" if self.a2a_algorithm == "hierarchical" else "source"
        out = []
        for src, dst, nbytes in hierarchical_stages(self.fabric.cluster, matrix, relay):
            m = np.zeros((self.p, self.p))
            m[src, dst] = nbytes
            out.append(m)
        return out

    def exchange(self, matrix, cat: str, phase: str, layer: int, a2a: bool = True,
                 group: int = 0, deepep=None) -> Generator:
        """Send the (P, P) bytes of ``matrix`` (an All-to-All, or with ``a2a`` False the direct
        AllGather or ReduceScatter of groups of ``group`` GPUs inside a server); returns the
        longest wait of any GPU (s).

        ``deepep``: ``(forwarded, received)`` bytes per GPU (``sim.moe.dispatchers``): the
        matrix is one DeepEP kernel (both stages at once), which pays the profile's DeepEP fixed
        cost and takes at least its stages' bytes over their rates on every GPU."""
        start = self.ready.copy()
        for m in ([matrix] if deepep is not None else self.stages(matrix, a2a)):
            span = max(self.ready.max() - self.ready.min(), 0.0)
            delay, cap_of = (self._deepep_cost() if deepep is not None
                             else self._library(m, a2a, group))
            recv, _ = yield from staggered_transfer(self.fabric, m, self.ready,
                                                    START_MERGE * span, delay, cap_of)
            self.ready = np.maximum(self.ready, recv)
            self.count(m.copy(), a2a)
        if deepep is not None:
            self.ready = np.maximum(self.ready, self._deepep_floor(deepep, start))
        self.spans(cat, phase, layer, start, self.ready)
        return float((self.ready - start).max())

    @property
    def _deepep(self):
        """The profile's DeepEP costs (None: ideal, or no deepep section)."""
        return None if self.model is None else self.model.profile.deepep

    def _deepep_cost(self) -> tuple[float, None]:
        """(fixed delay s, no per-flow caps) of a DeepEP kernel under the model."""
        return (0.0 if self._deepep is None else self._deepep.launch_us * 1e-6), None

    def _deepep_floor(self, loads, start) -> np.ndarray:
        """When each GPU's DeepEP kernel is done at the earliest: start + fixed cost + the
        larger of its stages' bytes over their rates (``start`` without a DeepEP profile)."""
        cost = self._deepep
        if cost is None:
            return start
        forwarded, received = loads
        stage = np.maximum(np.asarray(forwarded) / gbps_to_bytes_per_s(cost.forward_gbps),
                           np.asarray(received) / gbps_to_bytes_per_s(cost.nvlink_gbps))
        return start + cost.launch_us * 1e-6 + stage

    def _library(self, matrix, a2a: bool, group: int):
        """(fixed delay s, per-flow cap function) of one exchange under the model."""
        if self.model is None:
            return 0.0, None
        model = self.model
        if not a2a:  # a tensor-parallel AllGather / ReduceScatter inside one server
            proto = model.group_protocol(float(matrix.sum(axis=1).max()))
            return model.group_delay_s("all_gather", proto, max(group, 2), 1), None
        crosses = bool(np.any(matrix[self.cross[:len(matrix), :len(matrix)]] > 0))
        node = self.fabric.cluster.node_of
        # its communicator: the most peers one GPU sends to, and itself
        ranks = int(np.count_nonzero(matrix, axis=1).max(initial=0)) + 1
        return (model.group_delay_s("all_to_all", "Simple", ranks, 2 if crosses else 1),
                lambda s, d, b: model.p2p_cap_Bps(b, node[s] != node[d], ranks))

    def compute(self, cat: str, phase: str, layer: int, seconds) -> float:
        """Advance every GPU by its ``seconds`` (scalar or (P,)); returns the longest."""
        start = self.ready.copy()
        self.ready = self.ready + seconds
        self.spans(cat, phase, layer, start, self.ready)
        return float(np.max(seconds))

    def tp_framed(self, cat: str, phase: str, layer: int, seconds, gather) -> Generator:
        """AllGather -> compute -> ReduceScatter (just the compute when ``gather`` is None);
        returns (compute seconds, tensor-parallel communication seconds)."""
        t = 0.0
        group = int(np.count_nonzero(gather[0])) + 1 if gather is not None else 0
        if gather is not None:
            t += yield from self.exchange(gather, "tp", phase, layer, a2a=False, group=group)
        c = self.compute(cat, phase, layer, seconds)
        if gather is not None:
            t += yield from self.exchange(gather.T.copy(), "tp", phase, layer, a2a=False,
                                          group=group)
        return c, t
