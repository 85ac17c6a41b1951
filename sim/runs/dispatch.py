"""The ``dispatch`` run kind: one MoE dispatch and combine as DeepEP's test runs them
(``sim.moe.dispatch_benchmark``); summary.json and a few lines for the terminal."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sim.metrics import catalogue
from sim.runs.kinds import RunKind, Simulated, register, summary_head


def text(scenario: Any, cluster: Any, summary: Mapping) -> str:
    """What ``moesim run`` prints: a heading, then the catalogue's ``run`` view."""
    d = scenario.dispatch
    head = (f"# {scenario.name}: {d.dispatcher} dispatch + combine of {d.tokens_per_gpu} tokens "
            f"per GPU (hidden {d.hidden_size}, top-{d.topk}) on {cluster.name}: "
            f"{cluster.num_gpus} GPUs; GB/s = 10^9 bytes/s, counted as DeepEP's test")
    return "\n".join([head, *catalogue.lines(summary, "dispatch")])


def _run(scenario: Any, cluster: Any, source: str = "", progress: Callable | None = None,
         reports: bool = True) -> Simulated:
    from sim.comm.profile import load_profile
    from sim.moe.dispatch_benchmark import run_dispatch

    profile = load_profile(scenario.comm_profile or cluster.comm_profile)
    summary = {**summary_head("dispatch", scenario, cluster),
               **run_dispatch(scenario, cluster, profile)}
    return Simulated({"summary.json": summary}, text(scenario, cluster, summary))


DISPATCH = register(RunKind(
    "dispatch", "one MoE dispatch and combine (DeepEP's test)", (), False, _run))
