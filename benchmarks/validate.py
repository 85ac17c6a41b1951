"""moe-sim against measurements of real clusters: writes docs/validation.md (and one figure per
file in docs/validation/).

For every calibration file in data/calibration/ (sources in its README), every measured point is
simulated on the file's cluster twice, through the fabric as ``moesim run`` does: with the
calibrated communication profile the cluster's topology names, and with the ``ideal`` profile
(the fluid model alone). Each point gets both errors; each file the median and the worst error
above and below 1 MiB, and a verdict against the targets below, fixed before any run. The same
for the held-out logs of data/validation/ (the same cluster with fewer GPUs per server, never
fitted); DeepEP's table (fitted) and its held-out row through the ``dispatch`` run kind; and
DeepGEMM's table through the compute model.

    python benchmarks/validate.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "calibration"
HELD_OUT = ROOT / "data" / "validation"
OUT = ROOT / "docs" / "validation.md"
FIGURES = ROOT / "docs" / "validation"

#: Targets (issue 14), written before the run: sizes >= 1 MiB every point within 10 % and the
#: median within 5 %; smaller sizes within 25 %.
LARGE = 1 << 20
TARGETS = {"large_worst": 0.10, "large_median": 0.05, "small_worst": 0.25}
#: DeepEP's normal-kernel table: every row within 15 % (issue 14), written before the run.
DEEPEP_TARGET = 0.15


@dataclass(frozen=True)
class Source:
    """A measurement file and the topology of its cluster (nodes follow each log; ``overrides``
    of the topology file for the GPUs per server the log used)."""

    file: str
    topology: str
    what: str
    folder: Path = DATA
    overrides: tuple = ()


SOURCES = (
    Source("h100-cluster01-nccl_N1_G8.log", "h100-leaf-spine",
           "nccl-tests, 1 node x 8 H100 SXM (NVSwitch), 32 MiB - 16 GiB"),
    Source("h100-cluster01-nccl_N10_G8.log", "h100-leaf-spine",
           "nccl-tests, 10 nodes x 8 H100 SXM, one 400 Gb/s NIC per GPU, 32 MiB - 16 GiB"),
    Source("h100-together-allgather-ring.csv", "dgx-h100",
           "all_gather_perf, 1 node x 8 H100 SXM, 128 B - 8 GiB"),
)

#: The same cluster and run as the calibration logs with fewer GPUs per server: never fitted.
GENERALIZATION = tuple(
    Source(f"h100-cluster01-nccl_N{n}_G{g}.log", "h100-leaf-spine",
           f"nccl-tests, {n} node{'s' if n > 1 else ''} x {g} of the 8 H100 SXM, one 400 Gb/s "
           f"NIC per GPU used, 32 MiB - 16 GiB", HELD_OUT,
           (("gpus_per_node", g), ("nics_per_node", g)))
    for n, g in ((1, 4), (10, 1), (10, 2), (10, 4)))


def simulate(source: Source) -> list[dict]:
    """Every measured point of ``source``, simulated with the calibrated and the ideal profile."""
    from sim.calibrate.nccltests import read_measurements
    from sim.calibrate.run import clusters_for
    from sim.collectives import run_collective
    from sim.collectives.traffic import uniform
    from sim.comm import IDEAL, load_profile
    from sim.comm.model import Model
    from sim.network import FabricOptions, Routes

    measurements = read_measurements(source.folder / source.file)
    cluster_of = clusters_for(measurements, source.topology, dict(source.overrides))
    rows = []
    for m in measurements:
        cluster = cluster_of(m)
        data = uniform(m.ranks, m.size_bytes) if m.collective == "all_to_all" else m.size_bytes
        row = {"collective": m.collective, "ranks": m.ranks, "size_bytes": m.size_bytes,
               "measured_s": m.time_s, "profile": cluster.comm_profile}
        for key, profile in (("calibrated", load_profile(cluster.comm_profile)),
                             ("ideal", IDEAL)):
            options = FabricOptions(link_efficiency=tuple(profile.link_efficiency.items()))
            routes = Routes(cluster, options.ecmp)
            res = run_collective(cluster, m.collective, None, data, options, routes,
                                 Model(cluster, profile, routes=routes))
            row[f"{key}_s"] = res.time_s
            row[f"{key}_choice"] = f"{res.algorithm}/{res.protocol}"
        rows.append(row)
    return rows


def _err(row: dict, key: str) -> float:
    return row[f"{key}_s"] / row["measured_s"] - 1.0


def stats(rows: list[dict], key: str) -> dict:
    """Median and worst |error| above and below 1 MiB."""
    large = [abs(_err(r, key)) for r in rows if r["size_bytes"] >= LARGE]
    small = [abs(_err(r, key)) for r in rows if r["size_bytes"] < LARGE]
    return {"large_median": statistics.median(large) if large else None,
            "large_worst": max(large) if large else None,
            "small_worst": max(small) if small else None,
            "n_large": len(large), "n_small": len(small),
            "large_over": sum(e > TARGETS["large_worst"] for e in large)}


def verdict(s: dict) -> str:
    """Met / not met per target, computed."""
    parts = []
    for key, limit in TARGETS.items():
        if s[key] is None:
            continue
        ok = s[key] <= limit
        parts.append(f"{key.replace('_', ' ')} {s[key]:.1%} {'<=' if ok else '>'} {limit:.0%} "
                     f"({'met' if ok else 'NOT met'})")
    return "; ".join(parts)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def deepep() -> list[dict]:
    """DeepEP's table (fitted) and the held-out row, each simulated by the ``dispatch`` run kind
    under the H800 profile, the same without its DeepEP section (links only) and ``ideal``."""
    from sim.calibrate.deepep import PROFILE, TABLE, Bench, read_table
    from sim.comm import IDEAL, load_profile

    prof = load_profile(PROFILE)
    profiles = {"calibrated": prof, "links only": prof.model_copy(update={"deepep": None}),
                "ideal": IDEAL}
    out = []
    for path, held_out in ((TABLE, False), (HELD_OUT / "deepep-h800-normal-64.csv", True)):
        bench = Bench(read_table(path))
        preds = {k: bench.predict(p) for k, p in profiles.items()}
        for i, r in enumerate(preds["calibrated"]):
            out.append({**r, "held_out": held_out, "file": Path(path).name,
                        "predicted": {k: v[i]["predicted_GBps"] for k, v in preds.items()}})
    return out


def _deepep_lines(rows: list[dict]) -> list[str]:
    fitted = [abs(r["predicted"]["calibrated"] / r["measured_GBps"] - 1) for r in rows
              if not r["held_out"]]
    held = [abs(r["predicted"]["calibrated"] / r["measured_GBps"] - 1) for r in rows
            if r["held_out"]]
    ok = max(fitted) <= DEEPEP_TARGET
    ok_held = max(held) <= DEEPEP_TARGET
    lines = ["## DeepEP dispatch and combine (`deepep-h800-normal.csv`)", "",
             "DeepEP's normal kernels on H800 servers, as its test runs them "
             "(`scenarios/deepep-h800.yaml`: 4096 tokens per GPU, hidden 7168, top-8, at most 4 "
             "servers per token, FP8 dispatch, BF16 combine), through the `dispatch` run kind; "
             "bandwidth in GB/s counted as DeepEP's test counts it (the file's header). "
             "*Calibrated*: `profiles/h800-nccl.yaml` with its `deepep` section, fitted to the "
             "three table rows by `python -m sim.calibrate.deepep --write`; *links only*: the "
             "same profile without that section (the fabric and link efficiencies alone); "
             "*ideal*: the fluid model. The 64-GPU row (`data/validation/`) was never fitted. "
             "Figure: [validation/deepep-h800-normal.html](validation/deepep-h800-normal.html).",
             "", f"Target, fixed before the run: every row within {DEEPEP_TARGET:.0%}. Fitted "
             f"rows: worst {max(fitted):.1%} ({'met' if ok else 'NOT met'}); held-out row: "
             f"worst {max(held):.1%} ({'met' if ok_held else 'NOT met'}).", "",
             "| GPUs | link | op | measured | calibrated | error | links only | error | ideal "
             "| error | fitted? |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cells = []
        for key in ("calibrated", "links only", "ideal"):
            v = r["predicted"][key]
            cells += [f"{v:.1f}", f"{v / r['measured_GBps'] - 1:+.1%}"]
        lines.append(f"| {r['ranks']} | {r['link']} | {r['op']} | {r['measured_GBps']:.0f} | "
                     + " | ".join(cells) + f" | {'held out' if r['held_out'] else 'fitted'} |")
    return [*lines, ""]


def _summary_table(results) -> list[str]:
    lines = ["| file | points >= 1 MiB | calibrated median | calibrated worst | points over 10 % "
             "| < 1 MiB worst | ideal median | ideal worst |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for src, rows in results:
        c, i = stats(rows, "calibrated"), stats(rows, "ideal")
        lines.append(f"| `{src.file}` | {c['n_large']} | {_pct(c['large_median'])} | "
                     f"{_pct(c['large_worst'])} | {c['large_over']} | {_pct(c['small_worst'])} | "
                     f"{_pct(i['large_median'])} | {_pct(i['large_worst'])} |")
    return [*lines, ""]


def _file_lines(src: Source, rows: list[dict]) -> list[str]:
    c = stats(rows, "calibrated")
    where = "data/validation" if src.folder == HELD_OUT else "data/calibration"
    shape = ", ".join(f"{k} {v}" for k, v in src.overrides)
    lines = [f"## `{src.file}`", "", f"{src.what} (`{where}/`); topology `{src.topology}` "
             f"(nodes as the log{'; ' + shape if shape else ''}), profile `{rows[0]['profile']}`. "
             f"Figure: [validation/{Path(src.file).stem}.html]"
             f"(validation/{Path(src.file).stem}.html).", "", f"Verdict: {verdict(c)}.", "",
             "| collective | GPUs | size (B) | measured (us) | calibrated (us) | error | "
             "choice | ideal (us) | error |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['collective']} | {r['ranks']} | {r['size_bytes']} | "
                     f"{r['measured_s'] * 1e6:.1f} | {r['calibrated_s'] * 1e6:.1f} | "
                     f"{_err(r, 'calibrated'):+.1%} | {r['calibrated_choice']} | "
                     f"{r['ideal_s'] * 1e6:.1f} | {_err(r, 'ideal'):+.1%} |")
    return [*lines, ""]


def markdown(results, general, deepep_rows, compute_lines, wall_s: float) -> str:
    lines = ["# Validation against measurements", "",
             "Generated by `python benchmarks/validate.py` (do not edit by hand). Every measured "
             "point of every calibration file (`data/calibration/`, sources in its README) is "
             "simulated through the fabric, as `moesim run` does: with the calibrated "
             "communication profile its topology names and with the `ideal` profile (the fluid "
             "model alone). Errors are predicted / measured - 1.", "",
             "Targets, fixed before the run: sizes >= 1 MiB every point within "
             f"{TARGETS['large_worst']:.0%} and the median within {TARGETS['large_median']:.0%}; "
             f"smaller sizes within {TARGETS['small_worst']:.0%}; DeepEP's table within "
             f"{DEEPEP_TARGET:.0%} on every row; the GEMM table within 10 % on every row.", "",
             "## Communication: the calibration files", "",
             "The profile (`profiles/h100-nccl.yaml`) was fitted to these same files by "
             "`moesim calibrate` (its source line says how), so this table measures how well "
             "the model's physics can describe them; the next table is how it generalizes.", "",
             *_summary_table(results),
             "## Communication: generalization (never fitted)", "",
             "The same cluster and the same nccl-tests run (`data/validation/`, sources in its "
             "README) with 1, 2 or 4 GPUs per server instead of 8: the fitted profile, unchanged, "
             "on the topology with that many GPUs and NICs per server. The same targets apply.",
             "", *_summary_table(general)]
    for src, rows in general:
        lines.append(f"- `{src.file}`: {verdict(stats(rows, 'calibrated'))}.")
    lines += ["", *_deepep_lines(deepep_rows), *compute_lines]
    for src, rows in [*results, *general]:
        lines += _file_lines(src, rows)
    lines += [f"Wall time of this script: {wall_s:.0f} s.", ""]
    return "\n".join(lines)


def _compute_section() -> tuple[list[str], object]:
    """The GEMM section (DeepGEMM's table through the compute model) and its figure."""
    from sim.calibrate.gemm import gemm_validation_markdown, validation_rows
    from sim.report.validation import gemm_measured_vs_predicted

    rows = validation_rows()
    return gemm_validation_markdown(rows).splitlines() + [""], gemm_measured_vs_predicted(rows)


def main() -> int:
    from sim.report.validation import measured_vs_predicted, measured_vs_predicted_bars

    t0 = time.perf_counter()
    results = [(src, simulate(src)) for src in SOURCES]
    general = [(src, simulate(src)) for src in GENERALIZATION]
    deepep_rows = deepep()
    compute_lines, compute_fig = _compute_section()
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = {Path(src.file).stem: measured_vs_predicted(rows, f"{src.file}: measured vs "
                                                          "predicted")
               for src, rows in [*results, *general]}
    figures["deepep-h800-normal"] = measured_vs_predicted_bars(
        [{"label": f"{r['ranks']} GPUs {r['op']}{' (held out)' if r['held_out'] else ''}",
          "measured": r["measured_GBps"], "predicted": r["predicted"]} for r in deepep_rows],
        "DeepEP normal kernels on H800: measured vs predicted (DeepEP's counting)", "GB/s")
    figures["deepgemm-h800-fp8"] = compute_fig
    for name, fig in figures.items():
        (FIGURES / f"{name}.html").write_text(fig.to_html(include_plotlyjs="cdn",
                                                          full_html=True), encoding="utf-8")
    OUT.write_text(markdown(results, general, deepep_rows, compute_lines,
                            time.perf_counter() - t0), encoding="utf-8")
    print(f"wrote {OUT} and {len(figures)} figures in {FIGURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
