"""The sweep table: one row per run, as ``sweep.csv``, ``sweep.jsonl`` and ``sweep.parquet``.

Columns: ``run_id, status, error, seed``, the swept fields, ``wall_s``, then the union of the
runs' summary fields in order of first appearance. A run without a column has an empty cell.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.metrics import catalogue
from sim.runs import rundir as output

LEAD = ("run_id", "status", "error", "kind", "seed")

def kind_of(rows: Sequence[Mapping]) -> str | None:
    """The run kind of the rows (every row carries ``kind``), None without rows."""
    return next((r["kind"] for r in rows if r.get("kind")), None)


def columns(rows: Sequence[Mapping], fields: Sequence[str] = ()) -> list[str]:
    """Lead columns, ``fields``, ``wall_s``, then every other key in order of first appearance."""
    cols = dict.fromkeys([*LEAD, *fields, "wall_s"])
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def normalise(rows: Sequence[Mapping], fields: Sequence[str] = ()) -> list[dict]:
    """Every row with every column, in column order (None where a run has no value)."""
    cols = columns(rows, fields)
    return [{c: r.get(c) for c in cols} for r in rows]


def jsonl_text(rows: Sequence[Mapping]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def _arrow_column(values: list) -> Any:
    """A pyarrow array: bool, int64, float64 or string; mixed columns become JSON text."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64() if present else pa.string())
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                    pa.string())


def parquet_bytes(rows: Sequence[Mapping]) -> bytes | None:
    """The rows as Parquet (None when pyarrow is not installed)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    cols = columns(rows)
    table = pa.table({c: _arrow_column([r.get(c) for r in rows]) for c in cols})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_tables(out_dir: Path, rows: Sequence[Mapping], fields: Sequence[str] = ()) -> list[Path]:
    """Write sweep.csv, sweep.jsonl and (with pyarrow) sweep.parquet atomically; return them."""
    rows = normalise(rows, fields)
    cols = columns(rows, fields)
    files: dict[str, str | bytes | None] = {"sweep.csv": output.csv_text(rows, cols),
                                            "sweep.jsonl": jsonl_text(rows),
                                            "sweep.parquet": parquet_bytes(rows)}
    return [output.write_file(Path(out_dir) / name, content)
            for name, content in files.items() if content is not None]


def format_table(rows: Sequence[Mapping]) -> str:
    """run_id, status and the main metric (or the error) of each run, for the terminal."""
    kind = kind_of(rows)
    main = catalogue.main_metric(kind) if kind else None
    column, label, scale = (main.key, main.heading, main.scale) if main else ("", "", 1.0)
    width = max([len("run_id")] + [len(r["run_id"]) for r in rows])
    lines = [f"{'run_id':<{width}}  status  {label}"]
    for r in rows:
        value = r.get(column)
        if r["status"] != "ok":
            cell = r.get("error") or ""
        else:
            cell = "-" if value is None else _fixed(value * scale)
        lines.append(f"{r['run_id']:<{width}}  {r['status']:<6}  {cell}")
    return "\n".join(lines)


def _fixed(value: float) -> str:
    """Five significant digits at the magnitude of ``value``, trailing zeros kept, so that a
    column of similar values lines up (``11.444``, ``11.392``)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 4 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"
