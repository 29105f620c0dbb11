"""Sensors: new landing batches, retraining on drift or new data, failed runs."""

import json
from datetime import UTC, datetime

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from dc_pipeline.catalog import (
    FAILURE_ALERTS,
    LANDING_SENSOR,
    RETRAIN_JOB,
    RETRAINING_TRIGGER,
    T,
    batches_of,
    ingest_job_name,
    raw_key,
)
from dc_pipeline.core.data.landing import batch_run_key, scan_landing
from dc_pipeline.defs.resources import Alerts, DataLake, RetrainPolicy, Warehouse

ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def landed_batches(lake: DataLake, sources: list[str], log) -> list:
    """Complete batches of ``sources`` in the lake's landing zone (the scan ``materialize`` shares)."""
    contracts = lake.contracts()
    return scan_landing(lake.landing, {s: contracts[s].manifest_file for s in sources}, log.warning, sources)


def already_ingested(instance, source: str, batch_id: str, manifest_sha256: str) -> bool:
    """Whether this batch's raw partition was last materialized from this very manifest (by any path:
    this sensor, the headless command or the UI)."""
    from dagster import AssetRecordsFilter

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=raw_key(source), asset_partitions=[batch_id]), limit=1
    ).records
    if not records:
        return False
    meta = records[0].asset_materialization.metadata
    return "manifest_sha256" in meta and meta["manifest_sha256"].value == manifest_sha256


def build_landing_sensor(sources: list[str], jobs: list | None = None):
    """``jobs``: the ingestion jobs the Definitions hold, one per source (built for ``sources`` from the
    settings' contracts when omitted); each request names its job."""
    if jobs is None:
        from dc_pipeline.core.data.contracts import source_kinds
        from dc_pipeline.defs.jobs import ingestion_jobs
        from dc_pipeline.settings import get_settings

        kinds = source_kinds(get_settings().contracts_dir)
        jobs = ingestion_jobs(
            [s for s in sources if kinds.get(s) == "images"], [s for s in sources if kinds.get(s) == "reviews"]
        )

    @sensor(
        name=LANDING_SENSOR,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        jobs=jobs,  # one ingestion job per source; each request names its job
        description=(
            "Finds complete batches (with _SUCCESS) under the landing zone, adds each new one as a "
            "partition and requests its ingestion run in the same tick. The run key is source, batch "
            "and manifest sha256: an unchanged batch never runs twice, a changed re-delivery runs again."
        ),
    )
    def landing_zone_sensor(context: SensorEvaluationContext, lake: DataLake):
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        requests, new_partitions, known = [], {}, {}
        for batch in landed_batches(lake, sources, context.log):
            source, batch_id, sha = batch.source, batch.batch_id, batch.manifest_sha256
            key = f"{source}/{batch_id}"
            if seen.get(key) == sha:
                continue
            if already_ingested(context.instance, source, batch_id, sha):
                seen[key] = sha  # ingested by another path (the headless command, the UI)
                continue
            if source not in known:
                known[source] = set(context.instance.get_dynamic_partitions(batches_of(source).name))
            if batch_id not in known[source]:
                new_partitions.setdefault(source, []).append(batch_id)
            requests.append(
                RunRequest(
                    run_key=batch_run_key(source, batch_id, sha),
                    job_name=ingest_job_name(source),
                    partition_key=batch_id,
                    tags={"dc/source": source, "dc/batch": batch_id, "dc/manifest_sha256": sha},
                )
            )
            seen[key] = sha
        if not requests:
            return SensorResult(
                skip_reason=SkipReason("no new or changed complete batch"), cursor=json.dumps(seen, sort_keys=True)
            )
        return SensorResult(
            run_requests=requests,
            cursor=json.dumps(seen, sort_keys=True),
            dynamic_partitions_requests=[
                AddDynamicPartitionsRequest(batches_of(s).name, keys) for s, keys in new_partitions.items()
            ],
        )

    return landing_zone_sensor


def retraining_reasons(conn, since: datetime | None, new_data_share: float) -> tuple[list[str], dict]:
    """Why the models should be retrained now: drift verdicts since ``since``, and the share of accepted
    images that are not in the champion's dataset version."""
    from dc_pipeline.warehouse.io import table_exists

    reasons, figures = [], {}
    if table_exists(conn, "monitoring.drift_verdicts"):
        drifted = conn.execute(
            "SELECT source, batch_id FROM monitoring.drift_verdicts WHERE verdict = 'drift' AND reported_at > ?",
            [since or datetime(1970, 1, 1)],
        ).fetchall()
        if drifted:
            reasons.append("drift in " + ", ".join(f"{s}/{b}" for s, b in drifted))
    if all(table_exists(conn, t) for t in ("registry.aliases", "clean.images", "features.dataset_members")):
        row = conn.execute(
            "SELECT m.dataset_hash FROM registry.aliases a JOIN registry.models m USING (version_id) "
            "WHERE a.alias = 'champion'"
        ).fetchone()
        if row:
            known = conn.execute(
                "SELECT count(*) FROM features.dataset_members WHERE dataset_hash = ?", [row[0]]
            ).fetchone()[0]
            new = conn.execute(
                "SELECT count(*) FROM clean.images WHERE sha256 NOT IN (SELECT sha256 FROM "
                "features.dataset_members WHERE dataset_hash = ?)",
                [row[0]],
            ).fetchone()[0]
            share = new / max(known, 1)
            figures = {"new_images": int(new), "champion_dataset_images": int(known), "new_share": round(share, 4)}
            if share >= new_data_share:
                reasons.append(
                    f"{new} accepted images ({share:.0%} of the champion's dataset) are new "
                    f"(threshold {new_data_share:.0%})"
                )
    return reasons, figures


@sensor(
    name=RETRAINING_TRIGGER,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    job_name=RETRAIN_JOB,
    description=(
        "Requests retraining (both models, evaluation, promotion gate) when a batch's drift verdict is "
        "`drift`, or when accepted images not in the champion's dataset reach a share of it "
        "(resource `retrain_policy`, default 20%). Never while a retraining is queued or running; batches that failed "
        "their blocking checks never reach clean data, so they are never trained on."
    ),
)
def retraining_trigger(context: SensorEvaluationContext, warehouse: Warehouse, retrain_policy: RetrainPolicy):
    active = context.instance.get_runs(RunsFilter(job_name=RETRAIN_JOB, statuses=ACTIVE), limit=1)
    if active:
        return SkipReason(f"a retraining run is already {active[0].status.value.lower()}: {active[0].run_id}")
    since = datetime.fromisoformat(context.cursor) if context.cursor else None
    now = datetime.now(UTC).replace(tzinfo=None)
    with warehouse.get_connection() as conn:
        reasons, figures = retraining_reasons(conn, since, retrain_policy.new_data_share)
    if not reasons:
        return SensorResult(
            skip_reason=SkipReason(f"no drift and not enough new data {figures}"), cursor=now.isoformat()
        )
    context.log.info("requesting retraining: " + "; ".join(reasons))
    return SensorResult(
        run_requests=[
            RunRequest(run_key=f"retrain:{now.isoformat()}", tags={"dc/retrain_reason": "; ".join(reasons)[:1000]})
        ],
        cursor=now.isoformat(),
    )


def post_webhook(url: str, payload: dict, timeout: float = 5.0) -> None:
    import urllib.parse
    import urllib.request

    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"the alert webhook must be an http(s) URL, not {url!r}")
    body, headers = json.dumps(payload).encode(), {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 (checked above)
    with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310 (scheme checked above)
        pass


def record_alert(alerts_db: str, row: dict) -> None:
    """Append to the alerts table (its own DuckDB file, so an alert never waits for the warehouse lock)."""
    import pandas as pd

    from dc_pipeline.warehouse.connect import connect
    from dc_pipeline.warehouse.io import append_rows
    from dc_pipeline.warehouse.migrations import ALERTS

    with connect(alerts_db, None, migrations=ALERTS) as conn:
        append_rows(conn, T.RUN_FAILURES, pd.DataFrame([row]))


@run_failure_sensor(
    name=FAILURE_ALERTS,
    default_status=DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description=(
        "Records every failed run in the alerts table (run_failures in data/alerts.duckdb) and the log, "
        "and posts it to the webhook of the `alerts` resource (DC_ALERT_WEBHOOK) when one is set. A "
        "failing alerts table never stops the log line or the webhook."
    ),
)
def run_failure_alerts(context: RunFailureSensorContext, alerts: Alerts):
    run = context.dagster_run
    row = {
        "failed_at": datetime.now(UTC).replace(tzinfo=None),
        "run_id": run.run_id,
        "job_name": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "message": (context.failure_event.message or "")[:2000],
    }
    context.log.error(f"run {run.run_id} of {run.job_name} failed: {row['message'][:300]}")
    try:
        record_alert(alerts.database, row)
    except Exception as exc:  # the alert still goes to the log (above) and the webhook (below)
        context.log.error(f"could not store the alert in {alerts.database}: {exc}")
    if alerts.webhook_url:
        try:
            post_webhook(alerts.webhook_url, {**row, "failed_at": row["failed_at"].isoformat()}, alerts.timeout_seconds)
        except Exception as exc:  # an unreachable webhook must not hide the alert
            context.log.warning(f"could not post the alert to the webhook: {exc}")
