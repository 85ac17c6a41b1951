"""Where experts live and which GPUs reduce which gradients (Megatron-style layout).

Every GPU is a data-parallel rank (tensor parallel size 1). Expert-parallel groups are blocks of
``ep`` consecutive ranks: group k = ranks [k*ep, (k+1)*ep); expert e of a group lives on the
group's rank ``e // (E / ep)``. The same expert is replicated in every group; its replicas
(ranks with equal ``rank % ep``) reduce its gradients together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import UserError


@dataclass(frozen=True)
class Layout:
    """``gpus`` ranks, ``ep`` expert-parallel size, ``experts`` per MoE layer."""

    gpus: int
    ep: int
    experts: int

    @classmethod
    def build(cls, gpus: int, ep: int, experts: int, tp: int = 1, source: str = "") -> Layout:
        """Check the sizes against each other; a mismatch is the user's, with one-line errors."""
        where = f"{source}: " if source else ""
        if tp != 1:
            raise UserError(f"{where}parallel.tensor_model_parallel_size: only 1 is supported "
                            f"so far (got {tp})")
        if gpus % ep:
            raise UserError(f"{where}parallel.expert_model_parallel_size: must divide the "
                            f"{gpus} GPUs of the topology (got {ep})")
        if experts % ep:
            raise UserError(f"{where}parallel.expert_model_parallel_size: must divide "
                            f"moe.num_experts = {experts} (got {ep})")
        return cls(gpus, ep, experts)

    @property
    def experts_per_gpu(self) -> int:
        return self.experts // self.ep

    def expert_gpu(self, src: np.ndarray) -> np.ndarray:
        """(len(src), E): the rank holding expert e for tokens that start on rank ``src``."""
        base = (np.asarray(src) // self.ep) * self.ep
        return base[:, None] + np.arange(self.experts)[None, :] // self.experts_per_gpu

    def expert_dp_groups(self) -> np.ndarray:
        """(ep, gpus/ep): ranks holding replicas of the same experts (gradient AllReduce)."""
        return np.arange(self.gpus).reshape(-1, self.ep).T.copy()
