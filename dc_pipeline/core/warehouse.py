"""DuckDB helpers: create-or-replace tables and partitions from DataFrames, idempotently."""

from __future__ import annotations

import pandas as pd


def ensure_schema(conn, schema: str) -> None:
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


def table_exists(conn, table: str) -> bool:
    schema, name = table.split(".")
    return bool(conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name]).fetchone()[0])


def replace_table(conn, table: str, df: pd.DataFrame) -> None:
    """Replace a whole table with ``df`` (its schema follows the DataFrame)."""
    ensure_schema(conn, table.split(".")[0])
    conn.register("_replace_df", df)
    try:
        conn.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _replace_df")
    finally:
        conn.unregister("_replace_df")


def replace_rows(conn, table: str, df: pd.DataFrame, where: dict[str, object]) -> None:
    """Delete the rows matching ``where`` and insert ``df`` in one transaction (a partition write)."""
    ensure_schema(conn, table.split(".")[0])
    conn.register("_rows_df", df)
    try:
        conn.execute("BEGIN TRANSACTION")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM _rows_df LIMIT 0")
        clause = " AND ".join(f'"{k}" = ?' for k in where)
        conn.execute(f"DELETE FROM {table} WHERE {clause}", list(where.values()))
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows_df")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.unregister("_rows_df")


def append_rows(conn, table: str, df: pd.DataFrame) -> None:
    ensure_schema(conn, table.split(".")[0])
    conn.register("_append_df", df)
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM _append_df LIMIT 0")
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _append_df")
    finally:
        conn.unregister("_append_df")


def read(conn, sql: str, params: list | None = None) -> pd.DataFrame:
    return conn.execute(sql, params or []).df()
