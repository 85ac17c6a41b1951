"""Run outputs: atomic run directories, the benchmark summary and its nccl-tests style table.

A run directory appears complete or not at all: files are written into a hidden sibling
directory which is renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sim.errors import UserError


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def to_json(data: Any) -> str:
    """Pretty JSON with a trailing newline (numpy values become plain numbers)."""
    return json.dumps(data, indent=2, default=_plain) + "\n"


def check_out_dir(out_dir: Path) -> None:
    """Raise ``UserError`` unless ``out_dir`` is absent or an empty directory (never overwrite)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty directory; choose another --out")


def default_run_dir(name: str, root: Path = Path("runs"), now: datetime | None = None) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that already exists."""
    base = f"{name}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    path, n = Path(root) / base, 1
    while path.exists():
        n += 1
        path = Path(root) / f"{base}-{n}"
    return path


def write_run(out_dir: Path, files: Mapping[str, str | bytes | dict | list]) -> Path:
    """Write ``files`` (relative name -> content) into ``out_dir`` atomically; return ``out_dir``.

    Strings are written as UTF-8 text, bytes as they are, dicts and lists as pretty JSON. The
    directory must not exist yet (or be empty). On any failure nothing is left behind.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    for name in files:
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or ".." in rel.parts:
            raise ValueError(f"output file name must be relative and inside the run: {name!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, content in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            else:
                target.write_text(to_json(content), encoding="utf-8")
        try:
            os.replace(tmp, out_dir)
        except OSError as e:
            raise UserError(f"{out_dir}: cannot create run directory: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_file(path: Path, content: str | bytes) -> Path:
    """Write one file atomically (a hidden temporary sibling renamed into place); return it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def benchmark_summary(scenario: Any, cluster: Any, results: Sequence[Mapping]) -> dict:
    """The ``summary.json`` of a collective benchmark: scenario (after overrides), cluster, rows.

    Rates in ``results`` are ``*_gbps``: gigabits per second, as everywhere in moe-sim.
    """
    return {
        "scenario": scenario.model_dump(mode="json"),
        "cluster": {
            "name": cluster.name,
            "gpus": int(cluster.num_gpus),
            "nodes": int(cluster.num_nodes),
        },
        "results": [dict(r) for r in results],
    }


def format_benchmark_table(scenario: Any, cluster: Any, results: Sequence[Mapping]) -> str:
    """An nccl-tests style table: size (B), time (us), algbw and busbw in GB/s (bytes!)."""
    b = scenario.benchmark
    traffic = f"zipf({b.zipf_exponent:g})" if b.traffic == "zipf" else b.traffic
    what = f"{b.algorithm}, {traffic} traffic" if b.collective == "all_to_all" else b.algorithm
    nodes = f"{cluster.num_nodes} node" + ("s" if cluster.num_nodes != 1 else "")
    lines = [
        f"# {scenario.name}: {b.collective} ({what}) "
        f"on {cluster.name}: {cluster.num_gpus} GPUs on {nodes}",
        "# GB/s = 10^9 bytes/s as in nccl-tests; summary.json has these rates in Gbit/s (*_gbps)",
        "#",
        f"# {'size(B)':>12} {'time(us)':>12} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}",
    ]
    for r in results:
        lines.append(
            f"  {int(r['bytes_per_rank']):>12d} {r['time_s'] * 1e6:>12.2f} "
            f"{r['algbw_gbps'] / 8:>12.2f} {r['busbw_gbps'] / 8:>12.2f}"
        )
    return "\n".join(lines)


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Rows as CSV text with a header; lists are joined with ';'."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([";".join(map(str, v)) if isinstance(v, list) else v
                    for v in (r[c] for c in columns)])
    return buf.getvalue()


LAYER_COLUMNS = ("layer", "moe", "attention_s", "dispatch_s", "expert_s", "combine_s", "tp_s",
                 "drop_fraction", "padding_fraction", "imbalance", "expert_load")
LINK_COLUMNS = ("link", "src", "dst", "tier", "capacity_gbps", "bytes", "utilisation")


def training_files(scenario: Any, cluster: Any, result: Any, reports: bool = True) -> dict:
    """The files of a training run: summary.json, layers.csv, links.csv and, with ``reports``,
    report.html and trace.json (Chrome trace format; open in Perfetto)."""
    summary = {
        "scenario": scenario.model_dump(mode="json"),
        "cluster": {"name": cluster.name, "gpus": int(cluster.num_gpus),
                    "nodes": int(cluster.num_nodes)},
        **result.summary,
    }
    files = {
        "summary.json": summary,
        "layers.csv": csv_text(result.layers, LAYER_COLUMNS),
        "links.csv": csv_text(result.links, LINK_COLUMNS),
    }
    if reports:
        from sim.report import chrome_trace, render_report

        files["report.html"] = render_report(f"{scenario.name} on {cluster.name}",
                                             result.summary, result.layers, result.links,
                                             result.spans)
        files["trace.json"] = chrome_trace(result.spans, gpu_node=cluster.node_of.tolist())
    return files


REQUEST_COLUMNS = ("rid", "arrival_s", "prompt_tokens", "output_tokens", "first_token_s",
                   "finish_s", "ttft_s", "latency_s", "normalized_latency_s")
STEP_COLUMNS = ("start_s", "end_s", "prefill", "decode", "tokens", "unique_experts")


def serving_files(scenario: Any, cluster: Any, result: Any) -> dict:
    """The files of a serving run: summary.json, requests.csv, steps.csv."""
    summary = {"scenario": scenario.model_dump(mode="json"),
               "cluster": {"name": cluster.name, "gpu": cluster.gpu.name}, **result.summary}
    return {"summary.json": summary,
            "requests.csv": csv_text(result.requests, REQUEST_COLUMNS),
            "steps.csv": csv_text(result.steps, STEP_COLUMNS)}


def format_serving_summary(scenario: Any, cluster: Any, summary: Mapping) -> str:
    """A few lines for the terminal: latency percentiles, throughput, experts and memory."""
    s = summary
    return "\n".join([
        f"# {scenario.name}: {s['requests']} requests on one {cluster.gpu.name} "
        f"(offload {s['mode']})",
        f"latency  mean {s['latency_mean_s']:.3f} s  p50 {s['latency_p50_s']:.3f}  "
        f"p95 {s['latency_p95_s']:.3f}  p99 {s['latency_p99_s']:.3f}",
        f"ttft     mean {s['ttft_mean_s']:.3f} s   per output token "
        f"{s['normalized_latency_mean_s'] * 1e3:.2f} ms   {s['tokens_per_s']:,.1f} tokens/s",
        f"experts  {s['unique_experts_per_batch']:.2f} per batch and layer, MoE block "
        f"{s['moe_block_mean_s'] * 1e3:.3f} ms (decode), cache hits {s['cache_hit_rate']:.1%}, "
        f"{s['expert_copies']:,} copies",
        f"memory   peak {s['peak_memory_bytes'] / 2**30:.2f} GiB "
        f"(decode {s['decode_peak_memory_bytes'] / 2**30:.2f} GiB)",
    ])


def format_training_summary(scenario: Any, cluster: Any, summary: Mapping) -> str:
    """A few lines for the terminal: step time, where it went, drops and traffic."""
    s = summary
    b = s["breakdown_s"]
    parts = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in b.items() if v > 0)
    return "\n".join([
        f"# {scenario.name}: one training step on {cluster.name} ({cluster.num_gpus} GPUs)",
        f"step_time        {s['step_time_s'] * 1e3:10.3f} ms   "
        f"({s['tokens_per_s']:,.0f} tokens/s)",
        f"critical GPU {s['critical_gpu']:<4} {parts} (ms)",
        f"a2a              {s['a2a_time_s'] * 1e3:10.3f} ms   "
        f"({s['a2a_fraction']:.1%} of the step)",
        f"exposed allreduce{s['allreduce_time_s'] * 1e3:10.3f} ms",
        f"dropped          {s['drop_fraction']:10.2%}      of (token, expert) pairs; "
        f"{s.get('no_expert_fraction', 0.0):.2%} of tokens got no expert",
        f"padding          {s['padding_fraction']:10.2%}      "
        f"expert load max/mean {s['expert_load_imbalance']:.2f}",
        f"bytes            inter-node {s['inter_node_bytes'] / 1e9:.3f} GB, "
        f"intra-node {s['intra_node_bytes'] / 1e9:.3f} GB",
        *([f"placement        {s['placement_speedup']:.3f}x vs the default placement "
           f"({s['baseline_step_time_s'] * 1e3:.3f} ms before)"] if "placement" in s else []),
    ])
