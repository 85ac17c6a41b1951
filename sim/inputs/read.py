"""Strict readers: text, YAML, JSON, JSON lines and commented CSV tables, each failing with one
line naming the file.

Strict means: a key given twice in one mapping is refused (YAML and JSON parsers keep the last
one silently), JSON's non-standard ``NaN`` and ``Infinity`` are refused, and malformed input
names the line (and column) where the parser stopped:
``<file>: line L, column C: invalid YAML: <problem>`` (or ``invalid JSON``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from sim.errors import UserError


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of ``path``; a missing file, a directory or unreadable bytes are one line."""
    path = Path(path)
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not {encoding.upper()} text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _where(line: int, column: int | None = None) -> str:
    return f"line {line}" + (f", column {column}" if column is not None else "")


def yaml_message(error: yaml.YAMLError, source: str) -> str:
    """Malformed YAML as one line naming the line and column where the parser stopped."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{_where(mark.line + 1, mark.column + 1)}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}, {problem}" if context and context not in str(problem) else problem
    return " ".join(f"{source}: {where}invalid YAML: {detail}".split())


def read_yaml(path: str | Path) -> Any:
    """Parse one YAML file strictly (see the module docstring)."""
    text = read_text(path)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise UserError(yaml_message(e, str(path))) from None


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Duplicate(f"{name} is not a JSON number")


def parse_json(text: str, where: str, first_line: int = 1) -> Any:
    """``text`` parsed as strict JSON; ``where`` (a file name) starts every error message and
    ``first_line`` is the file's line number of the text's first line."""
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as e:
        at = _where(e.lineno + first_line - 1, e.colno)
        raise UserError(f"{where}: {at}: invalid JSON: {e.msg}") from None
    except _Duplicate as e:
        at = f"{_where(first_line)}: " if first_line > 1 or "\n" not in text.strip() else ""
        raise UserError(f"{where}: {at}invalid JSON: {e}") from None


def read_json(path: str | Path) -> Any:
    """Parse one JSON file strictly."""
    return parse_json(read_text(path), str(path))


def json_object(text: str, where: str) -> dict:
    """``text`` parsed as one JSON object (a mapping of named fields)."""
    data = parse_json(text, where)
    if not isinstance(data, dict):
        raise UserError(f"{where}: (top level): must be a JSON object of named fields")
    return data


def text_or_file(text_or_path: str | Path) -> tuple[str, str]:
    """``(text, where)``: JSON text given inline (it starts with ``{`` or ``[``) as itself,
    anything else read as a file path."""
    if isinstance(text_or_path, str) and text_or_path.lstrip().startswith(("{", "[")):
        return text_or_path, "<json>"
    return read_text(text_or_path), str(text_or_path)


def json_lines(text: str, where: str) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON-lines text, parsed strictly;
    ``where`` names the file in messages (``<file>: line N: invalid JSON: ...``)."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, parse_json(line, where, lineno)


def check_fields(data: dict, names: Sequence[str], optional: Iterable[str], where: str) -> None:
    """One-line UserError for the first key of ``data`` not in ``names``, then for the first of
    ``names`` missing from ``data`` that is not ``optional``."""
    for key in data:
        if key not in names:
            raise UserError(f"{where}: {key}: unknown field; allowed: {', '.join(names)}")
    skip = set(optional)
    for key in names:
        if key not in data and key not in skip:
            raise UserError(f"{where}: {key}: required field is missing")


def csv_table(path: str | Path, columns: Sequence[str], what: str) -> list[tuple[int, dict]]:
    """The data rows of a CSV table whose ``#`` lines are comments, as ``(line number, row)``
    pairs (row: column -> text). The header must have every one of ``columns`` (``what`` names
    such a file in messages); no header, a missing column or no data row is one line."""
    lines = [(n, line) for n, line in enumerate(read_text(path).splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UserError(f"{path}: no table (expected a header {','.join(columns)})")
    reader = csv.DictReader(line for _, line in lines)
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise UserError(f"{path}: line {lines[0][0]}: {missing[0]}: missing column (the "
                        f"header must be {','.join(columns)}, as in {what})")
    rows = [(n, row) for (n, _), row in zip(lines[1:], reader, strict=True)]
    if not rows:
        raise UserError(f"{path}: no data rows")
    return rows
