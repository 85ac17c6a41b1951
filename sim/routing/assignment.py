"""What a router returns: the (token, expert) choices of one routing group, as flat arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Assignment:
    """Token -> expert choices of one routing group, one row per (token, choice) pair.

    * ``token``  (N,) int64: token index in the group, 0..num_tokens-1
    * ``expert`` (N,) int64: expert id, 0..num_experts-1
    * ``weight`` (N,) float64: combine weight (gate value after the router's normalisation)
    * ``choice`` (N,) int64: rank of this choice for its token (0 = the token's first choice)
    * ``score``  (N,) float64: routing probability of this (token, expert), used by the
      ``probs`` drop policy
    * ``priority`` (N,) float64 or None: explicit keep-priority when the router defines one
      (higher is kept first, e.g. DeepSpeed's random token selection); None = use the policy

    A (token, expert) pair appears at most once. Tokens may have 0..E rows (expert choice gives
    some tokens none).
    """

    token: np.ndarray
    expert: np.ndarray
    weight: np.ndarray
    choice: np.ndarray
    score: np.ndarray
    num_tokens: int
    num_experts: int
    priority: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.token)

    def expert_load(self) -> np.ndarray:
        """Rows per expert, (E,) int64."""
        return np.bincount(self.expert, minlength=self.num_experts)


@dataclass(frozen=True)
class RouterContext:
    """What a router may need besides the gate scores. Everything is optional but ``topk``/``rng``.

    * ``topk``: experts per token (k)
    * ``rng``: the router's own random stream (GShard's random second expert, RTS, BASE shuffle)
    * ``token_ids`` (T,) int64: vocabulary ids of the tokens (hash routing)
    * ``expert_gpu`` (E,) int64: GPU rank holding each expert; ``gpu_node`` (P,) int64: server of
      each GPU; ``token_gpu`` (T,) int64: GPU each token starts on (device/node-limited routing,
      locality-aware routing)
    * ``capacity``: slots per expert when the router itself fills buckets (expert choice)
    * ``params``: router-specific parameters from the scenario (e.g. ``group_topk``)
    """

    topk: int
    rng: np.random.Generator
    token_ids: np.ndarray | None = None
    expert_gpu: np.ndarray | None = None
    gpu_node: np.ndarray | None = None
    token_gpu: np.ndarray | None = None
    capacity: int | None = None
    params: Mapping = field(default_factory=dict)
