"""Readers while a run writes: DuckDB lets one process open a file that is being written, so readers wait a
bounded time and then get ``WarehouseBusy`` naming the run, never a raw lock error."""

import signal
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from dc_pipeline.api import WarehouseBusy, load_model, load_split
from dc_pipeline.catalog import T
from dc_pipeline.core.data.features import DatasetVersion, dataset_hash
from dc_pipeline.warehouse.connect import connect, current_writer, writer_marker
from dc_pipeline.warehouse.io import append_rows

REPO = Path(__file__).parents[1]

# A Dagster run whose step holds the warehouse open for writing through the project's Warehouse resource
# until its standard input says so (or, with a number, that many seconds).
WRITING_RUN = """
import sys, time
from dagster import job, op
from dc_pipeline.defs.resources import Warehouse

@op
def write(context, warehouse: Warehouse):
    with warehouse.get_connection():
        print("holding", context.run_id, flush=True)
        line = sys.stdin.readline().strip()
        time.sleep(float(line or 0))

@job
def writing():
    write()

writing.execute_in_process(resources={"warehouse": Warehouse(database=sys.argv[1], data_dir=sys.argv[2])})
"""


def published_dataset(data: Path) -> str:
    """A published dataset version of 12 images, as the features stage leaves it."""
    sha = [f"{i:064x}" for i in range(12)]
    index = pd.DataFrame(
        {"sha256": sha, "image_id": sha, "label": [i % 3 for i in range(12)], "split": ["train", "val", "test"] * 4}
    )
    h = dataset_hash(list(index.sha256), list(index.label), list(index.split))
    DatasetVersion(data / "datasets", h).write(index, np.random.default_rng(0).random((12, 4, 4), np.float32))
    with connect(data / "warehouse.duckdb", data) as conn:
        row = {"dataset_hash": h, "path": f"datasets/{h}", "is_current": True, "status": "published"}
        append_rows(conn, T.DATASET_VERSIONS, pd.DataFrame([row]))
    return h


def start_writer(data: Path) -> tuple[subprocess.Popen, str]:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITING_RUN, str(data / "warehouse.duckdb"), str(data)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = writer.stdout.readline().split()
    assert line[:1] == ["holding"], "the writing run did not start"
    return writer, line[1]


@pytest.fixture
def data(tmp_path) -> Path:
    published_dataset(tmp_path)
    return tmp_path


def test_readers_get_a_clear_error_naming_the_run_then_read_once_it_is_done(data):
    writer, run_id = start_writer(data)
    try:
        assert current_writer(data / "warehouse.duckdb")["run_id"] == run_id
        with pytest.raises(WarehouseBusy, match=f"being written by run {run_id}") as busy:
            load_split("train", data_dir=data, wait_seconds=0.3)
        assert not isinstance(busy.value, duckdb.Error) and busy.value.holder["job"] == "writing"
        with pytest.raises(WarehouseBusy, match=f"being written by run {run_id}"):
            load_model("champion", data, wait_seconds=0.3)
        # A reader that waits long enough reads once the step is done (here: a second later).
        writer.stdin.write("1\n")
        writer.stdin.flush()
        x, y = load_split("train", data_dir=data, wait_seconds=120)
        assert x.shape == (4, 4, 4) and list(y) == [0, 0, 0, 0]
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
        writer.wait()
    assert not writer_marker(data / "warehouse.duckdb").exists()


def test_a_killed_writers_marker_is_ignored(data):
    writer, _ = start_writer(data)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer_marker(data / "warehouse.duckdb").exists()  # left behind by the killed run
    assert current_writer(data / "warehouse.duckdb") is None
    x, _ = load_split("val", data_dir=data, wait_seconds=30)
    assert len(x) == 4


def test_a_writer_waits_for_a_reader_then_names_it(data):
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print('reading', flush=True); "
            "sys.stdin.readline()",
            str(data / "warehouse.duckdb"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "reading"
        with pytest.raises(WarehouseBusy, match=f"PID {reader.pid}"):
            with connect(data / "warehouse.duckdb", data, wait_seconds=0.3):
                pass
        done = threading.Event()

        def write():
            with connect(data / "warehouse.duckdb", data, wait_seconds=120) as conn:
                conn.execute(f"UPDATE {T.DATASET_VERSIONS} SET audit = 'ok'")
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        reader.stdin.write("\n")
        reader.stdin.flush()
        thread.join()
        assert done.is_set()
    finally:
        reader.kill()
        reader.wait()
