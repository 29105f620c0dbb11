"""Features: content-hash splits, dataset versions, per-image statistics and the feature checks."""

import json

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dc_pipeline.core.data.dataset_store import content_sum, open_version, version_hash
from dc_pipeline.core.data.features import dataset_hash, image_statistics, split_of
from dc_pipeline.warehouse.connect import connect


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
    version = open_version(demo.data / "datasets", current["dataset_hash"])
    index = version.index()
    images = demo.sql("SELECT sha256, label FROM clean.images")
    assert len(index) == len(images) == current["n_images"] and current["format"] == "lance"
    assert current["dataset_hash"] == version_hash(28, content_sum(index.sha256, index.label, index.split))
    assert int(current["content_sum"], 16) == content_sum(index.sha256, index.label, index.split)
    x, y = version.split("train")
    assert x.shape[1:] == (28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert len(x) == current["n_train"] == (index.split == "train").sum()
    train = index[index.split == "train"].sort_values("position")
    assert (y == train["label"].to_numpy()).all() and train.sha256.is_monotonic_increasing
    assert set(json.loads(current["upstream_batches"])) == {
        "field_app/batch-0001",
        "field_app/batch-0002",
        "partner_api/batch-0001",
        "partner_api/batch-0002",
        "legacy_erp/batch-0001",
    }
    # Statistics are written once per image and size, when its pixels are stored.
    stats = demo.sql("SELECT * FROM features.image_stats")
    assert set(images.sha256) <= set(stats.sha256) and not stats.duplicated(["sha256", "image_size"]).any()
    assert stats["mean_intensity"].between(0, 1).all() and stats.dataset_hash.isna().all()
    # Each ingest job's features run took in only its batch: one version per batch, each on its parent.
    chain = versions.sort_values("created_at")
    assert chain.parent_hash.iloc[1:].tolist() == chain.dataset_hash.iloc[:-1].tolist()
    assert chain.parent_hash.isna().sum() == 1, "only the first version was built whole"


def current_index(p):
    current = p.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()
    return open_version(p.data / "datasets", current).index()


def test_splits_survive_growth_and_the_check_catches_a_broken_version(pipeline):
    pipeline.ingest("field_app", "batch-0001")
    pipeline.ingest("field_app", "batch-0002")
    assert pipeline.refresh_data().success
    first = current_index(pipeline)[["sha256", "split"]]
    pipeline.ingest_all()
    result = pipeline.refresh_data()
    assert result.success
    grown = current_index(pipeline)[["sha256", "split"]]
    assert len(grown) > len(first)
    merged = first.merge(grown, on="sha256", suffixes=("_before", "_after"))
    assert (merged.split_before == merged.split_after).all()
    # The only images that left are those a later source contradicted (same image, other label).
    gone = set(first.sha256) - set(grown.sha256)
    conflicts = pipeline.sql("SELECT image_sha256 FROM clean.quarantine WHERE reason = 'label_conflict'")
    assert gone and gone <= set(conflicts.image_sha256)
    versions = pipeline.sql("SELECT dataset_hash, is_current FROM features.dataset_versions")
    assert len(versions) == 2 and versions.is_current.sum() == 1
    # Corrupt the stored pixels of two images the current version added (one gets a NaN, one a value of 3):
    # the blocking check reads them back and must fail.
    current = versions[versions.is_current].dataset_hash.item()
    added = pipeline.sql(
        "SELECT sha256 FROM features.dataset_changes WHERE dataset_hash = ? AND change = 'added' ORDER BY sha256",
        [current],
    ).sha256.tolist()
    pixels_uri = str(pipeline.data / "datasets" / "lance-28" / "pixels.lance")
    stored = lance.dataset(pixels_uri)
    end = stored.count_rows()
    bad = (
        np.asarray(stored.take([0, 1], columns=["pixels"]).column("pixels").combine_chunks().flatten())
        .reshape(2, -1)
        .copy()
    )
    bad[0, 5], bad[1, 7] = np.nan, 3.0
    lance.write_dataset(
        pa.table(
            {
                "sha256": pa.array(added[:2], pa.string()),
                "pixels": pa.FixedSizeListArray.from_arrays(pa.array(bad.reshape(-1), pa.float32()), bad.shape[1]),
            },
            schema=stored.schema,
        ),
        pixels_uri,
        mode="append",
    )
    with connect(pipeline.data / "warehouse.duckdb", pipeline.data) as conn:
        conn.execute("UPDATE features.pixel_rows SET row = ? WHERE sha256 = ?", [end, added[0]])
        conn.execute("UPDATE features.pixel_rows SET row = ? WHERE sha256 = ?", [end + 1, added[1]])
    rerun = pipeline.refresh_data()  # nothing changed: the same version is audited again
    assert not rerun.success
    evaluation = next(e for e in rerun.get_asset_check_evaluations() if e.check_name == "feature_expectations")
    assert not evaluation.passed
    assert evaluation.metadata["pixels.column_values_to_be_in_set[nan_count]"].value["unexpected_count"] == 1
    assert evaluation.metadata["pixels.column_values_to_be_between[max]"].value["unexpected_count"] == 1
    audited = pipeline.sql(
        "SELECT count(*) AS n FROM features.dataset_changes WHERE dataset_hash = ? AND change IN ('added', 'relabelled')",
        [current],
    ).n.item()
    checked = evaluation.metadata["pixels.column_values_to_be_between[min]"].value["element_count"]
    assert checked == audited < len(grown), "the images this version added or relabelled were checked, no others"
