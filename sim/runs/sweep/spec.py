"""Sweep files: a base scenario, overrides for every run, a grid and/or a list of points, seeds.

.. code-block:: yaml

    name: switch-capacity                        # optional; default: the file's stem
    scenario: ../scenarios/moe-switch-h100.yaml  # relative to the sweep file
    set: {model.num_layers: 4}                   # dotted scenario field -> value, every run
    grid:                                        # the cartesian product of these lists
      moe.moe_expert_capacity_factor: [0.5, 1.0, 2.0]
      moe.router.name: [switch, hash]
    runs:                                        # explicit points, crossed with the grid
      - {gating.popularity_skew: 0.0}
      - {gating.popularity_skew: 1.2}
    seeds: [1, 2]                                # default: the scenario's own seed

The points are grid x runs (a grid alone, runs alone, or neither: the base scenario once); each
point runs once per seed. A point's value wins over ``set``. Every run's scenario and topology
is loaded and validated here, before anything runs, so a typo fails the whole sweep at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from sim.errors import UserError
from sim.inputs import read_yaml, validation_message
from sim.scenario import Scenario, load_scenario, topology_overrides
from sim.scenario.load import default_name
from sim.scenario.schema import NAME_PATTERN, field_at
from sim.scenario.schema_base import StrictModel

Values = Annotated[list[Any], Field(min_length=1)]


class SweepFile(StrictModel):
    """What a sweep file may say (see the module docstring)."""

    name: str | None = Field(None, pattern=NAME_PATTERN)
    scenario: str = Field(min_length=1)
    """The base scenario file, relative to the sweep file."""
    set: dict[str, Any] = {}
    grid: dict[str, Values] = {}
    runs: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its id, point (field -> value), seed, the ``--set`` overrides that
    make it from the base scenario, the validated scenario and its cluster."""

    run_id: str
    point: dict
    seed: int
    sets: tuple[str, ...]
    scenario: Scenario
    cluster: Any
    source: str


@dataclass(frozen=True)
class SweepSpec:
    """A validated, expanded sweep file: ``fields`` are the swept scenario fields in column
    order; ``runs`` in a fixed order (the same file always gives the same ids)."""

    name: str
    path: Path
    scenario_path: Path
    fields: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    file: SweepFile

    @property
    def spec_hash(self) -> str:
        """sha256 over every run's id and resolved scenario: equal iff the runs are the same."""
        data = [[r.run_id, r.scenario.model_dump(mode="json")] for r in self.runs]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _check_field(source: str, where: str, key: str) -> None:
    """A dotted key must name a scenario field (anything below ``topology.`` is the topology's)."""
    path = key.split(".")
    loc = f"{source}: {where}.{key}"
    if key == "seed":
        raise UserError(f"{loc}: give seeds with seeds: [1, 2, ...], not as an override")
    if not all(path):
        raise UserError(f"{loc}: not a dotted scenario field such as moe.router.name")
    try:
        model, info = field_at(Scenario, path)
    except KeyError as e:
        raise UserError(f"{loc}: {e.args[0]} is a value, not a section of the scenario") from None
    if info is None and model.model_config.get("extra") != "allow":
        raise UserError(f"{loc}: unknown scenario field; allowed: {', '.join(model.model_fields)}")


def _arg(key: str, value: Any) -> str:
    """``--set`` text for one override; JSON is YAML, so the value comes back exactly."""
    return f"{key}={json.dumps(value, default=str)}"


def _short_names(fields: list[str]) -> dict[str, str]:
    """The shortest unique dotted suffix of each field (``router.name`` rather than ``name``)."""
    out = {}
    for f in fields:
        parts = f.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            unique = not any(g == short or g.endswith("." + short) for g in fields if g != f)
            if unique and (parts[-n] != "name" or n == len(parts)):
                break
        out[f] = short
    return out


def _value_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:24] or "_"


def run_id(index: int, width: int, point: Mapping, seed: int, short: Mapping[str, str]) -> str:
    """``0003-moe_expert_capacity_factor=1.0-router.name=hash-seed=2``: index, point, seed."""
    parts = [f"{index:0{width}d}"] + [f"{short[k]}={_value_text(v)}" for k, v in point.items()]
    return "-".join([*parts, f"seed={seed}"])


def read_sweep_file(path: str | Path) -> SweepFile:
    """Parse and check the sweep file's own schema (not yet the scenarios it makes)."""
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{source}: (top level): must be a mapping with scenario: and grid:, "
                        "runs: or seeds:")
    try:
        return SweepFile.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, source, SweepFile)) from None


def _points(sf: SweepFile, source: str) -> tuple[list[str], list[dict]]:
    """(swept fields in column order, the points: grid x runs)."""
    for key in sf.set:
        _check_field(source, "set", key)
    for key in sf.grid:
        _check_field(source, "grid", key)
    runs = sf.runs or [{}]
    for i, run in enumerate(runs):
        for key in run:
            _check_field(source, f"runs[{i}]", key)
            if key in sf.grid:
                raise UserError(f"{source}: runs[{i}].{key}: also in grid; sweep a field in "
                                "grid: or in runs:, not both")
    fields = list(sf.grid) + list(dict.fromkeys(k for run in runs for k in run))
    combos = [dict(zip(sf.grid, values, strict=True))
              for values in itertools.product(*sf.grid.values())]
    return fields, [{**g, **run} for g in combos for run in runs]


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read, expand and validate a sweep file: every run's scenario and topology are loaded
    here. Any problem is a one-line ``UserError`` naming the sweep file."""
    path = Path(path)
    source = str(path)
    sf = read_sweep_file(path)
    scenario_path = path.parent / sf.scenario
    base_sets = [_arg(k, v) for k, v in sf.set.items()]
    fields, points = _points(sf, source)
    try:
        base = load_scenario(scenario_path, base_sets)
    except UserError as e:
        raise UserError(f"{source}: scenario: {e}") from None
    seeds = sf.seeds or [base.seed]
    todo = [(p, s) for p in points for s in seeds]
    short, width = _short_names(fields), max(4, len(str(len(todo) - 1)))
    seen: dict[str, str] = {}
    clusters: dict[str, Any] = {}
    runs = []
    for i, (point, seed) in enumerate(todo):
        rid = run_id(i, width, point, seed, short)
        key = json.dumps([point, seed], sort_keys=True, default=str)
        if key in seen:
            raise UserError(f"{source}: run {rid} repeats run {seen[key]}; remove the duplicate "
                            "value from grid:, runs: or seeds:")
        seen[key] = rid
        sets = (*base_sets, *(_arg(k, v) for k, v in point.items()), _arg("seed", seed))
        sc = _scenario(source, rid, scenario_path, sets)
        runs.append(RunSpec(rid, dict(point), seed, sets, sc,
                            _cluster(source, rid, scenario_path, sc, clusters),
                            str(scenario_path)))
    return SweepSpec(sf.name or default_name(path), path, scenario_path, tuple(fields),
                     tuple(runs), sf)


def _scenario(source: str, rid: str, scenario_path: Path, sets: tuple[str, ...]) -> Scenario:
    try:
        return load_scenario(scenario_path, sets)
    except UserError as e:
        raise UserError(f"{source}: run {rid}: {e}") from None


def _cluster(source: str, rid: str, scenario_path: Path, sc: Scenario, cache: dict) -> Any:
    """The run's cluster, built once per distinct topology (name + overrides)."""
    from sim.topology import load_topology

    name, overrides = topology_overrides(sc)
    key = json.dumps([name, overrides], sort_keys=True, default=str)
    if key not in cache:
        try:
            cache[key] = load_topology(name, overrides)
        except UserError as e:
            raise UserError(f"{source}: run {rid}: {scenario_path}: topology: {e}") from None
    return cache[key]
