"""Placement answers run as training steps, for the notebooks and the placement benchmark."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def placement_rows(scenario: Any, cluster: Any, answers: Mapping[str, Any]) -> list[dict]:
    """Run the training step of ``scenario`` once per placement answer (``{name: answer}``);
    one flat row each, in order: ``placement`` (the name), ``solver``, ``status``, the
    objective terms (``dispatch_s``, ``interlayer_s``, ``balance_s``, ``total_s``, seconds
    when the problem came from ``placement_problem``), ``bound_s`` and ``gap`` (None when
    unknown), ``wall_s`` (solve time), ``step_time_s`` (the simulated step with that placement
    on every expert-parallel group) and ``speedup`` (the first row's step / this step)."""
    from sim.moe.run import run_training

    rows: list[dict] = []
    for name, a in answers.items():
        step = run_training(scenario, cluster, placement=np.asarray(a.assign)).summary
        row = {"placement": name, "solver": a.solver, "status": a.status}
        row.update({f"{k}_s": float(v) for k, v in a.cost.items()})
        row.update(bound_s=a.bound, gap=a.gap, wall_s=a.wall_s,
                   step_time_s=float(step["step_time_s"]))
        row["speedup"] = rows[0]["step_time_s"] / row["step_time_s"] if rows else 1.0
        rows.append(row)
    return rows
