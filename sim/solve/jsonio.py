"""Reading solver problem and answer files: one JSON object, or a one-line UserError."""

from __future__ import annotations

import json

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
