"""Retention: the job that prunes dataset versions and old reports by the `retention` resource's policy."""

from datetime import UTC, datetime

from dagster import Config, MetadataValue, OpExecutionContext, Out, Output, job, op
from pydantic import Field

from dc_pipeline.catalog import PRUNE_JOB, T, warehouse_pool
from dc_pipeline.defs.resources import DataLake, RetentionPolicy, Warehouse


class PruneConfig(Config):
    dry_run: bool = Field(
        default=True, description="List what would be deleted, and why the rest is kept, without deleting anything."
    )


@op(pool=warehouse_pool(), out=Out(dict))
def prune_versions(
    context: OpExecutionContext, config: PruneConfig, lake: DataLake, warehouse: Warehouse, retention: RetentionPolicy
):
    """Prune the dataset versions and drift reports the retention policy does not keep (a dry run by default)."""
    import pandas as pd

    from dc_pipeline.core.data.retention import (
        PRUNE,
        RetentionRule,
        plan_versions,
        prunable_lance_versions,
        prune_versions,
        stale_reports,
    )
    from dc_pipeline.warehouse.io import table_exists

    now = datetime.now(UTC).replace(tzinfo=None)
    rule = RetentionRule(retention.keep_last_versions, retention.keep_days, retention.report_days)
    with warehouse.get_connection() as conn:
        versions = conn.execute(
            f"SELECT dataset_hash, coalesce(format, 'npy') AS format, status, coalesce(is_current, false) AS is_current, "
            "created_at, path "
            f"FROM {T.DATASET_VERSIONS} WHERE pruned_at IS NULL"
        ).df()
        referenced = (
            {h for (h,) in conn.execute(f"SELECT DISTINCT dataset_hash FROM {T.MODELS}").fetchall()}
            if table_exists(conn, T.MODELS)
            else set()
        )
        head = conn.execute(f"SELECT dataset_hash, image_size, lance_version FROM {T.DATASET_HEAD}").fetchall()
    plan = plan_versions(versions, referenced, head[0][0] if head else None, rule, now)
    protect = {int(size): {int(v)} for _, size, v in head if v is not None}
    pruned = plan.loc[plan["action"] == PRUNE, "dataset_hash"].tolist()
    kept = set(plan.loc[plan["action"] != PRUNE, "dataset_hash"])
    reports = stale_reports(lake.reports, rule.report_days, datetime.now(UTC))
    if config.dry_run:
        npy = int(((plan["action"] == PRUNE) & (plan["format"] == "npy")).sum())
        stats = {**prunable_lance_versions(lake.datasets, kept, protect), "npy_folders": npy}
    else:
        stats = prune_versions(lake.datasets, pruned, protect)
        for path in reports:
            path.unlink(missing_ok=True)
        with warehouse.get_connection() as conn:
            for h in pruned:
                conn.execute(f"UPDATE {T.DATASET_VERSIONS} SET pruned_at = ? WHERE dataset_hash = ?", [now, h])
                for table in (T.DATASET_INDEX, T.IMAGE_STATS, T.CURATION_LINEAGE, T.DATASET_MEMBERS):
                    conn.execute(f"DELETE FROM {table} WHERE dataset_hash = ?", [h])
    verb = "would prune" if config.dry_run else "pruned"
    context.log.info(
        f"{verb} {len(pruned)} of {len(plan)} dataset versions and {len(reports)} drift reports; kept "
        f"{len(kept)}: {stats}"
    )
    table = plan.assign(created_at=pd.to_datetime(plan["created_at"]).dt.strftime("%Y-%m-%d %H:%M"))
    return Output(
        {"dry_run": config.dry_run, "pruned": pruned, "reports": [p.name for p in reports], **stats},
        metadata={
            "dry_run": config.dry_run,
            f"versions_{verb.replace(' ', '_')}": len(pruned),
            "versions_kept": len(kept),
            "reports": len(reports),
            **{k: int(v) for k, v in stats.items()},
            "plan": MetadataValue.md(
                table[["dataset_hash", "format", "status", "created_at", "action", "why"]].to_markdown(index=False)
            )
            if len(table)
            else MetadataValue.md("_no dataset versions_"),
        },
    )


@job(
    name=PRUNE_JOB,
    description="Retention: prune the dataset versions and drift reports the `retention` resource's policy does not "
    "keep. Dry run by default (`dry_run: true` lists what would go and why the rest stays).",
)
def prune_dataset_versions():
    prune_versions()
