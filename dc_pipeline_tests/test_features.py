"""Features: content-hash splits, dataset versions, per-image statistics and the feature checks."""

import json

import numpy as np
import pandas as pd
import pytest

from dc_pipeline.core.data.features import DatasetVersion, dataset_hash, image_statistics, split_of


def test_split_is_a_function_of_content_and_salt():
    shas = [f"{i:064x}" for i in range(5000)]
    splits = [split_of(s, "salt") for s in shas]
    shares = pd.Series(splits).value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.02 and abs(shares["val"] - 0.15) < 0.02
    assert splits == [split_of(s, "salt") for s in shas]
    assert splits != [split_of(s, "other") for s in shas]


def test_dataset_hash_ignores_order_and_sees_every_change():
    h = dataset_hash(["a", "b"], [1, 2], ["train", "test"])
    assert h == dataset_hash(["b", "a"], [2, 1], ["test", "train"])
    assert h != dataset_hash(["a", "b"], [1, 3], ["train", "test"])
    assert h != dataset_hash(["a", "b"], [1, 2], ["train", "val"])


def test_image_statistics_on_constructed_images():
    x = np.zeros((2, 8, 8), np.float32)
    x[1, 2:4, 4:8] = 1.0  # a 2x4 bar on the right
    stats = image_statistics(x)
    assert stats.loc[0, "ink_fraction"] == 0 and stats.loc[0, "bbox_width"] == 0
    assert stats.loc[1, "ink_fraction"] == pytest.approx(8 / 64)
    assert stats.loc[1, "bbox_width"] == pytest.approx(4 / 8) and stats.loc[1, "bbox_height"] == pytest.approx(2 / 8)
    assert stats.loc[1, "center_of_mass_x"] == pytest.approx(5.5 / 7)
    assert stats.loc[1, "edge_energy"] > 0 and stats.loc[1, "sharpness"] > 0


def test_demo_dataset_version(demo):
    versions = demo.sql("SELECT * FROM features.dataset_versions")
    current = versions[versions.is_current].iloc[0]
    index = demo.sql("SELECT * FROM features.dataset_index")
    images = demo.sql("SELECT sha256, label FROM clean.images")
    assert len(index) == len(images) == current["n_images"]
    assert current["dataset_hash"] == dataset_hash(list(index.sha256), list(index.label), list(index.split))
    version = DatasetVersion(demo.data / "datasets", current["dataset_hash"])
    x, y = version.split("train")
    assert x.shape[1:] == (28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert len(x) == current["n_train"] == (index.split == "train").sum()
    train = index[index.split == "train"].sort_values("position")
    assert (y == train["label"].to_numpy()).all()
    assert set(json.loads(current["upstream_batches"])) == {
        "field_app/batch-0001",
        "field_app/batch-0002",
        "partner_api/batch-0001",
        "partner_api/batch-0002",
        "legacy_erp/batch-0001",
    }
    stats = demo.sql("SELECT * FROM features.image_stats")
    assert len(stats) == len(images) and stats["mean_intensity"].between(0, 1).all()


def test_splits_survive_growth_and_the_check_catches_a_broken_version(pipeline):
    pipeline.ingest("field_app", "batch-0001")
    pipeline.ingest("field_app", "batch-0002")
    assert pipeline.refresh_data().success
    first = pipeline.sql("SELECT sha256, split FROM features.dataset_index")
    pipeline.ingest_all()
    result = pipeline.refresh_data()
    assert result.success
    grown = pipeline.sql("SELECT sha256, split FROM features.dataset_index")
    assert len(grown) > len(first)
    merged = first.merge(grown, on="sha256", suffixes=("_before", "_after"))
    assert (merged.split_before == merged.split_after).all()
    # The only images that left are those a later source contradicted (same image, other label).
    gone = set(first.sha256) - set(grown.sha256)
    conflicts = pipeline.sql("SELECT image_sha256 FROM clean.quarantine WHERE reason = 'label_conflict'")
    assert gone and gone <= set(conflicts.image_sha256)
    versions = pipeline.sql("SELECT dataset_hash, is_current FROM features.dataset_versions")
    assert len(versions) == 2 and versions.is_current.sum() == 1
    # Corrupt the current version's shard: the blocking check must fail.
    current = versions[versions.is_current].dataset_hash.item()
    path = pipeline.data / "datasets" / current / "val.images.npy"
    x = np.load(path)
    x[0, 0, 0] = np.nan
    x[1, 0, 0] = 3.0
    np.save(path, x)
    rerun = pipeline.refresh_data()  # same data, same version hash: the shards are not rewritten
    assert not rerun.success
    evaluation = next(e for e in rerun.get_asset_check_evaluations() if e.check_name == "feature_expectations")
    assert not evaluation.passed
    assert evaluation.metadata["pixels.column_values_to_be_in_set[nan_count]"].value["unexpected_count"] == 1
    assert evaluation.metadata["pixels.column_values_to_be_between[max]"].value["unexpected_count"] == 1
