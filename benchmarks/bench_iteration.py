"""Wall time and peak memory of whole training iterations, and the error of the shortcut that
makes them fast.

* ``--scenarios``: the shipped iteration scenarios (default: the Mixtral-8x22B one on 128 H100
  and the DeepSeek-V3 one on 2048 H800), each in its own process: wall seconds (loading,
  routing, every chunk simulated on the fabric, the schedule, the summary; not the report
  files) and peak resident memory. Targets, fixed before the run: Mixtral-8x22B under 30 s,
  DeepSeek-V3 under 5 minutes and 8 GB.
* ``--all``: every shipped training scenario (target: under 10 s each).
* The shortcut: an iteration times ``representative_microbatches`` routing samples per model
  chunk (``sim.training.iteration``), and with ``reuse_equivalent_chunks`` (off by default)
  chunks of the same layer kinds once. Against simulating every micro-batch of every chunk on
  its own routing, on the Mixtral-8x22B scenario itself (where both run): the iteration time
  must agree within 1 % (target fixed before the run).

    python benchmarks/bench_iteration.py                  # both scenarios and the shortcut
    python benchmarks/bench_iteration.py --all            # every training scenario's wall time
    python benchmarks/bench_iteration.py --one-step       # the one-step scenarios' shortcuts
    python benchmarks/bench_iteration.py --blocks         # timing blocks on moe-deepseek-v3

* ``--one-step``: the shortcuts the one-step scenarios ship with (``gating.routing_groups``:
  distinct routing samples, reused round-robin over the GPUs; ``fabric.rate_tolerance``), each
  against the same step with every GPU routed on its own tokens at the fabric's default
  tolerance, and beside the exact fabric: the step time's error (target fixed before the run:
  1 %, the same as the iteration's shortcut) and the wall seconds, at seeds 0 and 1.
* ``--blocks``: ``training.timing_block_layers`` (a one-stage step timed as blocks of layers,
  blocks of the same kinds once) on ``moe-deepseek-v3`` (64 H100, 61 layers) against the step
  in full: wall seconds of both and the step time's error (the same 1 % target).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ("train-mixtral-8x22b-h100", "train-deepseek-v3-h800")
SHORTCUT_TOLERANCE = 0.01
#: What each run's source publishes: (summary field, value, where it is stated).
PUBLISHED = {
    "train-mixtral-8x22b-h100": ("tflops", 445.0, "TFLOP/s/GPU, Megatron-Core's recipe "
                                 "comments, dropless"),
    "train-deepseek-v3-h800": ("tokens_gpu", 1543.0, "tokens/s/GPU, DeepSeek-V3 report Sec. "
                               "1: 180K H800 GPU hours per trillion tokens"),
}


#: The Mixtral-8x22B recipe's other expectations (its comments, TFLOP/s/GPU) and the scenario
#: settings that express them. Megatron's forced balancing routes on random scores: here the
#: gate's context noise swamps every preference (sigma_ctx 50).
MIXTRAL_VARIANTS = (
    ("dropless", (), 445.0),
    ("forced balance", ("gating.sigma_ctx=50",), 465.0),
    ("capacity factor 1.0, padded", ("moe.moe_expert_capacity_factor=1.0",
                                     "moe.moe_pad_expert_input_to_capacity=true"), 470.0),
    ("FP8", ("training.gemm_dtype=fp8",), 560.0),
)


#: The one-step scenarios' shortcuts: (scenario, [(label, --set values)]); the first row
#: of each is the reference (every GPU routed on its own, the default fabric tolerance).
ONE_STEP = (
    ("moe-deepseek-v3", (
        ("every GPU on its own routing (the reference)",
         ("gating.routing_groups=64", "fabric.rate_tolerance=0.003")),
        ("as shipped", ()),
        ("as shipped, exact fabric", ("fabric.rate_tolerance=0",)),
    )),
    ("smile-p4d", (
        ("every GPU on its own routing (the reference)", ("gating.routing_groups=128",)),
        ("as shipped", ()),
    )),
)

#: Seeds the one-step shortcuts are measured at (a sampling shortcut must not hold by luck).
ONE_STEP_SEEDS = (0, 1)


def run_case(name: str, sets: tuple[str, ...] = ()) -> dict:
    from sim.moe.run import run_training
    from sim.scenario.load import load_scenario, topology_overrides
    from sim.topology import load_topology

    t0 = time.perf_counter()
    sc = load_scenario(ROOT / "scenarios" / f"{name}.yaml", sets)
    s = run_training(sc, load_topology(*topology_overrides(sc))).summary
    return {"wall_s": time.perf_counter() - t0, "iteration_s": s["iteration_time_s"],
            "step_s": s["step_time_s"],
            "tflops": s["tflops_per_gpu"], "tokens_gpu": s["tokens_per_s_per_gpu"],
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


#: The shortcut's settings against the iteration in full, on the Mixtral-8x22B scenario.
SHORTCUTS = (
    ("every micro-batch of every chunk (32 samples)",
     ("training.representative_microbatches=32",)),
    ("4 routing samples (the scenario's default)", ()),
    ("4 samples, equivalent chunks reused", ("training.reuse_equivalent_chunks=true",)),
)


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=",".join(DEFAULT),
                    help="comma-separated shipped scenario names")
    ap.add_argument("--all", action="store_true", help="every shipped training scenario")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--one-step", action="store_true",
                    help="the one-step scenarios' shortcuts against every GPU routed alone")
    ap.add_argument("--blocks", action="store_true",
                    help="timing blocks against the full step on moe-deepseek-v3")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, tuple(args.set))))
        return
    if args.one_step:
        print("| scenario | timed | --set | wall s | step ms | error against the reference |")
        print("|---|---|---|---:|---:|---:|")
        for name, rows in ONE_STEP:
            for seed in ONE_STEP_SEEDS:
                ref = None
                for label, sets in rows if seed == ONE_STEP_SEEDS[0] else rows[:2]:
                    sets = (*sets, f"seed={seed}")
                    r = _child("--case", name, *[a for x in sets for a in ("--set", x)])
                    ref = ref or r["step_s"]
                    err = r["step_s"] / ref - 1
                    verdict = "within" if abs(err) <= SHORTCUT_TOLERANCE else "NOT within"
                    print(f"| {name} | {label} | {' '.join(sets)} | {r['wall_s']:.1f} | "
                          f"{r['step_s'] * 1e3:.2f} | {err:+.2%} ({verdict} "
                          f"{SHORTCUT_TOLERANCE:.0%}) |", flush=True)
        return
    if args.blocks:
        print("| timing_block_layers | wall s | step ms | error against the full step |")
        print("|---|---:|---:|---:|")
        full = None
        for b, reuse in ((None, True), (4, True), (2, True), (4, False)):
            sets = () if b is None else ("--set", f"training.timing_block_layers={b}",
                                         "--set", f"training.reuse_equivalent_chunks={reuse}")
            r = _child("--case", "moe-deepseek-v3", *sets)
            full = full or r["step_s"]
            err = r["step_s"] / full - 1
            label = (b or "none (the step)") if reuse else f"{b}, each block on its own routing"
            print(f"| {label} | {r['wall_s']:.1f} | {r['step_s'] * 1e3:.1f} | "
                  f"{err:+.2%} ({'within' if abs(err) <= SHORTCUT_TOLERANCE else 'NOT within'} "
                  f"{SHORTCUT_TOLERANCE:.0%}) |", flush=True)
        return
    names = args.scenarios.split(",")
    if args.all:
        import yaml

        names = sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml")
                       if "model" in (yaml.safe_load(p.read_text()) or {})
                       and "serving" not in yaml.safe_load(p.read_text()))
    print("| scenario | wall s | peak MiB | iteration s | TFLOP/s/GPU | tokens/s/GPU |")
    print("|---|---:|---:|---:|---:|---:|")
    published = []
    for name in names:
        r = _child("--case", name)
        print(f"| {name} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} | {r['iteration_s']:.3f} | "
              f"{r['tflops']:.0f} | {r['tokens_gpu']:.0f} |", flush=True)
        if name in PUBLISHED:
            key, value, what = PUBLISHED[name]
            published.append(f"| {name} | {what} | {value:.0f} | {r[key]:.0f} | "
                             f"{r[key] / value - 1:+.1%} |")
    if published:
        print("\n| scenario | published figure | published | simulated | "
              "simulated / published - 1 |")
        print("|---|---|---:|---:|---:|")
        print("\n".join(published))
    if args.all:
        return
    if "train-mixtral-8x22b-h100" in names:
        print("\nMixtral-8x22B recipe's expectations (TFLOP/s/GPU) beside the same scenario "
              "with the setting each names:\n")
        print("| variant | --set | published | simulated | simulated / published - 1 | "
              "published / dropless | simulated / dropless |")
        print("|---|---|---:|---:|---:|---:|---:|")
        base = None
        for label, sets, value in MIXTRAL_VARIANTS:
            args_ = [a for x in sets for a in ("--set", x)]
            r = _child("--case", "train-mixtral-8x22b-h100", *args_)
            base = base or (value, r["tflops"])
            print(f"| {label} | {' '.join(sets) or '-'} | {value:.0f} | {r['tflops']:.0f} | "
                  f"{r['tflops'] / value - 1:+.1%} | {value / base[0]:.3f} | "
                  f"{r['tflops'] / base[1]:.3f} |", flush=True)
    print("\nThe shortcut on train-mixtral-8x22b-h100 (32 micro-batches, 56 chunks of one "
          f"layer), against the iteration in full (target: within {SHORTCUT_TOLERANCE:.0%}):\n")
    print("| timed | --set | wall s | iteration s | error |")
    print("|---|---|---:|---:|---|")
    full = None
    for label, sets in SHORTCUTS:
        r = _child("--case", "train-mixtral-8x22b-h100", *[a for x in sets for a in ("--set", x)])
        full = full or r["iteration_s"]
        err = r["iteration_s"] / full - 1
        verdict = "within" if abs(err) <= SHORTCUT_TOLERANCE else "NOT within"
        print(f"| {label} | {' '.join(sets) or '-'} | {r['wall_s']:.1f} | "
              f"{r['iteration_s']:.4f} | {err:+.2%} ({verdict} {SHORTCUT_TOLERANCE:.0%}) |",
              flush=True)


if __name__ == "__main__":
    main()
