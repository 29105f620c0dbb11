"""A storm of deliveries: ten complete batches landing at once across the three sources, and one of them
re-delivered with a changed manifest while its first run is still going.

Everything goes through the daemon's own machinery, driven from the test: the landing sensor evaluated by
the sensor daemon's iteration, runs queued in the instance's run queue with the project's `dagster.yaml`
(the `duckdb` pool: one step at a time, so the queue launches a run when the pool has room), dequeued by
the run-queue daemon's iteration and launched by the default run launcher through a code server, each run
in its own process. Meanwhile a reader (`load_split`, as a notebook would) opens the warehouse at every
daemon tick, competing with the runs' steps for the file.
"""

import logging
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from dagster import AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._daemon.sensor import execute_sensor_iteration

from dc_pipeline.api import load_split
from dc_pipeline.catalog import LANDING_SENSOR, raw_key
from dc_pipeline.demo.batches import write_demo_batch
from dc_pipeline_tests.conftest import published_day_zero

REPO = Path(__file__).parents[1]
STORM = ["field_app"] * 4 + ["partner_api"] * 3 + ["legacy_erp"] * 3
REDELIVERED = ("field_app", "storm-00")
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def raw_materializations(instance, source: str, batch: str) -> list[str]:
    """The manifest sha256 of every ingestion of one batch."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=raw_key(source), asset_partitions=[batch]), limit=100
    ).records
    return [r.asset_materialization.metadata["manifest_sha256"].value for r in records]


def redeliver_with_a_changed_manifest(batch_dir: Path) -> None:
    """The exporter sends the batch again, one record fewer (the folder's files stay; the manifest changes)."""
    manifest = batch_dir / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))
    (batch_dir / "_SUCCESS").write_text("re-delivered")


@pytest.fixture
def storm(tmp_path, monkeypatch):
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    monkeypatch.setenv("DC_TEST_DATA", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    published_day_zero(data, home)  # before the storm
    for i, source in enumerate(STORM):
        write_demo_batch(data / "landing", source, 30, "none", seed=10 + i, batch_id=f"storm-{i:02d}")
    return data, home


def test_a_storm_of_batches_and_a_redelivery_are_each_ingested_once(storm):
    data, home = storm
    target = ModuleTarget(
        module_name="dc_pipeline_tests.storm_location",
        attribute="defs",
        working_directory=str(REPO),
        location_name="storm",
    )
    queue, log = QueuedRunCoordinatorDaemon(interval_seconds=1), logging.getLogger("storm")
    with (
        DagsterInstance.from_config(str(home)) as instance,
        create_test_daemon_workspace_context(target, instance) as workspace,
    ):

        def daemon_iteration() -> None:
            list(execute_sensor_iteration(workspace, log, None, None))
            list(queue.run_iteration(workspace))
            x, _ = load_split("train", data_dir=data, wait_seconds=120)  # a reader in the middle of it all
            assert len(x)

        def storm_runs() -> list:
            return instance.get_runs(RunsFilter(tags={"dagster/sensor_name": LANDING_SENSOR}))

        daemon_iteration()  # the first tick sees the whole storm at once
        assert len(storm_runs()) == len(STORM)
        redelivered, deadline = False, time.monotonic() + 1500
        while True:
            if not redelivered and raw_materializations(instance, *REDELIVERED):
                redeliver_with_a_changed_manifest(data / "landing" / REDELIVERED[0] / REDELIVERED[1])
                redelivered = True
            runs = storm_runs()
            if redelivered and len(runs) == len(STORM) + 1 and all(r.status in FINISHED for r in runs):
                break
            assert time.monotonic() < deadline, {r.run_id: r.status for r in runs}
            time.sleep(2)
            daemon_iteration()

        failures = {
            r.run_id: [
                e.dagster_event.event_specific_data.error.message
                for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_FAILURE)
            ]
            for r in runs
            if r.status != DagsterRunStatus.SUCCESS
        }
        assert failures == {}, failures  # no run failed, on a lock or anything else
        ingested = Counter(
            (source, batch, sha)
            for source, batch in {(s, f"storm-{i:02d}") for i, s in enumerate(STORM)}
            for sha in raw_materializations(instance, source, batch)
        )
        assert set(ingested.values()) == {1}, ingested  # each manifest content once
        assert len(ingested) == len(STORM) + 1  # the re-delivery's new content too
        accounting = [
            e.dagster_event.event_specific_data
            for r in runs
            for e in instance.all_logs(r.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
            if e.dagster_event.event_specific_data.check_name == "accounting"
        ]
        assert len(accounting) == len(runs) and all(a.passed for a in accounting)

    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            " UNION ALL ".join(f"SELECT source, batch_id FROM raw.{s}" for s in sorted(set(STORM)))
        ).fetchall()
    per_batch = Counter(row for row in rows if row[1].startswith("storm-"))
    assert per_batch == {  # no batch twice in the raw tables; the re-delivery replaced its first version
        (s, f"storm-{i:02d}"): 29 if (s, f"storm-{i:02d}") == REDELIVERED else 30 for i, s in enumerate(STORM)
    }
