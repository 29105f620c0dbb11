"""Near-duplicates in the pipeline: re-delivered copies are found, grouped into one split, and a version with a
near-duplicate pair across splits is not published."""

import pandas as pd

from dc_pipeline.warehouse.connect import connect


def _injected_pairs(p) -> list[tuple[str, str]]:
    """The demo's near-duplicate faults as (sha256, sha256): each original, then its re-delivered twin."""
    faults = pd.read_csv(p.data / "demo" / "injected_faults.csv", dtype=str)
    marked = faults[faults["fault"] == "near_duplicate"]
    lineage = p.sql("SELECT source, record_id, sha256 FROM clean.lineage")
    sha = dict(zip(zip(lineage["source"], lineage["record_id"]), lineage["sha256"]))
    rows = list(zip(marked["source"], marked["record_id"]))
    return [(sha[rows[i]], sha[rows[i + 1]]) for i in range(0, len(rows), 2)]


def test_copies_arriving_later_are_grouped_into_the_originals_split(pipeline):
    pipeline.ingest("field_app", "batch-0002")  # the originals
    assert pipeline.refresh_data().success
    before = pipeline.sql("SELECT sha256, split FROM features.members")
    pipeline.ingest_all()  # partner_api/batch-0002 re-delivers them upsampled, with noise
    assert pipeline.refresh_data().success
    after = dict(pipeline.sql("SELECT sha256, split FROM features.members").values.tolist())
    pairs = pipeline.sql("SELECT sha256_a, sha256_b FROM features.near_duplicates")
    found = set(zip(pairs["sha256_a"], pairs["sha256_b"]))
    injected = _injected_pairs(pipeline)
    assert len(injected) == 8
    for original, twin in injected:
        assert (min(original, twin), max(original, twin)) in found
        assert after[original] == after[twin], "a near-duplicate group is in one split"
    # Images already in the dataset keep their split: the copies join the originals' groups.
    merged = before.merge(pd.Series(after, name="split_after").rename_axis("sha256").reset_index(), on="sha256")
    assert (merged["split"] == merged["split_after"]).all()
    groups = pipeline.sql("SELECT sha256, anchor FROM features.near_duplicate_groups")
    anchor = dict(zip(groups["sha256"], groups["anchor"]))
    assert all(anchor[t] == anchor[o] == o for o, t in injected if o in set(before["sha256"]))
    # Without the guard (each image's own hash), some of these pairs would straddle splits.
    from dc_pipeline.core.data.features import split_of

    straddling = sum(split_of(o, "dc-pipeline-splits-v1") != split_of(t, "dc-pipeline-splits-v1") for o, t in injected)
    assert straddling > 0


def test_a_version_with_a_near_duplicate_pair_across_splits_is_not_published(pipeline):
    pipeline.ingest("field_app", "batch-0001")
    assert pipeline.refresh_data().success
    members = pipeline.sql("SELECT sha256, split FROM features.members ORDER BY sha256")
    a = members[members.split == "train"].sha256.iloc[0]
    b = members[members.split == "test"].sha256.iloc[0]
    with connect(pipeline.data / "warehouse.duckdb", pipeline.data) as conn:  # a guard bypassed, or broken
        conn.execute(
            "INSERT INTO features.near_duplicates VALUES (?, ?, 1, 0.01, now()::TIMESTAMP)", [min(a, b), max(a, b)]
        )
    rerun = pipeline.refresh_data()
    assert not rerun.success
    evaluation = next(e for e in rerun.get_asset_check_evaluations() if e.check_name == "feature_expectations")
    assert not evaluation.passed
    leak = evaluation.metadata["near_duplicate_splits.column_values_to_be_in_set[straddles]"].value
    assert leak["unexpected_count"] == 1


def test_quality_issues_of_a_new_batch_are_found_and_warned_about(pipeline):
    from dc_pipeline.demo.batches import write_demo_batch

    pipeline.ingest_all()
    first = pipeline.refresh_data()
    assert first.success
    assert pipeline.check_passed(first, "image_quality") == [True]  # ordinary digits
    inverted = write_demo_batch(pipeline.landing, "field_app", n=40, drift="invert", seed=3).name
    pipeline.ingest("field_app", inverted)
    result = pipeline.refresh_data()
    assert result.success, "quality issues warn, they do not block"
    assert pipeline.check_passed(result, "image_quality") == [False]
    found = pipeline.sql(
        "SELECT q.issue, count(*) AS n FROM features.quality_issues q JOIN clean.images i USING (sha256) "
        "WHERE i.batch_id = ? GROUP BY 1",
        [inverted],
    )
    issues = dict(zip(found["issue"], found["n"]))
    assert issues.get("light", 0) >= 30, issues  # white background, dark ink: far lighter than the rest
    older = pipeline.sql(
        "SELECT count(*) AS n FROM features.quality_issues q JOIN clean.images i USING (sha256) WHERE i.batch_id <> ?",
        [inverted],
    ).n.item()
    assert older <= 0.02 * pipeline.sql("SELECT count(*) AS n FROM clean.images").n.item()
