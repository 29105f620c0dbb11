"""Opening the warehouse: pending migrations are applied before a read-write connection is handed out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def connect(database: str | Path, data_dir: str | Path | None, read_only: bool = False, migrations=None) -> Iterator:
    """A DuckDB connection to ``database``. A read-write connection first applies the pending migrations
    (each in its own transaction, recorded in ``meta.schema_migrations``; a check of one row when there
    are none)."""
    import duckdb

    path = Path(database).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(path), read_only=read_only)
    try:
        if not read_only:
            from dc_pipeline.warehouse.migrations import WAREHOUSE, migrate

            migrate(conn, data_dir, migrations or WAREHOUSE)
        yield conn
    finally:
        conn.close()


@contextmanager
def read_warehouse(database: str | Path) -> Iterator:
    """A read-only connection for readers (the API, notebooks, the CLI)."""
    path = Path(database)
    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path}: materialize the pipeline first")
    with connect(path, None, read_only=True) as conn:
        yield conn
