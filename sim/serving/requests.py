"""Serving requests: synthetic Poisson arrivals and request files.

A request file is chosen by extension:

* ``.csv``: a header line naming exactly the columns ``arrival_s,prompt_tokens,output_tokens``
  (any order), then one request per line, e.g. ``0.125,512,64``. Blank lines are skipped.
* ``.jsonl``: one JSON object per line with exactly the keys ``arrival_s``, ``prompt_tokens``
  and ``output_tokens``, e.g. ``{"arrival_s": 0.125, "prompt_tokens": 512, "output_tokens": 64}``.
  Blank lines are skipped.

``arrival_s`` is a finite number of seconds >= 0; the token counts are integers >= 1. Rows need
not be sorted: requests are sorted by arrival (ties keep file order) and numbered ``rid = 0 ..
n-1`` in that order. A file with no requests is an error. Every problem raises
:class:`sim.errors.UserError` with one line ``file: line N: field: what is allowed``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from sim.errors import UserError
from sim.inputs import json_lines, read_text

#: The fields of a request file, in canonical order.
FIELDS = ("arrival_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class Request:
    """One inference request: ``prompt_tokens`` to prefill, then ``output_tokens`` to decode.

    rid: request id (>= 0), unique within a workload.
    arrival_s: arrival time in seconds (finite, >= 0).
    prompt_tokens, output_tokens: token counts (>= 1 each).
    """

    rid: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if not _is_int(self.rid) or self.rid < 0:
            raise ValueError(f"Request.rid must be an integer >= 0, got {self.rid!r}")
        if not _is_num(self.arrival_s) or not math.isfinite(self.arrival_s) or self.arrival_s < 0:
            raise ValueError(f"Request.arrival_s must be finite and >= 0, got {self.arrival_s!r}")
        for name in ("prompt_tokens", "output_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Request.{name} must be an integer >= 1, got {value!r}")


def poisson_requests(
    n: int,
    rate_per_s: float,
    prompt_tokens: int | tuple[int, int],
    output_tokens: int | tuple[int, int],
    rng: np.random.Generator,
) -> list[Request]:
    """``n`` requests with exponential inter-arrival times of mean ``1 / rate_per_s`` seconds.

    The first request arrives one inter-arrival time after 0. Token counts are either a fixed
    int or a ``(low, high)`` pair drawn uniformly from the integers ``low .. high`` inclusive.
    Draw order from ``rng``: inter-arrival times, then prompt lengths, then output lengths.
    """
    if not _is_int(n) or n < 0:
        raise UserError(f"n: {n!r} is not an integer >= 0")
    if not _is_num(rate_per_s) or not math.isfinite(rate_per_s) or rate_per_s <= 0:
        raise UserError(f"rate_per_s: {rate_per_s!r} is not a finite number > 0")
    n = int(n)
    arrivals = np.cumsum(rng.exponential(1.0 / float(rate_per_s), size=n))
    prompts = _draw_tokens("prompt_tokens", prompt_tokens, n, rng)
    outputs = _draw_tokens("output_tokens", output_tokens, n, rng)
    return [
        Request(i, float(arrivals[i]), int(prompts[i]), int(outputs[i])) for i in range(n)
    ]


def _draw_tokens(
    field: str, spec: int | tuple[int, int], n: int, rng: np.random.Generator
) -> np.ndarray:
    if _is_int(spec):
        if spec < 1:
            raise UserError(f"{field}: {spec!r} is not an integer >= 1 or a (low, high) pair")
        return np.full(n, int(spec), dtype=np.int64)
    if (
        isinstance(spec, tuple | list)
        and len(spec) == 2
        and all(_is_int(x) for x in spec)
        and 1 <= spec[0] <= spec[1]
    ):
        return rng.integers(int(spec[0]), int(spec[1]), size=n, endpoint=True)
    raise UserError(
        f"{field}: {spec!r} is not an integer >= 1 or a (low, high) pair with 1 <= low <= high"
    )


def load_requests(path: str | Path) -> list[Request]:
    """Read a ``.csv`` or ``.jsonl`` request file (format in the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise _fail(path, "extension", f"{suffix or '(none)'!r} is not one of .csv, .jsonl")
    text = read_text(path, encoding="utf-8-sig")
    rows = _rows_csv(path, text) if suffix == ".csv" else _rows_jsonl(path, text)
    if not rows:
        raise _fail(path, "requests", "the file holds no requests (at least one is required)")
    rows.sort(key=lambda row: row[0])  # stable: ties keep file order
    return [Request(i, a, p, o) for i, (a, p, o) in enumerate(rows)]


def _rows_csv(path: Path, text: str) -> list[tuple[float, int, int]]:
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        lineno = reader.line_num
        cells = [cell.strip() for cell in cells]
        if header is None:
            header = cells
            _check_columns(path, f"line {lineno}", header, "column")
            continue
        if len(cells) != len(header):
            field = header[len(cells)] if len(cells) < len(header) else "row"
            raise _fail(
                path, f"line {lineno}: {field}",
                f"expected {len(header)} comma-separated values, got {len(cells)}",
            )
        values = dict(zip(header, cells, strict=True))
        rows.append(_parse_row(path, lineno, values, text_cells=True))
    if header is None:
        raise _fail(path, "header", f"missing; expected the columns {','.join(FIELDS)}")
    return rows


def _rows_jsonl(path: Path, text: str) -> list[tuple[float, int, int]]:
    rows = []
    for lineno, obj in json_lines(text, str(path)):
        if not isinstance(obj, dict):
            raise _fail(path, f"line {lineno}", "expected a JSON object")
        _check_columns(path, f"line {lineno}", list(obj), "key")
        rows.append(_parse_row(path, lineno, obj, text_cells=False))
    return rows


def _check_columns(path: Path, where: str, names: list[str], kind: str) -> None:
    for name in FIELDS:
        if name not in names:
            raise _fail(path, f"{where}: {name}", f"missing {kind}")
    for name in names:
        if name not in FIELDS:
            raise _fail(path, f"{where}: {name}", f"unknown {kind} (allowed: {', '.join(FIELDS)})")
    if len(names) != len(set(names)):
        dup = next(name for name in names if names.count(name) > 1)
        raise _fail(path, f"{where}: {dup}", f"duplicate {kind}")


def _parse_row(
    path: Path, lineno: int, values: dict, text_cells: bool
) -> tuple[float, int, int]:
    """Validate one request; ``text_cells``: values are CSV strings, else JSON values."""
    arrival = _number(values["arrival_s"], text_cells)
    if arrival is None or not math.isfinite(arrival) or arrival < 0:
        raise _fail(
            path, f"line {lineno}: arrival_s",
            f"expected a finite number of seconds >= 0, got {values['arrival_s']!r}",
        )
    tokens = []
    for name in ("prompt_tokens", "output_tokens"):
        count = _integer(values[name], text_cells)
        if count is None or count < 1:
            raise _fail(
                path, f"line {lineno}: {name}", f"expected an integer >= 1, got {values[name]!r}"
            )
        tokens.append(count)
    return arrival, tokens[0], tokens[1]


def _number(value: object, text_cells: bool) -> float | None:
    """A CSV cell or JSON value as a float, or None if it is not a number."""
    if text_cells:
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if _is_num(value) else None


def _integer(value: object, text_cells: bool) -> int | None:
    """A CSV cell or JSON value as an int, or None if it is not an integer literal."""
    if text_cells:
        try:
            return int(value)
        except ValueError:
            return None
    return int(value) if _is_int(value) else None


def _fail(path: Path, field: str, message: str) -> UserError:
    return UserError(f"{path}: {field}: {message}")


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)
