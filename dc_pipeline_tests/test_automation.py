"""Sensors against a real Dagster instance: landing zone, retraining trigger, run-failure alerts."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import duckdb
import pandas as pd
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
)

from dc_pipeline.defs.automation.sensors import build_landing_sensor, retraining_trigger, run_failure_alerts
from dc_pipeline.defs.resources import Alerts, RetrainPolicy, resources_for
from dc_pipeline.demo.landing import write_demo_landing

from .conftest import SOURCES


def tick(sensor, instance, resources, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(context)
    return result, context


def requests_of(result):
    return [] if isinstance(result, SkipReason) or result.skip_reason else list(result.run_requests)


@pytest.fixture
def landing(tmp_path):
    write_demo_landing(tmp_path / "landing")
    return tmp_path, DagsterInstance.ephemeral(), resources_for(tmp_path)


def test_each_complete_batch_runs_exactly_once_and_the_cursor_survives_a_restart(landing):
    data, instance, resources = landing
    sensor = build_landing_sensor(SOURCES)
    first, _ = tick(sensor, instance, resources)
    runs = requests_of(first)
    assert sorted((r.job_name, r.partition_key) for r in runs) == sorted(
        (f"ingest_{s}", b)
        for s in SOURCES
        if (data / "landing" / s).is_dir()
        for b in sorted(p.name for p in (data / "landing" / s).iterdir())
    )
    assert all(isinstance(r, RunRequest) and r.run_key.count(":") == 2 for r in runs)
    added = {req.partitions_def_name: list(req.partition_keys) for req in first.dynamic_partitions_requests}
    assert added == {
        "field_app_batches": ["batch-0001", "batch-0002"],
        "legacy_erp_batches": ["batch-0001"],
        "partner_api_batches": ["batch-0001", "batch-0002"],
    }
    for name, keys in added.items():  # what the daemon does with the request
        instance.add_dynamic_partitions(name, keys)
    # a restarted daemon reads the stored cursor: nothing runs twice
    again, _ = tick(build_landing_sensor(SOURCES), instance, resources, cursor=first.cursor)
    assert requests_of(again) == []


def test_incomplete_unreadable_changed_and_many_batches(landing):
    data, instance, resources = landing
    sensor = build_landing_sensor(SOURCES)
    first, _ = tick(sensor, instance, resources)
    cursor = first.cursor
    # a batch still being delivered is ignored until its _SUCCESS lands
    partial = data / "landing" / "field_app" / "batch-0003"
    shutil.copytree(data / "landing" / "field_app" / "batch-0001", partial)
    (partial / "_SUCCESS").unlink()
    # a complete-looking folder whose manifest is gone is logged and skipped, without stopping the others
    broken = data / "landing" / "partner_api" / "batch-broken"
    broken.mkdir()
    (broken / "_SUCCESS").write_text("")
    result, _ = tick(sensor, instance, resources, cursor=cursor)
    assert requests_of(result) == []
    (partial / "_SUCCESS").write_text("")
    # several batches landing at once are all requested, and a changed re-delivery runs again
    for k in range(4, 8):
        shutil.copytree(
            data / "landing" / "legacy_erp" / "batch-0001", data / "landing" / "legacy_erp" / f"batch-000{k}"
        )
    manifest = data / "landing" / "field_app" / "batch-0002" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("dev-01", "dev-09"))
    result, _ = tick(sensor, instance, resources, cursor=cursor)
    got = {(r.job_name, r.partition_key) for r in requests_of(result)}
    assert got == {("ingest_field_app", "batch-0003"), ("ingest_field_app", "batch-0002")} | {
        ("ingest_legacy_erp", f"batch-000{k}") for k in range(4, 8)
    }
    old_key = next(
        r.run_key for r in requests_of(first) if r.partition_key == "batch-0002" and r.job_name == "ingest_field_app"
    )
    new_key = next(r.run_key for r in requests_of(result) if r.partition_key == "batch-0002")
    assert old_key != new_key, "a changed manifest gets a new run key"


def write_verdicts(data, rows):
    with duckdb.connect(str(data / "warehouse.duckdb")) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS monitoring")
        conn.register("v", pd.DataFrame(rows))
        conn.execute("CREATE OR REPLACE TABLE monitoring.drift_verdicts AS SELECT * FROM v")


def publish_dataset(data, dataset_hash: str) -> None:
    """A published dataset version in the warehouse, as features/dataset_version records it."""
    from dc_pipeline.warehouse.connect import connect
    from dc_pipeline.warehouse.io import append_rows

    with connect(data / "warehouse.duckdb", data) as conn:
        conn.execute("UPDATE features.dataset_versions SET is_current = false")
        append_rows(
            conn,
            "features.dataset_versions",
            pd.DataFrame([{"dataset_hash": dataset_hash, "is_current": True, "status": "published"}]),
        )


def test_retraining_trigger_on_drift_and_never_twice(tmp_path):
    from dagster._core.test_utils import create_run_for_test

    instance = DagsterInstance.ephemeral()
    resources = {**resources_for(tmp_path), "retrain_policy": RetrainPolicy()}
    write_verdicts(
        tmp_path,
        [{"source": "field_app", "batch_id": "b1", "verdict": "drift", "reported_at": pd.Timestamp("2026-11-01")}],
    )
    result, _ = tick(retraining_trigger, instance, resources)
    assert requests_of(result) == [] and result.skip_reason.skip_message.startswith("no dataset")
    publish_dataset(tmp_path, "d" * 64)
    write_verdicts(
        tmp_path,
        [{"source": "field_app", "batch_id": "b1", "verdict": "none", "reported_at": pd.Timestamp("2026-11-01")}],
    )
    result, _ = tick(retraining_trigger, instance, resources)
    assert requests_of(result) == [] and result.skip_reason.skip_message.startswith("nothing new")
    write_verdicts(
        tmp_path,
        [
            {"source": "field_app", "batch_id": "b1", "verdict": "none", "reported_at": pd.Timestamp("2026-11-01")},
            {
                "source": "partner_api",
                "batch_id": "b7",
                "verdict": "drift",
                "reported_at": pd.Timestamp.now("UTC").tz_localize(None),
            },
        ],
    )
    result, _ = tick(retraining_trigger, instance, resources, cursor=result.cursor)
    [run] = requests_of(result)
    assert "partner_api/b7" in run.tags["dc/retrain_reason"]
    assert run.run_key == f"retrain:{'d' * 64}:1" and run.tags["dc/dataset_hash"] == "d" * 64
    # the same verdict does not trigger again: the attempt is recorded, its run is awaited
    again, _ = tick(retraining_trigger, instance, resources, cursor=result.cursor)
    assert requests_of(again) == [] and again.skip_reason.skip_message.startswith("waiting for launch")
    # a restarted daemon without the cursor decides the same (the attempts are in the warehouse)
    fresh, _ = tick(retraining_trigger, instance, resources)
    assert requests_of(fresh) == [] and fresh.skip_reason.skip_message.startswith("waiting for launch")
    # and while a retraining run is running, nothing new is requested
    create_run_for_test(instance, job_name="retrain", status=DagsterRunStatus.STARTED)
    blocked, _ = tick(retraining_trigger, instance, resources, cursor=result.cursor)
    assert requests_of(blocked) == [] and "already" in blocked.skip_reason.skip_message


class Webhook:
    """A real HTTP endpoint on 127.0.0.1 that collects the JSON posted to it."""

    def __init__(self):
        received = self.received = []

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Hook)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def alert_on(pipeline, result, alerts: Alerts) -> None:
    """Evaluate the run-failure sensor on a real failed run, as the daemon does."""
    run = pipeline.instance.get_run_by_id(result.run_id)
    failure = next(e for e in pipeline.instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE))
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=failure.dagster_event,
        dagster_instance=pipeline.instance,
        dagster_run=run,
        resources={"alerts": alerts},
    )
    run_failure_alerts(context.for_run_failure())


def test_failed_runs_are_recorded_and_posted_partitioned_after_unpartitioned(pipeline, webhook):
    """Release 0.1 typed the partition column from the first alert (NULL for an unpartitioned run) and lost
    every later partitioned one; the declared table keeps both, and both reach the webhook."""
    alerts = Alerts(database=str(pipeline.data / "alerts.duckdb"), webhook_url=webhook.url)
    unpartitioned = pipeline.refresh_data()  # nothing ingested yet: features has no images and fails
    assert not unpartitioned.success
    alert_on(pipeline, unpartitioned, alerts)
    (pipeline.landing / "field_app" / "batch-0001" / "_SUCCESS").unlink()  # incomplete: its ingestion fails
    partitioned = pipeline.ingest("field_app", "batch-0001")
    assert not partitioned.success
    alert_on(pipeline, partitioned, alerts)
    with duckdb.connect(str(pipeline.data / "alerts.duckdb"), read_only=True) as conn:
        stored = conn.execute("SELECT run_id, partition, kind FROM main.run_failures ORDER BY failed_at").fetchall()
    assert stored == [(unpartitioned.run_id, None, "run_failure"), (partitioned.run_id, "batch-0001", "run_failure")]
    assert [r["run_id"] for r in webhook.received] == [unpartitioned.run_id, partitioned.run_id]
    assert webhook.received[1]["partition"] == "batch-0001"


def test_an_alert_is_posted_even_when_the_alert_store_fails(pipeline, webhook):
    broken = pipeline.data / "alerts-is-a-folder"
    broken.mkdir()  # DuckDB cannot open a folder as its file
    (pipeline.landing / "field_app" / "batch-0001" / "_SUCCESS").unlink()
    failed = pipeline.ingest("field_app", "batch-0001")
    alert_on(pipeline, failed, Alerts(database=str(broken), webhook_url=webhook.url))
    assert [r["run_id"] for r in webhook.received] == [failed.run_id]


def test_batches_ingested_by_another_path_are_not_requested_again(pipeline):
    assert pipeline.ingest("field_app", "batch-0001").success  # as `dc-pipeline materialize` or the UI would
    result = build_landing_sensor(SOURCES)(
        build_sensor_context(instance=pipeline.instance, resources=pipeline.resources)
    )
    requested = {(r.job_name, r.partition_key) for r in result.run_requests}
    assert ("ingest_field_app", "batch-0001") not in requested
    assert ("ingest_field_app", "batch-0002") in requested
    assert "field_app/batch-0001" in json.loads(result.cursor)


def test_challenger_evidence_requests_a_judgement_at_each_doubling_once(tmp_path):
    from dagster._core.test_utils import create_run_for_test

    from dc_pipeline.catalog import JUDGE_JOB, T
    from dc_pipeline.core.serving.ab_report import evidence_milestone
    from dc_pipeline.defs.automation.sensors import challenger_evidence
    from dc_pipeline.warehouse.connect import connect
    from dc_pipeline.warehouse.io import append_rows

    assert [evidence_milestone(n, 100) for n in (0, 99, 100, 199, 200, 399, 400, 1000)] == [
        None, None, 100, 100, 200, 200, 400, 800,
    ]  # fmt: skip
    instance, resources = DagsterInstance.ephemeral(), resources_for(tmp_path)

    def served(n: int, labelled: bool = True) -> None:
        """``n`` more requests scored by both models in shadow mode, on images with a label (or without)."""
        with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
            start = conn.execute(f"SELECT count(*) FROM {T.SERVED_PREDICTIONS}").fetchall()[0][0] // 2
            images = pd.DataFrame({"sha256": [f"img-{start + i}" for i in range(n)], "label": 3})
            if labelled:
                append_rows(conn, T.CLEAN_IMAGES, images)
            rows = [
                {"request_id": f"r{start + i}", "arm": arm, "answered": arm == "champion", "model_version": version,
                 "predicted_class": 3, "routing": "auto_accept", "image_sha256": f"img-{start + i}"}
                for i in range(n)
                for arm, version in (("champion", "augmix-old"), ("challenger", "augmix-new"))
            ]  # fmt: skip
            append_rows(conn, T.SERVED_PREDICTIONS, pd.DataFrame(rows))

    result, _ = tick(challenger_evidence, instance, resources)
    assert isinstance(result, SkipReason) and "no challenger" in result.skip_message
    with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
        aliases = pd.DataFrame({"alias": ["champion", "challenger"], "version_id": ["augmix-old", "augmix-new"]})
        append_rows(conn, T.ALIASES, aliases)
    served(60)
    served(80, labelled=False)  # scored, but nobody knows the answer yet: not evidence
    result, _ = tick(challenger_evidence, instance, resources)
    assert isinstance(result, SkipReason) and "augmix-new 60, champion augmix-old 60" in result.skip_message
    served(60)
    result, _ = tick(challenger_evidence, instance, resources)
    assert isinstance(result, RunRequest) and result.run_key == "judge:augmix-new:augmix-old:100"
    assert result.tags["dc/live_labelled"] == "120"
    served(100)  # 220 each: the next milestone
    assert tick(challenger_evidence, instance, resources)[0].run_key == "judge:augmix-new:augmix-old:200"
    create_run_for_test(instance, job_name=JUDGE_JOB, status=DagsterRunStatus.STARTED)
    result, _ = tick(challenger_evidence, instance, resources)
    assert isinstance(result, SkipReason) and "already started" in result.skip_message
