"""Read a scenario file, apply ``--set a.b=c`` overrides, validate, return a frozen Scenario."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import sim
from sim.errors import UserError
from sim.scenario.errors import format_validation_error, format_yaml_error, got
from sim.scenario.schema import Scenario, section_model


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Parse one YAML file. Missing files and malformed YAML raise a one-line ``UserError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise UserError(format_yaml_error(e, str(path))) from None


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
    Returns the new data and, for messages, the ``--set`` argument behind each path.
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
        origins[path] = arg
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
        sub = section_model(info.annotation) if info is not None else None
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
        raise UserError(format_validation_error(e, source, Scenario, origins)) from None


def find_scenario(name: str | Path) -> Path:
    """The file of a shipped or local scenario: ``name`` is a path to a YAML file, or a bare name
    (``moe-switch-h100``, with or without ``.yaml``) looked up as ``scenarios/<name>.yaml`` in
    the current directory, then in each of its parents, then next to the ``sim`` package (the
    repository). So a notebook finds ``scenarios/`` whether it runs from the repository root or
    from ``notebooks/``. Not found is a one-line ``UserError`` listing where it looked.
    """
    path = Path(name)
    if path.is_file():
        return path
    file = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    if len(path.parts) > 1:
        raise UserError(f"{name}: scenario: file not found")
    cwd = Path.cwd().resolve()
    dirs = [d / "scenarios" for d in (cwd, *cwd.parents)]
    dirs.append(Path(sim.__file__).resolve().parents[1] / "scenarios")
    for d in dirs:
        if (d / file).is_file():
            return d / file
    raise UserError(f"scenarios/{file}: scenario: not found in {cwd} or its parents, nor in "
                    f"{dirs[-1].parent} (got {str(name)!r})")


def topology_overrides(scenario: Scenario) -> tuple[str, dict[str, Any]]:
    """``(topology name, overrides of that topology file's fields)`` for ``load_topology``."""
    return scenario.topology.name, copy.deepcopy(scenario.topology.overrides)
