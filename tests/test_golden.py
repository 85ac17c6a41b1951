"""Every shipped scenario against its golden summary (tests/golden/<name>.json).

A change that moves a number fails here. Regenerate on purpose only, after checking why the
numbers moved: ``MOESIM_REGEN_GOLDEN=1 pytest tests/test_golden.py -m 'slow or not slow'``.
"""

import json
import os
from pathlib import Path

import pytest

from sim.metrics import catalogue
from sim.runs import simulate
from sim.scenario.load import load_scenario
from sim.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SLOW = {"train-deepseek-v3-h800"}  # ~40 s: kept out of the default run


def _result(path: Path):
    """The summary of the scenario's run (through the run kind registry, as moesim run does)
    without its inputs (the resolved scenario and the cluster)."""
    sc = load_scenario(path)
    cluster = load_topology(sc.topology.name, sc.topology.overrides)
    summary = simulate(sc, cluster, str(path), reports=False).summary
    return {k: v for k, v in summary.items() if k not in ("scenario", "cluster")}


def _flat(obj, prefix=""):
    """Nested dicts and lists as {"a.b.0.c": leaf}."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _params():
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        marks = [pytest.mark.slow] if path.stem in SLOW else []
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", list(_params()))
def test_scenario_matches_its_golden_summary(path):
    got = json.loads(json.dumps(_result(path)))
    assert catalogue.unknown_keys(got, got["kind"]) == []  # every key named in the catalogue
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("MOESIM_REGEN_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = _flat(json.loads(golden.read_text()))
    got = _flat(got)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key
        else:
            assert got[key] == value, key
