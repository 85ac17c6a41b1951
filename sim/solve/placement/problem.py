"""The placement problem as plain data: shapes, limits, costs; validated, JSON in and out."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.inputs import check_fields, json_object, read_text

_PREFIX = "PlacementProblem"
_INT_FIELDS = ("layers", "experts", "gpus", "max_experts_per_gpu")


@dataclass(eq=False)
class PlacementProblem:
    """Place ``experts`` experts of each of ``layers`` MoE layers on ``gpus`` GPUs.

    ``gpu_node`` (P,): server of each GPU. ``load`` (L, E): tokens routed to each expert.
    ``coactivation`` (L-1, E, E): tokens choosing expert a at layer l and b at layer l+1 (None:
    zeros). ``source_load`` (L, P, E): tokens from each source GPU to each expert, or None for
    ``load`` spread evenly over the P GPUs. ``expert_bytes``, ``gpu_memory_bytes`` (per GPU, for
    experts) and ``bytes_per_token`` in bytes; ``inter_node_cost`` >= ``intra_node_cost`` >= 0
    per byte; ``balance_weight`` per token of a layer's busiest GPU. Treat it as immutable.
    """

    layers: int
    experts: int
    gpus: int
    gpu_node: list[int]
    load: np.ndarray
    coactivation: np.ndarray | None
    source_load: np.ndarray | None
    expert_bytes: float
    gpu_memory_bytes: float
    max_experts_per_gpu: int
    bytes_per_token: float
    inter_node_cost: float
    intra_node_cost: float
    balance_weight: float

    def __post_init__(self) -> None:
        _normalise(self, _PREFIX)

    @property
    def memory_slots(self) -> int:
        """Experts one GPU can hold over all layers: floor(gpu_memory_bytes / expert_bytes)."""
        return int(math.floor(self.gpu_memory_bytes / self.expert_bytes * (1 + 1e-12)))

    def pair_cost(self) -> np.ndarray:
        """(P, P) cost per byte between GPUs: 0 on the diagonal, intra or inter node."""
        node = np.asarray(self.gpu_node)
        c = np.where(node[:, None] == node[None, :], self.intra_node_cost, self.inter_node_cost)
        np.fill_diagonal(c, 0.0)
        return c.astype(float)

    def sources(self) -> np.ndarray:
        """(L, P, E) tokens from each source GPU to each expert (even spread when not given)."""
        if self.source_load is not None:
            return self.source_load
        shape = (self.layers, self.gpus, self.experts)
        return np.broadcast_to(self.load[:, None, :] / self.gpus, shape)

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("load", "coactivation", "source_load"):
            if data[name] is not None:
                data[name] = data[name].tolist()
        return json.dumps(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> PlacementProblem:
        """Parse and validate; every problem raises a one-line UserError naming ``source``."""
        data = json_object(text, source)
        check_fields(data, [f.name for f in fields(cls)], ("coactivation", "source_load"), source)
        data.setdefault("coactivation", None)
        data.setdefault("source_load", None)
        try:
            return cls(**data)
        except UserError as e:
            msg = str(e)
            raise UserError(source + msg[len(_PREFIX):] if msg.startswith(_PREFIX) else msg
                            ) from None

    @classmethod
    def load_file(cls, path: str | Path) -> PlacementProblem:
        return cls.from_json(read_text(path), str(path))


def _normalise(p: PlacementProblem, where: str) -> None:
    """Check every field and convert arrays to float numpy; raise ``where: field: ...``."""
    for name in _INT_FIELDS:
        v = getattr(p, name)
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise UserError(f"{where}: {name}: must be an integer >= 1 (got {v!r})")
        setattr(p, name, int(v))
    L, E, P = p.layers, p.experts, p.gpus
    node = _array(p.gpu_node, "gpu_node", where, (P,), "(gpus,)")
    if np.any(node != np.round(node)):
        raise UserError(f"{where}: gpu_node: must hold integer server indices")
    p.gpu_node = [int(v) for v in node]
    p.load = _array(p.load, "load", where, (L, E), "(layers, experts)")
    co = np.zeros((L - 1, E, E)) if p.coactivation is None else p.coactivation
    p.coactivation = _array(co, "coactivation", where, (L - 1, E, E),
                            "(layers-1, experts, experts)")
    if p.source_load is not None:
        p.source_load = _array(p.source_load, "source_load", where, (L, P, E),
                               "(layers, gpus, experts)")
    rules = (("expert_bytes", 0, False), ("gpu_memory_bytes", 0, False),
             ("bytes_per_token", 0, True), ("intra_node_cost", 0, True),
             ("inter_node_cost", p.intra_node_cost, True), ("balance_weight", 0, True))
    for name, lo, closed in rules:
        v = getattr(p, name)
        ok = isinstance(v, int | float | np.number) and not isinstance(v, bool)
        if not ok or not math.isfinite(v) or (v < lo if closed else v <= lo):
            what = f"a number {'>=' if closed else '>'} {lo}"
            raise UserError(f"{where}: {name}: must be {what} (got {v!r})")
        setattr(p, name, float(v))
    K = p.max_experts_per_gpu
    if E > P * K:
        raise UserError(f"{where}: max_experts_per_gpu: infeasible: {E} experts of a layer do "
                        f"not fit on {P} GPUs x {K} experts per layer")
    if L * E > P * p.memory_slots:
        raise UserError(
            f"{where}: gpu_memory_bytes: infeasible: {L} layers x {E} experts x "
            f"{p.expert_bytes:.6g} B do not fit on {P} GPUs x {p.gpu_memory_bytes:.6g} B "
            f"({p.memory_slots} experts per GPU, {L * E} needed)")


def _array(value, name: str, where: str, shape: tuple, dims: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {name}: must be a numeric array of shape {dims}") from None
    if a.shape != shape:
        raise UserError(f"{where}: {name}: must have shape {dims} = {shape} (got {a.shape})")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise UserError(f"{where}: {name}: must hold finite numbers >= 0")
    return a
