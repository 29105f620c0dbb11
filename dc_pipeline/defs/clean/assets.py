"""Cleaning stage: accepted unique images, quarantine with reasons, duplicate lineage, and their checks."""

from datetime import UTC

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    asset_check,
    multi_asset,
)
from pydantic import Field

from dc_pipeline.catalog import CLEAN, DECISIONS, IMAGES, LINEAGE, QUARANTINE, T, raw_key, warehouse_pool
from dc_pipeline.defs.metadata import counts_markdown, counts_text, markdown_table, tidy_markdown
from dc_pipeline.defs.resources import DataLake, Warehouse

BATCH_GATE = T.BATCH_GATE
# Class shares outside [1/2, 2] times the uniform share are flagged.
CLASS_BALANCE_BOUNDS = (0.5, 2.0)


class CleaningConfig(Config):
    full_rebuild: bool = Field(
        default=False,
        description="Repair: forget every clean row and clean every batch again from the raw tables (costs "
        "what the whole history costs). Normally only the batches delivered or re-checked since the last run "
        "are cleaned; the result is the same.",
    )


def clean_figures(conn) -> dict:
    """Table-wide figures for the UI, as SQL aggregates (no rows read into memory)."""

    def grouped(sql: str) -> pd.Series:
        rows = conn.execute(sql).fetchall()
        return pd.Series({k: int(v) for k, v in rows}, dtype="int64")

    def count(table: str, where: str = "TRUE") -> int:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0])

    return {
        "images": count(T.CLEAN_IMAGES),
        "quarantine": count(T.QUARANTINE),
        "decisions": count(T.REVIEW_DECISIONS),
        "lineage": count(T.LINEAGE),
        "duplicates": count(T.LINEAGE, "role = 'duplicate'"),
        "per_label": grouped(
            f"SELECT label, count(*) FROM {T.CLEAN_IMAGES} WHERE label IS NOT NULL GROUP BY 1 ORDER BY 1"
        ),
        "unlabelled": count(T.CLEAN_IMAGES, "label IS NULL"),
        "per_source": grouped(f"SELECT source, count(*) FROM {T.CLEAN_IMAGES} GROUP BY 1 ORDER BY 2 DESC"),
        "per_reason": grouped(f"SELECT reason, count(*) FROM {T.QUARANTINE} GROUP BY 1 ORDER BY 2 DESC"),
        "per_decision": grouped(f"SELECT decision, count(*) FROM {T.REVIEW_DECISIONS} GROUP BY 1 ORDER BY 2 DESC"),
    }


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
                    "Accepted unique images: decoded and validated, labels mapped to class ids (null: an "
                    "unlabelled image from a source whose contract allows it, waiting for a `label` "
                    "decision), capture times in UTC, exact duplicates (same sha256) kept once. Only batches with a "
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
                    "Reviewers' accepted decisions (relabel, confirm, exclude, and label: the answer to a "
                    "labelling request) about accepted images, with provenance; invalid ones are in the "
                    "quarantine."
                ),
            ),
        ],
        pool=warehouse_pool(),
    )
    def clean_tables(context: AssetExecutionContext, config: CleaningConfig, lake: DataLake, warehouse: Warehouse):
        from dc_pipeline.core.data.incremental_cleaning import clean_pending, rebuild

        if config.full_rebuild:
            context.log.warning("full rebuild requested: every batch is cleaned again from the raw tables")
        run = (rebuild if config.full_rebuild else clean_pending)(
            warehouse.get_connection,
            lake.contracts(),
            lake.object_store(),
            sources,
            list(review_sources),
            context.run_id,
            log=context.log.info,
        )
        for (source, batch), why in sorted(run.blocked.items()):
            context.log.warning(f"{source}/{batch} kept out of clean data: {why}")
        with warehouse.get_connection() as conn:
            figures = clean_figures(conn)
        cleaned = ", ".join(f"{s}/{b}" for s, b in run.cleaned) or "none (nothing new)"
        this_run = {
            "batches_cleaned": MetadataValue.text(cleaned),
            "batches_touched": len(run.touched),
            "raw_records_read": run.raw_rows,
            "images_recomputed": len(run.changed_images),
        }
        n_cleaned = f"this run cleaned {len(run.cleaned)} batch(es)" if run.cleaned else "nothing new to clean"
        yield MaterializeResult(
            asset_key=IMAGES,
            metadata={
                "summary": f"{figures['images']} accepted images ({figures['unlabelled']} unlabelled) from "
                f"{len(figures['per_source'])} source(s); {n_cleaned}",
                "dagster/row_count": figures["images"],
                **this_run,
                "unlabelled": figures["unlabelled"],
                "per_label": counts_markdown(figures["per_label"], "label"),
                "per_source": counts_markdown(figures["per_source"], "source"),
            },
        )
        yield MaterializeResult(
            asset_key=QUARANTINE,
            metadata={
                "summary": f"{figures['quarantine']} quarantined records"
                + (f": {counts_text(figures['per_reason'], 3)}" if figures["quarantine"] else ""),
                "dagster/row_count": figures["quarantine"],
                **this_run,
                "per_reason": counts_markdown(figures["per_reason"], "reason"),
            },
        )
        yield MaterializeResult(
            asset_key=DECISIONS,
            metadata={
                "summary": f"{figures['decisions']} accepted review decisions"
                + (f": {counts_text(figures['per_decision'])}" if figures["decisions"] else ""),
                "dagster/row_count": figures["decisions"],
                **this_run,
                "per_decision": counts_markdown(figures["per_decision"], "decision"),
            },
        )
        yield MaterializeResult(
            asset_key=LINEAGE,
            metadata={
                "summary": f"{figures['lineage']} accepted records traced, {figures['duplicates']} of them duplicates "
                "kept once",
                "dagster/row_count": figures["lineage"],
                **this_run,
                "duplicates": figures["duplicates"],
            },
        )

    @asset_check(
        asset=IMAGES,
        name="accounting",
        blocking=True,
        additional_deps=[QUARANTINE, LINEAGE, DECISIONS],
        pool=warehouse_pool(),
        description=(
            "Blocking. For every batch the run cleaned or changed (every batch when the check runs on its own), "
            "images and reviews: records in the manifest = raw rows = accepted + duplicates + quarantined; a "
            "batch refused as a whole has no raw rows and is listed as refused. Across all batches, from table "
            "counts: every raw record is accepted, a duplicate or quarantined exactly once. A record that "
            "vanished without a row saying why would make every later figure a lie."
        ),
    )
    def accounting(context: AssetCheckExecutionContext, warehouse: Warehouse) -> AssetCheckResult:
        from dc_pipeline.core.data.incremental_cleaning import batch_accounting, global_balance, touched_in_run

        with warehouse.get_connection() as conn:
            touched = touched_in_run(conn, context.run.run_id)
            # In a run that cleaned: the batches it may have changed. On its own: every batch (an audit).
            table = batch_accounting(conn, all_sources, touched or None)
            totals = global_balance(conn, all_sources)
        bad = table[~table["balanced"]]
        return AssetCheckResult(
            passed=bad.empty and totals["difference"] == 0,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "scope": "batches this run cleaned or changed" if touched else "every batch",
                "batches": int(len(table)),
                "unbalanced_batches": int(len(bad)),
                "refused_batches": int(table["refused"].sum()),
                "manifest_records": int(table["manifest_records"].sum()),
                **{f"all_batches.{k}": v for k, v in totals.items()},
                "per_batch": MetadataValue.md(markdown_table(table)),
            },
        )

    @asset_check(
        asset=IMAGES,
        name="clean_expectations",
        blocking=True,
        pool=warehouse_pool(),
        description=(
            "Blocking. Great Expectations, strict (no tolerance), on the rows the run wrote (every row when "
            "the check runs on its own): the canonical columns and their types, image ids and sha256 present "
            "and unique (in the table, through the index), "
            "labels in the project's classes (or null: unlabelled), width, height and channels within the image bounds, capture "
            "times plausible. Cleaning must have removed every violation; one left means a cleaning bug."
        ),
    )
    def clean_expectations(
        context: AssetCheckExecutionContext, lake: DataLake, warehouse: Warehouse
    ) -> AssetCheckResult:
        from datetime import datetime

        from dc_pipeline.core.data.expectations import Expectation as E
        from dc_pipeline.core.data.expectations import validate
        from dc_pipeline.core.data.incremental_cleaning import changed_images_in_run, select_in, touched_in_run

        project = lake.contracts().project
        with warehouse.get_connection() as conn:
            in_run = bool(touched_in_run(conn, context.run.run_id))
            # In a run that cleaned: the rows it wrote; their ids and sha256s are unique across the table
            # when no other row has them (an index lookup). On its own: every row.
            images = (
                changed_images_in_run(conn, context.run.run_id)
                if in_run
                else conn.execute(f"SELECT * FROM {T.CLEAN_IMAGES}").df()
            )
            clashes = 0
            if in_run:
                for column in ("sha256", "image_id"):
                    same = select_in(conn, f"SELECT {column} FROM {T.CLEAN_IMAGES} WHERE TRUE", column, images[column])
                    clashes += int(len(same) - same[column].nunique())
        now = datetime.now(UTC).replace(tzinfo=None)
        from dc_pipeline.core.data.cleaning import IMAGE_COLUMNS

        integer_types = ["int8", "int16", "int32", "int64", "Int64", "Int64Dtype"]
        images = images.astype({"label": "Int64"})  # unlabelled images: null, never outside the classes
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
            passed=summary.success and clashes == 0,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "scope": "rows this run wrote" if in_run else "every row",
                "rows_validated": int(len(images)),
                "ids_also_on_other_rows": clashes,
                **summary.metadata(),
                "report": MetadataValue.md(tidy_markdown(summary.markdown())),
            },
        )

    @asset_check(
        asset=IMAGES,
        name="class_balance",
        blocking=False,
        pool=warehouse_pool(),
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
            counts = clean_figures(conn)["per_label"]
        total = max(int(counts.sum()), 1)
        shares = (counts / total).reindex(classes, fill_value=0.0)
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
