"""Every prediction the service makes, written as Parquet files the pipeline can ingest.

Rows are buffered and written every ``flush_rows`` rows or ``flush_seconds`` (and on shutdown) as one
file, whole or not at all (a temporary name renamed into place), named so that files sort by time:
``predictions-<UTC time>-<process id>-<sequence>.parquet``. A crash loses at most the rows not flushed.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path

PREDICTIONS_FOLDER = ("serving", "predictions")
"""Where the service writes its log, under the data folder (and where ``serving/prediction_log`` reads it)."""

PREDICTION_SCHEMA = {
    "request_id": "string",
    "received_at": "timestamp[us, UTC]",
    "caller": "string",
    "arm": "string",  # champion or challenger
    "answered": "bool",  # False: scored in shadow, not returned
    "model_version": "string",
    "predicted_class": "int64",
    "confidence": "double",
    "routing": "string",  # auto_accept or review
    "threshold": "double",
    "latency_ms": "double",
    "batch_size": "int64",
    "image_sha256": "string",  # of the request's image bytes (a JSON array: of its PNG encoding)
}


class PredictionLog:
    """Buffered, append-only prediction log under ``folder``."""

    def __init__(self, folder: Path, flush_rows: int = 1000, flush_seconds: float = 5.0) -> None:
        self.folder = Path(folder)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._rows: list[dict] = []
        self._sequence = 0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def append(self, row: dict) -> None:
        with self._lock:
            self._rows.append(row)
            due = len(self._rows) >= self.flush_rows
        if due:
            self.flush()

    def flush_if_due(self) -> Path | None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            return self.flush()
        return None

    def flush(self) -> Path | None:
        """Write the buffered rows as one file; returns it (None when there was nothing to write)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from dc_pipeline.core.atomic import temporary

        with self._lock:
            rows, self._rows = self._rows, []
            self._last_flush = time.monotonic()
            if not rows:
                return None
            self._sequence += 1
            sequence = self._sequence
        schema = pa.schema([(name, _arrow_type(kind)) for name, kind in PREDICTION_SCHEMA.items()])
        table = pa.Table.from_pylist([{name: row.get(name) for name in PREDICTION_SCHEMA} for row in rows], schema)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.folder / f"predictions-{stamp}-{os.getpid()}-{sequence:06d}.parquet"
        tmp = temporary(target)
        pq.write_table(table, tmp)
        tmp.replace(target)
        return target


def _arrow_type(kind: str):
    import pyarrow as pa

    if kind.startswith("timestamp"):
        unit, tz = kind.removeprefix("timestamp[").removesuffix("]").split(", ")
        return pa.timestamp(unit, tz)
    return pa.type_for_alias(kind)


LOG_FILE_PATTERN = "predictions-*.parquet"
MAX_LOG_FILE_BYTES = 512 * 1024 * 1024


def new_log_files(folder: Path, known: set[str], relative) -> tuple[list[Path], list[tuple[str, str]]]:
    """The log files under ``folder`` not in ``known`` (their ``relative`` names), oldest first, and the
    entries refused with a reason: only regular files named as the service names them, no links, at most
    ``MAX_LOG_FILE_BYTES``; temporary files of a writer still at work are not looked at."""
    import stat

    accepted, refused = [], []
    if not folder.is_dir() or folder.is_symlink():
        return accepted, refused
    for path in sorted(folder.glob(LOG_FILE_PATTERN)):
        name = relative(path)
        if name in known:
            continue
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            refused.append((name, "not a regular file (links are not followed)"))
        elif info.st_size > MAX_LOG_FILE_BYTES:
            refused.append((name, f"{info.st_size} bytes, over {MAX_LOG_FILE_BYTES}"))
        else:
            accepted.append(path)
    return accepted, refused
