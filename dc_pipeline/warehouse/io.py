"""Writing DataFrames into declared tables: replace a table's rows, replace a partition's rows, append.

Tables are created by the migrations (or, for per-source raw tables, by their owner through
``ensure_table``) with declared types; a write never creates or retypes a table. A DataFrame column the
table does not declare is an error, a declared column the DataFrame lacks is NULL, and values are cast
to the declared types.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd


class UndeclaredTable(LookupError):
    """A write to a table that no migration or owner created."""


def table_exists(conn, table: str) -> bool:
    schema, name = table.split(".")
    return bool(
        conn.execute(  # fetchall: DuckDB 2 refuses new work while a result is half read
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, name]
        ).fetchall()[0][0]
    )


def _require(conn, table: str) -> None:
    if not table_exists(conn, table):
        raise UndeclaredTable(f"{table} does not exist: declare it in dc_pipeline.warehouse.tables")


def _insert(conn, table: str, df: pd.DataFrame, view: str) -> None:
    _require(conn, table)
    conn.register(view, df)
    try:
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view}")
    finally:
        conn.unregister(view)


_OPEN: set[int] = set()  # connections inside a transaction() block


@contextmanager
def transaction(conn) -> Iterator:
    """All of the block's writes or none (a killed process leaves none): commit at the end, roll back on
    an error. Inside another ``transaction`` block on ``conn``, the block is part of that one (DuckDB has
    no nested transactions)."""
    if id(conn) in _OPEN:
        yield conn
        return
    conn.execute("BEGIN TRANSACTION")
    _OPEN.add(id(conn))
    try:
        yield conn
    except BaseException:
        _OPEN.discard(id(conn))
        conn.execute("ROLLBACK")
        raise
    _OPEN.discard(id(conn))
    conn.execute("COMMIT")


def replace_table(conn, table: str, df: pd.DataFrame) -> None:
    """Replace every row of ``table`` with ``df``, in one transaction."""
    _require(conn, table)
    with transaction(conn):
        conn.execute(f"DELETE FROM {table}")
        _insert(conn, table, df, "_replace_df")


def replace_rows(conn, table: str, df: pd.DataFrame, where: dict[str, object]) -> None:
    """Delete the rows matching ``where`` and insert ``df``, in one transaction (a partition write)."""
    _require(conn, table)
    clause = " AND ".join(f'"{k}" = ?' for k in where)
    with transaction(conn):
        conn.execute(f"DELETE FROM {table} WHERE {clause}", list(where.values()))
        _insert(conn, table, df, "_rows_df")


def append_rows(conn, table: str, df: pd.DataFrame) -> None:
    _insert(conn, table, df, "_append_df")


def read(conn, sql: str, params: list | None = None) -> pd.DataFrame:
    return conn.execute(sql, params or []).df()
