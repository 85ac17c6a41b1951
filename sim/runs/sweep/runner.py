"""Run a sweep into a directory, resuming whatever an earlier attempt finished.

Layout of ``DIR``::

    sweep.json           the sweep: name, files, hash of the expanded runs, run ids
    runs/<run_id>/       one directory per finished run, written atomically: row.json,
                         run.json (when, where, the --set overrides), summary.json and CSVs
                         (error.txt instead when the run failed)
    sweep.csv .jsonl .parquet   the table, rewritten from every row as runs finish

A run is finished when its directory holds row.json. A rerun skips finished runs; failed runs
too, unless ``retry_failed``. A directory holding another sweep (a different expansion) is
refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sim import __version__
from sim.errors import UserError
from sim.runs import rundir as output
from sim.runs.sweep.backends import connect
from sim.runs.sweep.spec import SweepSpec
from sim.runs.sweep.table import normalise, write_tables

SWEEP_JSON = "sweep.json"
RUNS = "runs"
#: Seconds between rewrites of the partial table while runs finish.
TABLE_EVERY_S = 5.0


@dataclass
class SweepResult:
    """The table rows in run order (every column in each), what this attempt did (runs ``ran``
    now, ``skipped`` as finished before) and the table ``files`` written."""

    out: Path
    rows: list[dict]
    ran: int
    skipped: int
    files: list[Path]

    @property
    def failed(self) -> int:
        """Runs whose status is not ``ok``."""
        return sum(r["status"] != "ok" for r in self.rows)


def _sweep_json(spec: SweepSpec) -> dict:
    return {"name": spec.name, "sweep_file": str(spec.path), "scenario": str(spec.scenario_path),
            "spec_hash": spec.spec_hash, "fields": list(spec.fields), "moe_sim": __version__,
            "sweep": spec.file.model_dump(mode="json"),
            "runs": [r.run_id for r in spec.runs]}


def prepare(spec: SweepSpec, out: Path) -> None:
    """Create ``out`` with sweep.json, or check that it holds this same sweep."""
    out = Path(out)
    marker = out / SWEEP_JSON
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    if marker.is_file():
        try:
            held = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{marker}: unreadable ({e}); choose another --out") from None
        if held.get("spec_hash") != spec.spec_hash:
            raise UserError(f"{out}: holds sweep {held.get('name')!r} from "
                            f"{held.get('sweep_file')} with other runs (grid, seeds or scenario "
                            "differ); choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not a sweep directory; choose another --out")
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    output.write_file(marker, output.to_json(_sweep_json(spec)))


def finished_rows(spec: SweepSpec, out: Path, retry_failed: bool = False) -> dict[str, dict]:
    """run_id -> row of the runs to keep. Removes what an interrupted attempt left half done
    (write_run temporaries) and, with ``retry_failed``, the failed runs."""
    runs_dir = Path(out) / RUNS
    runs_dir.mkdir(parents=True, exist_ok=True)
    for tmp in runs_dir.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    rows = {}
    for run in spec.runs:
        run_dir = runs_dir / run.run_id
        if not run_dir.exists():
            continue
        try:
            row = json.loads((run_dir / "row.json").read_text())
        except (OSError, json.JSONDecodeError):
            row = None  # not a complete run: run it again
        if row is None or (retry_failed and row.get("status") != "ok"):
            shutil.rmtree(run_dir)
        else:
            rows[run.run_id] = row
    return rows


def run_sweep(spec: SweepSpec, out: Path, workers: int | None = None,
              scheduler: str | None = None, retry_failed: bool = False,
              progress: Callable | None = None,
              log: Callable[[str], None] | None = None) -> SweepResult:
    """Run the unfinished runs of ``spec`` into ``out``; return the whole table.

    ``workers``: local processes (default one per CPU; 1 runs in this process);
    ``scheduler``: a Dask scheduler address instead; ``progress(stage, done, total)`` after
    each run; ``log(line)`` for a line about what is going to happen.
    """
    out = Path(out)
    with connect(workers, scheduler) as mapper:
        prepare(spec, out)
        rows = finished_rows(spec, out, retry_failed)
        todo = [r for r in spec.runs if r.run_id not in rows]
        if log is not None:
            n = workers or os.cpu_count() or 1
            where = f"Dask at {scheduler}" if scheduler else f"{n} local worker{'s' * (n != 1)}"
            log(f"sweep {spec.name}: {len(spec.runs)} runs, {len(rows)} already done, "
                f"{len(todo)} to run on {where}")
        skipped, last = len(rows), time.monotonic()
        try:
            for result in mapper(todo) if todo else ():
                output.write_run(out / RUNS / result["run_id"],
                                 {**result["files"], "run.json": result["meta"],
                                  "row.json": result["row"]})
                rows[result["run_id"]] = result["row"]
                if progress is not None:
                    progress("runs", len(rows), len(spec.runs))
                if time.monotonic() - last > TABLE_EVERY_S:
                    write_tables(out, _ordered(spec, rows), spec.fields)
                    last = time.monotonic()
        finally:  # also after Ctrl-C or a lost worker: the table of what finished
            files = write_tables(out, _ordered(spec, rows), spec.fields)
    table = _ordered(spec, rows)
    return SweepResult(out, normalise(table, spec.fields), len(todo), skipped, files)


def _ordered(spec: SweepSpec, rows: dict[str, dict]) -> list[dict]:
    return [rows[r.run_id] for r in spec.runs if r.run_id in rows]
