"""Reading nccl-tests output exactly as nccl-tests prints it, and its CSV form.

A log may hold several tests one after another. Each test starts with ``# Collective test
starting: <name>_perf`` (nccl-tests 2.14 and later), lists the ranks under ``# Using devices``
(``#  Rank  0 Group  0 Pid 4180122 on cnode3-002 device  0 [...] NVIDIA H100 80GB HBM3``: the
rank count, and the node count as the number of distinct host names), prints a header whose first
``time``, ``algbw``, ``busbw`` are the out-of-place columns, then one row per message size.
Every row becomes a :class:`Measurement` (the out-of-place time; nccl-tests' size convention:
for all_gather and reduce_scatter the whole n-rank buffer).

The CSV form (one header line ``collective,algorithm,gpus,nodes,size_bytes,time_us,...`` after
``#`` comment lines) is what ``benchmarks/validate.py`` and moe-sim's own logs use.

Every problem is one line naming the file (and the line): not nccl-tests output, no data rows,
an unsupported test, a malformed row.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from sim.errors import UserError
from sim.inputs import read_text

#: nccl-tests binary -> moe-sim collective name.
TESTS = {"all_reduce_perf": "all_reduce", "all_gather_perf": "all_gather",
         "reduce_scatter_perf": "reduce_scatter", "alltoall_perf": "all_to_all",
         "sendrecv_perf": "sendrecv"}
CSV_COLUMNS = ("collective", "algorithm", "gpus", "nodes", "size_bytes", "time_us")

_START = re.compile(r"^#\s*Collective test starting:\s*(\S+)")
_RANK = re.compile(r"^#\s+Rank\s+(\d+)\b.*?\bon\s+(\S+)\s+device\b")


@dataclass(frozen=True)
class Measurement:
    """One measured collective: ``size_bytes`` as nccl-tests counts it, ``time_s`` (out of
    place), on ``ranks`` GPUs over ``nodes`` servers; ``where`` is ``file:line``."""

    collective: str
    size_bytes: int
    time_s: float
    ranks: int
    nodes: int
    where: str
    algorithm: str | None = None


def read_measurements(path: str | Path) -> list[Measurement]:
    """The measurements of one file: an nccl-tests log, or the CSV form (module docstring)."""
    path = Path(path)
    text = read_text(path)
    first = next((line for line in text.splitlines() if line.strip()
                  and not line.startswith("#")), "")
    if first.replace(" ", "").startswith("collective,"):
        return _read_csv(text, str(path))
    return _read_log(text, str(path))


def _read_log(text: str, where: str) -> list[Measurement]:
    out: list[Measurement] = []
    test = None
    ranks: dict[int, str] = {}
    columns: list[str] | None = None
    seen_start = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        at = f"{where}: line {lineno}"
        m = _START.match(line)
        if m:
            seen_start = True
            name = m.group(1)
            if name not in TESTS:
                raise UserError(f"{at}: {name}: not supported; supported tests: "
                                f"{', '.join(TESTS)}")
            test, ranks, columns = TESTS[name], {}, None
            continue
        m = _RANK.match(line)
        if m:
            ranks[int(m.group(1))] = m.group(2)
            continue
        if line.startswith("#"):
            head = line.lstrip("#").split()
            if "size" in head and "time" in head and "busbw" in head:
                columns = head
            continue
        if not line.strip() or columns is None:
            continue
        if test is None:
            raise UserError(f"{at}: a data row before any '# Collective test starting: ...' "
                            "line; nccl-tests 2.14 or later names its test there")
        if not ranks:
            raise UserError(f"{at}: no '#  Rank N ... on HOST device ...' lines before the "
                            "data; the rank and node counts come from them")
        out.append(_row(line.split(), columns, test, ranks, at))
    if not seen_start and columns is None:
        raise UserError(f"{where}: not nccl-tests output (no '# Collective test starting:' "
                        "line and no table header)")
    if not out:
        raise UserError(f"{where}: no data rows (nccl-tests prints one row per message size)")
    return out


def _row(cells: list[str], columns: list[str], test: str, ranks: dict[int, str],
         at: str) -> Measurement:
    if len(cells) < columns.index("time") + 1:
        raise UserError(f"{at}: expected {len(columns)} columns like the header "
                        f"({' '.join(columns)}), got {len(cells)}")
    try:
        size = int(cells[columns.index("size")])
        time_us = float(cells[columns.index("time")])
    except ValueError:
        raise UserError(f"{at}: size and time must be numbers (got "
                        f"{cells[columns.index('size')]!r}, "
                        f"{cells[columns.index('time')]!r})") from None
    if size <= 0 or not time_us > 0:
        raise UserError(f"{at}: size and time must be > 0 (got {size}, {time_us})")
    return Measurement(test, size, time_us * 1e-6, len(ranks), len(set(ranks.values())), at)


def _read_csv(text: str, where: str) -> list[Measurement]:
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in lines)))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise UserError(f"{where}: line {lines[0][0]}: {missing[0]}: missing column; a "
                        f"measurement CSV has {', '.join(CSV_COLUMNS)}")
    out = []
    names = set(TESTS.values())
    for (lineno, _), row in zip(lines[1:], reader, strict=True):
        at = f"{where}: line {lineno}"
        if row["collective"] not in names:
            raise UserError(f"{at}: collective: must be one of {', '.join(sorted(names))} "
                            f"(got {row['collective']!r})")
        try:
            m = Measurement(row["collective"], int(row["size_bytes"]),
                            float(row["time_us"]) * 1e-6, int(row["gpus"]), int(row["nodes"]),
                            at, row["algorithm"] or None)
        except ValueError:
            raise UserError(f"{at}: gpus, nodes, size_bytes and time_us must be numbers") \
                from None
        if m.size_bytes <= 0 or not m.time_s > 0 or m.ranks < 1 or m.nodes < 1:
            raise UserError(f"{at}: size_bytes, time_us, gpus and nodes must be > 0")
        out.append(m)
    if not out:
        raise UserError(f"{where}: no data rows")
    return out


#: moe-sim collective -> nccl-tests binary.
BINARIES = {v: k for k, v in TESTS.items()}


def format_log(measurements: list[Measurement], host_prefix: str = "node") -> str:
    """nccl-tests output (as nccl-tests 2.17 prints it) for measurements of one cluster: a test
    block per collective, in order of first appearance, each with its ranks and hosts (GPU r of
    ``ranks / nodes`` per host on host ``<prefix><r // per_host>``) and one row per size. What
    moe-sim writes when it plays the measured cluster (calibration tests)."""
    out: list[str] = []
    for collective in dict.fromkeys(m.collective for m in measurements):
        rows = [m for m in measurements if m.collective == collective]
        ranks, nodes = rows[0].ranks, rows[0].nodes
        per_host = ranks // nodes
        out += ["# nccl-tests version 2.17.8 (moe-sim)",
                f"# Collective test starting: {BINARIES[collective]}",
                "#", "# Using devices"]
        out += [f"#  Rank {r:2d} Group  0 Pid {1000 + r} on {host_prefix}{r // per_host} "
                f"device {r % per_host:2d} [0000:00:00] simulated" for r in range(ranks)]
        out += ["#", "#       size         count      type   redop    root     time   algbw   "
                "busbw  #wrong     time   algbw   busbw  #wrong",
                "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)"
                "             (us)  (GB/s)  (GB/s)"]
        for m in rows:
            t_us = m.time_s * 1e6
            algbw = m.size_bytes / m.time_s / 1e9
            out.append(f"{m.size_bytes:>12d} {m.size_bytes // 4:>13d}     float     sum      -1 "
                       f"{t_us:>8.2f} {algbw:>7.2f} {algbw:>7.2f}       0 {t_us:>8.2f} "
                       f"{algbw:>7.2f} {algbw:>7.2f}       0")
        out += ["# Out of bounds values : 0 OK", "#", ""]
    return "\n".join(out)
