"""Run directories: written atomically, JSON and CSV text of run results.

A run directory appears complete or not at all: files are written into a hidden sibling
directory which is renamed into place at the end. What goes into one is each run kind's
(``sim.runs.kinds``); reading it back is ``sim.runs.results``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sim.errors import UserError


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def to_json(data: Any) -> str:
    """Pretty JSON with a trailing newline (numpy values become plain numbers)."""
    return json.dumps(data, indent=2, default=_plain) + "\n"


def check_out_dir(out_dir: Path) -> None:
    """Raise ``UserError`` unless ``out_dir`` is absent or an empty directory (never overwrite)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty directory; choose another --out")


def default_run_dir(name: str, root: Path = Path("runs"), now: datetime | None = None) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that already exists."""
    base = f"{name}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    path, n = Path(root) / base, 1
    while path.exists():
        n += 1
        path = Path(root) / f"{base}-{n}"
    return path


def write_run(out_dir: Path, files: Mapping[str, str | bytes | dict | list]) -> Path:
    """Write ``files`` (relative name -> content) into ``out_dir`` atomically; return ``out_dir``.

    Strings are written as UTF-8 text, bytes as they are, dicts and lists as pretty JSON. The
    directory must not exist yet (or be empty). On any failure nothing is left behind.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    for name in files:
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or ".." in rel.parts:
            raise ValueError(f"output file name must be relative and inside the run: {name!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, content in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            else:
                target.write_text(to_json(content), encoding="utf-8")
        try:
            os.replace(tmp, out_dir)
        except OSError as e:
            raise UserError(f"{out_dir}: cannot create run directory: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_file(path: Path, content: str | bytes) -> Path:
    """Write one file atomically (a hidden temporary sibling renamed into place); return it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Rows as CSV text with a header; lists are joined with ';'."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([";".join(map(str, v)) if isinstance(v, list) else v
                    for v in (r[c] for c in columns)])
    return buf.getvalue()
