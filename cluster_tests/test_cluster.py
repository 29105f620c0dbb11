"""The multi-machine mode end to end, every part a real server on 127.0.0.1 (``make cluster-test``).

PostgreSQL holds the Dagster instance and the shared warehouse, Redis brokers two Celery workers (one on
the default queue, one on the accelerator queue), an S3 API server (moto) holds compute logs, step outputs,
dataset versions and model artifacts, and the Dagster daemon runs the landing sensor and the run queue.
The cluster is started once for the module and stopped afterwards, also when a test fails. The tests run
in order: they are one story (ingest the demo, retrain, the readers' role, two batches at once, a crashed run).
The last test upgrades a PostgreSQL folder made by an older version (trust authentication, all owned by postgres).
"""

from __future__ import annotations

import json
import os
import secrets
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
from dc_pipeline.ops.cluster import (
    BUCKET,
    DATABASES,
    HOST,
    READER,
    ROLES_SQL,
    WRITER,
    LocalCluster,
    _as_postgres,
    postgres_bin,
)
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


def pg_connect(c: LocalCluster, role: str, db: str = "warehouse", password: str | None = None):
    """A psycopg2 connection over TCP, with ``password`` only (no ~/.pgpass, no PGPASSWORD)."""
    import psycopg2

    kw = {"password": password} if password else {}
    return psycopg2.connect(host=HOST, port=c.pg_port, user=role, dbname=db, passfile="/nonexistent", **kw)


def test_readers_log_in_as_a_role_that_may_only_read(cluster):
    import psycopg2

    from dc_pipeline.api import data_paths, load_model
    from dc_pipeline.warehouse.connect import read_warehouse

    read_url, passwords = cluster.env()["DC_WAREHOUSE_READ_URL"], cluster.passwords()
    assert read_url.startswith(f"postgresql://{READER}:") and data_paths()[1] == read_url
    with read_warehouse(read_url) as conn:  # DuckDB's postgres attach, as the reader
        assert conn.execute(f"SELECT count(*) FROM {T.CLEAN_IMAGES}").fetchone()[0] > 1000
    assert load_model("champion").version_id.split("-")[0] in {"baseline", "augmix"}  # the API's default: the reader

    with pg_connect(cluster, READER, password=passwords[READER]) as conn, conn.cursor() as cur:
        for sql in (
            "INSERT INTO registry.aliases SELECT * FROM registry.aliases",
            "DELETE FROM registry.aliases",
            "CREATE TABLE public.scratch (i int)",
            "CREATE SCHEMA scratch",
            "CREATE TEMP TABLE scratch (i int)",
        ):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(sql)
            conn.rollback()
    for role, db in ((READER, "warehouse"), (WRITER, "warehouse"), ("postgres", "warehouse"), (READER, "dagster")):
        with pytest.raises(psycopg2.OperationalError):  # no password, the superuser, or the reader elsewhere
            pg_connect(cluster, role, db, passwords[READER] if db == "dagster" else None)
    for db in DATABASES:
        with pg_connect(cluster, WRITER, db, passwords[WRITER]) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT tableowner, count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                "'information_schema') GROUP BY tableowner"
            )
            owners = dict(cur.fetchall())
        assert set(owners) == {WRITER}, (db, owners)
    assert "password: {env: DAGSTER_PG_PASSWORD}" in (cluster.dagster_home / "dagster.yaml").read_text()
    # the viewers' UI next to the operators': the same instance, and nothing can be launched or changed
    from dc_pipeline.ops.loopback import graphql

    for name, port, allowed in (("viewer", cluster.viewer_port, False), ("webserver", cluster.ui_port, True)):
        assert cluster.running()[name], logs_tail(cluster)
        permissions = graphql(f"http://{HOST}:{port}", "{ permissions { permission value } }")["data"]["permissions"]
        granted = {p["permission"]: p["value"] for p in permissions}
        assert granted["launch_pipeline_execution"] is allowed and granted["wipe_assets"] is allowed, port
    assert {oct(f.stat().st_mode & 0o777) for f in (cluster.env_file, cluster.passwords_file)} == {"0o600"}


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


def test_a_cluster_folder_of_an_older_version_is_upgraded_in_place():
    """PostgreSQL as the older version left it (trust authentication, tables owned by postgres): the next
    ``start_postgres`` requires passwords, hands the objects to the writer and lets the reader read them."""
    import psycopg2

    folder = Path(tempfile.mkdtemp(prefix="dc-cluster-old-"))
    folder.chmod(0o755)
    old = LocalCluster.on_free_ports(folder)
    pg, as_postgres = postgres_bin(), _as_postgres()
    old.pg_dir.mkdir()
    if as_postgres:
        shutil.chown(old.pg_dir, "postgres")
    run = {"check": True, "capture_output": True}
    subprocess.run([*as_postgres, f"{pg}/initdb", "-D", str(old.pg_dir), "-A", "trust", "-U", "postgres"], **run)
    options = f"-p {old.pg_port} -k {old.pg_dir} -c listen_addresses={HOST}"
    start = [*as_postgres, f"{pg}/pg_ctl", "-D", str(old.pg_dir), "-o", options, "-l", str(old.pg_dir / "server.log")]
    try:
        subprocess.run([*start, "-w", "start"], **run)
        psql = [f"{pg}/psql", "-h", HOST, "-p", str(old.pg_port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        for db in DATABASES:
            subprocess.run([f"{pg}/createdb", "-h", HOST, "-p", str(old.pg_port), "-U", "postgres", db], **run)
        old_sql = (
            "CREATE SCHEMA registry; CREATE TABLE registry.models (id serial PRIMARY KEY, name text); "
            "INSERT INTO registry.models (name) VALUES ('old'); CREATE VIEW registry.names AS SELECT name FROM "
            "registry.models; CREATE TABLE public.kv (k text)"
        )
        subprocess.run([*psql, "-d", "warehouse", "-c", old_sql], **run)
        subprocess.run([*psql, "-d", "dagster", "-c", "CREATE TABLE runs (id bigserial PRIMARY KEY)"], **run)
        old.stop_postgres()

        old.start_postgres()  # what the next `cluster up` does
        passwords = old.passwords()
        with pytest.raises(psycopg2.OperationalError):
            pg_connect(old, "postgres")
        with pg_connect(old, WRITER, password=passwords[WRITER]) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO registry.models (name) VALUES ('new')")  # the writer owns the sequence too
            cur.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
                "relowner <> %s::regrole AND relkind IN ('r', 'v', 'S') AND nspname IN ('registry', 'public')",
                (WRITER,),
            )
            assert cur.fetchall() == []
        with pg_connect(old, WRITER, "dagster", passwords[WRITER]) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO runs DEFAULT VALUES")
        from dc_pipeline.warehouse.connect import read_warehouse

        with read_warehouse(old.warehouse_read_url()) as conn:
            assert conn.execute("SELECT name FROM registry.names ORDER BY 1").fetchall() == [("new",), ("old",)]
        # the compose deployment's init script runs the same SQL; again on the same database, it changes nothing
        env = {**os.environ, "PATH": f"{pg}{os.pathsep}{os.environ['PATH']}", "PGHOST": str(old.pg_dir),
               "PGPORT": str(old.pg_port), "POSTGRES_USER": "postgres", "DC_PG_ROLES_SQL": str(ROLES_SQL),
               "DC_PG_WRITER_PASSWORD": passwords[WRITER], "DC_PG_READER_PASSWORD": passwords[READER]}  # fmt: skip
        init = Path(__file__).parents[1] / "deploy" / "postgres-init.sh"
        subprocess.run(["sh", str(init)], env=env, **run)
        with read_warehouse(old.warehouse_read_url()) as conn:
            assert conn.execute("SELECT count(*) FROM registry.names").fetchall() == [(2,)]
        # each run sets the passwords again: changed in cluster.env, they are rotated by the next `up`
        rotated = {**env, "DC_PG_READER_PASSWORD": secrets.token_urlsafe(24)}
        subprocess.run(["sh", str(init)], env=rotated, **run)
        pg_connect(old, READER, password=rotated["DC_PG_READER_PASSWORD"]).close()
        with pytest.raises(psycopg2.OperationalError):
            pg_connect(old, READER, password=passwords[READER])
        bad = {**env, "DC_PG_READER_PASSWORD": "it's"}
        assert subprocess.run(["sh", str(init)], env=bad, capture_output=True, check=False).returncode != 0
    finally:
        old.stop_postgres()
        shutil.rmtree(folder, ignore_errors=True)
