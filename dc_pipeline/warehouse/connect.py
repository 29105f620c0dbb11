"""Opening the warehouse: pending migrations are applied before a read-write connection is handed out.

The warehouse is a DuckDB file (one machine, the default) or a PostgreSQL database that DuckDB attaches
(``postgresql://...``, the multi-machine mode): the same SQL runs on both, DuckDB executing it and
PostgreSQL storing the tables, so any number of processes on any machine read and write at once.

DuckDB lets one process at a time open the file (a writer excludes every other process, readers
included). Opening waits a bounded time for the lock, backing off, and then raises ``WarehouseBusy``
naming the holder: a read-write connection leaves a marker next to the file (``<file>.writer.json``:
process id, and the Dagster run and job when a run opened it) for as long as it is open.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from dc_pipeline.core.atomic import process_alive
from dc_pipeline.warehouse.backend import POSTGRES_CATALOG, is_postgres, postgres_extension

READ_WAIT_SECONDS = 30.0
"""How long readers (the API, notebooks, the CLI) wait for a writer's step to finish."""
WRITE_WAIT_SECONDS = 120.0
"""How long a writer waits for another process (a reader, another writer) to close the file."""


class WarehouseBusy(RuntimeError):
    """Another process held the warehouse file for longer than the caller was willing to wait."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder


def writer_marker(database: str | Path) -> Path:
    path = Path(database)
    return path.with_name(path.name + ".writer.json")


def current_writer(database: str | Path) -> dict | None:
    """Who holds the warehouse for writing, from its marker; None without one or when its process is gone
    (a killed run leaves a stale marker, which is ignored and replaced by the next writer)."""
    try:
        holder = json.loads(writer_marker(database).read_text())
        pid = int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return holder if process_alive(pid) else None


def _describe(holder: dict | None, error: str) -> str:
    if holder is None:
        pid = error.split("(PID ")[-1].split(")")[0] if "(PID " in error else "unknown"
        return f"another process (PID {pid}; no pipeline run: a notebook, a reader or the CLI?)"
    parts = [f"run {holder['run_id']}" if holder.get("run_id") else "a process outside any run"]
    details = [f"{k} {holder[k]}" for k in ("job", "step") if holder.get(k)]
    details += [f"PID {holder['pid']}", f"since {holder.get('since')}"]
    return f"{parts[0]} ({', '.join(details)})"


def _open(path: Path, read_only: bool, wait_seconds: float):
    import duckdb

    deadline, delay = time.monotonic() + wait_seconds, 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                holder = current_writer(path)
                action = "read" if read_only else "written"
                raise WarehouseBusy(
                    f"the warehouse {path} cannot be {action} now: it is being written by {_describe(holder, str(exc))}; "
                    f"waited {wait_seconds:g} s. Try again when that step has finished.",
                    holder,
                ) from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)


def _write_marker(path: Path, holder: dict) -> str:
    token = os.urandom(8).hex()
    marker = writer_marker(path)
    tmp = marker.with_name(f".{marker.name}.{token}")
    record = {
        "pid": os.getpid(),
        **holder,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": token,
    }
    tmp.write_text(json.dumps(record))
    os.replace(tmp, marker)
    return token


def _remove_marker(path: Path, token: str) -> None:
    marker = writer_marker(path)
    try:
        if json.loads(marker.read_text()).get("token") == token:
            marker.unlink()
    except (OSError, ValueError):
        pass


def _open_postgres(url: str, read_only: bool):
    """An in-memory DuckDB with the PostgreSQL warehouse attached as its default catalog."""
    import duckdb

    conn = duckdb.connect(":memory:")
    try:
        conn.execute(f"LOAD '{postgres_extension()}'")
        mode = ", READ_ONLY" if read_only else ""
        quoted = url.replace("'", "''")
        conn.execute(f"ATTACH '{quoted}' AS {POSTGRES_CATALOG} (TYPE postgres{mode})")
        conn.execute(f"USE {POSTGRES_CATALOG}")
    except Exception:
        conn.close()
        raise
    return conn


@contextmanager
def connect(
    database: str | Path,
    data_dir: str | Path | None,
    read_only: bool = False,
    migrations=None,
    wait_seconds: float | None = None,
    holder: dict | None = None,
) -> Iterator:
    """A DuckDB connection to ``database``, waiting up to ``wait_seconds`` for another process's lock. A
    read-write connection marks the file as written by ``holder`` (``run_id``, ``job``) and first applies
    the pending migrations (each in its own transaction, recorded in ``meta.schema_migrations``; a check of
    one row when there are none). A PostgreSQL warehouse needs no waiting and no marker: PostgreSQL
    serves every process at once."""
    if is_postgres(database):
        conn = _open_postgres(str(database), read_only)
        try:
            if not read_only:
                from dc_pipeline.warehouse.migrations import WAREHOUSE, migrate

                migrate(conn, data_dir, migrations or WAREHOUSE)
            yield conn
        finally:
            conn.close()
        return
    path = Path(database).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = wait_seconds if wait_seconds is not None else (READ_WAIT_SECONDS if read_only else WRITE_WAIT_SECONDS)
    conn = _open(path, read_only, wait)
    token = None if read_only else _write_marker(path, holder or {})
    try:
        if not read_only:
            from dc_pipeline.warehouse.migrations import WAREHOUSE, migrate

            migrate(conn, data_dir, migrations or WAREHOUSE)
        yield conn
    finally:
        if token:
            _remove_marker(path, token)
        conn.close()


@contextmanager
def read_warehouse(database: str | Path, wait_seconds: float = READ_WAIT_SECONDS) -> Iterator:
    """A read-only connection for readers (the API, notebooks, the CLI). While a run's step writes, it waits
    up to ``wait_seconds``, then raises ``WarehouseBusy`` naming the run. A PostgreSQL warehouse is read
    while runs write, without waiting."""
    if is_postgres(database):
        with connect(database, None, read_only=True) as conn:
            yield conn
        return
    path = Path(database)
    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path}: materialize the pipeline first")
    with connect(path, None, read_only=True, wait_seconds=wait_seconds) as conn:
        yield conn
