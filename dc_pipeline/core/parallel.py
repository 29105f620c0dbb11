"""Decoding on every core: a process pool for the per-image loops of large batches.

Small batches stay in the calling process (starting workers costs more than it saves); a batch of at
least ``MIN_PARALLEL`` images is cut into chunks, one per worker, decoded in worker processes started by a
fork server (never a fork of the step process, whose DuckDB and Dagster threads a fork would copy
mid-state). The pool lives as long as the process: a step decoding several chunks starts it once.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from typing import Any

MIN_PARALLEL = 4000  # images below which one process decodes the batch
_POOL: dict[str, Any] = {}


def workers() -> int:
    """Worker processes: the settings' ``decode_workers``, else the cores this process may run on."""
    from dc_pipeline.settings import get_settings

    configured = get_settings().decode_workers
    if configured:
        return configured
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def _pool(n: int):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    if _POOL.get("n") != n:
        if "pool" in _POOL:
            _POOL["pool"].shutdown()
        _POOL.update(n=n, pool=ProcessPoolExecutor(n, mp_context=get_context("forkserver")))
        atexit.register(_POOL["pool"].shutdown)
    return _POOL["pool"]


def map_chunks(fn: Callable, items: Sequence, *args, processes: int | None = None) -> list:
    """``[fn(chunk, *args) for chunk in chunks of items]``, the chunks in order; in ``processes`` (default
    ``workers()``) worker processes when ``items`` is large enough. ``fn`` must be a module-level function
    (it is pickled by name)."""
    n = processes or workers()
    if n <= 1 or len(items) < MIN_PARALLEL:
        return [fn(items, *args)] if len(items) else []
    size = -(-len(items) // n)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return list(_pool(n).map(fn, chunks, *[[a] * len(chunks) for a in args]))
