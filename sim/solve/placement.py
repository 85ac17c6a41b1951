"""Expert placement: which GPU holds each expert of each MoE layer, as plain data (JSON in and out).

Problem (:class:`PlacementProblem`): L MoE layers of E experts each on P GPUs. The decision is
``assign[l, e]``, the GPU of expert e of layer l (one replica per expert). Constraints: every
expert sits on exactly one GPU; a GPU holds at most ``max_experts_per_gpu`` experts of one layer;
a GPU holds at most ``floor(gpu_memory_bytes / expert_bytes)`` experts over all layers together.

Objective (:func:`cost`, the one definition every solver and test uses). Let ``c(g, h)`` be 0 when
g == h, ``intra_node_cost`` when g and h are different GPUs of one server, ``inter_node_cost``
otherwise (cost per byte, e.g. s/byte = 1 / bandwidth), and ``B = bytes_per_token``:

* ``dispatch   = sum_{l, s, e} source_load[l, s, e] * B * c(s, assign[l, e])``
* ``interlayer = sum_{l < L-1, a, b} coactivation[l, a, b] * B * c(assign[l, a], assign[l+1, b])``
  (ExFlow: a token moves from the GPU of its layer-l expert to that of its layer-l+1 expert)
* ``balance    = balance_weight * sum_l max_g sum_{e: assign[l, e] = g} load[l, e]``
  (the straggler GPU's tokens in each layer)
* ``total      = dispatch + interlayer + balance``

With costs in s/byte the first two terms are link-seconds summed over all tokens (dispatch only;
the combine mirrors it); with ``balance_weight`` in s/token the third is straggler seconds.

Solvers, all returning a :class:`PlacementAnswer`: :func:`solve_ilp` (exact, PuLP + CBC),
:func:`solve_ga` (DEAP, seeded), :func:`greedy` (constructive + swap/move local search) and
:func:`brute_force` (tiny problems, for tests). :func:`from_scenario` builds a problem from a
moe-sim training scenario.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pulp
from deap import base, tools

from sim.errors import UserError
from sim.solve.jsonio import json_object

#: The terms of the objective, in the order :func:`cost` returns them.
TERMS = ("dispatch", "interlayer", "balance", "total")
#: Most assignments :func:`brute_force` enumerates (P ** (L * E)).
BRUTE_FORCE_LIMIT = 1_000_000
_PREFIX = "PlacementProblem"
_INT_FIELDS = ("layers", "experts", "gpus", "max_experts_per_gpu")


# ------------------------------------------------------------------------------------ problem
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
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise UserError(f"{source}: {key}: unknown field; allowed: {', '.join(names)}")
        for key in names:
            if key not in data and key not in ("coactivation", "source_load"):
                raise UserError(f"{source}: {key}: missing (required)")
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
        return cls.from_json(_read(path), str(path))


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


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None


# ------------------------------------------------------------------------------------ cost
@dataclass(frozen=True)
class _Tables:
    """Derived arrays: ``cost`` (P, P) per byte; ``dispatch`` (L, E, P) dispatch cost of
    expert e of layer l when it sits on GPU g."""

    cost: np.ndarray
    dispatch: np.ndarray


def _tables(p: PlacementProblem) -> _Tables:
    c = p.pair_cost()
    return _Tables(c, p.bytes_per_token * np.einsum("lse,sg->leg", p.sources(), c))


def _terms(p: PlacementProblem, t: _Tables, a: np.ndarray) -> dict[str, np.ndarray]:
    """The objective's terms for a batch of assignments ``a`` (B, L, E): arrays of shape (B,)."""
    B, L, P = a.shape[0], p.layers, p.gpus
    dispatch = np.take_along_axis(t.dispatch[None], a[..., None], axis=3).sum(axis=(1, 2, 3))
    inter = np.zeros(B)
    if L > 1:
        c = t.cost[a[:, :-1, :, None], a[:, 1:, None, :]]  # (B, L-1, E, E)
        inter = p.bytes_per_token * np.einsum("nlab,lab->n", c, p.coactivation)
    slot = a + P * np.arange(L)[None, :, None] + L * P * np.arange(B)[:, None, None]
    weights = np.broadcast_to(p.load[None], a.shape).ravel()
    per_gpu = np.bincount(slot.ravel(), weights, B * L * P).reshape(B, L, P)
    balance = p.balance_weight * per_gpu.max(axis=2).sum(axis=1)
    return {"dispatch": dispatch, "interlayer": inter, "balance": balance,
            "total": dispatch + inter + balance}


def cost(problem: PlacementProblem, assign) -> dict[str, float]:
    """The objective of ``assign`` (L, E): ``dispatch``, ``interlayer``, ``balance`` and
    ``total`` (see the module docstring; units of the costs times bytes, plus balance)."""
    a = _check_assign(problem, assign, "assign")
    return {k: float(v[0]) for k, v in _terms(problem, _tables(problem), a[None]).items()}


def _check_assign(p: PlacementProblem, assign, where: str) -> np.ndarray:
    try:
        a = np.asarray(assign)
    except (TypeError, ValueError):
        a = np.zeros(0)
    shape = (p.layers, p.experts)
    if a.shape != shape or not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{where}: must be an integer array of shape (layers, experts) = "
                        f"{shape} (got shape {a.shape})")
    if np.any(a != np.round(a)) or a.min() < 0 or a.max() >= p.gpus:
        raise UserError(f"{where}: must hold GPU indices 0..{p.gpus - 1}")
    return a.astype(np.int64)


def _violation(p: PlacementProblem, a: np.ndarray) -> str | None:
    """The first broken constraint of a well-shaped assignment, or None."""
    cnt = _counts(p, a)
    over = np.argwhere(cnt > p.max_experts_per_gpu)
    if over.size:
        li, g = over[0]
        return (f"GPU {g} holds {cnt[li, g]} experts of layer {li}; max_experts_per_gpu is "
                f"{p.max_experts_per_gpu}")
    tot = cnt.sum(axis=0)
    if tot.max() > p.memory_slots:
        g = int(tot.argmax())
        return (f"GPU {g} holds {tot[g]} experts x {p.expert_bytes:.6g} B, more than "
                f"gpu_memory_bytes = {p.gpu_memory_bytes:.6g}")
    return None


def _counts(p: PlacementProblem, a: np.ndarray) -> np.ndarray:
    """(L, P) experts of each layer on each GPU."""
    slot = a + p.gpus * np.arange(p.layers)[:, None]
    return np.bincount(slot.ravel(), minlength=p.layers * p.gpus).reshape(p.layers, p.gpus)


# ------------------------------------------------------------------------------------ answer
@dataclass(eq=False)
class PlacementAnswer:
    """A placement and how it was found. ``assign`` (L, E) GPU of each expert; ``cost`` the
    dict of :func:`cost`; ``status`` "optimal" (proven) or "feasible"; ``bound`` a proven lower
    bound on the total and ``gap`` = (total - bound) / total, None when unknown; ``wall_s``
    seconds; ``solver`` its name; ``info`` solver statistics (JSON-able)."""

    assign: np.ndarray
    cost: dict
    status: str
    bound: float | None
    gap: float | None
    wall_s: float
    solver: str
    info: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["assign"] = np.asarray(self.assign).tolist()
        return json.dumps(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> PlacementAnswer:
        data = json_object(text, source)
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise UserError(f"{source}: {key}: unknown field; allowed: {', '.join(names)}")
        for key in names[:-1]:
            if key not in data:
                raise UserError(f"{source}: {key}: missing (required)")
        try:
            assign = np.asarray(data["assign"], dtype=np.int64)
        except (TypeError, ValueError):
            raise UserError(f"{source}: assign: must be a (layers, experts) array of "
                            "GPU indices") from None
        if assign.ndim != 2:
            raise UserError(f"{source}: assign: must be a (layers, experts) array of GPU indices")
        if data["status"] not in ("optimal", "feasible"):
            raise UserError(f"{source}: status: must be optimal or feasible "
                            f"(got {data['status']!r})")
        c = data["cost"]
        if not isinstance(c, dict) or any(not isinstance(c.get(k), int | float) for k in TERMS):
            raise UserError(f"{source}: cost: must map {', '.join(TERMS)} to numbers")
        for key in ("bound", "gap", "wall_s"):
            v = data[key]
            if not (isinstance(v, int | float) or (v is None and key != "wall_s")):
                raise UserError(f"{source}: {key}: must be a number (got {v!r})")
        return cls(assign, {k: float(c[k]) for k in TERMS}, data["status"], data["bound"],
                   data["gap"], float(data["wall_s"]), str(data["solver"]),
                   dict(data.get("info") or {}))

    @classmethod
    def load_file(cls, path: str | Path) -> PlacementAnswer:
        return cls.from_json(_read(path), str(path))


def check(problem: PlacementProblem, answer: PlacementAnswer) -> dict[str, float]:
    """Verify that ``answer`` is feasible for ``problem`` and that its stored cost and bound are
    right; return the recomputed cost. Any mismatch raises a one-line UserError."""
    a = _check_assign(problem, answer.assign, "answer: assign")
    broken = _violation(problem, a)
    if broken:
        raise UserError(f"answer: assign: infeasible: {broken}")
    c = cost(problem, a)
    tol = 1e-9 * sum(abs(c[k]) for k in TERMS[:3]) + 1e-300
    for k in TERMS:
        stored = answer.cost.get(k)
        if stored is None or abs(stored - c[k]) > tol + 1e-9 * abs(c[k]):
            raise UserError(f"answer: cost.{k}: stored {stored!r}, recomputed {c[k]!r}")
    if answer.bound is not None and answer.bound > c["total"] + 1e-6 * abs(c["total"]) + tol:
        raise UserError(f"answer: bound: {answer.bound!r} is above the total {c['total']!r}")
    return c


def _answer(p, a, solver, t0, status="feasible", bound=None, gap=None, info=None):
    return PlacementAnswer(np.asarray(a, dtype=np.int64), cost(p, a), status, bound, gap,
                           time.perf_counter() - t0, solver, dict(info or {}))


# ------------------------------------------------------------------------------------ greedy
def greedy(problem: PlacementProblem) -> PlacementAnswer:
    """Layer by layer, experts in descending load, each on the feasible GPU that adds the least
    cost (its dispatch, its traffic from the previous layer's experts, the straggler increase),
    keeping the rest completable; then swap/move local search to a local optimum."""
    t0 = time.perf_counter()
    t = _tables(problem)
    a = _improve(problem, t, _construct(problem, t))
    return _answer(problem, a, "greedy", t0)


def _construct(p: PlacementProblem, t: _Tables) -> np.ndarray:
    L, E, P, K, M = p.layers, p.experts, p.gpus, p.max_experts_per_gpu, p.memory_slots
    a = np.full((L, E), -1, dtype=np.int64)
    cnt, tot = np.zeros((L, P), dtype=np.int64), np.zeros(P, dtype=np.int64)
    for li in range(L):
        per_gpu = np.zeros(P)
        pull = t.dispatch[li].copy()
        if li > 0:
            pull += p.bytes_per_token * p.coactivation[li - 1].T @ t.cost[a[li - 1]]
        for placed, e in enumerate(np.argsort(-p.load[li], kind="stable")):
            ok = (cnt[li] < K) & (tot < M)
            ok &= _completable(M - tot, K - cnt[li], E - placed - 1, L - li - 1, K, E)
            top = per_gpu.max()
            score = pull[e] + p.balance_weight * (np.maximum(top, per_gpu + p.load[li, e]) - top)
            g = int(np.argmin(np.where(ok, score, np.inf)))
            a[li, e], per_gpu[g] = g, per_gpu[g] + p.load[li, e]
            cnt[li, g] += 1
            tot[g] += 1
    return a


def _completable(room, caps, left, future, K, E) -> np.ndarray:
    """(P,) whether, after one more expert on GPU g, the ``left`` experts of this layer (at most
    ``caps - [g]`` per GPU) and ``future`` full layers (K per GPU) still fit in ``room``.

    Max-flow / min-cut: for every c in {0, 1} and j future layers, c*left + j*E <= sum_h
    min(room_h, c*caps_h + j*K); the layers' symmetry makes these the only cuts to check."""
    c = np.array([0, 1])[:, None, None]
    j = np.arange(future + 1)[None, :, None]
    base = np.minimum(room, c * caps + j * K)  # (2, J, P)
    after = np.minimum(room - 1, c * (caps - 1) + j * K)
    cap = base.sum(axis=2, keepdims=True) - base + after
    need = c * left + j * E
    return np.all(cap >= need, axis=(0, 1))


def _pull(p: PlacementProblem, t: _Tables, a: np.ndarray, li: int) -> np.ndarray:
    """(E, P): dispatch plus inter-layer cost of each expert of layer l on each GPU, with the
    neighbouring layers where ``a`` has them."""
    x = t.dispatch[li].copy()
    if li > 0:
        x += p.bytes_per_token * p.coactivation[li - 1].T @ t.cost[a[li - 1]]
    if li < p.layers - 1:
        x += p.bytes_per_token * p.coactivation[li] @ t.cost[:, a[li + 1]].T
    return x


def _max_without(v: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """max of ``v`` over indices other than g and h (elementwise over g, h; 0 if none)."""
    order = np.argsort(-v, kind="stable")[:3]
    idx = np.concatenate([order, -np.ones(3 - order.size, dtype=np.int64)])
    val = np.concatenate([v[order], np.zeros(3 - order.size)])
    out = np.where((idx[2] != g) & (idx[2] != h), val[2], 0.0)
    out = np.where((idx[1] != g) & (idx[1] != h), val[1], out)
    return np.where((idx[0] != g) & (idx[0] != h), val[0], out)


def _improve(p: PlacementProblem, t: _Tables, a: np.ndarray, max_moves: int = 100_000):
    """Best-improvement local search: per layer, swap two experts or move one to a GPU with
    room; when none helps, exchange everything two GPUs hold. Until no move lowers the total
    (or ``max_moves``). Keeps feasibility."""
    a = a.copy()
    L, E, P, K, M = p.layers, p.experts, p.gpus, p.max_experts_per_gpu, p.memory_slots
    cnt = _counts(p, a)
    tot = cnt.sum(axis=0)
    tol = 1e-12 * max(float(_terms(p, t, a[None])["total"][0]), 1e-300)
    rows, gpus, moves, improved = np.arange(E), np.arange(P), 0, True
    while improved and moves < max_moves:
        improved = False
        for li in range(L):
            while moves < max_moves:
                x, pos, ld = _pull(p, t, a, li), a[li], p.load[li]
                per_gpu = np.bincount(pos, ld, P)
                top, own = per_gpu.max(), x[rows, pos]
                g, h = pos[:, None], pos[None, :]
                new_g = per_gpu[g] - ld[:, None] + ld[None, :]
                new_h = per_gpu[h] - ld[None, :] + ld[:, None]
                peak = np.maximum(np.maximum(_max_without(per_gpu, g, h), new_g), new_h)
                swap = x[:, pos] + x[:, pos].T - own[:, None] - own[None, :]
                swap = swap + p.balance_weight * (peak - top)
                swap[g == h] = np.inf
                room = (cnt[li] < K) & (tot < M)
                dest = per_gpu[None, :] + ld[:, None]
                peak = np.maximum(_max_without(per_gpu, g, gpus[None, :]), dest)
                peak = np.maximum(peak, (per_gpu[pos] - ld)[:, None])
                move = x - own[:, None] + p.balance_weight * (peak - top)
                move[~np.broadcast_to(room, move.shape) | (g == gpus[None, :])] = np.inf
                i, j = np.unravel_index(np.argmin(swap), swap.shape)
                e, d = np.unravel_index(np.argmin(move), move.shape)
                if min(swap[i, j], move[e, d]) >= -tol:
                    break
                if swap[i, j] <= move[e, d]:
                    a[li, i], a[li, j] = a[li, j], a[li, i]
                else:
                    cnt[li, a[li, e]] -= 1
                    tot[a[li, e]] -= 1
                    a[li, e] = d
                    cnt[li, d] += 1
                    tot[d] += 1
                moves += 1
                improved = True
        if not improved and moves < max_moves:
            better = _best_exchange(p, t, a, tol)
            if better is not None:
                a, moves, improved = better, moves + 1, True
                cnt = _counts(p, a)
                tot = cnt.sum(axis=0)
    return a


def _best_exchange(p: PlacementProblem, t: _Tables, a: np.ndarray, tol: float):
    """The best improving exchange of everything two GPUs hold (all layers), or None."""
    if p.gpus < 2:
        return None
    now = _terms(p, t, a[None])["total"][0]
    g, h = np.triu_indices(p.gpus, 1)
    best, best_a = now - tol, None
    for lo in range(0, g.size, 64):
        rows = np.arange(min(64, g.size - lo))
        perm = np.tile(np.arange(p.gpus), (rows.size, 1))
        perm[rows, g[lo:lo + 64]] = h[lo:lo + 64]
        perm[rows, h[lo:lo + 64]] = g[lo:lo + 64]
        cand = perm[:, a]  # (n, L, E)
        total = _terms(p, t, cand)["total"]
        k = int(np.argmin(total))
        if total[k] < best:
            best, best_a = total[k], cand[k]
    return best_a


# ------------------------------------------------------------------------------------ brute force
def brute_force(problem: PlacementProblem) -> PlacementAnswer:
    """Enumerate all P ** (L * E) assignments (at most BRUTE_FORCE_LIMIT): the proven optimum,
    first in enumeration order among equals."""
    t0 = time.perf_counter()
    p = problem
    n_genes = p.layers * p.experts
    n = p.gpus ** n_genes
    if n > BRUTE_FORCE_LIMIT:
        raise UserError(f"brute_force: gpus ** (layers x experts) = {p.gpus} ** {n_genes} "
                        f"assignments, more than {BRUTE_FORCE_LIMIT:,}; use solve_ilp")
    t = _tables(p)
    powers = p.gpus ** np.arange(n_genes, dtype=np.int64)
    best, best_a = np.inf, None
    for start in range(0, n, 1 << 16):
        idx = np.arange(start, min(n, start + (1 << 16)), dtype=np.int64)
        a = ((idx[:, None] // powers) % p.gpus).reshape(-1, p.layers, p.experts)
        onehot = a[..., None] == np.arange(p.gpus)
        cnt = onehot.sum(axis=2)  # (B, L, P)
        ok = np.all(cnt <= p.max_experts_per_gpu, axis=(1, 2))
        ok &= np.all(cnt.sum(axis=1) <= p.memory_slots, axis=1)
        if not ok.any():
            continue
        total = _terms(p, t, a[ok])["total"]
        k = int(np.argmin(total))
        if total[k] < best:
            best, best_a = total[k], a[ok][k]
    c = cost(p, best_a)["total"]
    return _answer(p, best_a, "brute_force", t0, "optimal", c, 0.0, {"assignments": n})


# ------------------------------------------------------------------------------------ ILP
def solve_ilp(problem: PlacementProblem, time_limit_s: float | None = None, msg: bool = False,
              threads: int | None = None, warm_start: bool | np.ndarray = True
              ) -> PlacementAnswer:
    """Exact MILP with CBC, warm-started from :func:`greedy` (``warm_start=True``), from a
    given feasible (L, E) assignment (e.g. a GA answer's ``assign``), or not at all (False).

    Variables: ``x[l, e, g]`` binary (expert e of layer l on GPU g); ``m[l]`` >= the tokens of
    every GPU in layer l (the straggler); ``y[l, a, g]`` tokens of a (layer l) whose layer-l+1
    expert is on a's GPU g, and ``z[l, a, n]`` the same per server n. Glover's linearisation of
    ``x[l, a, g] * sum_b coact[l, a, b] x[l+1, b, g]``: ``y <= sum_b coact x[l+1, b, g]`` and
    ``y <= U * x[l, a, g]`` with U the sum of a's min(K, memory slots) largest coactivations
    (both maximised, so exact at integer x); z alike with the server's GPUs summed. Objective:
    ``sum D[l, e, g] x + w * sum m + B * (inter * sum coact - intra * sum y - (inter - intra)
    * sum z)``, i.e. exactly :func:`cost`; the constant is kept out of CBC and the rest scaled
    to about 1e4. ``status`` is "optimal" only when CBC proved it (its solution status is
    LpSolutionOptimal and its log says "Optimal solution found"; PuLP's ``prob.status`` says
    Optimal also after a time limit); else "feasible" with CBC's lower bound and gap.
    """
    t0 = time.perf_counter()
    p = problem
    t = _tables(p)
    if isinstance(warm_start, bool):
        start = greedy(p).assign if warm_start else None
    else:
        start = _check_assign(p, warm_start, "solve_ilp: warm_start")
        if _violation(p, start):
            raise UserError(f"solve_ilp: warm_start: infeasible: {_violation(p, start)}")
    model = _IlpModel(p, t, start)
    with tempfile.TemporaryDirectory() as tmp:
        log_path = str(Path(tmp) / "cbc.log")
        with warnings.catch_warnings():  # PuLP 3.3 announces PULP_CBC_CMD's removal in 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s,
                                       warmStart=start is not None, logPath=log_path,
                                       threads=threads)
        t1 = time.perf_counter()
        model.prob.solve(solver)
        solve_s = time.perf_counter() - t1
        log = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    if msg:
        print(log)
    a = model.assignment()
    found = a is not None and _violation(p, a) is None
    if not found:
        if start is None:
            raise UserError("solve_ilp: CBC found no placement in the time limit; give more "
                            "time or warm_start=True")
        a = start
    result = _cbc_log(log)
    proven = found and model.prob.sol_status == pulp.LpSolutionOptimal
    if result.get("result") is not None:
        proven = proven and result["result"].startswith("Optimal")
    elif time_limit_s is not None:
        proven = proven and solve_s < time_limit_s
    total = cost(p, a)["total"]
    info = {**model.size, "solve_s": solve_s, "cbc_result": result.get("result")}
    if result.get("objective") is not None:
        info["cbc_objective"] = float(result["objective"] * model.scale + model.const)
    if proven:
        return _answer(p, a, "ilp", t0, "optimal", total, 0.0, info)
    bound = gap = None
    if result.get("lower_bound") is not None:
        bound = min(result["lower_bound"] * model.scale + model.const, total)
        gap = (total - bound) / abs(total) if total else 0.0
    return _answer(p, a, "ilp", t0, "feasible", bound, gap, info)


def _cbc_log(text: str) -> dict:
    """Result line, objective, lower bound and gap from CBC's final report (None if absent)."""
    out: dict = {}
    for key, pattern in (("result", r"^Result - (.+)$"),
                         ("objective", r"^Objective value:\s+(\S+)"),
                         ("lower_bound", r"^Lower bound:\s+(\S+)"), ("gap", r"^Gap:\s+(\S+)")):
        m = re.search(pattern, text, re.M)
        out[key] = None
        if m:
            try:
                out[key] = m.group(1).strip() if key == "result" else float(m.group(1))
            except ValueError:
                pass
    return out


def _straggler_floor(p: PlacementProblem, li: int) -> float:
    """A valid lower bound on layer li's busiest-GPU tokens: the mean load, and for j = 0 ..
    K-1 (pigeonhole) some GPU holds j + 1 of the j*P + 1 heaviest experts, hence at least the
    j + 1 lightest of them."""
    load = np.sort(p.load[li])[::-1]
    floor = load.sum() / p.gpus
    for j in range(min(p.max_experts_per_gpu, p.memory_slots)):
        n = j * p.gpus + 1
        if n > load.size:
            break
        floor = max(floor, load[n - j - 1:n].sum())
    return float(floor)


class _IlpModel:
    """The PuLP model of :func:`solve_ilp` (see its docstring), warm-started from ``start``."""

    def __init__(self, p: PlacementProblem, t: _Tables, start: np.ndarray | None):
        L, E, P, K, M = p.layers, p.experts, p.gpus, p.max_experts_per_gpu, p.memory_slots
        bpt, co = p.bytes_per_token, p.coactivation
        nodes = sorted(set(p.gpu_node))
        members = [[g for g in range(P) if p.gpu_node[g] == n] for n in nodes]
        gpu_reward = bpt * p.intra_node_cost
        node_reward = bpt * (p.inter_node_cost - p.intra_node_cost)
        self.const = bpt * p.inter_node_cost * co.sum()
        if len(nodes) == 1:  # every pair shares the server: that reward is a constant
            self.const -= node_reward * co.sum()
            node_reward = 0.0
        magnitude = t.dispatch.max(axis=2).sum() + p.balance_weight * p.load.sum() + self.const
        self.scale = magnitude / 1e4 if magnitude > 0 else 1.0
        prob = self.prob = pulp.LpProblem("expert_placement", pulp.LpMinimize)
        self.rows = self.nonzeros = 0
        x = self.x = [[[self._var(f"x_{li}_{e}_{g}", 0, pulp.LpBinary) for g in range(P)]
                       for e in range(E)] for li in range(L)]
        obj = [(x[li][e][g], t.dispatch[li, e, g] / self.scale)
               for li in range(L) for e in range(E) for g in range(P) if t.dispatch[li, e, g]]
        for li in range(L):
            for e in range(E):
                self._row([(v, 1) for v in x[li][e]], pulp.LpConstraintEQ, 1)
            if E > K:
                for g in range(P):
                    self._row([(x[li][e][g], 1) for e in range(E)], pulp.LpConstraintLE, K)
        if M < min(L * K, L * E):
            for g in range(P):
                self._row([(x[li][e][g], 1) for li in range(L) for e in range(E)],
                          pulp.LpConstraintLE, M)
        start_vals: list = []
        if p.balance_weight > 0:
            for li in range(L):
                m = self._var(f"m_{li}", _straggler_floor(p, li))
                obj.append((m, p.balance_weight / self.scale))
                for g in range(P):
                    self._row([(m, 1)] + [(x[li][e][g], -p.load[li, e]) for e in range(E)],
                              pulp.LpConstraintGE, 0)
                if start is not None:
                    start_vals.append((m, np.bincount(start[li], p.load[li], P).max()))
        k_gpu = min(K, M, E)
        n_y = 0
        for li in range(L - 1):
            for a_ in range(E):
                row = co[li, a_]
                nz = np.flatnonzero(row)
                if nz.size == 0:
                    continue
                desc = np.sort(row)[::-1]
                groups = []
                if gpu_reward > 0:
                    groups += [("y", g, [g], desc[:k_gpu].sum(), gpu_reward) for g in range(P)]
                if node_reward > 0:
                    groups += [("z", n, ms, desc[:min(E, k_gpu * len(ms))].sum(), node_reward)
                               for n, ms in zip(nodes, members, strict=True)]
                for name, key, gs, bound, reward in groups:
                    y = self._var(f"{name}_{li}_{a_}_{key}", 0)
                    n_y += 1
                    obj.append((y, -reward / self.scale))
                    self._row([(y, 1)] + [(x[li + 1][b][g], -row[b]) for b in nz for g in gs],
                              pulp.LpConstraintLE, 0)
                    self._row([(y, 1)] + [(x[li][a_][g], -bound) for g in gs],
                              pulp.LpConstraintLE, 0)
                    if start is not None:
                        here = np.isin(start[li + 1], gs)
                        start_vals.append((y, row[here].sum() if start[li, a_] in gs else 0.0))
        prob += pulp.LpAffineExpression(obj)
        if start is not None:
            for li in range(L):
                for e in range(E):
                    for g in range(P):
                        x[li][e][g].setInitialValue(int(start[li, e] == g))
            for v, val in start_vals:
                v.setInitialValue(float(val))
        self.size = {"binaries": L * E * P, "continuous": n_y + (L if p.balance_weight else 0),
                     "constraints": self.rows, "nonzeros": self.nonzeros}

    def _var(self, name: str, low: float, cat: str = pulp.LpContinuous) -> pulp.LpVariable:
        if hasattr(self.prob, "add_variable"):  # PuLP >= 3.3: variables belong to the model
            return self.prob.add_variable(name, lowBound=low, cat=cat)
        return pulp.LpVariable(name, lowBound=low, cat=cat)

    def _row(self, terms: list, sense: int, rhs: float) -> None:
        self.prob += pulp.LpConstraint(pulp.LpAffineExpression(terms), sense, rhs=rhs)
        self.rows += 1
        self.nonzeros += len(terms)

    def assignment(self) -> np.ndarray | None:
        """(L, E) GPU of each expert from the solution, None if CBC returned none."""
        vals = np.array([[[v.varValue if v.varValue is not None else np.nan for v in row]
                           for row in layer] for layer in self.x])
        if np.isnan(vals).any() or np.any(vals.max(axis=2) < 0.5):
            return None
        return vals.argmax(axis=2).astype(np.int64)


# ------------------------------------------------------------------------------------ GA
class _Fitness(base.Fitness):
    weights = (-1.0,)  # minimise the total


class _Individual(list):
    """Genome: the GPU of every (layer, expert), layer-major (L * E genes)."""

    def __init__(self, genes=()):
        super().__init__(genes)
        self.fitness = _Fitness()


def solve_ga(problem: PlacementProblem, seed: int, time_limit_s: float | None = None,
             generations: int = 200, population: int = 60, cx_prob: float = 0.7,
             mut_prob: float = 0.5, elite: int = 2, polish: int = 2) -> PlacementAnswer:
    """Memetic DEAP GA over assignments (genome: GPU of each expert, layer-major).

    Tournament selection (3), two-point crossover, swap/move mutation, a repair that enforces
    the per-GPU count and memory limits (every individual is feasible), ``elite`` elites, the
    ``polish`` best new children of each generation improved by the greedy's local search
    (Lamarckian), duplicates replaced by random newcomers. Generation 0 is the :func:`greedy`
    answer plus random individuals. Stops after ``generations`` or ``time_limit_s`` seconds.

    Randomness: DEAP's operators draw from Python's global ``random``; this function saves
    ``random.getstate()``, seeds it with ``seed``, and restores the caller's state on return, so
    the same seed gives the same answer (unless ``time_limit_s`` cuts the generations short).
    No ``deap.creator`` classes are created: two calls in one process do not interfere.
    """
    for name, v, lo in (("generations", generations, 0), ("population", population, 2),
                        ("elite", elite, 1), ("polish", polish, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise UserError(f"solve_ga: {name}: must be an integer >= {lo} (got {v!r})")
    if elite >= population:
        raise UserError(f"solve_ga: elite: must be below population = {population} (got {elite})")
    t0 = time.perf_counter()
    state = random.getstate()
    random.seed(int(seed))
    try:
        a, info = _evolve(problem, t0, time_limit_s, generations, population, cx_prob,
                          mut_prob, elite, polish)
    finally:
        random.setstate(state)
    return _answer(problem, a, "ga", t0, info=info)


def _evolve(p, t0, time_limit_s, generations, population, cx_prob, mut_prob, elite, polish):
    L, E, P = p.layers, p.experts, p.gpus
    t = _tables(p)
    start = _improve(p, t, _construct(p, t))
    fallback = _counts(p, start)
    tb = base.Toolbox()
    tb.register("mate", tools.cxTwoPoint)
    tb.register("mutate", _mutate, layers=L, experts=E, gpus=P)
    tb.register("select", tools.selTournament, tournsize=3)

    def settle(inds):  # repair, then evaluate the whole batch at once
        for ind in inds:
            ind[:] = _repair(p, t, np.asarray(ind).reshape(L, E), fallback).ravel().tolist()
        if inds:
            totals = _terms(p, t, np.asarray(inds, dtype=np.int64).reshape(-1, L, E))["total"]
            for ind, v in zip(inds, totals, strict=True):
                ind.fitness.values = (float(v),)

    def climb(inds):  # Lamarckian: the best ``polish`` of them climb to a local optimum
        for ind in sorted(inds, key=lambda i: i.fitness.values[0])[:polish]:
            ind[:] = _improve(p, t, np.asarray(ind).reshape(L, E)).ravel().tolist()
            settle([ind])

    def randoms(n):
        return [_Individual(random.randrange(P) for _ in range(L * E)) for _ in range(n)]

    pop = [_Individual(start.ravel().tolist())] + randoms(population - 1)
    settle(pop)
    hof = tools.HallOfFame(elite)
    hof.update(pop)
    done = 0
    for _ in range(generations):
        if time_limit_s is not None and time.perf_counter() - t0 >= time_limit_s:
            break
        off = [tb.clone(ind) for ind in tb.select(pop, population - elite)]
        for c1, c2 in zip(off[::2], off[1::2], strict=False):
            if L * E > 1 and random.random() < cx_prob:
                tb.mate(c1, c2)
                del c1.fitness.values, c2.fitness.values
        for ind in off:
            if random.random() < mut_prob:
                tb.mutate(ind)
                del ind.fitness.values
        new = [ind for ind in off if not ind.fitness.valid]
        settle(new)
        climb(new)
        seen = {tuple(ind) for ind in hof}
        for i, ind in enumerate(off):  # a duplicate makes room for a random newcomer
            if tuple(ind) in seen:
                off[i] = randoms(1)[0]
                settle([off[i]])
            seen.add(tuple(off[i]))
        pop = off + [tb.clone(ind) for ind in hof]
        hof.update(pop)
        done += 1
    best = _improve(p, t, np.asarray(hof[0], dtype=np.int64).reshape(L, E))
    return best, {"generations": done, "population": population,
                  "greedy_total": float(_terms(p, t, start[None])["total"][0])}


def _mutate(ind, layers: int, experts: int, gpus: int):
    """1 + Geometric(1/2) changes: swap two experts of a layer (70%) or move one to a random
    GPU."""
    n = 1
    while random.random() < 0.5:
        n += 1
    for _ in range(n):
        base_ = random.randrange(layers) * experts
        if experts > 1 and random.random() < 0.7:
            i, j = random.sample(range(experts), 2)
            ind[base_ + i], ind[base_ + j] = ind[base_ + j], ind[base_ + i]
        else:
            ind[base_ + random.randrange(experts)] = random.randrange(gpus)
    return (ind,)


def _repair(p: PlacementProblem, t: _Tables, a: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """A feasible assignment close to ``a``: evict the lightest experts from GPUs over the
    per-layer count, then from GPUs over memory, and put each (heaviest first) on a GPU with
    room: the one of least dispatch cost or (half the time, for diversity) a random one. If that
    gets stuck, keep as many experts in place as the per-(layer, GPU) counts ``fallback`` (a
    feasible count matrix) allow and fill the rest."""
    a = a.copy()
    K, M = p.max_experts_per_gpu, p.memory_slots
    cnt = _counts(p, a)
    if cnt.max() <= K and cnt.sum(axis=0).max() <= M:
        return a
    evicted = []
    for li, g in np.argwhere(cnt > K):
        here = np.flatnonzero(a[li] == g)
        for e in here[np.argsort(p.load[li, here], kind="stable")][:cnt[li, g] - K]:
            evicted.append((li, e))
            cnt[li, g] -= 1
            a[li, e] = -1
    tot = cnt.sum(axis=0)
    for g in np.flatnonzero(tot > M):
        here = np.argwhere(a == g)
        order = np.argsort(p.load[here[:, 0], here[:, 1]], kind="stable")
        for li, e in here[order][:tot[g] - M]:
            evicted.append((li, e))
            cnt[li, g] -= 1
            tot[g] -= 1
            a[li, e] = -1
    evicted.sort(key=lambda le: -p.load[le])
    for li, e in evicted:
        ok = (cnt[li] < K) & (tot < M)
        if not ok.any():
            return _refill(p, a, fallback)
        if random.random() < 0.5:
            g = int(np.argmin(np.where(ok, t.dispatch[li, e], np.inf)))
        else:
            g = int(random.choice(np.flatnonzero(ok)))
        a[li, e] = g
        cnt[li, g] += 1
        tot[g] += 1
    return a


def _refill(p: PlacementProblem, a: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per layer, exactly ``counts[l, g]`` experts on GPU g, keeping those of ``a`` in place
    (heaviest first) where the count allows."""
    out = np.full_like(a, -1)
    for li in range(p.layers):
        left = counts[li].copy()
        for e in np.argsort(-p.load[li], kind="stable"):
            g = a[li, e]
            if g >= 0 and left[g] > 0:
                out[li, e] = g
                left[g] -= 1
        free = np.repeat(np.arange(p.gpus), left)
        out[li, out[li] < 0] = free
    return out


# ------------------------------------------------------------------------------------ scenario
def from_scenario(scenario, cluster, *, balance_weight: float | None = None,
                  max_experts_per_gpu: int | None = None,
                  gpu_memory_bytes: float | None = None) -> PlacementProblem:
    """The placement problem of a training scenario's first expert-parallel group (GPUs
    0..ep-1, E experts per MoE layer) on ``cluster``.

    * ``source_load`` from ``sim.moe.plan.plan_step`` (``routed``: pairs each GPU's router
      chose, before capacity) under the default block layout (only locality-aware routers
      would route differently under another placement); ``load`` is its sum over sources.
    * ``coactivation``: the same tokens' top-1 gate choice (argmax logit of
      ``GateGenerator.logits``, or the trace's first expert) at layer l and l+1, counted over
      the routing groups of GPUs 0..ep-1.
    * ``expert_bytes`` = (3 if gated else 2) x hidden x moe_ffn_hidden x dtype_bytes (weights
      only); ``gpu_memory_bytes`` = the GPU's HBM; ``max_experts_per_gpu`` = E / ep (the
      simulator's layout); ``bytes_per_token`` = hidden x dtype_bytes.
    * ``intra_node_cost`` = 1 / the slowest "nvlink" or "hccs" link, ``inter_node_cost`` = 1 /
      the slowest "nic" link (s/byte; = intra on a single server).
    * ``balance_weight`` = ep x forward expert-FFN seconds per token at the roofline's compute
      efficiency: the straggler's time counted for every GPU of the group (GPU-seconds, like
      the link-seconds of the traffic terms).
    """
    from sim.compute.roofline import DEFAULT_EFFICIENCY
    from sim.moe.layout import Layout
    from sim.moe.plan import plan_step

    where = scenario.name
    if scenario.kind != "training":
        raise UserError(f"{where}: model: a placement needs a training scenario (model + moe)")
    model, moe, par, tr = scenario.model, scenario.moe, scenario.parallel, scenario.training
    ep, E = par.expert_model_parallel_size, moe.num_experts
    layout = Layout.build(cluster.num_gpus, ep, E, par.tensor_model_parallel_size, where,
                          par.expert_tensor_parallel_size, cluster.gpus_per_node)
    if layout.etp != 1:
        raise UserError(f"{where}: parallel.expert_tensor_parallel_size: a placement needs "
                        f"whole experts on a GPU (1), got {layout.etp}")
    routing = plan_step(scenario, layout, cluster.node_of)
    source = np.stack([r.routed[:ep] for r in routing]).astype(float)
    tokens = model.micro_batch_size * model.seq_length // layout.tp
    co = _coactivation(scenario, len(routing), tokens, ep, cluster.num_gpus)
    n_mats = 3 if model.gated_linear_unit else 2
    ffn = moe.moe_ffn_hidden_size or model.ffn_hidden_size
    intra, inter = _link_costs(cluster)
    if balance_weight is None:
        per_token_s = 2.0 * n_mats * model.hidden_size * ffn / (
            cluster.gpu.peak_bf16_flops * DEFAULT_EFFICIENCY.flops)
        balance_weight = ep * per_token_s
    return PlacementProblem(
        layers=len(routing), experts=E, gpus=ep, gpu_node=cluster.node_of[:ep].tolist(),
        load=source.sum(axis=1), coactivation=co, source_load=source,
        expert_bytes=float(n_mats * model.hidden_size * ffn * tr.dtype_bytes),
        gpu_memory_bytes=float(gpu_memory_bytes or cluster.gpu.hbm_gib * 2**30),
        max_experts_per_gpu=max_experts_per_gpu or E // ep,
        bytes_per_token=float(model.hidden_size * tr.dtype_bytes),
        inter_node_cost=inter, intra_node_cost=intra, balance_weight=float(balance_weight))


def _coactivation(scenario, n_moe: int, tokens: int, ep: int, gpus: int) -> np.ndarray:
    """(L-1, E, E) top-1 transitions of the tokens of GPUs 0..ep-1 (their routing groups)."""
    E, gating, step = scenario.moe.num_experts, scenario.gating, scenario.training.step
    groups = min(gpus, gating.routing_groups or gpus)
    uses = np.bincount(np.arange(ep) % groups, minlength=groups)
    co = np.zeros((max(n_moe - 1, 0), E, E))
    if gating.trace is not None:
        from sim.workload import load_trace

        trace = load_trace(gating.trace)

        def top1_of(g: int) -> np.ndarray:  # GPU g's trace tokens, as in plan_step
            return trace.experts[:, (np.arange(tokens) + g * tokens) % trace.num_tokens, 0]
    else:
        from sim.workload import GateConfig, GateGenerator

        names = [f.name for f in fields(GateConfig) if f.name in type(gating).model_fields]
        gen = GateGenerator(n_moe, E, GateConfig(**{k: getattr(gating, k) for k in names}),
                            scenario.seed)

        def top1_of(g: int) -> np.ndarray:  # routing group g's tokens, as in plan_step
            return gen.logits(step, gen.tokens(step, tokens, group=g), group=g).argmax(axis=2)

    for g in np.flatnonzero(uses):
        top1 = np.asarray(top1_of(int(g)), dtype=np.int64)
        for li in range(n_moe - 1):
            pairs = np.bincount(top1[li] * E + top1[li + 1], minlength=E * E)
            co[li] += uses[g] * pairs.reshape(E, E)
    return co


def _link_costs(cluster) -> tuple[float, float]:
    """(intra, inter) s/byte: 1 / the slowest scale-up ("nvlink"/"hccs") and "nic" link."""
    tier, cap = cluster.links.tier, cluster.links.capacity_Bps
    up, nic = cap[np.isin(tier, ("nvlink", "hccs"))], cap[tier == "nic"]
    if up.size == 0:
        raise UserError(f"{cluster.source or cluster.name}: intra_node: no 'nvlink' or 'hccs' "
                        "links to price GPU-to-GPU traffic inside a server")
    intra = 1.0 / float(up.min())
    return intra, max(intra, 1.0 / float(nic.min())) if nic.size else intra
