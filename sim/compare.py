"""One scenario under several variants (and optionally a sweep of one field).

Training scenarios compare routers (step time, A2A share, drops, ...); serving scenarios compare
whatever the variants and the sweep change (offload mode, batcher, cache), on latency,
throughput, experts per batch and memory. Without ``--routers`` the scenario itself is the one
variant (``base``).

A variant is written ``NAME[+ir][+fr][(KEY=VALUE, ...)]``:

* ``NAME``: a registered router (``moesim list``), e.g. ``switch``, ``locmoe``, ``smile``;
* ``+ir`` / ``+fr``: Rectify-Router's intra-GPU / fill-in rectification on top of it;
* ``KEY=VALUE`` without a dot: a router parameter (``locmoe(locality_bias=2)``); with a dot: any
  scenario field, as with ``--set`` (``smile(training.a2a_algorithm=bilevel)``).

``compare`` runs every (sweep value, variant) pair and returns one flat row each; the first
variant is the baseline of the ``speedup`` column (within the same sweep value).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sim.errors import UserError

_SPEC = re.compile(r"^\s*([A-Za-z_][\w-]*)((?:\+[A-Za-z]+)*)\s*(?:\((.*)\))?\s*$")

#: Columns of a comparison row, in print order (summary fields keep their names).
COLUMNS = ("variant", "sweep", "step_time_s", "speedup", "tokens_per_s", "a2a_time_s",
           "a2a_fraction", "drop_fraction", "no_expert_fraction", "padding_fraction",
           "local_rectified_fraction", "fill_in_fraction", "node_local_fraction",
           "expert_load_imbalance", "a2a_inter_node_bytes", "inter_node_bytes",
           "intra_node_bytes", "smile_node_balance", "smile_gpu_balance")


#: Columns of a serving comparison row.
SERVING_COLUMNS = ("variant", "sweep", "speedup", "tokens_per_s", "moe_block_mean_s",
                   "latency_mean_s", "latency_p50_s", "latency_p95_s", "ttft_mean_s",
                   "normalized_latency_mean_s", "unique_experts_per_batch", "cache_hit_rate",
                   "expert_copies", "decode_peak_memory_bytes", "peak_memory_bytes")


@dataclass(frozen=True)
class Variant:
    """A parsed variant: its label, router (None: the scenario's), router parameters and
    scenario overrides."""

    label: str
    router: str | None
    params: dict = field(default_factory=dict)
    sets: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        """``--set`` strings that turn the base scenario into this variant."""
        if self.router is None:
            return list(self.sets)
        params = yaml.safe_dump(self.params, default_flow_style=True).strip()
        return [f"moe.router.name={self.router}", f"moe.router.params={params}", *self.sets]


BASE = Variant("base", None)


def parse_variant(spec: str) -> Variant:
    """Parse one ``NAME[+ir][+fr][(k=v, ...)]``; a malformed spec is a UserError."""
    m = _SPEC.match(spec)
    where = f"--routers {spec!r}"
    if not m:
        raise UserError(f"{where}: expected NAME[+ir][+fr][(key=value, ...)], e.g. "
                        "switch, topk+ir+fr, locmoe(locality_bias=2)")
    name, flags, inner = m.group(1), m.group(2), m.group(3)
    sets: list[str] = []
    for flag in filter(None, flags.split("+")):
        if flag.lower() not in ("ir", "fr"):
            raise UserError(f"{where}: unknown modifier +{flag}; allowed: +ir, +fr")
        key = "intra_gpu" if flag.lower() == "ir" else "fill_in"
        sets.append(f"moe.rectify.{key}=true")
    params: dict = {}
    for item in filter(None, (s.strip() for s in (inner or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{where}: {item!r} is not KEY=VALUE")
        key = key.strip()
        if "." in key:
            sets.append(f"{key}={value.strip()}")
        else:
            try:
                params[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise UserError(f"{where}: value of {key} is not valid YAML") from None
    return Variant(spec.strip(), name, params, tuple(sets))


def split_variants(text: str) -> list[Variant]:
    """``a,b(x=1,y=2),c`` -> variants (commas inside parentheses belong to the variant)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    specs = [p for p in (s.strip() for s in parts) if p]
    if not specs:
        raise UserError("--routers: give at least one variant, e.g. --routers switch,hash")
    labels = [parse_variant(s) for s in specs]
    if len({v.label for v in labels}) != len(labels):
        raise UserError("--routers: the same variant is listed twice")
    return labels


def parse_sweep(text: str | None) -> tuple[str | None, list]:
    """``FIELD=v1,v2,...`` -> (field, values); None -> (None, [None])."""
    if not text:
        return None, [None]
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise UserError(f"--sweep {text}: expected FIELD=V1,V2,... such as "
                        "moe.moe_expert_capacity_factor=0.5,1.0,2.0")
    try:
        values = [yaml.safe_load(v) for v in raw.split(",")]
    except yaml.YAMLError:
        raise UserError(f"--sweep {text}: a value is not valid YAML") from None
    return key.strip(), values


def compare(path: Path, variants: Sequence[Variant], sets: Sequence[str] = (),
            sweep: str | None = None, cluster_of: Callable | None = None,
            progress: Callable | None = None) -> list[dict]:
    """Run every (sweep value, variant); one row per run with the COLUMNS fields + breakdown.

    Every scenario is loaded and validated before the first run, so a bad variant fails fast.
    ``cluster_of(scenario)`` builds the cluster (default: the scenario's topology)."""
    from sim.moe.run import run_training
    from sim.scenario import load_scenario, topology_overrides
    from sim.serving.engine import run_serving
    from sim.topology import load_topology

    key, values = parse_sweep(sweep)
    variants = list(variants) or [BASE]
    plans = []
    for value in values:
        extra = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"] if key else []
        for v in variants:
            sc = load_scenario(path, [*sets, *v.overrides(), *extra])
            if sc.kind == "benchmark":
                raise UserError(f"{path}: compare needs a training or serving scenario "
                                "(model: and moe:)")
            plans.append((value, v, sc))
    rows, base = [], {}
    for i, (value, v, sc) in enumerate(plans):
        cluster = (cluster_of or (lambda s: load_topology(*topology_overrides(s))))(sc)
        if sc.kind == "serving":
            s = run_serving(sc, cluster, str(path)).summary
            base.setdefault(repr(value), s["tokens_per_s"])
            row = {"variant": v.label, "sweep": value, "speedup":
                   s["tokens_per_s"] / base[repr(value)] if base[repr(value)] else 0.0}
            row.update({c: s.get(c) for c in SERVING_COLUMNS if c not in row})
        else:
            s = run_training(sc, cluster, str(path)).summary
            base.setdefault(repr(value), s["step_time_s"])
            row = {"variant": v.label, "sweep": value,
                   "speedup": base[repr(value)] / s["step_time_s"] if s["step_time_s"] else 0.0}
            row.update({c: s.get(c) for c in COLUMNS if c not in row})
            row["breakdown_s"] = s["breakdown_s"]
        rows.append(row)
        if progress is not None:
            progress("runs", i + 1, len(plans))
    return rows


def format_table(rows: Sequence[dict], sweep_key: str | None) -> str:
    """A fixed-width table of the rows for the terminal."""
    if rows and "tokens_per_s" in rows[0] and "step_time_s" not in rows[0]:
        return _serving_table(rows, sweep_key)
    head = ["step ms", "speedup", "A2A %", "drop %", "no-exp %", "pad %", "IR %", "FR %",
            "local %", "imbal", "A2A inter GB"]
    width = max([len("variant")] + [len(str(r["variant"])) for r in rows])
    sweep_w = max([len(sweep_key or "")] + [len(str(r["sweep"])) for r in rows])
    lines = ["  ".join(["variant".ljust(width)] + ([sweep_key.rjust(sweep_w)] if sweep_key else [])
                       + [h.rjust(9) for h in head[:-1]] + [head[-1].rjust(12)])]
    for r in rows:
        cells = [str(r["variant"]).ljust(width)]
        if sweep_key:
            cells.append(str(r["sweep"]).rjust(sweep_w))
        cells += [f"{r['step_time_s'] * 1e3:9.3f}", f"{r['speedup']:8.3f}x",
                  f"{r['a2a_fraction'] * 100:9.1f}", f"{r['drop_fraction'] * 100:9.2f}",
                  f"{r['no_expert_fraction'] * 100:9.2f}",
                  f"{r['padding_fraction'] * 100:9.2f}",
                  f"{r['local_rectified_fraction'] * 100:9.2f}",
                  f"{r['fill_in_fraction'] * 100:9.2f}", f"{r['node_local_fraction'] * 100:9.1f}",
                  f"{r['expert_load_imbalance']:9.2f}",
                  f"{r['a2a_inter_node_bytes'] / 1e9:12.3f}"]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _serving_table(rows: Sequence[dict], sweep_key: str | None) -> str:
    head = ["variant"] + ([sweep_key] if sweep_key else []) + [
        "block ms", "speedup", "tok/s", "lat s", "p95 s", "ttft s", "experts", "hit %",
        "mem GiB"]
    width = max([len(head[0])] + [len(str(r["variant"])) for r in rows])
    lines = ["  ".join([head[0].ljust(width)] + [h.rjust(9) for h in head[1:]])]
    for r in rows:
        cells = [str(r["variant"]).ljust(width)]
        if sweep_key:
            cells.append(str(r["sweep"]).rjust(9))
        cells += [f"{r['moe_block_mean_s'] * 1e3:9.3f}", f"{r['speedup']:8.3f}x",
                  f"{r['tokens_per_s']:9.1f}", f"{r['latency_mean_s']:9.3f}",
                  f"{r['latency_p95_s']:9.3f}", f"{r['ttft_mean_s']:9.3f}",
                  f"{r['unique_experts_per_batch']:9.2f}", f"{r['cache_hit_rate'] * 100:9.1f}",
                  f"{r['decode_peak_memory_bytes'] / 2**30:9.3f}"]
        lines.append("  ".join(cells))
    return "\n".join(lines)
