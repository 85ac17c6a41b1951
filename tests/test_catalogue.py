"""The metric catalogue: every summary key of every kind named once, and every view drawn from
it (docs/metrics.md, the terminal, report.html, compare and sweep)."""

from __future__ import annotations

import json

import pytest
import yaml

from sim.metrics import catalogue
from sim.runs import simulate
from sim.scenario import load_scenario
from sim.topology import load_topology
from tests.conftest import REPO, TRAINING, merged


def test_docs_metrics_md_is_the_catalogue():
    assert (REPO / "docs" / "metrics.md").read_text(encoding="utf-8") == catalogue.markdown()


def test_every_key_is_named_once_with_a_known_unit_and_views():
    keys = [(m.key, m.within) for m in catalogue.METRICS]
    assert len(keys) == len(set(keys))
    for m in catalogue.METRICS:
        assert m.kinds and set(m.kinds) <= set(catalogue.KINDS), m.key
        assert m.show in catalogue.DISPLAY, m.key
        shown_si = catalogue.DISPLAY[m.show][0]
        assert not m.show or shown_si == m.unit, (m.key, m.unit, m.show)
        assert {v.split("@")[0] for v in m.views} <= set(catalogue.VIEWS), m.key
        assert m.description.endswith("."), m.key
    for kind in catalogue.KINDS:
        assert catalogue.main_metric(kind).better is not None
        assert all(m.short for m in catalogue.view(kind, "compare") if m.key != "kind")
        assert catalogue.view(kind, "sweep")[0] is catalogue.main_metric(kind)


def _golden_keys() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {k: {"scenario", "cluster"} for k in catalogue.KINDS}
    for path in (REPO / "tests" / "golden").glob("*.json"):
        data = json.loads(path.read_text())
        found[data["kind"]] |= set(data)
        for row in data.get("results", ()):
            found[data["kind"]] |= set(row)
    return found


@pytest.fixture(scope="module")
def smile_placed(tmp_path_factory) -> dict:
    """A training summary with the keys only some runs have: SMILE's balance terms and a
    placement's comparison."""
    path = tmp_path_factory.mktemp("cat") / "s.yaml"
    data = merged(TRAINING, moe={"router": {"name": "smile"}},
                  placement={"solver": "greedy"})
    path.write_text(yaml.safe_dump(data))
    sc = load_scenario(path)
    return simulate(sc, load_topology(*_topology(sc)), str(path), reports=False).summary


def _topology(sc):
    return sc.topology.name, sc.topology.overrides


def test_no_summary_key_without_an_entry_and_no_entry_without_a_key(smile_placed):
    assert catalogue.unknown_keys(smile_placed, "training") == []
    assert {"smile_node_balance", "placement_speedup", "placement"} <= set(smile_placed)
    found = _golden_keys()
    found["training"] |= set(smile_placed)
    for kind in catalogue.KINDS:
        named = set(catalogue.keys(kind)) | {f for m in catalogue.METRICS if m.within
                                            for f in catalogue.keys(kind, m.within)}
        assert named == found[kind], kind


def test_terminal_report_and_compare_draw_their_labels_from_the_catalogue(smile_placed):
    from sim.report.html import summary_rows
    from sim.runs.training import text

    sc = load_scenario(REPO / "scenarios" / "moe-switch-h100.yaml")
    cluster = load_topology("h100-leaf-spine", {"nodes": 1})
    lines = text(sc, cluster, smile_placed).splitlines()[1:]
    shown = [m for m in catalogue.view("training", "run") if m.key in smile_placed]
    assert [line.split("  ")[0].strip() for line in lines] == [m.label for m in shown]
    step = next(line for line in lines if line.startswith("step time "))
    assert step.endswith(f"{smile_placed['step_time_s'] * 1e3:.4g} ms")
    rows = summary_rows(smile_placed)
    assert [h for h, _ in rows] == [m.heading for m in catalogue.view("training", "report")
                                    if m.key in smile_placed]
    assert dict(rows)["SMILE node balance"] == f"{smile_placed['smile_node_balance']:.4g}"
