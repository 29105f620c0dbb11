"""Write-audit-publish of dataset versions: a version is written staged, its blocking check audits it, and
only a pass publishes it. A version that fails leaves the published one current, for training and readers."""

import json

import numpy as np
import pandas as pd

from dc_pipeline.api import load_split
from dc_pipeline.catalog import DATASET_VERSION, DECISIONS, IMAGE_STATS, IMAGES, LINEAGE, QUARANTINE, T
from dc_pipeline.core.data.dataset_store import open_version
from dc_pipeline.warehouse.connect import connect
from dc_pipeline.warehouse.queries import current_dataset_version
from dc_pipeline_tests.test_migrations import release_0_1_warehouse

DATA_ASSETS = [IMAGES, QUARANTINE, LINEAGE, DECISIONS, DATASET_VERSION, IMAGE_STATS]


def test_a_version_that_fails_its_audit_is_never_published(pipeline):
    pipeline.ingest("field_app", "batch-0001")
    pipeline.ingest("field_app", "batch-0002")
    assert pipeline.refresh_data().success
    published = pipeline.sql("SELECT * FROM features.dataset_versions WHERE is_current")
    assert published.status.tolist() == ["published"] and json.loads(published.audit.item())["passed"]
    x_before, y_before = load_split("val", data_dir=pipeline.data)
    index_before = open_version(pipeline.data / "datasets", published.dataset_hash.item()).index()
    stats_before = pipeline.sql("SELECT * FROM features.image_stats ORDER BY sha256, image_size")

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
        # Per-version tables of earlier releases get no rows; statistics are per image, not per version.
        for table in (T.DATASET_INDEX, T.CURATION_LINEAGE, T.DATASET_MEMBERS):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)], table
    pd.testing.assert_frame_equal(
        open_version(pipeline.data / "datasets", published.dataset_hash.item()).index(), index_before
    )
    pd.testing.assert_frame_equal(
        pipeline.sql("SELECT * FROM features.image_stats ORDER BY sha256, image_size"), stats_before
    )
    # The rejected version is the head, but the next run with the old settings rebuilds what was published:
    # the same content, the same name, published still.
    assert pipeline.sql("SELECT dataset_hash FROM features.head").dataset_hash.item() in set(rejected.index)
    again = pipeline.refresh_data()
    assert again.success
    audit = next(e for e in again.get_asset_check_evaluations() if e.check_name == "feature_expectations")
    assert audit.metadata["publication"].value == "published (already)"
    assert pipeline.sql("SELECT dataset_hash FROM features.head").dataset_hash.item() == published.dataset_hash.item()


def test_a_release_0_1_warehouse_keeps_its_current_version(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    release_0_1_warehouse(db, str(tmp_path))
    with connect(db, tmp_path) as conn:
        current = current_dataset_version(conn)
        assert current["dataset_hash"] == "d" * 64 and current["status"] == "published"
