"""DeepEP's published normal-kernel table in, a profile's ``deepep`` section out.

The table (``data/calibration/deepep-h800-normal.csv``: kernel, ranks, nodes, link,
dispatch_GBps, combine_GBps; GB/s counted as DeepEP's test counts them) is compared with the
``dispatch`` run kind on the same cluster shapes: DeepEP's test (``scenarios/deepep-h800.yaml``)
at each row's GPU count, the ``nvl`` bandwidth for an NVLink row, ``rdma`` for an RDMA row.
The fit (``fit_deepep``) finds the profile's three DeepEP parameters (a fixed cost and the two
stage rates, ``sim.comm.profile.DeepEPCost``) by least squares on log time, within physical
bounds; the links and the rest of the profile stay as they are.

    python -m sim.calibrate.deepep                     # before/after table
    python -m sim.calibrate.deepep --write             # and write the section into the profile
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sim.errors import UserError
from sim.inputs import csv_table

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "data" / "calibration" / "deepep-h800-normal.csv"
SCENARIO = REPO / "scenarios" / "deepep-h800.yaml"
PROFILE = REPO / "profiles" / "h800-nccl.yaml"
COLUMNS = ("kernel", "ranks", "nodes", "link", "dispatch_GBps", "combine_GBps")
#: (name, lower, upper, start): the fitted parameters and their physical bounds.
BOUNDS = (("launch_us", 0.0, 200.0, 20.0),           # a launch and a barrier: tens of us
          ("forward_gbps", 40.0, 3200.0, 400.0),     # up to the NVLink rate of a GPU x 2
          ("nvlink_gbps", 100.0, 3200.0, 1200.0))


@dataclass(frozen=True)
class Row:
    """One row of the table: ``ranks`` GPUs on ``nodes`` servers, bandwidths in GB/s."""

    kernel: str
    ranks: int
    nodes: int
    link: str
    dispatch_GBps: float
    combine_GBps: float


def read_table(path: str | Path = TABLE) -> list[Row]:
    """The rows of a DeepEP table (``#`` lines are comments); one-line UserErrors."""
    rows = []
    for lineno, r in csv_table(path, COLUMNS, "a DeepEP table"):
        at = f"{path}: line {lineno}"
        try:
            row = Row(r["kernel"], int(r["ranks"]), int(r["nodes"]), r["link"],
                      float(r["dispatch_GBps"]), float(r["combine_GBps"]))
        except (TypeError, ValueError):
            raise UserError(f"{at}: ranks and nodes must be integers, the bandwidths "
                            "numbers") from None
        if row.link not in ("nvlink", "rdma") or min(row.dispatch_GBps, row.combine_GBps) <= 0:
            raise UserError(f"{at}: link must be nvlink or rdma and the bandwidths positive")
        rows.append(row)
    return rows


class Bench:
    """The DeepEP test at each row's shape: scenarios (``sets``: --set overrides of the
    scenario file), clusters and routings built once."""

    def __init__(self, rows: Sequence[Row], scenario: str | Path = SCENARIO,
                 sets: Sequence[str] = ()):
        from sim.moe.dispatch_benchmark import route
        from sim.scenario import load_scenario, topology_overrides
        from sim.topology import load_topology

        self.rows, self.cases = list(rows), []
        for row in self.rows:
            sc = load_scenario(scenario, [*sets, f"topology.nodes={row.nodes}"])
            cluster = load_topology(*topology_overrides(sc))
            if cluster.num_gpus != row.ranks:
                raise UserError(f"{scenario}: a row has {row.ranks} ranks on {row.nodes} "
                                f"nodes; the topology gives {cluster.num_gpus} GPUs")
            self.cases.append((sc, cluster, route(sc.dispatch, cluster.node_of, sc.seed)))

    def predict(self, profile) -> list[dict]:
        """One row per (table row, dispatch or combine): measured and predicted GB/s."""
        from sim.moe.dispatch_benchmark import run_dispatch

        out = []
        for row, (sc, cluster, routing) in zip(self.rows, self.cases, strict=True):
            s = run_dispatch(sc, cluster, profile, routing)
            key = "nvl" if row.link == "nvlink" else "rdma"
            for op in ("dispatch", "combine"):
                out.append({"ranks": row.ranks, "nodes": row.nodes, "link": row.link,
                            "op": op, "measured_GBps": getattr(row, f"{op}_GBps"),
                            "predicted_GBps": s[f"{op}_{key}_gbps"] / 8})
        return out


def with_deepep(profile, values: Sequence[float]):
    """``profile`` with its ``deepep`` section set to ``values`` (in BOUNDS order)."""
    from sim.comm.profile import DeepEPCost

    cost = DeepEPCost(**{name: float(v) for (name, *_), v in zip(BOUNDS, values, strict=True)})
    return profile.model_copy(update={"deepep": cost})


def fit_deepep(bench: Bench, profile):
    """The profile with its DeepEP section fitted: least squares on log(predicted/measured)
    over every row and operation, parameters scaled to [0, 1] inside their bounds."""
    import numpy as np
    from scipy.optimize import least_squares

    lo = np.array([b[1] for b in BOUNDS])
    hi = np.array([b[2] for b in BOUNDS])

    def residuals(x):
        rows = bench.predict(with_deepep(profile, lo + x * (hi - lo)))
        return [math.log(r["predicted_GBps"] / r["measured_GBps"]) for r in rows]

    x0 = np.array([(b[3] - b[1]) / (b[2] - b[1]) for b in BOUNDS])
    res = least_squares(residuals, x0, bounds=(0.0, 1.0), diff_step=1e-3, x_scale=1.0)
    return with_deepep(profile, lo + res.x * (hi - lo))


def error(row: dict) -> float:
    """Relative error of the prediction, signed (+: moe-sim faster than measured)."""
    return row["predicted_GBps"] / row["measured_GBps"] - 1.0


def table(before: Sequence[dict], after: Sequence[dict]) -> str:
    """A before/after table of the rows."""
    lines = [f"{'ranks':>5} {'link':>6} {'op':>8} {'measured':>9} {'links only':>10} "
             f"{'err':>7} {'calibrated':>10} {'err':>7}   (GB/s, DeepEP's counting)"]
    for b, a in zip(before, after, strict=True):
        lines.append(f"{a['ranks']:>5} {a['link']:>6} {a['op']:>8} {a['measured_GBps']:>9.1f} "
                     f"{b['predicted_GBps']:>10.1f} {error(b):>+7.1%} "
                     f"{a['predicted_GBps']:>10.1f} {error(a):>+7.1%}")
    errs = [abs(error(r)) for r in after]
    lines.append(f"# calibrated: median |error| {statistics.median(errs):.1%}, "
                 f"worst {max(errs):.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Fit the DeepEP section of a profile to a DeepEP table; print the table; ``--write``."""
    import yaml

    from sim.comm.profile import load_profile

    ap = argparse.ArgumentParser(prog="python -m sim.calibrate.deepep", description=__doc__)
    ap.add_argument("--table", default=str(TABLE))
    ap.add_argument("--profile", default=str(PROFILE))
    ap.add_argument("--write", action="store_true", help="write the section into --profile")
    args = ap.parse_args(argv)
    try:
        rows = read_table(args.table)
        profile = load_profile(args.profile)
        links_only = profile.model_copy(update={"deepep": None})
        bench = Bench(rows)
        fitted = fit_deepep(bench, links_only)
        print(table(bench.predict(links_only), bench.predict(fitted)))
        print("deepep: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                     fitted.deepep.model_dump().items()))
        if args.write:
            path = Path(args.profile)
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
            data["deepep"] = {k: float(f"{v:.6g}") for k, v in fitted.deepep.model_dump().items()}
            head = "".join(x + "\n" for x in text.splitlines() if x.startswith("#"))
            note = (f"# deepep: fitted by `python -m sim.calibrate.deepep --write` to "
                    f"{Path(args.table).name} (DeepEP's first release on H800).\n")
            head = head if note in head else head + note
            path.write_text(head + yaml.safe_dump(data, sort_keys=False, width=100),
                            encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
