"""One vocabulary for bad input: every message is one line,
``<file>: <field.path>: <what is wrong; what is allowed> (got <value>)``, with
`` [from <origin>]`` when the value came from somewhere else than the file (a ``--set``
override, a scenario's topology overrides) and `` (and N more problems)`` when there are more.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

_MAX_GOT = 60

#: What a name (of a scenario, a sweep) may contain: it becomes part of file names.
NAME_PATTERN = r"^[A-Za-z0-9._-]+$"


class FieldProblem(ValueError):
    """A cross-field problem raised by a model validator: ``path`` (relative to the model that
    raised it) of the field to blame, what is wrong, and the offending value."""

    def __init__(self, path: tuple[str | int, ...], message: str, value: Any) -> None:
        super().__init__(message)
        self.path, self.message, self.value = path, message, value


def got(value: Any) -> str:
    """A short ``repr`` of a bad value for ``(got ...)``."""
    text = repr(value)
    return text if len(text) <= _MAX_GOT else text[: _MAX_GOT - 3] + "..."


def _num(value: Any) -> str:
    """A bound for a message: ``0.0`` -> ``0``, ``0.5`` -> ``0.5``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dotted(loc: Sequence[str | int]) -> str:
    """``("benchmark", "sizes", 1)`` -> ``benchmark.sizes[1]``; empty -> ``(top level)``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The model class a field holds, also through ``X | None``, lists and ``Annotated``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not Literal:
        for arg in get_args(annotation):
            found = submodel(arg)
            if found is not None:
                return found
    return None


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` annotation (also through ``X | None``)."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(v for arg in get_args(annotation) for v in literal_values(arg))
    return ()


def field_info(root: type[BaseModel] | None, loc: Sequence[str | int]) -> tuple[Any, Any]:
    """(model holding the last key of ``loc``, that key's FieldInfo), either None where the
    walk leaves the schema; list indices are skipped."""
    model, info = root, None
    keys = [k for k in loc if isinstance(k, str)]
    for i, key in enumerate(keys):
        if model is None:
            return None, None
        info = model.model_fields.get(key)
        if i < len(keys) - 1:
            model = submodel(info.annotation) if info is not None else None
    return model, info


_SIMPLE = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "string_too_short": "must not be empty",
}


def _describe(err: Mapping[str, Any], root: type[BaseModel] | None,
              tags: Mapping[str, type[BaseModel]]) -> tuple[tuple, str, Any, bool]:
    """(field path, what is wrong; what is allowed, the value to show, whether to show it)."""
    kind, ctx, loc = err["type"], err.get("ctx") or {}, tuple(err["loc"])
    if loc and loc[0] in tags:  # the tag of a discriminated union, not a field
        root, loc = tags[str(loc[0])], loc[1:]
    value = err.get("input")
    parent, info = field_info(root, loc)
    choices = literal_values(info.annotation) if info is not None else ()
    one_of = "must be one of " + ", ".join(map(str, choices)) if choices else ""
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        key = str(ctx.get("discriminator", "kind")).strip("'")
        allowed = ", ".join(tags) or str(ctx.get("expected_tags", "?"))
        if kind == "union_tag_not_found":
            return (*loc, key), f"required field is missing; one of: {allowed}", None, False
        return (*loc, key), f"must be one of {allowed}", ctx.get("tag"), True
    if kind == "extra_forbidden":
        allowed = ", ".join(parent.model_fields) if parent is not None else ""
        return loc, "unknown field" + (f"; allowed: {allowed}" if allowed else ""), None, False
    if kind == "missing":
        return loc, "required field is missing" + (f"; it {one_of}" if one_of else ""), None, False
    if kind == "literal_error":
        return loc, one_of or f"must be one of {ctx.get('expected', '?')}", value, True
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        sub = submodel(info.annotation) if info is not None else (root if not loc else None)
        keys = f" with keys {', '.join(sub.model_fields)}" if sub is not None else ""
        return loc, "must be a mapping" + keys, value, True
    if kind == "value_error" and isinstance(ctx.get("error"), FieldProblem):
        problem: FieldProblem = ctx["error"]
        return loc + problem.path, problem.message, problem.value, True
    if kind == "value_error":
        return loc, str(ctx.get("error", err["msg"])), value, True
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return loc, "may contain only letters, digits, '.', '_' and '-'", value, True
    if kind == "too_short":
        n = ctx.get("min_length")
        return loc, ("must not be empty" if n == 1 else f"must have at least {n} items"), \
            value, True
    if kind in _SIMPLE:
        keys = ("gt", "ge", "lt", "le")
        return loc, _SIMPLE[kind].format(**{k: _num(ctx.get(k, "?")) for k in keys}), value, True
    msg = str(err["msg"])
    return loc, msg[:1].lower() + msg[1:], value, True


def _order(err: Mapping[str, Any]) -> int:
    # A misspelt key also makes the real key "missing": report the misspelling first.
    return {"extra_forbidden": 0, "missing": 2}.get(err["type"], 1)


def validation_message(
    error: ValidationError,
    source: str,
    model: type[BaseModel] | None = None,
    origins: Mapping[tuple[str, ...], str] | None = None,
    tags: Mapping[str, type[BaseModel]] | None = None,
) -> str:
    """One line for the most useful problem in ``error``, plus a count of the others.

    ``model`` is the root model validated (to list allowed keys and values); ``tags`` maps the
    tags of a discriminated union to their models; ``origins`` maps a key path to where its
    value came from (``--set a.b=1``), which the message then names.
    """
    errors = sorted(error.errors(include_url=False), key=_order)
    first = errors[0]
    loc, what, value, show = _describe(first, model, tags or {})
    if not loc and first["type"] == "value_error":  # a whole-file rule names its own field
        line, show = f"{source}: {what}", False
    else:
        line = f"{source}: {dotted(loc)}: {what}"
    if show:
        line += f" (got {got(value)})"
    keys = tuple(k for k in loc if isinstance(k, str))
    for path, origin in (origins or {}).items():
        if keys[: len(path)] == tuple(path):
            line += f" [from {origin}]"
            break
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return " ".join(line.split())
