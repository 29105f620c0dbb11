"""A run killed inside a `duckdb` pool step does not hold the pool's only slot forever: with the instance
settings of `data/dagster_home/dagster.yaml`, the daemon's run monitoring frees it once the run has ended."""

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.test_utils import freeze_time
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon.monitoring import execute_concurrency_slots_iteration
from dagster._utils.concurrency import ConcurrencySlotStatus

from dc_pipeline.catalog import DUCKDB_POOL

INSTANCE_YAML = Path(__file__).parents[1] / "data" / "dagster_home" / "dagster.yaml"

CRASHING_RUN = f"""
import os, signal
from dagster import DagsterInstance, job, op

@op(pool={DUCKDB_POOL!r})
def write_warehouse():
    os.kill(os.getpid(), signal.SIGKILL)  # killed while its step holds the pool slot

@job
def crashing():
    write_warehouse()

crashing.execute_in_process(instance=DagsterInstance.get())
"""


def instance_home(tmp_path: Path) -> Path:
    """A Dagster home whose instance settings are the project's own."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    return home


def free_slots_as_the_daemon_does(instance: DagsterInstance, at: float) -> None:
    """One iteration of the monitoring daemon's slot check (what `dagster-daemon run` calls), at time ``at``."""
    with freeze_time(at):
        list(execute_concurrency_slots_iteration(WorkspaceProcessContext(instance, None), logging.getLogger("test")))


def test_a_killed_runs_pool_slot_is_freed_by_run_monitoring(tmp_path):
    home = instance_home(tmp_path)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN], env={"DAGSTER_HOME": str(home), "PATH": ""}, capture_output=True
    )
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    with DagsterInstance.from_config(str(home)) as instance:
        settings = instance.run_monitoring_settings
        assert settings["enabled"] and settings["free_slots_after_run_end_seconds"] > 0
        run = instance.get_runs(limit=1)[0]
        assert run.status == DagsterRunStatus.STARTED  # as a killed process leaves it
        info = instance.event_log_storage.get_concurrency_info(DUCKDB_POOL)
        assert info.slot_count == 1 and info.active_run_ids == {run.run_id}
        # Another run's step cannot start: the pool's one slot is held by a run that no longer exists.
        blocked = instance.event_log_storage.claim_concurrency_slot(DUCKDB_POOL, "next-run", "next_step")
        assert blocked.slot_status == ConcurrencySlotStatus.BLOCKED

        # The code server sees the run's process gone and marks the run failed (`_check_for_orphaned_runs`).
        instance.report_run_failed(run, "run process killed")
        ended = instance.get_run_record_by_id(run.run_id).end_time
        free_slots_as_the_daemon_does(instance, time.time())  # too early: the slot stays held
        assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).active_run_ids == {run.run_id}
        free_slots_as_the_daemon_does(instance, ended + settings["free_slots_after_run_end_seconds"] + 1)
        assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).active_run_ids == set()
        claimed = instance.event_log_storage.claim_concurrency_slot(DUCKDB_POOL, "next-run", "next_step")
        assert claimed.slot_status == ConcurrencySlotStatus.CLAIMED
