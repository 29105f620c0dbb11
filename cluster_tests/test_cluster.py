"""The multi-machine mode end to end, every part a real server on 127.0.0.1 (``make cluster-test``).

PostgreSQL holds the Dagster instance and the shared warehouse, Redis brokers two Celery workers (one on
the default queue, one on the accelerator queue), an S3 API server (moto) holds compute logs, step outputs,
dataset versions and model artifacts, and the Dagster daemon runs the landing sensor and the run queue.
The cluster is started once for the module and stopped afterwards, also when a test fails. The tests run
in order: they are one story (ingest the demo, retrain, two batches at once, a crashed run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from dc_pipeline.catalog import HISTORY_POOL, RETRAIN_JOB, T, contract_sources
from dc_pipeline.ops.cluster import BUCKET, LocalCluster
from dc_pipeline.settings import get_settings

TIMINGS = Path(os.environ.get("DC_CLUSTER_TIMINGS", Path(tempfile.gettempdir()) / "dc-cluster-timings.json"))
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster():
    folder = Path(tempfile.mkdtemp(prefix="dc-cluster-"))
    folder.chmod(0o755)  # PostgreSQL runs as the postgres user
    c = LocalCluster.on_free_ports(folder, free_slots_after_run_end_seconds=10)
    saved = dict(os.environ)
    started = time.monotonic()
    try:
        c.up()
        timings["cluster_start_s"] = time.monotonic() - started
        os.environ.update(c.env())
        get_settings.cache_clear()  # this process reads the cluster's settings from here on
        _stop_sensor(c, "retraining_trigger")  # retraining is launched by the test, with a small config
        yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        c.down()
        timings["cluster_total_s"] = time.monotonic() - started
        TIMINGS.write_text(json.dumps(timings, indent=2))
        shutil.rmtree(folder, ignore_errors=True)


def _stop_sensor(c: LocalCluster, name: str) -> None:
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = [dagster, "sensor", "stop", name, "-m", "dc_pipeline.definitions"]
    done = subprocess.run(cmd, env=c.process_env(), capture_output=True, text=True, cwd=c.folder)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def instance(cluster):
    with DagsterInstance.from_config(str(cluster.dagster_home)) as inst:
        yield inst


def logs_tail(c: LocalCluster) -> str:
    out = []
    for log in sorted(c.logs.glob("*.log")):
        out.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(out)


def wait_for_runs(c: LocalCluster, instance: DagsterInstance, count: int, since: float, timeout: float = 900.0):
    """The runs created after ``since``, once ``count`` of them exist and all have finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= since]
        if len(runs) >= count and all(r.dagster_run.status in FINISHED for r in runs):
            return [r.dagster_run for r in runs]
        time.sleep(2)
    raise AssertionError(f"runs did not finish in {timeout:g} s:\n{logs_tail(c)}")


def failures(instance: DagsterInstance, runs) -> str:
    out = []
    for run in runs:
        if run.status != DagsterRunStatus.SUCCESS:
            for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE):
                out.append(f"{run.job_name} {e.step_key}: {e.dagster_event.event_specific_data.error.message[:500]}")
    return "\n".join(out)


def step_workers(instance: DagsterInstance, runs) -> dict[str, set[str]]:
    """Celery worker name -> the step keys it executed, from the executor's engine events."""
    out: dict[str, set[str]] = {}
    for run in runs:
        for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            meta = e.dagster_event.engine_event_data.metadata
            if "Celery worker" in meta:
                worker = meta["Celery worker"].value.split("@")[0]
                out.setdefault(worker, set()).update(meta["step_keys"].value.split(", "))
    return out


def warehouse_rows(c: LocalCluster, sql: str, params=None) -> list[tuple]:
    from dc_pipeline.warehouse.connect import read_warehouse

    with read_warehouse(c.warehouse_url()) as conn:
        return conn.execute(sql, params or []).fetchall()


def s3_keys(c: LocalCluster, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=c.s3_endpoint(), region_name="us-east-1")
    keys, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3.list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def test_the_landing_sensor_ingests_the_demo_through_the_daemon_on_two_workers(cluster, instance):
    from dc_pipeline.demo.landing import write_demo_landing

    since = time.time()
    write_demo_landing(cluster.data_dir / "landing", seed=7)
    batches = [b for s in contract_sources() for b in (cluster.data_dir / "landing" / s).glob("*") if b.is_dir()]
    started = time.monotonic()
    runs = wait_for_runs(cluster, instance, len(batches), since)
    timings["demo_ingest_s"] = time.monotonic() - started
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), failures(instance, runs)
    assert {r.job_name for r in runs} >= {"ingest_field_app", "ingest_partner_api", "ingest_legacy_erp"}

    workers = step_workers(instance, runs)
    assert set(workers) == {"worker-1", "worker-2"}, workers
    assert any(k.startswith("clean__") for k in workers["worker-1"])
    assert any(k.startswith(("scoring__", "monitoring__drift")) for k in workers["worker-2"])
    assert not any(k.startswith(("scoring__", "monitoring__drift")) for k in workers["worker-1"])

    # The shared warehouse has every record accounted for; the dataset version and its Lance store are on S3.
    (accepted,) = warehouse_rows(cluster, f"SELECT count(*) FROM {T.CLEAN_IMAGES}")[0]
    assert accepted > 1000
    published = warehouse_rows(cluster, f"SELECT dataset_hash FROM {T.DATASET_VERSIONS} WHERE is_current")
    assert len(published) == 1
    assert s3_keys(cluster, "pipeline/datasets/"), "no dataset version in the object store"
    assert not (cluster.data_dir / "datasets").exists()
    # Compute logs of the steps are in the object store, not on a worker's disk only.
    assert any(k.endswith(".err") or k.endswith(".out") for k in s3_keys(cluster, "compute-logs/"))


def test_a_retrain_runs_its_training_on_the_accelerator_queue(cluster, instance):
    from dagster_graphql import DagsterGraphQLClient

    from dc_pipeline_tests.conftest import tiny_run_config

    since = time.time()
    client = DagsterGraphQLClient("127.0.0.1", port_number=cluster.ui_port)
    started = time.monotonic()
    client.submit_job_execution(RETRAIN_JOB, run_config=tiny_run_config())
    (run,) = wait_for_runs(cluster, instance, 1, since)
    timings["retrain_s"] = time.monotonic() - started
    assert run.status == DagsterRunStatus.SUCCESS, failures(instance, [run])

    workers = step_workers(instance, [run])
    assert {"training__baseline_model", "training__augmix_model"} <= workers.get("worker-2", set()), workers

    models = warehouse_rows(cluster, "SELECT version_id, weights_path FROM registry.models ORDER BY created_at")
    assert {v.split("-")[0] for v, _ in models} == {"baseline", "augmix"}
    champion = warehouse_rows(cluster, "SELECT version_id FROM registry.aliases WHERE alias = 'champion'")
    assert len(champion) == 1
    keys = set(s3_keys(cluster, "pipeline/artifacts/"))
    assert all(f"pipeline/{path}" in keys for _, path in models), (models, sorted(keys)[:10])
    assert not (cluster.data_dir / "artifacts").exists()


def test_two_batches_at_once_both_land_while_a_reader_reads(cluster, instance):
    from dc_pipeline.api import load_model
    from dc_pipeline.core.data.incremental_cleaning import batch_accounting
    from dc_pipeline.demo.batches import write_demo_batch
    from dc_pipeline.warehouse.connect import read_warehouse

    reads, errors, stop = [0], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with read_warehouse(cluster.warehouse_url()) as conn:
                    conn.execute(f"SELECT count(*) FROM {T.CLEAN_IMAGES}").fetchall()
                    conn.execute(f"SELECT count(*) FROM {T.PREDICTIONS}").fetchall()
                load_model("champion", cluster.data_dir, cluster.warehouse_url())
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                errors.append(repr(exc))
            time.sleep(0.2)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    since = time.time()
    landing = cluster.data_dir / "landing"
    writers = [
        threading.Thread(target=write_demo_batch, args=(landing, source, 150, "none", seed, f"concurrent-{source}"))
        for seed, source in enumerate(("field_app", "partner_api"), start=11)
    ]
    started = time.monotonic()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    runs = wait_for_runs(cluster, instance, 2, since)
    timings["two_batches_at_once_s"] = time.monotonic() - started
    stop.set()
    thread.join(timeout=30)
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), failures(instance, runs)
    starts = sorted(instance.get_run_record_by_id(r.run_id).start_time for r in runs)
    ends = sorted(instance.get_run_record_by_id(r.run_id).end_time for r in runs)
    assert starts[1] < ends[0], "the two ingestion runs did not overlap"

    batches = [("field_app", "concurrent-field_app"), ("partner_api", "concurrent-partner_api")]
    with read_warehouse(cluster.warehouse_url()) as conn:
        table = batch_accounting(conn, contract_sources(), batches)
    assert len(table) == 2 and table["balanced"].all(), table.to_string()
    assert (table["manifest_records"] == 150).all(), table.to_string()
    assert errors == [] and reads[0] > 0, (reads, errors[:3])


CRASHING_RUN = f"""
import os, signal
from dagster import DagsterInstance, job, op

@op(pool={HISTORY_POOL!r})
def rewrite_history():
    os.kill(os.getpid(), signal.SIGKILL)  # killed while its step holds the pool's only slot

@job
def crashing():
    rewrite_history()

crashing.execute_in_process(instance=DagsterInstance.get())
"""


def test_a_crashed_runs_pool_slot_is_freed_by_the_daemon(cluster, instance):
    crashed = subprocess.run([sys.executable, "-c", CRASHING_RUN], env=cluster.process_env(), capture_output=True)
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    run = instance.get_runs(RunsFilter(job_name="crashing"), limit=1)[0]
    storage = instance.event_log_storage
    assert storage.get_concurrency_info(HISTORY_POOL).active_run_ids == {run.run_id}
    instance.report_run_failed(run, "run process killed")  # what the code server does for an orphaned run
    started = time.monotonic()
    deadline = started + 120
    while storage.get_concurrency_info(HISTORY_POOL).active_run_ids and time.monotonic() < deadline:
        time.sleep(1)
    timings["slot_freed_after_s"] = time.monotonic() - started
    assert storage.get_concurrency_info(HISTORY_POOL).active_run_ids == set(), logs_tail(cluster)
