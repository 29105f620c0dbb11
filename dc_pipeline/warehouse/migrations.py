"""Numbered, additive migrations, recorded in the database they migrate (``meta.schema_migrations``).

Migration N creates the tables and adds the columns declared with ``since=N`` in
``dc_pipeline.warehouse.tables``, then runs its own step, if any, in the same transaction. Nothing is
dropped or wiped: an older warehouse upgrades in place the first time a new release opens it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dc_pipeline.catalog import RAW, T
from dc_pipeline.warehouse.backend import postgres_catalog
from dc_pipeline.warehouse.tables import ALERT_TABLES, TABLES, Table, column_type

LEDGER = "meta.schema_migrations"


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    step: Callable | None = None  # step(conn, data_dir), after the declared tables and columns


def existing_columns(conn, table: str) -> dict[str, str]:
    schema, name = table.split(".")
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
        "AND table_name = ? ORDER BY ordinal_position",
        [schema, name],
    ).fetchall()
    return dict(rows)


def add_column(conn, table: str, column: str, declared: str) -> None:
    """``ALTER TABLE ... ADD COLUMN``; on a PostgreSQL warehouse the statement goes to PostgreSQL itself
    with PostgreSQL's name of the type (DuckDB's postgres extension forwards DuckDB's names there)."""
    catalog = postgres_catalog(conn)
    if catalog is None:
        conn.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{column}" {declared}')
        return
    schema, name = table.split(".")
    sql = f'ALTER TABLE "{schema}"."{name}" ADD COLUMN IF NOT EXISTS "{column}" {POSTGRES_TYPES[declared]}'
    conn.execute("CALL postgres_execute(?, ?)", [catalog, sql])
    conn.execute("CALL pg_clear_cache()")


POSTGRES_TYPES = {
    "VARCHAR": "text",
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE": "double precision",
    "BOOLEAN": "boolean",
    "TIMESTAMP": "timestamp",
    "BLOB": "bytea",
    "JSON": "json",
}


def ensure_table(conn, table: Table, until: int | None = None) -> None:
    """Create ``table`` if it is missing, add its missing columns, and give existing columns their declared
    types (older releases took types from the first DataFrame written, e.g. ``"NULL"`` for an empty one)."""
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"')
    on_postgres = postgres_catalog(conn) is not None
    have = existing_columns(conn, table.name)
    if not have:
        conn.execute(table.create_sql(until, json_as_text=on_postgres))
        return
    for col in table.columns:
        if until is not None and col.since > until:
            continue
        declared = column_type(col.type, json_as_text=on_postgres).split()[0].upper()
        if col.name not in have:
            add_column(conn, table.name, col.name, declared)
        elif have[col.name].upper() != declared:
            conn.execute(
                f'ALTER TABLE {table.name} ALTER COLUMN "{col.name}" SET DATA TYPE {declared} '
                f'USING TRY_CAST("{col.name}" AS {declared})'
            )


def _declared(tables: tuple[Table, ...], number: int) -> Callable:
    def apply(conn, data_dir) -> None:
        for table in tables:
            if table.since == number or any(c.since == number for c in table.columns):
                ensure_table(conn, table, until=number)

    return apply


def _conform_raw_tables(conn, data_dir) -> None:
    """Per-source raw tables of older releases: declared types (their owner creates new ones)."""
    from dc_pipeline.warehouse.tables import RAW_IMAGE_COLUMNS, RAW_REVIEW_COLUMNS

    names = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name NOT IN ('schema_history', 'batch_gate')",
            [RAW],
        ).fetchall()
    ]
    for name in names:
        have = existing_columns(conn, f"{RAW}.{name}")
        columns = RAW_REVIEW_COLUMNS if "decision" in have else RAW_IMAGE_COLUMNS
        ensure_table(conn, Table(f"{RAW}.{name}", "raw", columns))


def _relative_paths(conn, data_dir) -> None:
    """Older releases stored absolute paths; make them relative to the data folder (by the folder's layout
    when it was moved before migrating). A path that names nothing inside it is left as it is, and
    ``stored_file`` refuses to read it."""
    from dc_pipeline.core.paths import legacy_relative

    if data_dir is None:
        return
    for table, column, key in ((T.MODELS, "weights_path", "version_id"), (T.DATASET_VERSIONS, "path", "dataset_hash")):
        for k, path in conn.execute(f"SELECT {key}, {column} FROM {table} WHERE {column} LIKE '/%'").fetchall():
            rel = legacy_relative(path, data_dir)
            if rel is not None:
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", [rel, k])


def _publish_existing_versions(conn, data_dir) -> None:
    """Older releases made every new dataset version current at once: each was published when it was
    written. The per-version feature tables described the current version only: they are its rows."""
    conn.execute(
        f"UPDATE {T.DATASET_VERSIONS} SET status = 'published', published_at = created_at WHERE status IS NULL"
    )
    current = conn.execute(f"SELECT dataset_hash FROM {T.DATASET_VERSIONS} WHERE is_current").fetchall()
    if len(current) == 1:
        for table in (T.DATASET_INDEX, T.IMAGE_STATS, T.CURATION_LINEAGE):
            conn.execute(f"UPDATE {table} SET dataset_hash = ? WHERE dataset_hash IS NULL", [current[0][0]])


def _incremental_state(conn, data_dir) -> None:
    """Mark the dataset versions of older releases as the npy format they are stored in, so they stay
    loadable by hash. The incremental state (clean.candidates, the head of the Lance store) is filled by the
    first cleaning and features runs after the upgrade, which take every batch in once."""
    conn.execute(f"UPDATE {T.DATASET_VERSIONS} SET format = 'npy' WHERE format IS NULL")


@dataclass(frozen=True)
class Migrations:
    """The migrations of one database file and the tables they declare."""

    tables: tuple[Table, ...]
    steps: tuple[Migration, ...]


WAREHOUSE = Migrations(
    TABLES,
    (
        Migration(1, "declared tables of release 0.1, with their declared types", _conform_raw_tables),
        Migration(2, "paths stored relative to the data folder", _relative_paths),
        Migration(3, "retraining attempts: every automatic retraining request of the retraining trigger"),
        Migration(4, "dataset versions written, audited, then published", _publish_existing_versions),
        Migration(5, "incremental data path: per-batch cleaning state, Lance dataset versions", _incremental_state),
        Migration(
            6,
            "unlabelled data and the data issues: labelling queue, fingerprints, near-duplicate groups, quality "
            "issues and outliers (the next features run rebuilds the membership once to apply the split guard)",
        ),
        Migration(
            7,
            "evidence: per-image evaluation outcomes, intervals on evaluation figures, the gate's paired mCE "
            "difference and its interval",
        ),
        Migration(8, "the scoring service: its predictions, the log files taken in, the A/B figures"),
        Migration(9, "the audit trail: runs launched, re-executed or cancelled, alias moves, label changes"),
    ),
)


def _alert_kinds(conn, data_dir) -> None:
    """Rows of earlier releases were all failed runs (the column itself is added as declared)."""
    conn.execute(f"UPDATE {T.RUN_FAILURES} SET kind = 'run_failure' WHERE kind IS NULL")


ALERTS = Migrations(
    ALERT_TABLES,
    (
        Migration(1, "declared alerts table (a partition column typed NULL by release 0.1 becomes VARCHAR)"),
        Migration(2, "alerts have a kind: run_failure (every earlier row) or challenger_refused", _alert_kinds),
    ),
)


def migrate(conn, data_dir: str | Path | None, migrations: Migrations = WAREHOUSE) -> list[int]:
    """Apply the pending migrations, each in its own transaction; returns the numbers applied."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS meta")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {LEDGER} (number INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
    )
    done = {r[0] for r in conn.execute(f"SELECT number FROM {LEDGER}").fetchall()}
    applied = []
    for m in migrations.steps:
        if m.number in done:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            _declared(migrations.tables, m.number)(conn, data_dir)
            if m.step:
                m.step(conn, data_dir)
            conn.execute(
                f"INSERT INTO {LEDGER} VALUES (?, ?, ?)", [m.number, m.name, datetime.now(UTC).replace(tzinfo=None)]
            )
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        applied.append(m.number)
    return applied
