"""Registry stage: the champion alias, moved only to a challenger that passed the promotion gate."""

import posixpath

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from dc_pipeline.catalog import AUDIT_TRAIL, CHAMPION, MODEL_EVALUATION, REGISTRY, warehouse_pool
from dc_pipeline.defs.metadata import markdown_table, number, percent, plain
from dc_pipeline.defs.resources import DataLake, Warehouse


@asset(
    key=CHAMPION,
    deps=[MODEL_EVALUATION],
    group_name=REGISTRY,
    kinds={"duckdb"},
    pool=warehouse_pool(),
    description=(
        "The champion alias: moved to the challenger when the promotion gate passed, kept when the gate "
        "refused it (the reason is shown); every move is recorded in registry.alias_history with the gate's verdict."
    ),
)
def champion(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse) -> MaterializeResult:
    from dc_pipeline.core.ml.registry import Registry

    with warehouse.get_connection() as conn:
        registry = Registry(conn, lake.artifacts).ensure()
        challenger = registry.alias("challenger")
        verdict = conn.execute(
            "SELECT passed, verdict FROM registry.gate_decisions WHERE challenger = ? ORDER BY decided_at DESC LIMIT 1",
            [challenger],
        ).fetchone()
        if verdict is None:
            raise ValueError(f"challenger {challenger} has no gate decision; the champion stays")
        if verdict[0]:
            moved = registry.set_alias("champion", challenger, verdict[1], context.run_id)
        elif registry.alias("champion") is None:
            raise ValueError(f"the first model {challenger} was refused: {verdict[1]}")
        else:
            moved = False
            context.log.info(f"champion unchanged: {verdict[1]}")
        record = registry.get("champion")
        history = conn.execute("SELECT * FROM registry.alias_history ORDER BY moved_at DESC LIMIT 10").df()
    metrics = record["metrics"] or {}
    figures = ", ".join(
        f"{label} {fmt(metrics[key])}"
        for key, label, fmt in (
            ("clean_error", "clean error", percent),
            ("mce", "mCE", number),
            ("rms_calibration_corrupted", "RMS calibration (corrupted)", number),
        )
        if metrics.get(key) is not None
    )
    weights = record["weights_path"]
    state = "newly promoted" if moved else "unchanged" if verdict[0] else f"unchanged: challenger {challenger} refused"
    return MaterializeResult(
        metadata={
            "summary": f"champion {record['version_id']} ({record['kind']}, {state})"
            + (f": {figures}" if figures else ""),
            "champion": record["version_id"],
            "moved": moved,
            "reason": verdict[1],
            "weights": MetadataValue.path(weights),
            "model_card": MetadataValue.path(posixpath.join(posixpath.dirname(weights), "model.json")),
            "metrics": MetadataValue.json(plain(metrics)),
            "alias_history": MetadataValue.md(markdown_table(history)),
        }
    )


@asset(
    key=AUDIT_TRAIL,
    deps=[CHAMPION],
    group_name=REGISTRY,
    kinds={"duckdb"},
    pool=warehouse_pool(),
    description=(
        "The audit trail in `registry.audit_events`: runs launched, re-executed or cancelled (the actor from the "
        "run's tags: the dc-pipeline command and OS user, a sensor, a schedule, a backfill, or the web UI, where "
        "Dagster OSS records no user), alias moves with the gate's reason, and label changes with their reviewer. "
        "Each run collects what changed since the last one (an hour's overlap; events are kept once)."
    ),
)
def audit_trail(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    import datetime as dt

    import pandas as pd
    from dagster import RunsFilter

    from dc_pipeline.catalog import T
    from dc_pipeline.core.governance.audit import alias_events, review_events, run_actor, run_events

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with warehouse.get_connection() as conn:
        last = conn.execute(f"SELECT max(collected_at) FROM {T.AUDIT_EVENTS}").fetchall()[0][0]
        since = (last - dt.timedelta(hours=1)) if last is not None else dt.datetime(1970, 1, 1)
        records = context.instance.get_run_records(
            filters=RunsFilter(updated_after=since.replace(tzinfo=dt.UTC)), limit=None
        )
        runs = [
            {
                "run_id": r.dagster_run.run_id,
                "job_name": r.dagster_run.job_name,
                "status": r.dagster_run.status.value,
                "tags": dict(r.dagster_run.tags),
                "parent_run_id": r.dagster_run.parent_run_id,
                "created_at": r.create_timestamp.astimezone(dt.UTC).replace(tzinfo=None),
                "ended_at": dt.datetime.fromtimestamp(r.end_time, dt.UTC).replace(tzinfo=None) if r.end_time else None,
            }
            for r in records
        ]
        history = conn.execute(f"SELECT * FROM {T.ALIAS_HISTORY} WHERE moved_at >= ?", [since]).df()
        run_ids = [str(i) for i in history["dagster_run_id"].dropna().unique()]
        moved_by = context.instance.get_runs(RunsFilter(run_ids=run_ids)) if run_ids else []
        actors = {run.run_id: run_actor(run.tags) for run in moved_by}
        decisions = conn.execute(f"SELECT * FROM {T.REVIEW_DECISIONS} WHERE decided_at >= ?", [since]).df()
        events = pd.concat(
            [
                frame
                for frame in (run_events(runs), alias_events(history, actors), review_events(decisions))
                if len(frame)
            ]
            or [run_events([])],
            ignore_index=True,
        )
        events["collected_at"] = now
        before = conn.execute(f"SELECT count(*) FROM {T.AUDIT_EVENTS}").fetchall()[0][0]
        conn.register("_audit_df", events)
        try:
            conn.execute(
                f"INSERT INTO {T.AUDIT_EVENTS} BY NAME SELECT * FROM _audit_df "
                f"WHERE event_id NOT IN (SELECT event_id FROM {T.AUDIT_EVENTS})"
            )
        finally:
            conn.unregister("_audit_df")
        total = conn.execute(f"SELECT count(*) FROM {T.AUDIT_EVENTS}").fetchall()[0][0]
        recent = conn.execute(
            f"SELECT occurred_at, actor, action, subject, reason FROM {T.AUDIT_EVENTS} ORDER BY occurred_at DESC LIMIT 10"
        ).df()
    return MaterializeResult(
        metadata={
            "summary": f"{total - before} new audit events ({total} in all)",
            "new_events": int(total - before),
            "events": int(total),
            "latest": MetadataValue.md(markdown_table(recent)),
        }
    )
