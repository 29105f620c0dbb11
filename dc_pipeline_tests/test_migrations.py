"""Declared tables and numbered migrations: a new warehouse, and one left by release 0.1, end up the same."""

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from dc_pipeline.catalog import T
from dc_pipeline.warehouse.connect import connect
from dc_pipeline.warehouse.io import UndeclaredTable, append_rows, replace_table
from dc_pipeline.warehouse.migrations import ALERTS, WAREHOUSE, migrate
from dc_pipeline.warehouse.tables import ALERT_TABLES, TABLES

RELEASE_0_1 = Path(__file__).parent / "fixtures" / "release_0_1_warehouse.sql"


def schema_of(conn, tables) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for t in tables:
        schema, name = t.name.split(".")
        out[t.name] = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE "
            "table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [schema, name],
        ).fetchall()
    return out


def declared(tables) -> dict[str, list[tuple[str, str]]]:
    return {t.name: [(c.name, c.type.split()[0]) for c in t.columns] for t in tables}


def test_a_new_warehouse_gets_exactly_the_declared_tables(tmp_path):
    with connect(tmp_path / "w.duckdb", tmp_path) as conn:
        assert schema_of(conn, TABLES) == declared(TABLES)
        ledger = conn.execute("SELECT number, name FROM meta.schema_migrations ORDER BY number").fetchall()
    assert [n for n, _ in ledger] == [m.number for m in WAREHOUSE.steps]


def test_migrations_run_once(tmp_path):
    with connect(tmp_path / "w.duckdb", tmp_path) as conn:
        assert migrate(conn, tmp_path) == []  # already applied when the connection opened
        assert conn.execute("SELECT count(*) FROM meta.schema_migrations").fetchall()[0][0] == len(WAREHOUSE.steps)


def release_0_1_warehouse(path: Path, old_data_dir: str) -> None:
    """A warehouse with release 0.1's tables (types from its first DataFrames, absolute paths)."""
    with duckdb.connect(str(path)) as conn:
        conn.execute(RELEASE_0_1.read_text())
        conn.execute(
            "INSERT INTO registry.models (version_id, kind, weights_sha256, weights_path, dataset_hash) "
            "VALUES ('augmix-abc', 'augmix', 'sha', ?, 'd')",
            [f"{old_data_dir}/artifacts/models/augmix-abc/weights.safetensors"],
        )
        conn.execute(
            "INSERT INTO features.dataset_versions (dataset_hash, path, is_current) VALUES (?, ?, true)",
            ["d" * 64, f"{old_data_dir}/datasets/{'d' * 64}"],
        )
        conn.execute(
            "INSERT INTO clean.images (image_id, sha256, label, captured_at) "
            "VALUES ('fa-1', 'abc', 3, TIMESTAMP_NS '2026-01-02 03:04:05')"
        )


def test_a_release_0_1_warehouse_is_migrated_in_place(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    release_0_1_warehouse(db, str(tmp_path))
    with duckdb.connect(str(db), read_only=True) as conn:
        before = schema_of(conn, TABLES)
    assert ("sha256", '"NULL"') in before[T.REVIEW_DECISIONS], "the fixture has release 0.1's NULL-typed columns"
    with connect(db, tmp_path) as conn:
        assert schema_of(conn, TABLES) == declared(TABLES)
        # rows survive, with their declared types
        assert conn.execute("SELECT image_id, label, captured_at FROM clean.images").fetchall()[0][:2] == ("fa-1", 3)
        # an empty-frame write from release 0.1 no longer decides the types: decisions insert cleanly
        append_rows(
            conn,
            T.REVIEW_DECISIONS,
            pd.DataFrame(
                [
                    {
                        "sha256": "abc",
                        "decision": "relabel",
                        "new_label": 4,
                        "reviewer": "r",
                        "decided_at": pd.Timestamp("2026-01-01"),
                    }
                ]
            ),
        )
        assert conn.execute("SELECT new_label FROM clean.review_decisions").fetchall() == [(4,)]
        paths = conn.execute(
            "SELECT weights_path FROM registry.models UNION ALL SELECT path FROM features.dataset_versions"
        ).fetchall()
    assert sorted(p for (p,) in paths) == ["artifacts/models/augmix-abc/weights.safetensors", f"datasets/{'d' * 64}"]


def test_absolute_paths_of_a_folder_moved_before_migrating_are_made_relative(tmp_path):
    """The folder was copied elsewhere first: its stored paths name the old place, which is gone."""
    db = tmp_path / "new-place" / "warehouse.duckdb"
    db.parent.mkdir()
    release_0_1_warehouse(db, "/somewhere/that/was/data")
    with connect(db, db.parent) as conn:
        paths = conn.execute("SELECT weights_path FROM registry.models").fetchall()
    assert paths == [("artifacts/models/augmix-abc/weights.safetensors",)]


def test_writes_to_undeclared_tables_are_refused(tmp_path):
    with connect(tmp_path / "w.duckdb", tmp_path) as conn:
        with pytest.raises(UndeclaredTable):
            replace_table(conn, "clean.something_new", pd.DataFrame({"a": [1]}))
        with pytest.raises(duckdb.BinderException):  # a column the table does not declare
            append_rows(conn, T.CURRENT_MODELS, pd.DataFrame({"kind": ["x"], "undeclared": [1]}))


def test_the_alerts_table_of_release_0_1_is_retyped(tmp_path):
    """Release 0.1 typed ``partition`` from the first alert: NULL for an unpartitioned run."""
    db = tmp_path / "alerts.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute(
            "CREATE TABLE main.run_failures AS SELECT TIMESTAMP '2026-01-01' AS failed_at, 'r1' AS run_id, "
            "'refresh_downstream' AS job_name, NULL AS partition, 'boom' AS message"
        )
    with connect(db, None, migrations=ALERTS) as conn:
        assert schema_of(conn, ALERT_TABLES) == declared(ALERT_TABLES)
        append_rows(
            conn,
            T.RUN_FAILURES,
            pd.DataFrame(
                [
                    {
                        "failed_at": pd.Timestamp("2026-01-02"),
                        "run_id": "r2",
                        "job_name": "ingest_field_app",
                        "partition": "batch-1",
                        "message": "x",
                    }
                ]
            ),
        )
        assert conn.execute("SELECT run_id, partition, kind FROM main.run_failures ORDER BY failed_at").fetchall() == [
            ("r1", None, "run_failure"),  # every alert of earlier releases was a failed run
            ("r2", "batch-1", None),
        ]


def test_a_data_folder_moved_elsewhere_keeps_working(tmp_path):
    """A data folder with release 0.1's absolute paths is moved; with DC_DATA_DIR at the copy, the champion
    loads and predicts, a new batch ingests and the pipeline refreshes, and nothing reads the old place
    (it no longer exists)."""
    import shutil

    import numpy as np
    from dagster import DagsterInstance

    from dc_pipeline.api import load_model, load_split
    from dc_pipeline.catalog import scores_key
    from dc_pipeline.defs.resources import resources_for
    from dc_pipeline.demo.batches import write_demo_batch

    from .conftest import Pipeline, make_pipeline, tiny_run_config

    old = make_pipeline(tmp_path / "old")
    old.ingest_all()
    assert old.refresh().success
    with duckdb.connect(str(old.data / "warehouse.duckdb")) as conn:  # as release 0.1 stored them
        conn.execute(f"UPDATE registry.models SET weights_path = '{old.data}/' || weights_path")
        conn.execute(f"UPDATE features.dataset_versions SET path = '{old.data}/' || path")
        conn.execute("DELETE FROM meta.schema_migrations WHERE number = 2")
    new_dir = tmp_path / "moved"
    shutil.move(str(old.data), str(new_dir))
    assert not old.data.exists()

    model = load_model("champion", data_dir=new_dir)  # read-only: nothing migrated yet, paths still absolute
    x, y = load_split("test", data_dir=new_dir)
    assert model.predict_canonical(x).shape == (len(x), 10)

    moved = Pipeline(data=new_dir, instance=DagsterInstance.ephemeral(), resources=resources_for(new_dir))
    write_demo_batch(moved.landing, "partner_api", 60, "none", seed=4, batch_id="batch-after-move")
    assert moved.ingest("partner_api", "batch-after-move").success
    lenient = {
        "first_max_clean_error": 0.6,
        "first_max_mce": 0.9,
        "first_max_rms_calibration": 0.6,
        "mce_relative_margin": -10.0,
        "max_clean_error_increase": 1.0,
        "calibration_tolerance": 1.0,
    }
    assert moved.refresh(run_config=tiny_run_config(seed=1, gate=lenient)).success  # a new model, after the move
    scored = moved.defs.resolve_job_def("ingest_partner_api").execute_in_process(
        instance=moved.instance, partition_key="batch-after-move", asset_selection=[scores_key("partner_api")]
    )
    assert scored.success
    stored = moved.sql(
        "SELECT weights_path AS p FROM registry.models UNION ALL SELECT path FROM features.dataset_versions"
    )["p"]
    assert not any(str(tmp_path / "old") in p for p in stored) and all(not p.startswith("/") for p in stored)
    assert moved.sql("SELECT count(*) AS n FROM clean.images WHERE batch_id = 'batch-after-move'").n.item() > 0
    probs = load_model("champion", data_dir=new_dir).predict_proba(np.zeros((2, 8, 8), np.uint8))
    assert probs.shape == (2, 10)
