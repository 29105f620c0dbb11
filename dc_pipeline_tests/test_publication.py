"""Write-audit-publish of dataset versions: a version is written staged, its blocking check audits it, and
only a pass publishes it. A version that fails leaves the published one current, for training and readers."""

import json

import numpy as np
import pandas as pd

from dc_pipeline.api import load_split
from dc_pipeline.catalog import DATASET_VERSION, DECISIONS, IMAGE_STATS, IMAGES, LINEAGE, QUARANTINE, T
from dc_pipeline.warehouse.connect import connect
from dc_pipeline.warehouse.queries import current_dataset_version, published_rows
from dc_pipeline_tests.test_migrations import release_0_1_warehouse

DATA_ASSETS = [IMAGES, QUARANTINE, LINEAGE, DECISIONS, DATASET_VERSION, IMAGE_STATS]


def test_a_version_that_fails_its_audit_is_never_published(pipeline):
    pipeline.ingest("field_app", "batch-0001")
    pipeline.ingest("field_app", "batch-0002")
    assert pipeline.refresh_data().success
    published = pipeline.sql("SELECT * FROM features.dataset_versions WHERE is_current")
    assert published.status.tolist() == ["published"] and json.loads(published.audit.item())["passed"]
    x_before, y_before = load_split("val", data_dir=pipeline.data)
    with connect(pipeline.data / "warehouse.duckdb", pipeline.data) as conn:
        index_before, stats_before = published_rows(conn, T.DATASET_INDEX), published_rows(conn, T.IMAGE_STATS)

    # A validation share so small that classes are missing from the validation split: a new version,
    # written and staged, then refused by its audit.
    features = {"ops": {"features": {"config": {"val_share": 0.004}}}}
    result = pipeline.refresh(run_config=features, selection=DATA_ASSETS)
    assert not result.success
    audit = next(e for e in result.get_asset_check_evaluations() if e.check_name == "feature_expectations")
    assert not audit.passed and audit.metadata["publication"].value.startswith("rejected")
    assert audit.metadata["classes_per_split.column_values_to_be_between[classes]"].value["failing_ids"] == ["val"]

    versions = pipeline.sql("SELECT * FROM features.dataset_versions").set_index("dataset_hash")
    rejected = versions.drop(index=published.dataset_hash.item())
    assert rejected.status.tolist() == ["rejected"] and not rejected.is_current.item()
    reasons = json.loads(rejected.audit.item())
    assert not reasons["passed"] and "classes_per_split" in {f["check"] for f in reasons["failures"]}
    assert versions.loc[published.dataset_hash.item(), "is_current"]
    # Readers and training see the published version, as before: its split, its index, its statistics.
    x_after, y_after = load_split("val", data_dir=pipeline.data)
    assert np.array_equal(x_after, x_before) and np.array_equal(y_after, y_before)
    with connect(pipeline.data / "warehouse.duckdb", pipeline.data) as conn:
        assert current_dataset_version(conn)["dataset_hash"] == published.dataset_hash.item()
        pd.testing.assert_frame_equal(published_rows(conn, T.DATASET_INDEX), index_before)
        pd.testing.assert_frame_equal(published_rows(conn, T.IMAGE_STATS), stats_before)
        # The rejected version's rows are gone from the per-version tables.
        for table in (T.DATASET_INDEX, T.IMAGE_STATS, T.CURATION_LINEAGE):
            hashes = {h for (h,) in conn.execute(f"SELECT DISTINCT dataset_hash FROM {table}").fetchall()}
            assert hashes <= {published.dataset_hash.item()}, table


def test_a_release_0_1_warehouse_keeps_its_current_version(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    release_0_1_warehouse(db, str(tmp_path))
    with connect(db, tmp_path) as conn:
        current = current_dataset_version(conn)
        assert current["dataset_hash"] == "d" * 64 and current["status"] == "published"
