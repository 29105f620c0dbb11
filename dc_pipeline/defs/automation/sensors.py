"""Sensors: new landing batches, retraining on drift or new data, the scoring service's evidence on the
challenger, failed runs."""

import json
from datetime import datetime

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
    CHALLENGER_EVIDENCE,
    FAILURE_ALERTS,
    JUDGE_JOB,
    LANDING_SENSOR,
    RETRAIN_JOB,
    RETRAINING_TRIGGER,
    T,
    batches_of,
    ingest_job_name,
    raw_key,
)
from dc_pipeline.core.data.landing import batch_run_key, scan_landing
from dc_pipeline.defs.resources import RUN_FAILURE, Alerts, DataLake, RetrainPolicy, Warehouse

ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def landed_batches(lake: DataLake, sources: list[str], log) -> list:
    """Complete batches of ``sources`` in the lake's landing zone (the scan ``materialize`` shares)."""
    contracts = lake.contracts()
    manifests = {s: contracts[s].manifest_file for s in sources}
    return scan_landing(lake.landing, manifests, log.warning, sources, contracts.project.manifests)


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
        from dc_pipeline.core.data.contracts import source_kinds, unlabelled_sources
        from dc_pipeline.defs.jobs import ingestion_jobs
        from dc_pipeline.settings import get_settings

        kinds = source_kinds(get_settings().contracts_dir)
        jobs = ingestion_jobs(
            [s for s in sources if kinds.get(s) == "images"],
            [s for s in sources if kinds.get(s) == "reviews"],
            unlabelled_sources(get_settings().contracts_dir),
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


RUN_KEY_TAG = "dagster/run_key"  # the daemon tags a run launched for a request with the request's run key


def read_attempts(conn) -> list:
    """The recorded automatic retraining attempts, oldest first."""
    from dc_pipeline.core.ml.retraining import Attempt

    rows = conn.execute(
        f"SELECT attempted_at, dataset_hash, attempt, run_key, dagster_run_id FROM {T.RETRAINING_ATTEMPTS} "
        "ORDER BY attempted_at"
    ).fetchall()
    return [Attempt(*row) for row in rows]


def attempt_outcome(instance, conn, attempt) -> str:
    """What came of an attempt, read from its run (found by its run key; the run id is then recorded) and
    the gate's latest verdict in that run."""
    from dc_pipeline.core.ml.retraining import NOT_LAUNCHED, outcome_of

    if attempt.dagster_run_id:
        run, run_id = instance.get_run_by_id(attempt.dagster_run_id), attempt.dagster_run_id
    else:
        runs = instance.get_runs(RunsFilter(job_name=RETRAIN_JOB, tags={RUN_KEY_TAG: attempt.run_key}), limit=1)
        if not runs:
            return NOT_LAUNCHED
        run, run_id = runs[0], runs[0].run_id
        conn.execute(
            f"UPDATE {T.RETRAINING_ATTEMPTS} SET dagster_run_id = ? WHERE run_key = ?", [run_id, attempt.run_key]
        )
    gate = conn.execute(
        f"SELECT passed FROM {T.GATE_DECISIONS} WHERE dagster_run_id = ? ORDER BY decided_at DESC LIMIT 1", [run_id]
    ).fetchall()
    passed = gate[0][0] if gate else None
    if run is None:  # launched, but no longer in this Dagster instance (wiped): the gate's verdict, if any
        return outcome_of("SUCCESS" if passed else "FAILURE", passed)
    return outcome_of(run.status.value, passed)


def version_members(conn, datasets_root, dataset_hash: str) -> set[str]:
    """The images (sha256) of a dataset version: from its store (Lance or npy), else from
    features.dataset_members, where releases before 0.3 listed the images of every version."""
    from dc_pipeline.core.data.dataset_store import open_version

    try:
        if datasets_root is not None:
            return set(open_version(datasets_root, dataset_hash).sha256s())
    except (FileNotFoundError, ValueError):
        pass
    rows = conn.execute(f"SELECT sha256 FROM {T.DATASET_MEMBERS} WHERE dataset_hash = ?", [dataset_hash])
    return {sha for (sha,) in rows.fetchall()}


def retraining_evidence(conn, dataset_hash: str | None, attempts: list, policy, now: datetime, datasets_root=None):
    """What changed since the last attempt and the champion: drift verdicts reported after both, and the
    current dataset's images that neither's dataset holds (``datasets_root``: where the versions are stored)."""
    from dc_pipeline.core.ml.retraining import Evidence, baseline

    champion = conn.execute(
        f"SELECT m.dataset_hash, m.created_at FROM {T.ALIASES} a JOIN {T.MODELS} m USING (version_id) "
        "WHERE a.alias = 'champion'"
    ).fetchall()
    base = baseline(attempts, policy, now, *(champion[0] if champion else (None, None)))
    drifted = conn.execute(
        f"SELECT source, batch_id FROM {T.DRIFT_VERDICTS} WHERE verdict = 'drift' AND reported_at > ? "
        "ORDER BY reported_at, source, batch_id",
        [base.since or datetime(1970, 1, 1)],
    ).fetchall()
    new = known = 0
    if base.datasets and dataset_hash:
        seen: set[str] = set()
        for h in base.datasets:
            seen |= version_members(conn, datasets_root, h)
        new = len(version_members(conn, datasets_root, dataset_hash) - seen)
        known = len(seen)
    return Evidence(tuple(f"{s}/{b}" for s, b in drifted), int(new), int(known))


@sensor(
    name=RETRAINING_TRIGGER,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    job_name=RETRAIN_JOB,
    description=(
        "Requests retraining (both models, evaluation, promotion gate) of the current dataset version when a "
        "drift verdict is reported after its last attempt, or when the dataset's images that neither the last "
        "attempt's dataset nor the champion's holds reach a share of them (resource `retrain_policy`, default "
        "20%). Never while a retraining is queued or running, never twice on the same dataset version (a new "
        "version, `rearm_at` or a manual launch retries), with a back-off after refusals and failures and a cap "
        "per day. Every request is recorded in training.retraining_attempts; the skip reason names the rule "
        "that held it back."
    ),
)
def retraining_trigger(
    context: SensorEvaluationContext, warehouse: Warehouse, lake: DataLake, retrain_policy: RetrainPolicy
):
    from dc_pipeline.core.ml.retraining import utcnow
    from dc_pipeline.warehouse.connect import WarehouseBusy

    now = utcnow()
    active = context.instance.get_runs(RunsFilter(job_name=RETRAIN_JOB, statuses=ACTIVE), limit=1)
    if active:  # before opening the warehouse, which that run is writing
        message = (
            f"retraining running: a retraining run is already {active[0].status.value.lower()}: {active[0].run_id}"
        )
        return SensorResult(
            skip_reason=SkipReason(message), cursor=json.dumps({"checked_at": now.isoformat(), "rule": "running"})
        )
    policy = retrain_policy.policy()
    try:
        return _retraining_tick(context, warehouse, lake.datasets, policy, now)
    except WarehouseBusy as exc:  # a step is writing: decide on the next tick, well inside the tick timeout
        return SensorResult(
            skip_reason=SkipReason(f"warehouse busy: {exc}"),
            cursor=json.dumps({"checked_at": now.isoformat(), "rule": "warehouse busy"}),
        )


def _retraining_tick(context, warehouse: Warehouse, datasets, policy, now):
    """Read the attempts and the evidence, decide, and record a requested attempt, in one transaction."""
    import pandas as pd

    from dc_pipeline.core.ml.retraining import decide
    from dc_pipeline.warehouse.io import append_rows
    from dc_pipeline.warehouse.queries import current_dataset_version

    with warehouse.get_connection(wait_seconds=15) as conn:
        try:
            dataset = current_dataset_version(conn)["dataset_hash"]
        except ValueError:
            dataset = None
        attempts = read_attempts(conn)
        known: dict[str, str] = {}

        def outcome(attempt) -> str:
            if attempt.run_key not in known:
                known[attempt.run_key] = attempt_outcome(context.instance, conn, attempt)
            return known[attempt.run_key]

        evidence = retraining_evidence(conn, dataset, attempts, policy, now, datasets)
        decision = decide(now, policy, dataset, attempts, evidence, outcome)
        if decision.records_attempt:  # recorded before the request leaves: no request without its row
            row = {
                "attempted_at": now,
                "dataset_hash": decision.dataset_hash,
                "attempt": decision.attempt,
                "run_key": decision.run_key,
                "reasons": json.dumps(list(decision.reasons)),
                "figures": json.dumps({**evidence.figures(), "drifted": list(evidence.drifted)}),
            }
            append_rows(conn, T.RETRAINING_ATTEMPTS, pd.DataFrame([row]))
    cursor = json.dumps({"checked_at": now.isoformat(), "rule": decision.rule, "run_key": decision.run_key})
    if not decision.requests:
        return SensorResult(skip_reason=SkipReason(decision.message), cursor=cursor)
    context.log.info(f"requesting retraining ({decision.run_key}): {decision.message}")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=decision.run_key,
                tags={
                    "dc/retrain_reason": "; ".join(decision.reasons)[:1000],
                    "dc/dataset_hash": decision.dataset_hash,
                    "dc/retrain_attempt": str(decision.attempt),
                },
            )
        ],
        cursor=cursor,
    )


@sensor(
    name=CHALLENGER_EVIDENCE,
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.STOPPED,
    job_name=JUDGE_JOB,
    description=(
        "For a staged roll-out (the gate's require_live_evidence): requests judge_challenger when the scoring "
        "service has scored both the challenger and the champion on 100 images that have a label by now, and "
        "again at 200, 400, ... (each milestone once per pair of models), from serving.predictions as the "
        "serving_report job or the nightly sweep took it in. Stopped by default: start it in the UI."
    ),
)
def challenger_evidence(context: SensorEvaluationContext, warehouse: Warehouse):
    from dc_pipeline.core.ml.registry import GatePolicy
    from dc_pipeline.core.serving.ab_report import evidence_milestone
    from dc_pipeline.warehouse.connect import WarehouseBusy
    from dc_pipeline.warehouse.queries import labelled_prediction_counts

    active = context.instance.get_runs(RunsFilter(job_name=JUDGE_JOB, statuses=ACTIVE), limit=1)
    if active:
        return SkipReason(f"a judgement is already {active[0].status.value.lower()}: {active[0].run_id}")
    try:
        with warehouse.get_connection(wait_seconds=15) as conn:
            aliases = dict(conn.execute(f"SELECT alias, version_id FROM {T.ALIASES}").fetchall())
            challenger, champion = aliases.get("challenger"), aliases.get("champion")
            if not challenger or not champion or challenger == champion:
                return SkipReason("no challenger to judge: it is the champion, or there is none yet")
            counts = labelled_prediction_counts(conn, (challenger, champion))
    except WarehouseBusy as exc:
        return SkipReason(f"warehouse busy: {exc}")
    labelled = min(counts.get(challenger, 0), counts.get(champion, 0))
    minimum = GatePolicy.live_min_labelled  # the gate's default: the first point its evidence counts
    milestone = evidence_milestone(labelled, minimum)
    figures = f"challenger {challenger} {counts.get(challenger, 0)}, champion {champion} {counts.get(champion, 0)}"
    if milestone is None:
        return SkipReason(f"not enough labelled predictions yet ({minimum} each needed): {figures}")
    context.log.info(f"requesting judge_challenger at {milestone} labelled predictions each: {figures}")
    return RunRequest(
        run_key=f"judge:{challenger}:{champion}:{milestone}",
        tags={"dc/live_labelled": str(labelled), "dc/challenger": challenger, "dc/champion": champion},
    )


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
    message = context.failure_event.message or ""
    context.log.error(f"run {run.run_id} of {run.job_name} failed: {message[:300]}")
    alerts.raise_alert(RUN_FAILURE, run.run_id, run.job_name, run.tags.get("dagster/partition"), message, context.log)
