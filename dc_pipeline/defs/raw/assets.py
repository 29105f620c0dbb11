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

from dc_pipeline.catalog import RAW, T, batches_of, raw_key, raw_table, warehouse_pool
from dc_pipeline.defs.metadata import plain, table_metadata, tidy_markdown
from dc_pipeline.defs.resources import DataLake, Warehouse

SCHEMA_HISTORY = T.SCHEMA_HISTORY
BATCH_GATE = T.BATCH_GATE
# Share of records a batch may have wrong before the batch as a whole is refused.
BATCH_TOLERANCE = {"ids": 0.05, "labels": 0.10, "timestamps": 0.05, "payload": 0.10}
TOLERANCE_TEXT = ", ".join(f"{share:.0%} of {what}" for what, share in BATCH_TOLERANCE.items())


def gate_row(source: str, batch_id: str, check: str, passed: bool, detail: str) -> pd.DataFrame:
    return pd.DataFrame(
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


def record_gate(conn, source: str, batch_id: str, check: str, passed: bool, detail: str) -> None:
    """Remember a blocking check's verdict so later runs of cleaning keep a failed batch out."""
    from dc_pipeline.warehouse.io import replace_rows

    replace_rows(
        conn,
        BATCH_GATE,
        gate_row(source, batch_id, check, passed, detail),
        {"source": source, "batch_id": batch_id, "check_name": check},
    )


def write_batch(
    conn, source: str, batch_id: str, rows: pd.DataFrame, history: pd.DataFrame, gate: pd.DataFrame
) -> None:
    """In one transaction: replace the batch's raw rows, add its schema history row, and replace every
    verdict of the batch with ``gate`` (the schema verdict). A refused value leaves nothing half written."""
    from dc_pipeline.warehouse.io import append_rows, replace_rows, transaction

    with transaction(conn):
        replace_rows(conn, raw_table(source), rows, {"batch_id": batch_id})
        append_rows(conn, SCHEMA_HISTORY, history)
        replace_rows(conn, BATCH_GATE, gate, {"source": source, "batch_id": batch_id})


def _batch_quality(source: str, batch_id: str, lake: DataLake, warehouse: Warehouse) -> tuple[bool, str, dict]:
    """Great Expectations on one raw batch: ``(passed, failed expectations, metadata)``."""
    from dc_pipeline.core.data.expectations import Expectation as E
    from dc_pipeline.core.data.expectations import validate
    from dc_pipeline.core.data.ingestion import health_frame

    contracts = lake.contracts()
    contract = contracts[source]
    with warehouse.get_connection() as conn:
        status = conn.execute(
            f"SELECT status, messages FROM {SCHEMA_HISTORY} WHERE source = ? AND batch_id = ? "
            "ORDER BY observed_at DESC LIMIT 1",
            [source, batch_id],
        ).fetchall()
        rows = conn.execute(f"SELECT * FROM {raw_table(source)} WHERE batch_id = ?", [batch_id]).df()
    if status and status[0][0] == "refused":
        detail = f"the batch was refused: {'; '.join(json.loads(status[0][1]))}"
        return False, detail, {"summary": detail, "refused": MetadataValue.text(detail)}
    now = datetime.now(UTC)
    frame = health_frame(rows, contract, contracts.project, now)
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
                max_value=contracts.project.plausible_until(now).replace(tzinfo=None),
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
    n, bad = len(summary.outcomes), len(summary.failed())
    text = (
        f"{n - bad} of {n} expectations met on {len(frame)} records"
        + (f"; failed: {failed}" if failed else "")
        + f" (tolerated: {TOLERANCE_TEXT} wrong)"
    )
    return (
        summary.success,
        failed,
        {
            "summary": text,
            **summary.metadata(),
            "tolerances": MetadataValue.md(
                "| records | may be wrong |\n|---|---|\n"
                + "\n".join(f"| {what} | {share:.0%} |" for what, share in BATCH_TOLERANCE.items())
            ),
            "report": MetadataValue.md(tidy_markdown(summary.markdown())),
        },
    )


def raw_summary(batch, kind: str) -> str:
    """One line: records, the schema verdict and, for images, how many were stored."""
    if batch.refusal:
        return f"refused: {batch.refusal.message}"[:300]
    text = f"{len(batch.rows)} records, schema {batch.verdict.status}"
    if kind == "images" and len(batch.rows):
        stored = int(batch.rows["image_sha256"].notna().sum())
        errors = int(batch.rows["image_error"].notna().sum())
        text += f", {stored} images stored" + (f", {errors} with image errors" if errors else "")
    return text + (f"; {len(batch.verdict.messages)} schema message(s)" if batch.verdict.messages else "")


def build_ingestion(source: str) -> list:
    """The raw asset of ``source`` and its checks."""
    partitions = batches_of(source)
    key = raw_key(source)

    @asset(
        key=key,
        partitions_def=partitions,
        group_name=RAW,
        kinds={"duckdb", "pandas"},
        pool=warehouse_pool(own_rows=True),
        description=(
            f"Raw records of `{source}`, one row per manifest row of a landing batch, values exactly as sent, "
            "with provenance (batch, manifest file and sha256, row number, ingested_at, code version). "
            "Image bytes go to the content-addressed store. Files are read only from inside the batch folder "
            "(no link followed, regular files only, sizes bounded); a batch that cannot be read that way, or "
            "whose manifest is past a bound, is refused as a whole with its reason in the schema history."
        ),
        check_specs=[
            AssetCheckSpec(
                "schema_contract",
                asset=key,
                blocking=True,
                partitions_def=partitions,
                description=(
                    "Blocking. The batch's observed columns and types match the source contract. An alias is mapped "
                    "with a warning; a missing, unknown, duplicated or retyped column stops the batch: cleaning "
                    "would otherwise coerce or drop values silently. A refused batch (unsafe or unreadable "
                    "delivery) fails it too."
                ),
            )
        ],
    )
    def raw_batch(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse):
        from dc_pipeline.core.data.ingestion import IncompleteBatch, ingest_batch
        from dc_pipeline.core.provenance import code_version
        from dc_pipeline.warehouse.io import read
        from dc_pipeline.warehouse.migrations import ensure_table
        from dc_pipeline.warehouse.tables import raw_table_spec

        batch_id = context.partition_key
        contracts = lake.contracts()
        contract = contracts[source]
        try:
            batch = ingest_batch(
                lake.landing,
                source,
                batch_id,
                contract,
                lake.object_store(),
                contracts.project,
                str(code_version()["label"]),
            )
        except IncompleteBatch as exc:
            raise Failure(description=f"{source}/{batch_id} cannot be ingested yet: {exc}") from exc

        with warehouse.get_connection() as conn:
            ensure_table(conn, raw_table_spec(source, contract.kind))  # the raw table's owner creates it
            prev = read(
                conn,
                f"SELECT schema_hash FROM {SCHEMA_HISTORY} WHERE source = ? AND batch_id <> ? "
                "AND schema_hash IS NOT NULL ORDER BY observed_at DESC LIMIT 1",
                [source, batch_id],
            )
            history = batch.schema_record(prev["schema_hash"].iloc[0] if len(prev) else None)
            history.update(
                contract_version=contract.version,
                observed_at=datetime.now(UTC).replace(tzinfo=None),
            )
            history_frame = pd.DataFrame([history]).astype(
                {"previous_schema_hash": "string", "schema_hash": "string", "record_count": "Int64"}
            )
            # The batch's raw rows, its schema history row and its first verdict: all of them or none. The
            # other verdicts of an earlier delivery of the batch no longer hold for these rows.
            write_batch(
                conn,
                source,
                batch_id,
                batch.rows,
                history_frame,
                gate_row(
                    source, batch_id, "schema_contract", not batch.verdict.blocked, "; ".join(batch.verdict.messages)
                ),
            )

        for message in batch.verdict.messages:
            (context.log.error if batch.verdict.blocked else context.log.warning)(f"{source}/{batch_id}: {message}")
        manifest = batch.manifest
        yield MaterializeResult(
            metadata={
                "summary": raw_summary(batch, contract.kind),
                **table_metadata(batch.rows),
                # Named, not resolved: a batch folder may be a link the scan refused (it is never followed).
                "landing_batch": MetadataValue.path(f"{lake.relative(lake.landing)}/{source}/{batch_id}"),
                "manifest_sha256": batch.fingerprint,
                "schema_status": batch.verdict.status,
                "schema_hash": history["schema_hash"] or "",
                "schema_changed_from_previous_batch": bool(history["changed_from_previous"]),
                **({"refused": batch.refusal.message} if batch.refusal else {}),
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
                "observed_columns": MetadataValue.json(manifest.column_types if manifest else {}),
                "renamed_columns": MetadataValue.json(batch.verdict.renames),
                "contract_version": contract.version,
            },
        )

    @asset_check(
        asset=key,
        name="batch_quality",
        blocking=True,
        partitions_def=partitions,
        pool=warehouse_pool(own_rows=True),
        description=(
            "Blocking. Great Expectations on the batch: ids present and unique, labels in the source's vocabulary, "
            "times parse and are plausible, the payload is there (image bytes, or a known review decision). "
            "Single bad records are quarantined by cleaning; more than "
            f"{TOLERANCE_TEXT} wrong means a broken delivery, so the batch is "
            "kept out of everything downstream. A check that cannot complete records a failure."
        ),
    )
    def batch_quality(context, lake: DataLake, warehouse: Warehouse) -> AssetCheckResult:
        batch_id = context.partition_key
        try:
            passed, detail, metadata = _batch_quality(source, batch_id, lake, warehouse)
        except Exception as exc:  # fail closed: a check that could not decide is a failure, recorded as one
            context.log.exception(f"{source}/{batch_id}: batch_quality did not complete")
            passed, detail = False, f"check did not complete: {type(exc).__name__}: {exc}"
            metadata = {"summary": detail[:300], "error": MetadataValue.text(detail[:2000])}
        with warehouse.get_connection() as conn:
            record_gate(conn, source, batch_id, "batch_quality", passed, detail)
        return AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=str(metadata.get("summary", detail))[:300],
            metadata=metadata,
        )

    @asset_check(
        asset=key,
        name="batch_volume",
        blocking=False,
        partitions_def=partitions,
        pool=warehouse_pool(own_rows=True),
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
                "WHERE source = ? AND batch_id <> ? AND status NOT IN ('blocked', 'refused') "
                "AND record_count IS NOT NULL GROUP BY batch_id",
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
