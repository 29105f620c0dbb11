"""Ingestion stage: one raw asset per source, partitioned by landing batch, with its batch checks."""

import json
from datetime import UTC, datetime

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from dc_pipeline.catalog import DUCKDB_POOL, RAW, T, batches_of, raw_key, raw_table
from dc_pipeline.defs.metadata import plain, table_metadata
from dc_pipeline.defs.resources import DataLake, Warehouse

SCHEMA_HISTORY = T.SCHEMA_HISTORY
BATCH_GATE = T.BATCH_GATE
# Share of records a batch may have wrong before the batch as a whole is refused.
BATCH_TOLERANCE = {"ids": 0.05, "labels": 0.10, "timestamps": 0.05, "payload": 0.10}


def record_gate(conn, source: str, batch_id: str, check: str, passed: bool, detail: str) -> None:
    """Remember a blocking check's verdict so later runs of cleaning keep a failed batch out."""
    from dc_pipeline.warehouse.io import replace_rows

    row = pd.DataFrame(
        [
            {
                "source": source,
                "batch_id": batch_id,
                "check_name": check,
                "passed": passed,
                "detail": detail,
                "evaluated_at": datetime.now(UTC).replace(tzinfo=None),
            }
        ]
    )
    replace_rows(conn, BATCH_GATE, row, {"source": source, "batch_id": batch_id, "check_name": check})


def build_ingestion(source: str) -> list:
    """The raw asset of ``source`` and its checks."""
    partitions = batches_of(source)
    key = raw_key(source)

    @asset(
        key=key,
        partitions_def=partitions,
        group_name=RAW,
        kinds={"duckdb", "pandas"},
        pool=DUCKDB_POOL,
        description=(
            f"Raw records of `{source}`, one row per manifest row of a landing batch, values exactly as sent, "
            "with provenance (batch, manifest file and sha256, row number, ingested_at, code version). "
            "Image bytes go to the content-addressed store."
        ),
        check_specs=[
            AssetCheckSpec(
                "schema_contract",
                asset=key,
                blocking=True,
                partitions_def=partitions,
                description=(
                    "Blocking. The batch's observed columns and types match the source contract. An alias is mapped "
                    "with a warning; a missing, unknown or retyped column stops the batch: cleaning would otherwise "
                    "coerce or drop values silently."
                ),
            )
        ],
    )
    def raw_batch(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse):
        from dc_pipeline.core.data.ingestion import ingest_batch
        from dc_pipeline.core.data.manifests import ManifestError
        from dc_pipeline.core.provenance import code_version
        from dc_pipeline.warehouse.io import append_rows, read, replace_rows, table_exists
        from dc_pipeline.warehouse.migrations import ensure_table
        from dc_pipeline.warehouse.tables import raw_table_spec

        batch_id = context.partition_key
        contracts = lake.contracts()
        contract = contracts[source]
        try:
            batch = ingest_batch(
                lake.batch_dir(source, batch_id),
                source,
                batch_id,
                contract,
                lake.object_store(),
                contracts.project.max_file_bytes,
                str(code_version()["label"]),
            )
        except (ManifestError, ValueError) as exc:
            raise Failure(description=f"{source}/{batch_id} cannot be ingested: {exc}") from exc

        with warehouse.get_connection() as conn:
            ensure_table(conn, raw_table_spec(source, contract.kind))  # the raw table's owner creates it
            previous = None
            if table_exists(conn, SCHEMA_HISTORY):
                prev = read(
                    conn,
                    f"SELECT schema_hash FROM {SCHEMA_HISTORY} WHERE source = ? AND batch_id <> ? "
                    "ORDER BY observed_at DESC LIMIT 1",
                    [source, batch_id],
                )
                previous = prev["schema_hash"].iloc[0] if len(prev) else None
            history = batch.schema_record(previous)
            history.update(
                source=source,
                batch_id=batch_id,
                contract_version=contract.version,
                observed_at=datetime.now(UTC).replace(tzinfo=None),
            )
            append_rows(conn, SCHEMA_HISTORY, pd.DataFrame([history]).astype({"previous_schema_hash": "string"}))
            replace_rows(conn, raw_table(source), batch.rows, {"batch_id": batch_id})
            record_gate(
                conn, source, batch_id, "schema_contract", not batch.verdict.blocked, "; ".join(batch.verdict.messages)
            )

        for message in batch.verdict.messages:
            (context.log.error if batch.verdict.blocked else context.log.warning)(f"{source}/{batch_id}: {message}")
        yield MaterializeResult(
            metadata={
                **table_metadata(batch.rows),
                "manifest_sha256": batch.manifest.sha256,
                "schema_status": batch.verdict.status,
                "schema_hash": history["schema_hash"],
                "schema_changed_from_previous_batch": bool(history["changed_from_previous"]),
                **(
                    {
                        "images_stored": int(batch.rows["image_sha256"].notna().sum()),
                        "rows_with_image_errors": int(batch.rows["image_error"].notna().sum()),
                    }
                    if contract.kind == "images"
                    else {}
                ),
            }
        )
        yield AssetCheckResult(
            check_name="schema_contract",
            passed=not batch.verdict.blocked,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "status": batch.verdict.status,
                "messages": MetadataValue.md("\n".join(f"- {m}" for m in batch.verdict.messages) or "_none_"),
                "observed_columns": MetadataValue.json(batch.manifest.column_types),
                "renamed_columns": MetadataValue.json(batch.verdict.renames),
                "contract_version": contract.version,
            },
        )

    @asset_check(
        asset=key,
        name="batch_quality",
        blocking=True,
        partitions_def=partitions,
        pool=DUCKDB_POOL,
        description=(
            "Blocking. Great Expectations on the batch: ids present and unique, labels in the source's vocabulary, "
            "times parse and are plausible, the payload is there (image bytes, or a known review decision). "
            "Single bad records are quarantined by "
            f"cleaning; more than {BATCH_TOLERANCE} of a batch wrong means a broken delivery, so the batch is "
            "kept out of everything downstream."
        ),
    )
    def batch_quality(context, lake: DataLake, warehouse: Warehouse) -> AssetCheckResult:
        from dc_pipeline.core.data.expectations import Expectation as E
        from dc_pipeline.core.data.expectations import validate
        from dc_pipeline.core.data.ingestion import health_frame

        batch_id = context.partition_key
        contracts = lake.contracts()
        contract = contracts[source]
        with warehouse.get_connection() as conn:
            rows = conn.execute(f"SELECT * FROM {raw_table(source)} WHERE batch_id = ?", [batch_id]).df()
        frame = health_frame(rows, contract, contracts.project.classes)
        now = datetime.now(UTC).replace(tzinfo=None)
        summary = validate(
            frame,
            [
                E("ExpectColumnValuesToNotBeNull", column="record_id", mostly=1 - BATCH_TOLERANCE["ids"]),
                E("ExpectColumnValuesToBeUnique", column="record_id", mostly=1 - BATCH_TOLERANCE["ids"]),
                E(
                    "ExpectColumnValuesToBeInSet",
                    column="label_ok",
                    value_set=[True],
                    mostly=1 - BATCH_TOLERANCE["labels"],
                ),
                E("ExpectColumnValuesToNotBeNull", column="captured_at", mostly=1 - BATCH_TOLERANCE["timestamps"]),
                E(
                    "ExpectColumnValuesToBeBetween",
                    column="captured_at",
                    min_value=contracts.project.earliest.replace(tzinfo=None),
                    max_value=now + contracts.project.max_future,
                    mostly=1 - BATCH_TOLERANCE["timestamps"],
                ),
                E(
                    "ExpectColumnValuesToBeInSet",
                    column="payload_ok",
                    value_set=[True],
                    mostly=1 - BATCH_TOLERANCE["payload"],
                ),
            ],
            id_column="record_id",
            name=f"{source}_batch_quality",
        )
        failed = "; ".join(f"{o.expectation}[{o.column}]" for o in summary.failed())
        with warehouse.get_connection() as conn:
            record_gate(conn, source, batch_id, "batch_quality", summary.success, failed)
        return AssetCheckResult(
            passed=summary.success,
            severity=AssetCheckSeverity.ERROR,
            metadata={**summary.metadata(), "report": MetadataValue.md(summary.markdown())},
        )

    @asset_check(
        asset=key,
        name="batch_volume",
        blocking=False,
        partitions_def=partitions,
        pool=DUCKDB_POOL,
        description=(
            "Warning only. The batch's record count is within 0.2x to 5x the median of the source's previous "
            "batches (Great Expectations row-count expectation). A small or large batch is not wrong data, "
            "but it often means a partial export or a duplicated delivery worth a look."
        ),
    )
    def batch_volume(context, warehouse: Warehouse) -> AssetCheckResult:
        from dc_pipeline.core.data.expectations import Expectation as E
        from dc_pipeline.core.data.expectations import validate
        from dc_pipeline.core.data.ingestion import expected_batch_size

        batch_id = context.partition_key
        with warehouse.get_connection() as conn:
            rows = conn.execute(f"SELECT row_number FROM {raw_table(source)} WHERE batch_id = ?", [batch_id]).df()
            prev = conn.execute(
                f"SELECT batch_id, arg_max(record_count, observed_at) AS n FROM {SCHEMA_HISTORY} "
                "WHERE source = ? AND batch_id <> ? AND status <> 'blocked' GROUP BY batch_id",
                [source, batch_id],
            ).df()
        low, high = expected_batch_size([int(n) for n in prev["n"]])
        summary = validate(
            rows, [E("ExpectTableRowCountToBeBetween", min_value=low, max_value=high)], name=f"{source}_batch_volume"
        )
        return AssetCheckResult(
            passed=summary.success,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "record_count": int(len(rows)),
                "expected_min": low,
                "expected_max": plain(high),
                "previous_batches": int(len(prev)),
                "previous_counts": MetadataValue.json(json.loads(prev.to_json(orient="records"))),
            },
        )

    return [raw_batch, batch_quality, batch_volume]
