"""Where the runs of a sweep execute: this process, a local process pool, or a Dask cluster.

:func:`connect` opens one (connecting to Dask right away, so a bad address fails before any
output is written) and gives a function mapping runs to ``execute(run)`` results, yielded as
runs finish, in any order. Closing that iterator early cancels the runs not started yet.
``distributed`` is imported only when a scheduler address is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any

from sim.errors import UserError
from sim.runs.sweep.execute import execute, one_line

#: Seconds to wait for a Dask scheduler before giving up.
CONNECT_TIMEOUT_S = 10.0

Mapper = Callable[[Sequence[Any]], Iterator[dict]]


def _lost(run_id: str, error: BaseException) -> UserError:
    return UserError(f"run {run_id}: the worker failed ({one_line(error)}); finished runs are "
                     "kept, rerun the sweep to continue")


def local(runs: Sequence[Any], workers: int | None = None) -> Iterator[dict]:
    """Run on a pool of ``workers`` processes (default: one per CPU); 1 runs here, in order."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(runs) <= 1:
        for run in runs:
            yield execute(run)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(runs)))
    try:
        futures = {pool.submit(execute, run): run.run_id for run in runs}
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except Exception as e:  # a dead worker, not a failed simulation
                raise _lost(futures[fut], e) from None
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def dask_client(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address`` (``tcp://host:8786``)."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--scheduler: dask.distributed is not installed; "
                        "pip install 'moe-sim[dask]'") from None
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise UserError(f"--scheduler {address}: cannot reach the Dask scheduler "
                        f"({one_line(e)})") from None


def on_dask(client: Any, runs: Sequence[Any]) -> Iterator[dict]:
    """Run on the workers of ``client``. Runs carry their resolved scenario and cluster, so the
    workers need the moe-sim package only, not the sweep's scenario or topology files."""
    from distributed import as_completed as dask_completed

    runs = list(runs)
    futures = client.map(execute, runs, pure=False)
    ids = {fut.key: run.run_id for fut, run in zip(futures, runs, strict=True)}
    try:
        for fut in dask_completed(futures, loop=client.loop):
            try:
                result = fut.result()
            except Exception as e:  # a lost worker, not a failed simulation
                raise _lost(ids[fut.key], e) from None
            yield result
    finally:
        client.cancel(futures)


@contextmanager
def connect(workers: int | None = None, scheduler: str | None = None,
            timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[Mapper]:
    """A mapper over runs: a local pool of ``workers`` (default one per CPU, 1 = in this
    process), or the Dask cluster at ``scheduler``."""
    if scheduler is None:
        yield lambda runs: local(runs, workers)
        return
    if workers is not None:
        raise UserError("--workers: the Dask cluster decides the workers; give --workers or "
                        "--scheduler, not both")
    client = dask_client(scheduler, timeout_s)
    try:
        yield lambda runs: on_dask(client, runs)
    finally:
        client.close()
