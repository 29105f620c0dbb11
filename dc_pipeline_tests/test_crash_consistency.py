"""Kill -9 at any step, re-run, and the result is what one uninterrupted run gives.

The pipeline runs in a subprocess (``crash_runner``: a job executed in process over a data folder and a
persistent Dagster instance with the project's instance settings). It is killed with SIGKILL at one point
after another: mid-ingestion, mid-cleaning, mid-way through writing a dataset version's shards, with a
version staged but not audited, between two trainings, half-way through writing a model's weights, with a
model's files stored but not its registry row, and inside each alias move. After each kill the run is
recovered as a deployment does (the code server marks it failed; run monitoring frees its pool slot)
and re-executed from the failure, until it completes. The warehouse, the dataset versions and the
registry then equal those of a clean run of the same jobs, and at every kill they were consistent.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import lance
import numpy as np
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.test_utils import freeze_time
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon.monitoring import execute_concurrency_slots_iteration

from dc_pipeline.catalog import DUCKDB_POOL
from dc_pipeline.core.data.dataset_store import open_version
from dc_pipeline.demo.batches import write_demo_batch

REPO = Path(__file__).parents[1]
INSTANCE_YAML = REPO / "data" / "dagster_home" / "dagster.yaml"
SCENARIO = [("ingest_field_app", "b1"), ("retrain", "")]
# Per job, the points the run is killed at, one after the other; each kill is followed by a re-execution
# from the failure (the last one runs to the end). See crash_runner.KILL_POINTS.
KILLS = {
    "ingest_field_app": ["ingest:40", "clean:2", "version_write:3", "version_staged:1"],
    "retrain": ["training:2", "weights_mid_write:1", "registered_files:1", "alias:1", "alias:2"],
}


def prepare(root: Path) -> tuple[Path, Path]:
    data, home = root / "data", root / "dagster_home"
    write_demo_batch(data / "landing", "field_app", 400, "none", seed=1, batch_id="b1")
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    return data, home


def start(data: Path, home: Path, job: str, partition: str, parent: str = "", kill: str = ""):
    env = {**os.environ, "DAGSTER_HOME": str(home), "DC_TEST_KILL_AT": kill}
    args = [sys.executable, "-m", "dc_pipeline_tests.crash_runner", str(data), job, partition] + (
        [parent] if parent else []
    )
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def recover(home: Path) -> str:
    """What a deployment does after a run's process died; returns the run's id."""
    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        assert run.status == DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).active_run_ids == {run.run_id}
        instance.report_run_failed(run, "run process killed")  # the code server, seeing its process gone
        later = time.time() + instance.run_monitoring_settings["free_slots_after_run_end_seconds"] + 1
        with freeze_time(later):  # the daemon's run monitoring, that long after the run ended
            list(execute_concurrency_slots_iteration(WorkspaceProcessContext(instance, None), logging.getLogger()))
        assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).active_run_ids == set()
        return run.run_id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_consistent(data: Path) -> None:
    """What must hold at any moment, a kill included: no version folder without all its shards, no registry
    row without its weights, no alias without the history row of its move, the published version on disk."""
    datasets = data / "datasets"
    for folder in datasets.iterdir() if datasets.is_dir() else []:
        if not folder.name.startswith((".", "lance-")):
            shards = {f"{s}.{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")}
            assert shards | {"index.parquet"} <= {p.name for p in folder.iterdir()}, folder
    if not (data / "warehouse.duckdb").exists():
        return
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:
        for version_id, path, sha in conn.execute(
            "SELECT version_id, weights_path, weights_sha256 FROM registry.models"
        ).fetchall():
            assert (data / path).is_file() and sha256(data / path) == sha, version_id
        for alias, version_id in conn.execute("SELECT alias, version_id FROM registry.aliases").fetchall():
            last = conn.execute(
                "SELECT to_version FROM registry.alias_history WHERE alias = ? ORDER BY moved_at DESC LIMIT 1", [alias]
            ).fetchall()
            assert last == [(version_id,)], alias
        published = conn.execute("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").fetchall()
        for (h,) in published:
            assert open_version(datasets, h).exists(), h  # by hash: its npy folder or its Lance tag
        head = conn.execute("SELECT store, lance_version, dataset_hash FROM features.head").fetchall()
        for store, lance_version, h in head:  # the head's members version is there, and names its content
            assert {h} <= set(lance.dataset(str(data / store / "members.lance")).tags.list())
            lance.dataset(str(data / store / "members.lance"), version=int(lance_version)).count_rows()


PHYSICAL = ("lance_version", "member_addr")
"""Where a row sits in a Lance store's history: a run that died and was recovered leaves more versions."""
HISTORY = ("registry.audit_events",)
"""Tables that record the runs themselves: the crashed runs and their re-executions are in them, as they should."""


def lance_content(store: Path) -> dict:
    """A Lance store by content: each tag's members in sha256 order with the pixels their rows point to (the
    rows themselves are compared in features.pixel_rows)."""
    import pyarrow as pa

    out = {}
    pixels = lance.dataset(str(store / "pixels.lance"))
    for tag in sorted(lance.dataset(str(store / "members.lance")).tags.list()):
        members = lance.dataset(str(store / "members.lance"), version=tag).to_table().sort_by("sha256")
        taken = pixels.take(pa.array(members.column("row").to_numpy()), columns=["sha256", "pixels"])
        assert taken.column("sha256").to_pylist() == members.column("sha256").to_pylist(), tag
        out[tag] = hashlib.sha256(
            repr(members.to_pylist()).encode() + taken.column("pixels").combine_chunks().flatten().to_numpy().tobytes()
        ).hexdigest()
    return out


def snapshot(data: Path) -> dict:
    """Every warehouse table without its timestamps, run ids and Lance positions, every Lance store by
    content, and every other file but the landing zone's, by content (arrays by value)."""
    out = {}
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema <> 'meta'"
        ).fetchall()
        for schema, name in tables:
            if f"{schema}.{name}" in HISTORY:
                continue
            columns = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
                "AND table_name = ? ORDER BY ordinal_position",
                [schema, name],
            ).fetchall()
            kept = [
                f'"{c}"'
                for c, t in columns
                if not t.startswith("TIMESTAMP") and "run_id" not in c and c not in PHYSICAL
            ]
            rows = conn.execute(f'SELECT {", ".join(kept)} FROM "{schema}"."{name}"').fetchall()
            out[f"{schema}.{name}"] = sorted(repr(r) for r in rows)
    for store in sorted((data / "datasets").glob("lance-*")):
        out[store.relative_to(data).as_posix()] = lance_content(store)
    for path in sorted(data.rglob("*")):
        rel = path.relative_to(data).as_posix()
        if path.is_dir() or rel.startswith(("landing/", "warehouse.duckdb")) or ".lance/" in rel:
            continue
        if path.suffix == ".npz":  # zip members carry their write time: compare the arrays
            with np.load(path) as arrays:
                out[rel] = {k: hashlib.sha256(arrays[k].tobytes()).hexdigest() for k in arrays.files}
        else:
            out[rel] = sha256(path)
    return out


def test_kill_9_at_every_step_then_rerun_gives_what_one_clean_run_gives(tmp_path):
    reference_data, reference_home = prepare(tmp_path / "reference")
    for job, partition in SCENARIO:
        done = start(reference_data, reference_home, job, partition)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reference = snapshot(reference_data)

    data, home = prepare(tmp_path / "crashed")
    for job, partition in SCENARIO:
        parent = ""
        for point in KILLS[job]:
            killed = start(data, home, job, partition, parent, kill=point)
            assert killed.returncode == -signal.SIGKILL, f"{point} not reached:\n" + killed.stderr[-3000:]
            assert_consistent(data)
            parent = recover(home)
        done = start(data, home, job, partition, parent)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert_consistent(data)

    result = snapshot(data)
    assert result.keys() == reference.keys()
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:  # the audit trail saw the re-runs
        actions = {a for (a,) in conn.execute("SELECT DISTINCT action FROM registry.audit_events").fetchall()}
    assert "run_reexecuted" in actions
    assert {k: v for k, v in result.items() if v != reference[k]} == {}
    assert not list(data.rglob(".*.tmp*")), "temporary files of killed writers were left behind"
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT status FROM features.dataset_versions").fetchall() == [("published",)]
        assert json.loads(conn.execute("SELECT audit FROM features.dataset_versions").fetchall()[0][0])["passed"]
        assert {a for (a,) in conn.execute("SELECT alias FROM registry.aliases").fetchall()} == {
            "champion",
            "challenger",
        }
