"""The registry's rows and files never disagree: files are written whole before the row, registering the
same weights again repairs missing or changed files, and killed writers' temporary files are removed."""

import hashlib
import json
import os
import subprocess
import sys

import duckdb
import pytest

from dc_pipeline.core.ml.registry import Registry
from dc_pipeline.warehouse.connect import connect
from dc_pipeline_tests.test_registry import register


@pytest.fixture
def registry(tmp_path):
    with connect(tmp_path / "w.duckdb", tmp_path) as conn:
        yield Registry(conn, tmp_path / "artifacts")


def files_of(registry, version_id):
    record = registry.get(version_id)
    return (registry.root / record["weights_path"]).local_path(), record


def test_registering_the_same_weights_repairs_missing_or_changed_files(registry):
    vid, _ = register(registry, 1)
    path, record = files_of(registry, vid)
    path.unlink()
    (path.parent / "model.json").unlink()
    assert register(registry, 1) == (vid, False)  # the row exists: no new version, but its files are back
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["weights_sha256"]
    assert json.loads((path.parent / "model.json").read_text())["weights_sha256"] == record["weights_sha256"]
    path.write_bytes(b"not the weights")
    register(registry, 1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["weights_sha256"]
    assert registry.load_weights(vid)[0]["version_id"] == vid


def test_a_killed_writers_temporary_file_is_removed(registry):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    vid, _ = register(registry, 2)
    folder = files_of(registry, vid)[0].parent
    abandoned = folder / f".weights.safetensors.tmp-{int(exited.stdout)}"  # its writer is gone
    in_progress = folder / f".weights.safetensors.tmp-{os.getppid()}"  # its writer is alive
    abandoned.write_bytes(b"half")
    in_progress.write_bytes(b"half")
    register(registry, 2)
    assert not abandoned.exists() and in_progress.exists()


def test_an_alias_move_and_its_history_row_are_one_transaction(registry):
    a, _ = register(registry, 3)
    b, _ = register(registry, 4)
    registry.set_alias("champion", a, "first")
    registry.conn.execute("DROP TABLE registry.alias_history")  # the history row cannot be written
    with pytest.raises(duckdb.CatalogException, match="alias_history"):
        registry.set_alias("champion", b, "second")
    assert registry.alias("champion") == a, "the alias moved without its history row"
