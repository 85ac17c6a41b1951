"""Spans as a Chrome Trace Event document, which Perfetto and chrome://tracing open.

One process per server (node), one thread per GPU rank, one complete ("X") event per span.
Times in the document are microseconds, as the format requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sim.metrics.records import Span

_US = 1e6  # seconds -> microseconds


def _node_of(gpu: int, gpu_node: Mapping | Sequence | None, gpus_per_node: int | None):
    if gpu_node is not None:
        return gpu_node[gpu]
    if gpus_per_node:
        return gpu // int(gpus_per_node)
    return 0


def chrome_trace(spans: Sequence[Span], gpu_node: Mapping | Sequence | None = None,
                 gpus_per_node: int | None = None) -> dict:
    """Chrome Trace Event document of ``spans``: ``{"traceEvents": [...], ...}``.

    ``pid`` is the server index: ``gpu_node[gpu]`` when given (a list or dict from GPU rank to
    node index; node *names* are numbered in order of first appearance), else
    ``gpu // gpus_per_node`` when given, else 0. ``tid`` is the GPU rank. Each span is one
    ``"X"`` event with ``ts = start_s * 1e6`` and ``dur = (end_s - start_s) * 1e6`` (us),
    ``name = "{category} L{layer} {phase}"`` and ``cat = category``. ``"M"`` events name the
    processes (``"node 3"``, or the node name) and threads (``"gpu 17"``).
    The result is plain JSON-serialisable data; the caller writes it.
    """
    pids: dict[object, int] = {}      # node key -> pid
    pid_names: dict[int, str] = {}
    threads: dict[int, int] = {}      # gpu -> pid
    events: list[dict] = []
    for s in spans:
        pid = threads.get(s.gpu)
        if pid is None:
            node = _node_of(s.gpu, gpu_node, gpus_per_node)
            if isinstance(node, str):
                pid = pids.setdefault(node, len(pids))
                pid_names[pid] = node
            else:
                pid = int(node)
                pid_names[pid] = f"node {pid}"
            threads[s.gpu] = pid
        events.append({
            "name": f"{s.category} L{s.layer} {s.phase}",
            "cat": s.category,
            "ph": "X",
            "ts": s.start_s * _US,
            "dur": (s.end_s - s.start_s) * _US,
            "pid": pid,
            "tid": s.gpu,
            "args": {"layer": s.layer, "phase": s.phase},
        })
    meta: list[dict] = []
    for pid in sorted(pid_names):
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                     "args": {"name": pid_names[pid]}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                     "args": {"sort_index": pid}})
    for gpu in sorted(threads):
        meta.append({"name": "thread_name", "ph": "M", "pid": threads[gpu], "tid": gpu,
                     "args": {"name": f"gpu {gpu}"}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": threads[gpu], "tid": gpu,
                     "args": {"sort_index": gpu}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ns"}
