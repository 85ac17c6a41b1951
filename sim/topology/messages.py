"""One-line user messages for bad topology files:
``<file>: <field.path>: <what is wrong; what is allowed> (got <value>)``."""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from sim.topology.schema import KINDS, MODEL_OF_KIND, FieldProblem

_MAX_GOT = 60


def got(value: Any) -> str:
    """A short ``repr`` for ``(got ...)``."""
    text = repr(value)
    return text if len(text) <= _MAX_GOT else text[: _MAX_GOT - 3] + "..."


def dotted(loc: Iterable[str | int]) -> str:
    """``("links", 3, "a")`` -> ``links[3].a``; empty -> ``(top level)``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _num(x: Any) -> Any:
    """``0.0`` -> ``0`` for messages."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list):
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def _model_at(root: type[BaseModel] | None, keys: Iterable[str | int]) -> type[BaseModel] | None:
    model = root
    for key in keys:
        if isinstance(key, int) or model is None:
            continue
        info = model.model_fields.get(key)
        model = _submodel(info.annotation) if info is not None else None
    return model


_SIMPLE = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "too_short": "must have at least {min_length} item(s)",
    "string_too_short": "must not be empty",
}


def _one(err: dict[str, Any], source: str, overridden: set[tuple[str, ...]]) -> str:
    kind, ctx, loc = err["type"], err.get("ctx") or {}, tuple(err["loc"])
    root = None
    if loc and loc[0] in MODEL_OF_KIND:  # discriminated-union tag, not a field
        root, loc = MODEL_OF_KIND[str(loc[0])], loc[1:]
    value, show = err.get("input"), True
    if kind == "union_tag_not_found":
        loc, what, show = ("kind",), f"required; one of: {', '.join(KINDS)}", False
    elif kind == "union_tag_invalid":
        loc, what, value = ("kind",), f"unknown kind; allowed: {', '.join(KINDS)}", ctx.get("tag")
    elif kind in ("model_attributes_type", "model_type", "dict_type"):
        sub = _model_at(root, loc) if loc else None
        keys = f" with keys: {', '.join(sub.model_fields)}" if sub is not None else ""
        what = ("must be a mapping" + keys) if loc else "must be a mapping of topology fields"
    elif kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent is not None else "?"
        what, value = f"unknown key; allowed keys here: {allowed}", loc[-1]
    elif kind == "missing":
        what, show = "required field is missing", False
    elif kind == "literal_error":
        what = f"must be one of {ctx.get('expected', '?')}"
    elif kind == "value_error" and isinstance(ctx.get("error"), FieldProblem):
        problem: FieldProblem = ctx["error"]
        loc, what, value = loc + problem.path, problem.message, problem.value
    elif kind == "value_error":
        what = str(ctx.get("error", err["msg"]))
    elif kind in _SIMPLE:
        keys = ("gt", "ge", "lt", "le", "min_length")
        what = _SIMPLE[kind].format(**{k: _num(ctx.get(k, "?")) for k in keys})
    else:
        msg = str(err["msg"])
        what = msg[:1].lower() + msg[1:]
    line = f"{source}: {dotted(loc)}: {what}"
    if show:
        line += f" (got {got(value)})"
    keys = tuple(k for k in loc if isinstance(k, str))
    if any(keys[: len(p)] == p for p in overridden):
        line += " [from overrides]"
    return line


def _priority(err: dict[str, Any]) -> int:
    # A misspelt key also makes the real key "missing": report the misspelling first.
    return {"extra_forbidden": 0, "missing": 2}.get(err["type"], 1)


def validation_message(
    error: ValidationError, source: str, overridden: set[tuple[str, ...]] = frozenset()
) -> str:
    """The most useful problem of ``error`` as one line, plus how many others there are."""
    errors = sorted(error.errors(include_url=False), key=_priority)
    line = _one(errors[0], source, set(overridden))
    if len(errors) > 1:
        n = len(errors) - 1
        line += f" (and {n} more problem{'s' if n > 1 else ''})"
    return " ".join(line.split())


def yaml_message(error: yaml.YAMLError, source: str) -> str:
    """Malformed YAML as one line naming the line and column where the parser stopped."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(file)"
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}, {problem}" if context else str(problem)
    return " ".join(f"{source}: {where}: malformed YAML; {detail}".split())
