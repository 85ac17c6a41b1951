"""Reading solver problem and answer files: one JSON object, or a one-line UserError."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from sim.errors import UserError


def json_object(text: str, where: str) -> dict:
    """``text`` parsed as a JSON object; ``where`` (a file name) starts every error message."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: (top level): must be a JSON object of named fields")
    return data


def check_fields(data: dict, names: Sequence[str], optional: Iterable[str], where: str) -> None:
    """One-line UserError for the first key of ``data`` not in ``names``, then for the first of
    ``names`` missing from ``data`` that is not ``optional``."""
    for key in data:
        if key not in names:
            raise UserError(f"{where}: {key}: unknown field; allowed: {', '.join(names)}")
    skip = set(optional)
    for key in names:
        if key not in data and key not in skip:
            raise UserError(f"{where}: {key}: missing (required)")
