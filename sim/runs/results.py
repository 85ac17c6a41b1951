"""Load results back into Python (notebooks, scripts): one run directory or a sweep table.

.. code-block:: python

    from sim.runs.results import load_run, load_sweep
    run = load_run("runs/moe-switch-h100-20260101-120000")
    run.summary["step_time_s"], run.table("layers")[0]["dispatch_s"]
    rows = load_sweep("runs/switch-capacity")        # list of dicts, one per run

Numbers are SI as in the files: seconds (``*_s``), bytes, rates ``*_gbps`` in Gbit/s.
pandas is optional: ``Run.frame`` and ``load_sweep_frame`` need it, the rest does not.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.errors import UserError


def tables() -> list[str]:
    """The tables a run directory may hold: every run kind's (training: layers, links;
    serving: requests, steps)."""
    from sim.runs.kinds import RUN_KINDS

    return [t for name in RUN_KINDS.names() for t in RUN_KINDS.get(name).tables]
_SWEEP_FILES = ("sweep.jsonl", "sweep.csv", "sweep.parquet")


def parse_cell(text: str, lists: bool = False) -> Any:
    """A CSV cell back to a value: '' -> None, integers, floats, True/False, else the text;
    with ``lists``, 'a;b' -> [a, b] (moe-sim writes list cells joined by ';')."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    if lists and ";" in text:
        return [parse_cell(part) for part in text.split(";")]
    if "_" not in text and text.strip() == text:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
    return text


def read_csv(path: str | Path, lists: bool = False) -> list[dict]:
    """A CSV file with a header as a list of dicts, values parsed by :func:`parse_cell`."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: parse_cell(v, lists) for k, v in r.items()} for r in csv.DictReader(f)]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UserError("pandas is not installed (pip install pandas); load_sweep() and "
                        "Run.table() give lists of dicts without it") from None
    return pandas


@dataclass
class Run:
    """One run directory: its ``summary`` (summary.json) and, for a sweep run, its ``row``."""

    path: Path
    summary: dict
    row: dict | None = None
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def tables(self) -> list[str]:
        """Names of the tables present (``layers``, ``links``, ``requests``, ``steps``)."""
        return [t for t in tables() if (self.path / f"{t}.csv").is_file()]

    def table(self, name: str) -> list[dict]:
        """Table ``name`` (with or without ``.csv``) as a list of dicts, numbers parsed and
        list cells (``expert_load``) as lists; a one-item list comes back as a number."""
        name = name.removesuffix(".csv")
        if name not in self.tables:
            raise UserError(f"{self.path}: no table {name!r}; this run has "
                            f"{', '.join(self.tables) or 'none'}")
        if name not in self._tables:
            self._tables[name] = read_csv(self.path / f"{name}.csv", lists=True)
        return self._tables[name]

    def frame(self, name: str) -> Any:
        """Table ``name`` as a pandas DataFrame (needs pandas)."""
        return _pandas().DataFrame(self.table(name))


def _read_json(path: Path) -> Any:
    from sim.inputs import read_json

    return read_json(path)


def load_run(path: str | Path) -> Run:
    """A run directory of ``moesim run`` or one of a sweep (``DIR/runs/<run_id>``)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run directory (expected a directory with summary.json)")
    row = _read_json(path / "row.json") if (path / "row.json").is_file() else None
    if not (path / "summary.json").is_file():
        if row is not None and row.get("status") != "ok":
            raise UserError(f"{path}: this sweep run failed, it has no summary: {row['error']}")
        raise UserError(f"{path}: no summary.json; expected a run directory of moesim run or "
                        "moesim sweep")
    return Run(path, _read_json(path / "summary.json"), row)


def _sweep_dir_rows(path: Path) -> list[dict]:
    """Rows from every finished run of a sweep directory (its row.json files), in run order."""
    from sim.runs.sweep.table import normalise

    info = _read_json(path / "sweep.json")
    rows = [_read_json(p / "row.json") for p in sorted((path / "runs").glob("[!.]*"))
            if (p / "row.json").is_file()]
    return normalise(rows, info.get("fields", ()))


def load_sweep(path: str | Path) -> list[dict]:
    """The rows of a sweep: ``path`` is a sweep directory (every finished run, also of an
    interrupted sweep) or its sweep.jsonl, sweep.csv or sweep.parquet. One dict per run with
    every column; Parquet gives text for columns that mix numbers and text."""
    path = Path(path)
    if path.is_dir():
        if not (path / "sweep.json").is_file():
            raise UserError(f"{path}: not a sweep directory (expected sweep.json in it)")
        return _sweep_dir_rows(path)
    if not path.is_file():
        raise UserError(f"{path}: no such sweep directory or table (expected a directory of "
                        f"moesim sweep or one of {', '.join(_SWEEP_FILES)})")
    if path.suffix == ".jsonl":
        from sim.inputs import json_lines, read_text

        return [row for _, row in json_lines(read_text(path), str(path))]
    if path.suffix == ".csv":
        return read_csv(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                            "sweep.jsonl and sweep.csv hold the same rows") from None
        return pq.read_table(path).to_pylist()
    raise UserError(f"{path}: not a sweep table; expected {', '.join(_SWEEP_FILES)} or a sweep "
                    "directory")


def load_sweep_frame(path: str | Path) -> Any:
    """:func:`load_sweep` as a pandas DataFrame (needs pandas)."""
    rows = load_sweep(path)
    return _pandas().DataFrame(rows, columns=list(rows[0]) if rows else None)
