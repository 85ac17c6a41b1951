"""One-line messages for bad scenario input.

Every message has the shape ``<file>: <field.path>: <what is wrong; what is allowed> (got <v>)``
so a user can find the line to fix without reading a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sim.scenario.schema import NAME_PATTERN, field_at, literal_values

_MAX_GOT = 60


def got(value: Any) -> str:
    """A short ``repr`` of a bad value for ``(got ...)``."""
    text = repr(value)
    return text if len(text) <= _MAX_GOT else text[: _MAX_GOT - 3] + "..."


def _num(value: Any) -> str:
    """A bound for a message: ``0.0`` -> ``0``, ``0.5`` -> ``0.5``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dotted(loc: tuple[str | int, ...]) -> str:
    """``("benchmark", "sizes", 1)`` -> ``benchmark.sizes[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _resolve(model: type[BaseModel] | None, loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    if model is None:
        return None, None
    try:
        return field_at(model, loc)
    except KeyError:
        return None, None


def _what(error: Mapping[str, Any], model: type[BaseModel] | None) -> tuple[str, bool]:
    """(what is wrong; what is allowed, whether to append ``(got ...)``) for one pydantic error."""
    kind, ctx = error["type"], error.get("ctx") or {}
    parent, info = _resolve(model, error["loc"])
    choices = literal_values(info.annotation) if info is not None else ()
    one_of = "must be one of " + ", ".join(map(str, choices)) if choices else ""
    if kind == "extra_forbidden":
        allowed = ", ".join(parent.model_fields) if parent is not None else ""
        return "unknown field" + (f"; allowed: {allowed}" if allowed else ""), False
    if kind == "missing":
        return "required field is missing" + (f"; it {one_of}" if one_of else ""), False
    if kind == "literal_error":
        return one_of or f"must be one of {ctx.get('expected', '?')}", True
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        sub = info.annotation if info is not None else None
        keys = getattr(sub, "model_fields", None)
        return "must be a mapping" + (f" with keys {', '.join(keys)}" if keys else ""), True
    if kind == "value_error":
        return str(ctx.get("error", error["msg"])), True
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return "may contain only letters, digits, '.', '_' and '-'", True
    simple = {
        "greater_than_equal": f"must be >= {_num(ctx.get('ge'))}",
        "greater_than": f"must be > {_num(ctx.get('gt'))}",
        "less_than_equal": f"must be <= {_num(ctx.get('le'))}",
        "less_than": f"must be < {_num(ctx.get('lt'))}",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "string_too_short": "must not be empty",
        "too_short": "must not be empty"
        if ctx.get("min_length") == 1
        else f"must have at least {ctx.get('min_length')} items",
    }
    if kind in simple:
        return simple[kind], True
    msg = str(error["msg"])
    return msg[:1].lower() + msg[1:], True


def _order(error: Mapping[str, Any]) -> int:
    # A misspelt key also makes the real key "missing": report the misspelling first.
    return {"extra_forbidden": 0, "missing": 2}.get(error["type"], 1)


def format_validation_error(
    error: ValidationError,
    source: str,
    model: type[BaseModel] | None = None,
    origins: Mapping[tuple[str, ...], str] | None = None,
) -> str:
    """One line for the most useful problem in ``error``, plus a count of the others.

    ``model`` is the root model validated (to list allowed keys and values); ``origins`` maps a
    key path to the ``--set`` argument that wrote it, so that the message can say so.
    """
    errors = sorted(error.errors(include_url=False), key=_order)
    first = errors[0]
    what, show_value = _what(first, model)
    if not first["loc"]:  # a whole-scenario rule: its message starts with the field it names
        line, show_value = f"{source}: {what}", False
    else:
        line = f"{source}: {dotted(first['loc'])}: {what}"
    if show_value:
        line += f" (got {got(first['input'])})"
    keys = tuple(k for k in first["loc"] if isinstance(k, str))
    for path, arg in (origins or {}).items():
        if keys[: len(path)] == path:
            line += f" [from --set {arg}]"
            break
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return " ".join(line.split("\n"))


def format_yaml_error(error: yaml.YAMLError, source: str) -> str:
    """One line for malformed YAML, naming the line (and column) where the parser stopped."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    return f"{source}: {where}invalid YAML: {' '.join(str(problem).split())}"
