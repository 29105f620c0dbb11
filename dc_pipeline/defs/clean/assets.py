"""Cleaning stage: accepted unique images, quarantine with reasons, duplicate lineage, and their checks."""

from datetime import UTC

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset_check,
    multi_asset,
)

from dc_pipeline.catalog import CLEAN, DECISIONS, DUCKDB_POOL, IMAGES, LINEAGE, QUARANTINE, T, raw_key, raw_table
from dc_pipeline.defs.metadata import counts_markdown, table_metadata
from dc_pipeline.defs.resources import DataLake, Warehouse

BATCH_GATE = T.BATCH_GATE
# Class shares outside [1/2, 2] times the uniform share are flagged.
CLASS_BALANCE_BOUNDS = (0.5, 2.0)


def load_raw(conn, sources: list[str]) -> pd.DataFrame:
    from dc_pipeline.warehouse.io import table_exists

    frames = [conn.execute(f"SELECT * FROM {raw_table(s)}").df() for s in sources if table_exists(conn, f"raw.{s}")]
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["source", "batch_id", "row_number"])
    )


def blocked_batches(conn, batches) -> dict[tuple[str, str], str]:
    """Of ``batches`` ((source, batch_id) pairs), those without a recorded pass of every blocking batch
    check, with the reason. Fail closed: a check that failed, raised or never ran keeps its batch out."""
    from dc_pipeline.core.data.ingestion import BLOCKING_BATCH_CHECKS
    from dc_pipeline.warehouse.io import table_exists

    verdicts: dict[tuple[str, str, str], tuple[bool, str]] = {}
    if table_exists(conn, BATCH_GATE):
        gate = conn.execute(f"SELECT source, batch_id, check_name, passed, detail FROM {BATCH_GATE}").fetchall()
        verdicts = {(s, b, c): (bool(p), d or "") for s, b, c, p, d in gate}
    out: dict[tuple[str, str], str] = {}
    for key in sorted(set(batches)):
        reasons = []
        for check in BLOCKING_BATCH_CHECKS:
            verdict = verdicts.get((*key, check))
            if verdict is None:
                reasons.append(f"{check}: check did not complete")
            elif not verdict[0]:
                reasons.append(f"{check} failed: {verdict[1]}")
        if reasons:
            out[key] = "; ".join(reasons)
    return out


def _batches(*frames: pd.DataFrame) -> set[tuple[str, str]]:
    return {(s, b) for f in frames if len(f) for s, b in zip(f["source"], f["batch_id"])}


def build_cleaning(sources: list[str], review_sources: list[str] = ()) -> list:
    """``sources`` deliver images; ``review_sources`` deliver reviewers' decisions about them."""
    all_sources = [*sources, *review_sources]

    @multi_asset(
        specs=[
            AssetSpec(
                IMAGES,
                group_name=CLEAN,
                kinds={"duckdb", "pandas"},
                deps=[raw_key(s) for s in sources],
                description=(
                    "Accepted unique images: decoded and validated, labels mapped to class ids, "
                    "capture times in UTC, exact duplicates (same sha256) kept once. Only batches with a "
                    "recorded pass of every blocking batch check are taken (a check that never completed "
                    "keeps its batch out)."
                ),
            ),
            AssetSpec(
                QUARANTINE,
                group_name=CLEAN,
                kinds={"duckdb", "pandas"},
                deps=[raw_key(s) for s in sources],
                description="Rejected records, one row each, with a reason code and a readable detail.",
            ),
            AssetSpec(
                LINEAGE,
                group_name=CLEAN,
                kinds={"duckdb", "pandas"},
                deps=[raw_key(s) for s in sources],
                description=(
                    "Every accepted record (kept copy or duplicate) with its provenance, so a "
                    "removed duplicate is never lost."
                ),
            ),
            AssetSpec(
                DECISIONS,
                group_name=CLEAN,
                kinds={"duckdb", "pandas"},
                deps=[raw_key(s) for s in review_sources],
                description=(
                    "Reviewers' accepted decisions (relabel, confirm, exclude) about accepted "
                    "images, with provenance; invalid ones are in the quarantine."
                ),
            ),
        ],
        pool=DUCKDB_POOL,
    )
    def clean_tables(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse):
        from dc_pipeline.core.data.cleaning import DECISION_COLUMNS, clean, clean_reviews
        from dc_pipeline.warehouse.io import replace_table

        contracts = lake.contracts()
        with warehouse.get_connection() as conn:
            raw = load_raw(conn, sources)
            reviews = load_raw(conn, review_sources) if review_sources else pd.DataFrame()
            blocked = blocked_batches(conn, _batches(raw, reviews))
        result = clean(raw, contracts, lake.object_store(), blocked)
        images = result.images.copy()
        images["captured_at"] = pd.to_datetime(images["captured_at"], utc=True).dt.tz_localize(None)
        if len(reviews) and "image_sha256" in reviews:
            decisions, rejected = clean_reviews(reviews, contracts, set(images["sha256"]), blocked)
        else:
            decisions, rejected = pd.DataFrame(columns=DECISION_COLUMNS), result.quarantine.iloc[:0]
        quarantine = pd.concat([result.quarantine, rejected], ignore_index=True)
        with warehouse.get_connection() as conn:
            replace_table(conn, "clean.images", images)
            replace_table(conn, "clean.quarantine", quarantine)
            replace_table(conn, "clean.lineage", result.lineage)
            replace_table(
                conn,
                "clean.review_decisions",
                decisions.astype({"decision": "string", "reviewer": "string", "reason": "string"}),
            )
        for (source, batch), why in blocked.items():
            context.log.warning(f"{source}/{batch} kept out of clean data: {why}")
        yield MaterializeResult(
            asset_key=IMAGES,
            metadata={
                **table_metadata(images),
                "per_label": counts_markdown(images["label"].value_counts().sort_index(), "label"),
                "per_source": counts_markdown(images["source"].value_counts(), "source"),
            },
        )
        yield MaterializeResult(
            asset_key=QUARANTINE,
            metadata={
                **table_metadata(quarantine),
                "per_reason": counts_markdown(quarantine["reason"].value_counts(), "reason"),
            },
        )
        yield MaterializeResult(
            asset_key=DECISIONS,
            metadata={
                **table_metadata(decisions),
                "per_decision": counts_markdown(decisions["decision"].value_counts(), "decision"),
            },
        )
        yield MaterializeResult(
            asset_key=LINEAGE,
            metadata={
                **table_metadata(result.lineage),
                "duplicates": int((result.lineage["role"] == "duplicate").sum()),
            },
        )

    @asset_check(
        asset=IMAGES,
        name="accounting",
        blocking=True,
        additional_deps=[QUARANTINE, LINEAGE, DECISIONS],
        pool=DUCKDB_POOL,
        description=(
            "Blocking. For every batch (images and reviews): records in the manifest = raw rows = accepted + "
            "duplicates + quarantined; a batch refused as a whole has no raw rows and is listed as refused. "
            "A record that vanished without a row saying why would make every later figure a lie."
        ),
    )
    def accounting(warehouse: Warehouse) -> AssetCheckResult:
        from dc_pipeline.warehouse.io import table_exists

        with warehouse.get_connection() as conn:
            history = (
                conn.execute(
                    "SELECT source, batch_id, arg_max(record_count, observed_at) AS manifest_records, "
                    "arg_max(status, observed_at) AS status FROM raw.schema_history GROUP BY source, batch_id"
                ).df()
                if table_exists(conn, "raw.schema_history")
                else pd.DataFrame(columns=["source", "batch_id", "manifest_records", "status"])
            )
            raw = conn.execute(
                " UNION ALL ".join(
                    f"SELECT source, batch_id, count(*) AS raw_rows FROM raw.{s} GROUP BY ALL"
                    for s in all_sources
                    if table_exists(conn, f"raw.{s}")
                )
                or "SELECT NULL AS source, NULL AS batch_id, 0 AS raw_rows LIMIT 0"
            ).df()
            lineage = conn.execute(
                "SELECT source, batch_id, sum(accepted) AS accepted, sum(duplicates) AS duplicates FROM ("
                "SELECT source, batch_id, count(*) FILTER (role = 'kept') AS accepted, "
                "count(*) FILTER (role = 'duplicate') AS duplicates FROM clean.lineage GROUP BY ALL "
                "UNION ALL SELECT source, batch_id, count(*), 0 FROM clean.review_decisions GROUP BY ALL) "
                "GROUP BY ALL"
            ).df()
            quarantined = conn.execute(
                "SELECT source, batch_id, count(*) AS quarantined FROM clean.quarantine GROUP BY ALL"
            ).df()
        table = history.merge(raw, how="outer").merge(lineage, how="outer").merge(quarantined, how="outer")
        # A refused batch has no raw rows: its records (counted when they could be) are refused with it.
        table["refused"] = (table["status"] == "refused").fillna(False).astype(bool)
        table["status"] = table["status"].fillna("unknown")
        for col in ("manifest_records", "raw_rows", "accepted", "duplicates", "quarantined"):
            table[col] = table[col].fillna(0).astype(int)
        taken = table["accepted"] + table["duplicates"] + table["quarantined"]
        table["balanced"] = (table["refused"] & (table["raw_rows"] == 0) & (taken == 0)) | (
            ~table["refused"] & (table["manifest_records"] == table["raw_rows"]) & (table["manifest_records"] == taken)
        )
        bad = table[~table["balanced"]]
        return AssetCheckResult(
            passed=bad.empty,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "batches": int(len(table)),
                "unbalanced_batches": int(len(bad)),
                "refused_batches": int(table["refused"].sum()),
                "manifest_records": int(table["manifest_records"].sum()),
                "per_batch": MetadataValue.md(table.to_markdown(index=False)),
            },
        )

    @asset_check(
        asset=IMAGES,
        name="clean_expectations",
        blocking=True,
        pool=DUCKDB_POOL,
        description=(
            "Blocking. Great Expectations, strict (no tolerance): the canonical columns and their types, "
            "image ids and sha256 present and unique, "
            "labels in the project's classes, width, height and channels within the image bounds, capture "
            "times plausible. Cleaning must have removed every violation; one left means a cleaning bug."
        ),
    )
    def clean_expectations(lake: DataLake, warehouse: Warehouse) -> AssetCheckResult:
        from datetime import datetime

        from dc_pipeline.core.data.expectations import Expectation as E
        from dc_pipeline.core.data.expectations import validate

        project = lake.contracts().project
        with warehouse.get_connection() as conn:
            images = conn.execute("SELECT * FROM clean.images").df()
        now = datetime.now(UTC).replace(tzinfo=None)
        from dc_pipeline.core.data.cleaning import IMAGE_COLUMNS

        integer_types = ["int8", "int16", "int32", "int64", "Int64"]
        summary = validate(
            images,
            [
                E("ExpectTableColumnsToMatchSet", column_set=IMAGE_COLUMNS, exact_match=True),
                *[
                    E("ExpectColumnValuesToBeInTypeList", column=c, type_list=integer_types)
                    for c in ("label", "width", "height", "channels", "n_copies")
                ],
                E(
                    "ExpectColumnValuesToBeInTypeList",
                    column="captured_at",
                    type_list=["datetime64[ns]", "datetime64[us]", "datetime64"],
                ),
                E("ExpectColumnValuesToNotBeNull", column="image_id"),
                E("ExpectColumnValuesToBeUnique", column="image_id"),
                E("ExpectColumnValuesToBeUnique", column="sha256"),
                E("ExpectColumnValuesToBeInSet", column="label", value_set=list(project.classes)),
                E(
                    "ExpectColumnValuesToBeBetween",
                    column="width",
                    min_value=project.min_side,
                    max_value=project.max_side,
                ),
                E(
                    "ExpectColumnValuesToBeBetween",
                    column="height",
                    min_value=project.min_side,
                    max_value=project.max_side,
                ),
                E("ExpectColumnValuesToBeInSet", column="channels", value_set=[1, 3]),
                E(
                    "ExpectColumnValuesToBeBetween",
                    column="captured_at",
                    min_value=project.earliest.replace(tzinfo=None),
                    max_value=now + project.max_future,
                ),
            ],
            id_column="image_id",
            name="clean_images",
        )
        return AssetCheckResult(
            passed=summary.success,
            severity=AssetCheckSeverity.ERROR,
            metadata={**summary.metadata(), "report": MetadataValue.md(summary.markdown())},
        )

    @asset_check(
        asset=IMAGES,
        name="class_balance",
        blocking=False,
        pool=DUCKDB_POOL,
        description=(
            f"Warning only. Every class's share of accepted images lies within {CLASS_BALANCE_BOUNDS} times "
            "the uniform share (Great Expectations on the class shares), and no class is absent. "
            "Imbalance is worth knowing before training, but it is not wrong data."
        ),
    )
    def class_balance(lake: DataLake, warehouse: Warehouse) -> AssetCheckResult:
        from dc_pipeline.core.data.expectations import Expectation as E
        from dc_pipeline.core.data.expectations import validate

        classes = list(lake.contracts().project.classes)
        with warehouse.get_connection() as conn:
            labels = conn.execute("SELECT label FROM clean.images").df()["label"]
        shares = labels.value_counts(normalize=True).reindex(classes, fill_value=0.0)
        frame = pd.DataFrame({"label": classes, "share": shares.to_numpy()})
        uniform = 1.0 / len(classes)
        summary = validate(
            frame,
            [
                E(
                    "ExpectColumnValuesToBeBetween",
                    column="share",
                    min_value=uniform * CLASS_BALANCE_BOUNDS[0],
                    max_value=uniform * CLASS_BALANCE_BOUNDS[1],
                )
            ],
            id_column="label",
            name="class_balance",
        )
        return AssetCheckResult(
            passed=summary.success,
            severity=AssetCheckSeverity.WARN,
            metadata={**summary.metadata(), "shares": counts_markdown(shares.round(4), "label", "share")},
        )

    return [clean_tables, accounting, clean_expectations, class_balance]
