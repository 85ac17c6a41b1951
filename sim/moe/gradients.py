"""Gradient reduction of a training step: pipelined ring AllReduce (or, under the distributed
optimizer, ReduceScatter) of dense weight shards over the data-parallel ranks (one ring per rail
across servers, as NCCL's channels) and of expert shards over each expert's replicas. The step's
GPUs are the first ``layout.gpus`` of the cluster (one pipeline stage's block)."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from sim.collectives.algorithms import ring_all_reduce_groups, ring_orders
from sim.comm.model import Cost
from sim.moe.clocks import GpuClocks


class GradientReduction:
    """Starts the reduction of given layers' gradients as SimPy processes."""

    def __init__(self, clocks: GpuClocks, inp, collective: str = "all_reduce"):
        self.clocks, self.inp, self.model = clocks, inp, clocks.model
        self.collective = collective  # or "reduce_scatter", "all_gather"
        fabric, lay = clocks.fabric, inp.layout
        self.rings = [o[o < lay.gpus] for o in ring_orders(fabric.cluster)]
        self.dense_groups = np.vstack([lay.dense_dp_groups(order) for order in self.rings])
        self.expert_groups = lay.expert_dp_groups()

    def _reduce(self, layers: list[int]) -> list:
        """Processes reducing the gradients of ``layers``; their bytes are counted."""
        inp, lay, p = self.inp, self.inp.layout, self.clocks.p
        shape, env, fabric = inp.shape, self.clocks.fabric.env, self.clocks.fabric
        dense = sum(shape.dense_params(shape.moe_layers[i]) for i in layers) / lay.tp
        expert = sum(shape.expert_params / lay.etp * lay.experts_per_gpu for i in layers
                     if shape.moe_layers[i])
        procs = []
        for groups, nbytes, rings in ((self.dense_groups, dense / len(self.rings),
                                       len(self.rings)), (self.expert_groups, expert, 1)):
            nbytes *= inp.grad_dtype_bytes
            n = groups.shape[1]
            if n > 1 and nbytes > 0:
                ring = np.zeros((p, p))  # rings share hops inside a server: accumulate
                np.add.at(ring, (groups.ravel(), np.roll(groups, -1, axis=1).ravel()),
                          self._steps(n) / n * nbytes)
                self.clocks.count(ring)
                procs.append(env.process(ring_all_reduce_groups(
                    fabric, groups, nbytes, pipelined=True,
                    cost=self._cost(groups, nbytes * rings, rings), steps=self._steps(n))))
        return procs

    def _steps(self, n: int) -> int:
        """Ring steps of the collective over ``n`` ranks."""
        return 2 * (n - 1) if self.collective == "all_reduce" else n - 1

    def _cost(self, groups: np.ndarray, size: float, rings: int):
        """The library's cost of a ring all_reduce of ``size`` bytes per rank over ``groups``
        (None without a communication model)."""
        if self.model is None:
            return None
        m = self.model
        proto = m.group_protocol(size)
        nodes = len(np.unique(self.clocks.fabric.cluster.node_of[groups[0]]))
        c = self.collective
        return Cost("ring", proto, m.group_delay_s(c, proto, groups.shape[1], nodes),
                    m.inflate(c, "ring", proto), m.ring_cap_Bps(proto, size, rings))

    def start(self, layers: list[int], at: float):
        """A process reducing ``layers`` from simulated time ``at`` on (recorded as spans)."""
        return self.clocks.fabric.env.process(self._run(layers, at))

    def _run(self, layers: list[int], at: float) -> Generator:
        env, clocks = self.clocks.fabric.env, self.clocks
        yield env.timeout(max(at - env.now, 0.0))
        t0 = env.now
        yield env.all_of(self._reduce(layers))
        for g in clocks.gpus:
            clocks.rec.span(g, "allreduce", "step", layers[0] if len(layers) == 1 else -1, t0,
                            env.now)
