"""Fitting a communication profile to measurements (``moesim calibrate``).

The free parameters are physical (:data:`PARAMETERS`): the launch cost, each protocol's latency
per step inside a server and across the network and its rate per channel, the achieved share of
the NVLink and NIC rates, the bytes per channel of small messages, NVLS's share and latency, the
tree's share of the ring bandwidth, and point-to-point channel rates. Each is bounded to a
physical range. Only parameters the measurements can tell apart are fitted (network parameters
need measurements across servers, NVLS an all_reduce on one NVSwitch server, point-to-point a
sendrecv or alltoall); the others keep the starting profile's values. Protocol payload
efficiencies (LL 0.5, LL128 120/128, Simple 1) and channel counts are the library's design, not
fitted.

Objective: the sum of squared log errors, log(predicted / measured), over every measurement,
the predictions being the library model's (``sim.comm.model.Model.best_time``: the time of the
algorithm and protocol it would choose, alone on the cluster; the fabric gives the same on an
idle cluster). The search is global first (``scipy.optimize.differential_evolution`` from the
``calibration`` random stream of the seed), then polished by ``scipy.optimize.least_squares``
inside the bounds. The search starts (:data:`START`) where the physics of an H100 cluster puts
the hard-to-separate parameters: the NIC at the share an alltoall reaches (0.92: 46 of 50 GB/s),
a Simple channel at about 20 GB/s. Several explanations fit 8-GPU servers about equally (a ring
held back by its channels, or by the NIC's share and LL128's headers); from there the search
finds the one of least error, the channels (which also describes large rings with fewer GPUs
per server: docs/validation.md). LL128 is a protocol for mid sizes: its threshold is at most
1 GiB.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.calibrate.nccltests import Measurement
from sim.comm.model import Model, Traffic
from sim.comm.profile import CommProfile
from sim.network.routing import Routes
from sim.rng import stream


@dataclass(frozen=True)
class Param:
    """One free parameter: its place in the profile, its bounds, whether it is searched on a log
    scale, and what the data needs so that it can be fitted (``net``: measurements across
    servers; ``nvls``: all_reduce on one server; ``p2p``: sendrecv or alltoall)."""

    path: tuple[str, ...]
    low: float
    high: float
    log: bool = False
    needs: str | None = None
    above: tuple[str, ...] | None = None
    """When set, the fitted value is added to (log: multiplies) that other parameter's, so
    the ordering physics demands holds: a protocol built for latency has the shorter steps."""

    @property
    def name(self) -> str:
        return ".".join(self.path)


#: The physical parameters and their bounds.
PARAMETERS: tuple[Param, ...] = (
    Param(("launch_us",), 1.0, 80.0),
    Param(("link_efficiency", "nvlink"), 0.4, 1.0),
    Param(("link_efficiency", "nic"), 0.4, 1.0, needs="net"),
    Param(("protocols", "LL", "step_us"), 0.0, 10.0),
    Param(("protocols", "LL128", "step_us"), 0.0, 10.0, above=("protocols", "LL", "step_us")),
    Param(("protocols", "Simple", "step_us"), 0.0, 20.0,
          above=("protocols", "LL128", "step_us")),
    Param(("protocols", "LL", "net_step_us"), 0.0, 40.0, needs="net"),
    Param(("protocols", "LL128", "net_step_us"), 0.0, 40.0, needs="net",
          above=("protocols", "LL", "net_step_us")),
    Param(("protocols", "Simple", "net_step_us"), 0.0, 60.0, needs="net",
          above=("protocols", "LL128", "net_step_us")),
    Param(("protocols", "LL", "net_overhead_us"), 0.0, 10.0, needs="net"),
    Param(("protocols", "LL128", "net_overhead_us"), 0.0, 10.0, needs="net",
          above=("protocols", "LL", "net_overhead_us")),
    Param(("protocols", "Simple", "net_overhead_us"), 0.0, 20.0, needs="net",
          above=("protocols", "LL128", "net_overhead_us")),
    *(Param(("protocols", p, "channel_gbps"), 20.0, 4000.0, log=True)
      for p in ("LL", "LL128", "Simple")),
    Param(("channel_bytes",), 2.0**16, 2.0**28, log=True),
    Param(("nvls", "efficiency"), 0.3, 1.0, needs="nvls"),
    Param(("nvls", "latency_us"), 0.0, 400.0, needs="nvls"),
    Param(("tree", "efficiency"), 0.2, 2.0, needs="net"),
    Param(("protocol_max_bytes", "LL"), 2.0**10, 2.0**26, log=True),
    Param(("protocol_max_bytes", "LL128"), 2.0**16, 2.0**30, log=True),
    Param(("p2p", "channel_gbps"), 20.0, 4000.0, log=True, needs="p2p"),
    Param(("p2p", "net_channel_gbps"), 5.0, 800.0, log=True, needs="net_p2p"),
    Param(("p2p", "round_us"), 0.0, 100.0, needs="net_p2p"),
)

#: Where the search starts, and the values of parameters the data cannot fit.
START = {
    "name": "calibrated", "launch_us": 10.0,
    "link_efficiency": {"nvlink": 0.8, "nic": 0.92},
    "channels": 32, "channel_bytes": 1 << 20, "net_channels": 16,
    "protocols": {
        "LL": {"efficiency": 0.5, "step_us": 1.0, "net_step_us": 3.0, "net_overhead_us": 1.0,
               "channel_gbps": 100.0},
        "LL128": {"efficiency": 0.9375, "step_us": 2.0, "net_step_us": 5.0,
                  "net_overhead_us": 1.0, "channel_gbps": 150.0},
        "Simple": {"efficiency": 1.0, "step_us": 4.0, "net_step_us": 10.0,
                   "net_overhead_us": 3.0, "channel_gbps": 160.0},
    },
    "nvls": {"efficiency": 0.6, "latency_us": 50.0},
    "tree": {"efficiency": 0.8},
    "p2p": {"channel_gbps": 160.0, "chunk_bytes": 512 << 10, "net_chunk_bytes": 128 << 10,
            "peer_channels": 32, "net_channels": 4, "channels": 32, "net_channel_gbps": 60.0,
            "round_us": 20.0},
    "protocol_max_bytes": {"LL": 64 << 10, "LL128": 64 << 20},
}


@dataclass
class Group:
    """The measurements of one collective on one cluster, as arrays."""

    cluster: object
    traffic: Traffic
    collective: str
    sizes: np.ndarray
    times: np.ndarray
    rows: list[Measurement]


def groups(measurements: Sequence[Measurement], cluster_of) -> list[Group]:
    """Measurements grouped by (cluster, collective); ``cluster_of(m)`` gives a measurement's
    cluster (the same object for the same shape)."""
    out: dict[tuple, Group] = {}
    traffic: dict[int, Traffic] = {}
    for m in measurements:
        cluster = cluster_of(m)
        key = (id(cluster), m.collective)
        if id(cluster) not in traffic:
            traffic[id(cluster)] = Traffic(cluster, Routes(cluster, "balanced"))
        if key not in out:
            out[key] = Group(cluster, traffic[id(cluster)], m.collective, np.zeros(0),
                             np.zeros(0), [])
        g = out[key]
        g.sizes = np.append(g.sizes, float(m.size_bytes))
        g.times = np.append(g.times, m.time_s)
        g.rows.append(m)
    return list(out.values())


def free_parameters(gs: Sequence[Group]) -> list[Param]:
    """The parameters these measurements can tell apart."""
    have = set()
    for g in gs:
        nodes = g.cluster.num_nodes
        if nodes > 1:
            have.add("net")
            if g.collective in ("sendrecv", "all_to_all"):
                have.add("net_p2p")
        if g.collective == "all_reduce" and nodes == 1:
            have.add("nvls")
        if g.collective in ("sendrecv", "all_to_all"):
            have.add("p2p")
    return [p for p in PARAMETERS if p.needs is None or p.needs in have]


def with_values(base: dict, params: Sequence[Param], values: Sequence[float]) -> CommProfile:
    """The profile ``base`` (a mapping) with each parameter set to its value."""
    data = copy.deepcopy(base)
    for p, v in zip(params, profile_values(params, values), strict=True):
        cur = data
        for key in p.path[:-1]:
            cur = cur.setdefault(key, {})
        whole = p.path[-1] == "channel_bytes" or p.path[0] == \
            "protocol_max_bytes"
        cur[p.path[-1]] = int(round(v)) if whole else float(v)
    return CommProfile.model_validate(data)


def profile_values(params: Sequence[Param], values: Sequence[float]) -> list[float]:
    """The profile's values from the fitted ones: a parameter ``above`` another is that one's
    value plus (log scale: times) its own; parameters come after the ones they are above."""
    out: dict[tuple, float] = {}
    for p, v in zip(params, values, strict=True):
        if p.above is not None and p.above in out:
            v = out[p.above] * v if p.log else out[p.above] + v
        out[p.path] = float(v)
    return [out[p.path] for p in params]


def predictions(profile: CommProfile, gs: Sequence[Group]) -> list[np.ndarray]:
    """Predicted seconds of every measurement, group by group."""
    out = []
    for g in gs:
        model = Model(g.cluster, profile, traffic=g.traffic)
        out.append(np.asarray(model.best_time(g.collective, g.sizes), float))
    return out


def log_errors(profile: CommProfile, gs: Sequence[Group]) -> np.ndarray:
    """log(predicted / measured) of every measurement, in group order."""
    return np.concatenate([np.log(p / g.times) for p, g in zip(predictions(profile, gs), gs,
                                                                 strict=True)])


@dataclass
class Fit:
    """The result: the fitted profile, the parameters fitted (and their values), and the root
    mean square log error before (``start``) and after."""

    profile: CommProfile
    params: list[Param]
    values: list[float]
    rms_start: float
    rms: float


def fit(gs: Sequence[Group], start: dict | None = None, seed: int = 0, maxiter: int = 60,
        popsize: int = 12,
        params: Sequence[Param] | None = None) -> Fit:
    """Fit the free parameters (module docstring); deterministic for a given ``seed``."""
    from scipy.optimize import differential_evolution, least_squares

    base = copy.deepcopy(start or START)
    params = list(params) if params is not None else free_parameters(gs)
    lo = np.array([math.log(p.low) if p.log else p.low for p in params])
    hi = np.array([math.log(p.high) if p.log else p.high for p in params])

    def values(x):
        return [math.exp(v) if p.log else v for p, v in zip(params, x, strict=True)]

    def residuals(x):
        return log_errors(with_values(base, params, values(x)), gs)

    def cost(x):
        return float(np.sum(residuals(x) ** 2))

    x0 = np.clip(np.array(_fitted_values(base, params), float), 1e-300, None)
    x0 = np.clip(np.array([math.log(v) if p.log else v for p, v in zip(params, x0,
                                                                       strict=True)]), lo, hi)
    rms_start = math.sqrt(cost(x0) / sum(len(g.rows) for g in gs))
    rng = stream(seed, "calibration")
    best = differential_evolution(cost, list(zip(lo, hi, strict=True)), x0=x0, rng=rng,
                                  maxiter=maxiter, popsize=popsize, tol=1e-8, polish=False,
                                  init="sobol")
    polished = least_squares(residuals, best.x, bounds=(lo, hi), x_scale="jac", max_nfev=400)
    x = polished.x if cost(polished.x) <= best.fun else best.x
    profile = with_values(base, params, values(x))
    rms = math.sqrt(cost(x) / sum(len(g.rows) for g in gs))
    return Fit(profile, params, profile_values(params, values(x)), rms_start, rms)


def has(data: dict, path: tuple[str, ...]) -> bool:
    """Whether ``data`` (a profile as a mapping) has a value at ``path``."""
    cur = data
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return False
        cur = cur[key]
    return True


def _get(data: dict, path: tuple[str, ...]) -> float:
    cur = data
    for key in path:
        cur = cur[key]
    return float(cur)


def _fitted_values(base: dict, params: Sequence[Param]) -> list[float]:
    """The free values that give ``base``'s (the inverse of :func:`profile_values`), clipped
    at 0 (or 1 on a log scale) where ``base`` breaks an ordering."""
    out = []
    fitted = {p.path for p in params}
    for p in params:
        v = _get(base, p.path)
        if p.above is not None and p.above in fitted:
            ref = _get(base, p.above)
            v = max(v / ref, 1.0) if p.log else max(v - ref, 0.0)
        out.append(v)
    return out
