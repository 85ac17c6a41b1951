"""Read a scenario file, apply ``--set a.b=c`` overrides, validate, return a frozen Scenario."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sim.errors import UserError
from sim.inputs import find_file, got, read_yaml, validation_message
from sim.inputs.messages import submodel
from sim.scenario.schema import Scenario


def apply_sets(
    data: dict,
    sets: Iterable[str],
    source: str,
    model: type[BaseModel] = Scenario,
) -> tuple[dict, dict[tuple[str, ...], str]]:
    """Apply ``KEY=VALUE`` overrides to a copy of ``data``.

    ``KEY`` is a dotted path that must name a field of ``model`` (keys below a free-form mapping
    such as ``topology`` are accepted as they are); missing intermediate mappings are created.
    ``VALUE`` is parsed as YAML, so ``4``, ``hash``, ``16MiB`` and ``[1MiB, 2MiB]`` all work.
    Returns the new data and, for messages, where each path's value came from
    (``--set KEY=VALUE``).
    """
    data = copy.deepcopy(data)
    origins: dict[tuple[str, ...], str] = {}
    for arg in sets:
        key, sep, raw = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{source}: --set {arg}: expected KEY=VALUE such as fabric.ecmp=hash")
        path = tuple(key.split("."))
        if not all(path):
            raise UserError(f"{source}: --set {arg}: {key!r} is not a dotted key such as a.b.c")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"{source}: --set {arg}: value is not valid YAML") from None
        _put(data, path, value, model, source, arg)
        origins[path] = f"--set {arg}"
    return data, origins


def _put(data: dict, path: tuple[str, ...], value: Any, model: Any, source: str, arg: str) -> None:
    cur = data
    for i, key in enumerate(path):
        where = ".".join(path[: i + 1])
        info = model.model_fields.get(key) if model is not None else None
        if model is not None and info is None:
            if model.model_config.get("extra") != "allow":
                allowed = ", ".join(model.model_fields)
                raise UserError(
                    f"{source}: {where}: unknown field; allowed: {allowed} [from --set {arg}]"
                )
            model = None  # free-form below here; checked later by whoever owns it
        if i == len(path) - 1:
            cur[key] = value
            return
        sub = submodel(info.annotation) if info is not None else None
        if model is not None and sub is None:
            raise UserError(
                f"{source}: {where}: is a value, not a section; cannot set {'.'.join(path)} "
                f"[from --set {arg}]"
            )
        nxt = cur.get(key)
        if nxt is None:
            nxt = {}
        elif isinstance(nxt, str) and getattr(sub, "SHORTHAND_KEY", None):
            nxt = {sub.SHORTHAND_KEY: nxt}
        elif not isinstance(nxt, dict):
            raise UserError(
                f"{source}: {where}: is not a mapping (got {got(nxt)}); cannot set "
                f"{'.'.join(path)} [from --set {arg}]"
            )
        cur[key] = nxt
        cur, model = nxt, sub


def default_name(path: str | Path) -> str:
    """A scenario name from a file name: the stem, with characters unsafe in paths replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).strip("-") or "scenario"


def load_scenario(path: str | Path, sets: Iterable[str] = ()) -> Scenario:
    """Load, override (``sets`` as ``["a.b=c", ...]``) and validate one scenario file.

    Any problem raises ``sim.errors.UserError`` with one line naming the file and field.
    """
    source = str(path)
    data = read_yaml(path)
    if data is None:
        raise UserError(f"{source}: file is empty; a scenario needs topology: and benchmark:")
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: (top level): must be a mapping with keys such as topology and benchmark "
            f"(got a {type(data).__name__})"
        )
    data, origins = apply_sets(data, sets, source)
    if data.get("name") is None:
        data["name"] = default_name(path)
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, source, Scenario, origins)) from None


def find_scenario(name: str | Path) -> Path:
    """The file of a shipped or local scenario: ``name`` is a path to a YAML file, or a bare name
    (``moe-switch-h100``) looked up as ``scenarios/<name>.yaml`` in the current directory, its
    parents, then the repository (:func:`sim.inputs.find_file`), so a notebook finds
    ``scenarios/`` whether it runs from the repository root or from ``notebooks/``."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and len(path.parts) == 1 and not path.is_file():
        name = path.stem  # a bare file name is looked up like a bare name
    return find_file(str(name), "scenarios", "scenario")


def topology_overrides(scenario: Scenario) -> tuple[str, dict[str, Any]]:
    """``(topology name, overrides of that topology file's fields)`` for ``load_topology``."""
    return scenario.topology.name, copy.deepcopy(scenario.topology.overrides)
