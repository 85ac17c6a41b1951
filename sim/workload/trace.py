"""Recorded routing traces: which experts each token chose at each layer, with gate scores.

Two formats, chosen by extension (see ``docs/trace-format.md``):

* ``.npz``: arrays ``experts`` (L, T, k) int, ``scores`` (L, T, k) float, optional
  ``token_ids`` (T,) int, scalar ``num_experts``.
* ``.jsonl``: one JSON object per (layer, token), e.g.
  ``{"layer": 0, "token": 12, "experts": [3, 7], "scores": [0.6, 0.4]}``, optionally with
  ``"token_id"``; an optional header line ``{"num_experts": 16}``.

Every validation problem raises :class:`sim.errors.UserError` with one line naming the file and
the field.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.inputs import json_lines, read_text


@dataclass(frozen=True)
class RoutingTrace:
    """Top-k routing of T tokens through L MoE layers of ``num_experts`` experts.

    experts: (L, T, k) int64 expert ids in [0, num_experts), distinct per token and layer.
    scores: (L, T, k) float32 gate probabilities of those experts (in [0, 1]).
    num_experts: E.
    token_ids: (T,) int64 vocabulary ids, or None.
    """

    experts: np.ndarray
    scores: np.ndarray
    num_experts: int
    token_ids: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @classmethod
    def from_logits(
        cls, logits: np.ndarray, top_k: int, token_ids: np.ndarray | None = None
    ) -> RoutingTrace:
        """Softmax top-k of router logits (L, T, E), e.g. from ``GateGenerator.logits``."""
        z = np.asarray(logits, dtype=np.float32)
        probs = np.exp(z - z.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        idx = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]
        return cls(
            experts=idx.astype(np.int64),
            scores=np.take_along_axis(probs, idx, axis=-1).astype(np.float32),
            num_experts=int(z.shape[-1]),
            token_ids=None if token_ids is None else np.asarray(token_ids, dtype=np.int64),
        )


def _fail(path: Path | str, field: str, message: str) -> UserError:
    return UserError(f"{path}: {field}: {message}")


def validate(trace: RoutingTrace, path: Path | str) -> RoutingTrace:
    """Check shapes, dtypes and ranges; return a trace with canonical dtypes."""
    experts, scores = np.asarray(trace.experts), np.asarray(trace.scores)
    if experts.ndim != 3:
        raise _fail(path, "experts", f"expected shape (layers, tokens, k), got {experts.shape}")
    if not np.issubdtype(experts.dtype, np.integer):
        raise _fail(path, "experts", f"expected integers, got {experts.dtype}")
    if experts.shape[2] < 1:
        raise _fail(path, "experts", "k must be at least 1")
    if scores.shape != experts.shape:
        raise _fail(path, "scores", f"shape {scores.shape} differs from experts {experts.shape}")
    if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype, np.integer):
        raise _fail(path, "scores", f"expected numbers, got {scores.dtype}")
    num_experts = int(trace.num_experts)
    if num_experts < 1:
        raise _fail(path, "num_experts", f"{num_experts} is not an integer >= 1")
    if experts.size and (experts.min() < 0 or experts.max() >= num_experts):
        bad = experts[(experts < 0) | (experts >= num_experts)].flat[0]
        raise _fail(path, "experts", f"expert id {bad} out of range [0, {num_experts})")
    if experts.shape[2] > 1 and experts.size:
        s = np.sort(experts, axis=2)
        if (s[..., 1:] == s[..., :-1]).any():
            raise _fail(path, "experts", "a token lists the same expert twice in one layer")
    if scores.size and (not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1):
        raise _fail(path, "scores", "gate probabilities must be finite and in [0, 1]")
    token_ids = trace.token_ids
    if token_ids is not None:
        token_ids = np.asarray(token_ids)
        if token_ids.shape != (experts.shape[1],) or not np.issubdtype(token_ids.dtype, np.integer):
            raise _fail(
                path, "token_ids", f"expected {experts.shape[1]} integers, got {token_ids.shape}"
            )
        token_ids = token_ids.astype(np.int64)
    return RoutingTrace(experts.astype(np.int64), scores.astype(np.float32), num_experts, token_ids)


def save_trace(trace: RoutingTrace, path: str | Path) -> None:
    """Write ``trace`` as ``.npz`` or ``.jsonl`` (by extension)."""
    path = Path(path)
    trace = validate(trace, path)
    suffix = _suffix(path)
    if suffix == ".npz":
        arrays = {
            "experts": trace.experts,
            "scores": trace.scores,
            "num_experts": np.int64(trace.num_experts),
        }
        if trace.token_ids is not None:
            arrays["token_ids"] = trace.token_ids
        with path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        return
    with path.open("w") as fh:
        fh.write(json.dumps({"num_experts": trace.num_experts}) + "\n")
        for layer in range(trace.num_layers):
            for token in range(trace.num_tokens):
                row = {
                    "layer": layer,
                    "token": token,
                    "experts": trace.experts[layer, token].tolist(),
                    "scores": [round(float(x), 6) for x in trace.scores[layer, token]],
                }
                if trace.token_ids is not None:
                    row["token_id"] = int(trace.token_ids[token])
                fh.write(json.dumps(row) + "\n")


def load_trace(path: str | Path) -> RoutingTrace:
    """Read and validate a ``.npz`` or ``.jsonl`` routing trace."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        read_text(path)  # the one wording for a missing or unreadable file
    trace = _load_npz(path) if suffix == ".npz" else _load_jsonl(path)
    return validate(trace, path)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".jsonl"):
        raise _fail(path, "extension", f"{suffix or '(none)'!r} is not one of .npz, .jsonl")
    return suffix


def _load_npz(path: Path) -> RoutingTrace:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(path, "file", f"not a readable .npz archive ({exc})") from None
    for name in ("experts", "scores", "num_experts"):
        if name not in arrays:
            raise _fail(path, name, "missing array")
    unknown = sorted(set(arrays) - {"experts", "scores", "num_experts", "token_ids"})
    if unknown:
        raise _fail(
            path, unknown[0], "unknown array (allowed: experts, scores, num_experts, token_ids)"
        )
    n = arrays["num_experts"]
    if n.shape != () or not np.issubdtype(n.dtype, np.integer):
        raise _fail(path, "num_experts", "expected a scalar integer")
    return RoutingTrace(arrays["experts"], arrays["scores"], int(n), arrays.get("token_ids"))


def _load_jsonl(path: Path) -> RoutingTrace:
    num_experts: int | None = None
    rows: dict[tuple[int, int], tuple[list, list]] = {}
    token_ids: dict[int, int] = {}
    k: int | None = None
    for lineno, obj in json_lines(read_text(path), str(path)):
        where = f"line {lineno}"
        if not isinstance(obj, dict):
            raise _fail(path, where, "expected a JSON object")
        if "layer" not in obj:
            if set(obj) != {"num_experts"} or not _is_int(obj["num_experts"]):
                raise _fail(path, f"{where}: num_experts", 'expected {"num_experts": <int>}')
            num_experts = obj["num_experts"]
            continue
        extra = set(obj) - {"layer", "token", "experts", "scores", "token_id"}
        if extra:
            raise _fail(path, f"{where}: {sorted(extra)[0]}", "unknown field")
        for name in ("layer", "token"):
            if not _is_int(obj.get(name)) or obj[name] < 0:
                raise _fail(path, f"{where}: {name}", "expected an integer >= 0")
        experts, scores = obj.get("experts"), obj.get("scores")
        if not isinstance(experts, list) or not all(_is_int(e) for e in experts):
            raise _fail(path, f"{where}: experts", "expected a list of integers")
        if not isinstance(scores, list) or not all(_is_num(s) for s in scores):
            raise _fail(path, f"{where}: scores", "expected a list of numbers")
        if len(scores) != len(experts):
            raise _fail(path, f"{where}: scores", "length differs from experts")
        if k is None:
            k = len(experts)
        elif len(experts) != k:
            raise _fail(path, f"{where}: experts", f"ragged k: {len(experts)} here, {k} before")
        key = (obj["layer"], obj["token"])
        if key in rows:
            raise _fail(path, f"{where}: token", f"duplicate (layer, token) {key}")
        rows[key] = (experts, scores)
        if "token_id" in obj:
            tid = obj["token_id"]
            if not _is_int(tid) or token_ids.setdefault(obj["token"], tid) != tid:
                raise _fail(
                    path, f"{where}: token_id", "not an integer consistent across layers"
                )
    if not rows or k is None:
        raise _fail(path, "experts", "no routing lines")
    L = 1 + max(layer for layer, _ in rows)
    T = 1 + max(token for _, token in rows)
    if len(rows) != L * T:
        missing = next(lt for lt in np.ndindex(L, T) if lt not in rows)
        raise _fail(path, "token", f"missing line for (layer, token) {missing}")
    experts = np.empty((L, T, k), dtype=np.int64)
    scores = np.empty((L, T, k), dtype=np.float64)
    for (layer, token), (e, s) in rows.items():
        experts[layer, token], scores[layer, token] = e, s
    if num_experts is None:
        num_experts = int(experts.max()) + 1
    ids = None
    if token_ids:
        if len(token_ids) != T:
            raise _fail(path, "token_id", "given for some tokens but not all")
        ids = np.array([token_ids[t] for t in range(T)], dtype=np.int64)
    return RoutingTrace(experts, scores, num_experts, ids)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
