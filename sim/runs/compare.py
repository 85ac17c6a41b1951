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
from sim.metrics import catalogue

_SPEC = re.compile(r"^\s*([A-Za-z_][\w-]*)((?:\+[A-Za-z]+)*)\s*(?:\((.*)\))?\s*$")


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


def columns(kind: str, sweep_key: str | None = None) -> list[str]:
    """The columns of a comparison row of ``kind`` (compare.csv): kind, variant, the swept
    value (with a sweep), speedup, then the catalogue's ``compare`` metrics."""
    metrics = [m.key for m in catalogue.view(kind, "compare") if m.key != "kind"]
    return ["kind", "variant", *(["sweep"] if sweep_key else []), "speedup", *metrics]


def compare(path: Path, variants: Sequence[Variant], sets: Sequence[str] = (),
            sweep: str | None = None, cluster_of: Callable | None = None,
            progress: Callable | None = None) -> list[dict]:
    """Run every (sweep value, variant) through :func:`sim.runs.simulate` (as ``moesim run``
    does, so every scenario field, ``placement:`` included, means the same); one row per run:
    ``kind``, ``variant``, ``sweep``, ``speedup`` (on the kind's main metric, against the first
    variant of the same sweep value), the catalogue's ``compare`` metrics and, for training,
    ``breakdown_s``.

    Every scenario is loaded and validated before the first run, so a bad variant fails fast.
    ``cluster_of(scenario)`` builds the cluster (default: the scenario's topology)."""
    from sim.runs.kinds import RUN_KINDS
    from sim.runs.simulate import simulate
    from sim.scenario import load_scenario, topology_overrides
    from sim.topology import load_topology

    key, values = parse_sweep(sweep)
    variants = list(variants) or [BASE]
    plans = []
    for value in values:
        extra = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"] if key else []
        for v in variants:
            sc = load_scenario(path, [*sets, *v.overrides(), *extra])
            if not RUN_KINDS.get(sc.kind).comparable:
                raise UserError(f"{path}: compare needs a training or serving scenario "
                                f"(model: and moe:), not a {sc.kind}")
            plans.append((value, v, sc))
    rows, base = [], {}
    for i, (value, v, sc) in enumerate(plans):
        cluster = (cluster_of or (lambda s: load_topology(*topology_overrides(s))))(sc)
        s = simulate(sc, cluster, str(path), reports=False).summary
        main = catalogue.main_metric(sc.kind).key
        base.setdefault(repr(value), s[main])
        row = {"kind": sc.kind, "variant": v.label, "sweep": value,
               "speedup": catalogue.speedup(sc.kind, base[repr(value)], s[main])}
        row.update({c: s.get(c) for c in columns(sc.kind, key) if c not in row})
        if "breakdown_s" in s:
            row["breakdown_s"] = s["breakdown_s"]
        rows.append(row)
        if progress is not None:
            progress("runs", i + 1, len(plans))
    return rows


def format_table(rows: Sequence[dict], sweep_key: str | None) -> str:
    """A fixed-width table of the rows for the terminal: variant, the swept value, then the
    catalogue's ``compare`` metrics that some row has, in their display units, speedup after
    the main one."""
    if not rows:
        return ""
    kind = rows[0]["kind"]
    main = catalogue.main_metric(kind)
    heads: list[tuple[str, Callable]] = [("variant", lambda r: str(r["variant"]))]
    if sweep_key:
        heads.append((sweep_key, lambda r: str(r["sweep"])))
    for m in catalogue.view(kind, "compare"):
        if m.key == "kind" or all(r.get(m.key) is None for r in rows):
            continue  # a metric no variant has (SMILE's balance without SMILE)
        heads.append((m.short or m.heading, lambda r, m=m: m.format(r.get(m.key))))
        if m is main:
            heads.append(("speedup", lambda r: f"{r['speedup']:.3f}x"))
    cells = [[get(r) for _, get in heads] for r in rows]
    widths = [max(len(h), *(len(c[j]) for c in cells)) for j, (h, _) in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) if j == 0 else h.rjust(w)
                       for j, ((h, _), w) in enumerate(zip(heads, widths, strict=True)))]
    for c in cells:
        lines.append("  ".join(x.ljust(w) if j == 0 else x.rjust(w)
                               for j, (x, w) in enumerate(zip(c, widths, strict=True))))
    return "\n".join(lines)
