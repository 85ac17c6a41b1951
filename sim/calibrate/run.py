"""``moesim calibrate``: measurements in, a fitted communication profile and a before/after table
out. Each log is matched to a cluster of the given topology: the topology as it is when its GPU
and server counts are the log's, else the same topology with ``nodes`` set to the log's server
count (multi-server topologies); any other rank count is refused."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from sim.calibrate.fit import (
    PARAMETERS,
    START,
    Fit,
    fit,
    free_parameters,
    groups,
    has,
    predictions,
)
from sim.calibrate.nccltests import Measurement, read_measurements
from sim.comm.profile import IDEAL, CommProfile, load_profile
from sim.errors import UserError


@dataclass
class Calibration:
    """The fit, its groups of measurements, and the predictions before (``ideal``) and after."""

    fit: Fit
    rows: list[dict]


def clusters_for(measurements: Sequence[Measurement], topology: str, overrides: dict):
    """A function giving each measurement its cluster (one per (GPUs, servers) shape)."""
    from sim.topology import load_topology

    base = load_topology(topology, overrides)
    cache = {(base.num_gpus, base.num_nodes): base}
    per_node = base.gpus_per_node

    def cluster_of(m: Measurement):
        key = (m.ranks, m.nodes)
        if key not in cache:
            if m.ranks != m.nodes * per_node:
                raise UserError(f"{m.where}: {m.ranks} ranks on {m.nodes} servers, but "
                                f"topology {base.name} has {per_node} GPUs per server")
            try:
                cache[key] = load_topology(topology, {**overrides, "nodes": m.nodes})
            except UserError:
                raise UserError(f"{m.where}: {m.ranks} ranks on {m.nodes} servers; topology "
                                f"{base.name} has {base.num_gpus} GPUs on {base.num_nodes} "
                                "servers and no nodes: field to change") from None
        return cache[key]

    for m in measurements:
        cluster_of(m)
    return cluster_of


def calibrate(logs: Sequence[str | Path], topology: str, overrides: dict | None = None,
              start: str | None = None, seed: int = 0, maxiter: int = 120,
              popsize: int = 12, only: Sequence[str] | None = None,
              restarts: int = 1) -> Calibration:
    """Read ``logs``, fit a profile (from ``start``'s values, default :data:`START`); ``only``
    names the parameters to fit (default: every one the logs can tell apart that the starting
    profile has: a start without ``nvls:`` fits no NVLS). With ``restarts`` > 1 the fit runs
    from seeds ``seed``, ``seed + 1``, ... and the one of least RMS log error is kept."""
    measurements = [m for log in logs for m in read_measurements(log)]
    cluster_of = clusters_for(measurements, topology, dict(overrides or {}))
    gs = groups(measurements, cluster_of)
    base = START if start is None else load_profile(start).model_dump(exclude_none=True)
    params = [p for p in free_parameters(gs) if has(base, p.path)]
    if only is not None:
        known = {p.name: p for p in PARAMETERS}
        for name in only:
            if name not in known:
                raise UserError(f"--fit {name}: not a parameter; parameters: "
                                f"{', '.join(known)}")
            if not has(base, known[name].path):
                raise UserError(f"--fit {name}: the starting profile has no such value to "
                                "start from")
        params = [p for p in PARAMETERS if p.name in only]
    result = min((fit(gs, base, seed=seed + k, maxiter=maxiter, popsize=popsize, params=params)
                  for k in range(restarts)), key=lambda f: f.rms)
    before = predictions(IDEAL, gs)
    after = predictions(result.profile, gs)
    rows = []
    for g, b, a in zip(gs, before, after, strict=True):
        for m, tb, ta in zip(g.rows, b, a, strict=True):
            rows.append({"file": m.where.split(": line")[0], "collective": m.collective,
                         "ranks": m.ranks, "nodes": m.nodes, "size_bytes": m.size_bytes,
                         "measured_s": m.time_s, "ideal_s": float(tb),
                         "calibrated_s": float(ta)})
    return Calibration(result, rows)


def error(row: dict, key: str) -> float:
    """Relative error of a prediction against the measurement."""
    return row[key] / row["measured_s"] - 1.0


def table(rows: Sequence[dict]) -> str:
    """The before/after table: collective, GPUs, size, measured, ideal, calibrated, errors."""
    head = (f"{'collective':<15} {'GPUs':>5} {'size':>12} {'measured us':>12} {'ideal us':>11} "
            f"{'err':>7} {'calibrated us':>14} {'err':>7}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['collective']:<15} {r['ranks']:>5} {r['size_bytes']:>12} "
                     f"{r['measured_s'] * 1e6:>12.1f} {r['ideal_s'] * 1e6:>11.1f} "
                     f"{error(r, 'ideal_s'):>+7.1%} {r['calibrated_s'] * 1e6:>14.1f} "
                     f"{error(r, 'calibrated_s'):>+7.1%}")
    for label, key in (("ideal", "ideal_s"), ("calibrated", "calibrated_s")):
        errs = [abs(error(r, key)) for r in rows]
        lines.append(f"# {label}: median |error| {statistics.median(errs):.1%}, worst "
                     f"{max(errs):.1%} over {len(rows)} measurements")
    return "\n".join(lines)


def profile_yaml(profile: CommProfile, logs: Sequence[str | Path], topology: str,
                 result: Fit, name: str, flags: str = "") -> str:
    """The fitted profile as YAML, with how it was made (the command, ``flags`` its options
    beyond the topology) in its comments."""
    data = profile.model_dump(mode="json", exclude_none=True)
    data["name"] = name
    data["source"] = (f"moesim calibrate {' '.join(map(str, logs))} --topology {topology}{flags}: "
                      f"{len(result.params)} parameters fitted, RMS log error "
                      f"{result.rms_start:.3f} -> {result.rms:.3f}")
    fitted = ", ".join(p.name for p in result.params)
    head = ("# A communication profile fitted by `moesim calibrate` (sim/calibrate/fit.py).\n"
            f"# Fitted: {fitted}.\n# The rest keep their starting values (sim/calibrate/fit.py "
            "START or --start). Units: *_us microseconds, *_gbps Gbit/s, bytes as integers.\n")
    return head + yaml.safe_dump(data, sort_keys=False, width=100)
