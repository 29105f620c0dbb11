"""Which kind of warehouse a location names, and how DuckDB reaches a PostgreSQL one."""

from __future__ import annotations

from pathlib import Path

POSTGRES_CATALOG = "warehouse"
"""The name a PostgreSQL warehouse is attached under in DuckDB (``ATTACH ... AS warehouse (TYPE postgres)``)."""


def postgres_catalog(conn) -> str | None:
    """The attached PostgreSQL catalog ``conn`` works in, None for a DuckDB file."""
    row = conn.execute(
        "SELECT database_name FROM duckdb_databases() WHERE database_name = current_database() AND type = 'postgres'"
    ).fetchone()
    return row[0] if row else None


def is_postgres(database: str | Path) -> bool:
    """Whether ``database`` names a PostgreSQL warehouse (a ``postgresql://`` or ``postgres://`` URL)."""
    return str(database).startswith(("postgresql://", "postgres://"))


def postgres_extension() -> Path:
    """DuckDB's postgres extension, from its pip package (nothing is downloaded at run time)."""
    import duckdb_extension_postgres_scanner as package

    found = sorted(Path(package.__file__).parent.glob("extensions/*/postgres_scanner.duckdb_extension"))
    if not found:
        raise RuntimeError("duckdb-extension-postgres-scanner is installed without its extension file")
    return found[-1]
