"""One run of a sweep, wherever it executes (this process, a pool worker, a Dask worker).

``execute`` never raises for a failed simulation: the failure becomes the row's ``error`` and
the sweep goes on. It writes nothing either; it returns the run's files and the sweep process
writes them, so Dask workers need the moe-sim package but not the sweep's directory.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sim.errors import UserError
from sim.metrics import catalogue
from sim.runs.rundir import to_json
from sim.units import format_bytes

#: Summary keys that do not go into a row (the resolved scenario is in summary.json).
_SKIP = ("scenario",)


def flat_summary(summary: Mapping) -> dict:
    """The scalar fields of a run summary, one level of nested mappings as ``outer.inner``.

    A benchmark's ``results`` (one per message size) become ``time_s@1MiB``, ``algbw_gbps@1MiB``
    and ``busbw_gbps@1MiB`` per size, and ``time_s``, ``algbw_gbps``, ``busbw_gbps`` of the
    largest size. Other lists are left out.
    """
    row: dict = {}
    for key, value in summary.items():
        if key in _SKIP:
            continue
        if key == "results" and isinstance(value, list):
            row.update(_benchmark_columns(value))
        elif isinstance(value, Mapping):
            row.update({f"{key}.{k}": v for k, v in value.items() if _scalar(v)})
        elif _scalar(value):
            row[key] = value
    return row


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _benchmark_columns(results: list[Mapping]) -> dict:
    metrics = [m.key for m in catalogue.METRICS
               if m.within == "results" and m.better is not None]  # measured, not labels
    row: dict = {}
    for r in results:
        row.update({f"{m}@{format_bytes(r['bytes_per_rank'])}": r[m] for m in metrics})
    if results:
        largest = max(results, key=lambda r: r["bytes_per_rank"])
        row = {"bytes_per_rank": largest["bytes_per_rank"],
               **{m: largest[m] for m in metrics}, **row}
    return row


def one_line(error: BaseException) -> str:
    """``ExceptionClass: message`` on one line."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def execute(run: Any) -> dict:
    """Simulate one ``RunSpec``; return ``{"run_id", "row", "files", "meta"}``.

    ``row``: run_id, status (``ok`` or ``error``), error, seed, the point's fields, wall_s (s),
    then the flat summary. ``files``: the run directory's files (summary.json, CSVs; on failure
    error.txt with the traceback). ``meta``: when and where it ran and how it was made.
    """
    from sim.runs.simulate import simulate

    started = datetime.now(UTC).isoformat(timespec="milliseconds")
    t0 = time.perf_counter()
    try:
        done = simulate(run.scenario, run.cluster, run.source, reports=False)
        summary = json.loads(to_json(done.summary))  # plain numbers, as in summary.json
        files, status, error, flat = done.files, "ok", None, flat_summary(summary)
    except Exception as e:  # a failed run is a row, not the end of the sweep
        status, error, flat = "error", one_line(e), {}
        files = {"error.txt": error + "\n" if isinstance(e, UserError)
                 else traceback.format_exc()}
    wall = time.perf_counter() - t0
    row = {"run_id": run.run_id, "status": status, "error": error, "kind": run.scenario.kind,
           "seed": run.seed, **run.point, "wall_s": wall}
    row.update((k, v) for k, v in flat.items() if k not in row)
    meta = {"run_id": run.run_id, "scenario": run.source, "sets": list(run.sets),
            "started_at": started, "wall_s": wall, "host": socket.gethostname(),
            "pid": os.getpid()}
    return {"run_id": run.run_id, "row": row, "files": files, "meta": meta}
