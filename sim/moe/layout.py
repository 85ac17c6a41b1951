"""Where experts live and which GPUs reduce which gradients (Megatron-Core-style layout).

Tensor-parallel (TP) groups are blocks of ``tp`` consecutive ranks inside one server; the
data-parallel replicas of a dense weight shard are the ranks with equal ``rank % tp``. Attention
and dense FFNs are split over the TP group, with sequence parallelism: each rank holds 1/tp of
the micro-batch's tokens outside the TP-split blocks, and routes exactly those tokens.

Experts are tensor-parallel over ``etp`` ranks (``expert_tensor_parallel_size``, 1 or tp). An
*expert unit* is one rank (etp = 1) or one TP group (etp = tp). Expert-parallel groups are
blocks of ``ep`` consecutive units; expert e of a group lives on the group's unit
``e // (E / ep)`` (all etp ranks of it hold a 1/etp shard). A rank's tokens go to the rank of
the destination unit with the same TP rank (etp = tp; the unit then AllGathers them) or to the
unit itself (etp = 1). The same expert is replicated in every EP group; the ranks holding the
same shard of it reduce its gradients together.

A ``placement`` (MoE layers, E) overrides the default block placement: entry [l, e] is the unit
(0..ep-1, inside every EP group) holding expert e of MoE layer l, as a placement solver writes it
(``moesim solve placement``). Units may then hold different numbers of experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sim.errors import UserError


@dataclass(frozen=True)
class Layout:
    """``gpus`` ranks, ``ep`` expert-parallel size, ``experts`` per MoE layer, ``tp`` tensor
    parallel size, ``etp`` expert tensor parallel size (1 or tp)."""

    gpus: int
    ep: int
    experts: int
    tp: int = 1
    etp: int = 1
    placement: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, gpus: int, ep: int, experts: int, tp: int = 1, source: str = "",
              etp: int | None = None, gpus_per_node: int | None = None,
              whole: str = "the topology") -> Layout:
        """Check the sizes against each other; a mismatch is the user's, with one-line errors.
        ``etp`` None means equal to ``tp`` (Megatron-Core's default); ``whole``: what the
        ``gpus`` are, for the messages (the topology, or a pipeline stage)."""
        where = f"{source}: " if source else ""
        etp = tp if etp is None else etp
        per_node = gpus_per_node or gpus
        if per_node % tp:
            raise UserError(f"{where}parallel.tensor_model_parallel_size: must divide the "
                            f"{per_node} GPUs of a server, TP groups stay inside one (got {tp})")
        if etp not in (1, tp):
            raise UserError(f"{where}parallel.expert_tensor_parallel_size: must be 1 or "
                            f"tensor_model_parallel_size = {tp} (got {etp})")
        units = gpus // etp
        what = "GPUs" if etp == 1 else f"TP groups of {etp} (expert_tensor_parallel_size)"
        if units % ep:
            raise UserError(f"{where}parallel.expert_model_parallel_size: must divide the "
                            f"{units} {what} of {whole} (got {ep})")
        if experts % ep:
            raise UserError(f"{where}parallel.expert_model_parallel_size: must divide "
                            f"moe.num_experts = {experts} (got {ep})")
        return cls(gpus, ep, experts, tp, etp)

    @property
    def experts_per_gpu(self) -> int:
        """Experts (each a 1/etp shard) held by one rank."""
        return self.experts // self.ep

    def expert_gpu(self, src: np.ndarray, layer: int = 0) -> np.ndarray:
        """(len(src), E): the rank receiving the tokens of rank ``src`` for expert e at MoE layer
        ``layer`` (the layer matters only with a placement)."""
        src = np.asarray(src)
        unit, tp_rank = src // self.etp, src % self.etp
        base = (unit // self.ep) * self.ep
        if self.placement is not None:
            offset = self.placement[layer][None, :]
        else:
            offset = np.arange(self.experts)[None, :] // self.experts_per_gpu
        return (base[:, None] + offset) * self.etp + tp_rank[:, None]

    def expert_unit(self, layer: int = 0) -> np.ndarray:
        """(E,): the unit (0..ep-1, inside every EP group) holding expert e at MoE layer
        ``layer``."""
        if self.placement is not None:
            return np.asarray(self.placement[layer])
        return np.arange(self.experts) // self.experts_per_gpu

    def unit_gpu(self, src: np.ndarray) -> np.ndarray:
        """(len(src), ep): the rank of unit j of ``src``'s EP group receiving ``src``'s
        tokens."""
        src = np.asarray(src)
        unit, tp_rank = src // self.etp, src % self.etp
        base = (unit // self.ep) * self.ep
        return (base[:, None] + np.arange(self.ep)[None, :]) * self.etp + tp_rank[:, None]

    def with_placement(self, placement, layers: int, source: str = "") -> Layout:
        """This layout with expert e of MoE layer l on unit ``placement[l][e]`` of every EP group;
        a placement of the wrong shape or with units outside 0..ep-1 is a UserError."""
        where = f"{source}: " if source else ""
        a = np.asarray(placement)
        if a.shape != (layers, self.experts) or not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"{where}placement: must be {layers} MoE layers x {self.experts} "
                            f"experts of integer GPU indices (got shape {a.shape})")
        if a.min() < 0 or a.max() >= self.ep:
            raise UserError(f"{where}placement: GPU indices must be in 0..{self.ep - 1} "
                            f"(the expert-parallel group), got {a.min()}..{a.max()}")
        return replace(self, placement=a.astype(np.int64))

    def unit_groups(self) -> np.ndarray:
        """(gpus/etp, etp): the ranks of each expert unit (one TP group when etp = tp)."""
        return np.arange(self.gpus).reshape(-1, self.etp)

    def tp_groups(self) -> np.ndarray:
        """(gpus/tp, tp): the ranks of each tensor-parallel group."""
        return np.arange(self.gpus).reshape(-1, self.tp)

    def expert_dp_groups(self) -> np.ndarray:
        """(ep*etp, gpus/(ep*etp)): ranks holding the same expert shards (gradient AllReduce)."""
        block = self.ep * self.etp
        return np.arange(self.gpus).reshape(-1, block).T.copy()

    def dense_dp_groups(self, order: np.ndarray) -> np.ndarray:
        """(tp, gpus/tp): ranks holding the same dense-weight shard, each row in ring ``order``."""
        order = np.asarray(order)
        return np.stack([order[order % self.tp == r] for r in range(self.tp)])
