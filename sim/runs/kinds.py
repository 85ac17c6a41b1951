"""The registry of run kinds: what ``Scenario.kind`` names, how it runs, which files it writes
and what it prints.

A :class:`RunKind` is registered once, beside its implementation (``sim.runs.benchmark``,
``sim.runs.training``, ``sim.runs.serving``); ``simulate``, ``compare``, sweeps and
``results`` dispatch through :data:`RUN_KINDS` and never test a kind by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim.registry import Registry


@dataclass
class Simulated:
    """One simulated scenario: ``files`` of its run directory (``summary.json`` among them, as
    a dict) and ``text``, a few lines for the terminal."""

    files: dict
    text: str

    @property
    def summary(self) -> dict:
        """The ``summary.json`` content (SI units; rates ``*_gbps`` in Gbit/s)."""
        return self.files["summary.json"]


@dataclass(frozen=True)
class RunKind:
    """One kind of run. ``run(scenario, cluster, source, progress, reports)`` returns a
    :class:`Simulated`; ``tables`` are the CSV tables its run directory holds (``<name>.csv``);
    ``comparable`` says whether ``moesim compare`` runs it."""

    name: str
    description: str
    tables: tuple[str, ...]
    comparable: bool
    run: Callable[..., Simulated]

    def simulate(self, scenario: Any, cluster: Any, source: str = "",
                 progress: Callable | None = None, reports: bool = True) -> Simulated:
        """Run ``scenario`` on ``cluster`` as this kind (see :func:`sim.runs.simulate`)."""
        return self.run(scenario, cluster, source, progress, reports)


#: Every run kind by name (``Scenario.kind``).
RUN_KINDS: Registry[RunKind] = Registry("run kind")


def register(kind: RunKind) -> RunKind:
    """Add ``kind`` to :data:`RUN_KINDS` (once per name)."""
    return RUN_KINDS.register(kind.name)(kind)


def cluster_info(cluster: Any) -> dict:
    """The ``cluster`` entry of every summary: topology name, GPUs, nodes, GPU model."""
    return {"name": cluster.name, "gpus": int(cluster.num_gpus),
            "nodes": int(cluster.num_nodes), "gpu": cluster.gpu.name}


def summary_head(kind: str, scenario: Any, cluster: Any) -> dict:
    """What every summary starts with: ``kind``, the scenario as validated, the cluster."""
    return {"kind": kind, "scenario": scenario.model_dump(mode="json"),
            "cluster": cluster_info(cluster)}


# The kinds register themselves on import (after the names above exist).
from sim.runs import benchmark, dispatch, serving, training  # noqa: E402,F401
