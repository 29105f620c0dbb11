"""The data-centric loop: review queue, reviewers' decisions as a source, the curated dataset, slices."""

import pandas as pd
import pytest
from dagster import AssetKey

from dc_pipeline.core.data.cleaning import latest_decisions
from dc_pipeline.core.data.dataset_store import open_version
from dc_pipeline.ops.review import simulate_review

from .conftest import make_pipeline


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    p = make_pipeline(tmp_path_factory.mktemp("loop"))
    p.ingest_all()
    assert p.refresh().success
    return p


def current_index(p):
    current = p.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()
    return open_version(p.data / "datasets", current).index()


def deliver(p, batch_id, rows, extra_columns=None):
    folder = p.landing / "reviews" / batch_id
    folder.mkdir(parents=True)
    frame = pd.DataFrame(rows).astype({"new_label": "Int64"})  # an integer column, empty where no label
    if extra_columns:
        frame = frame.assign(**extra_columns)
    frame.to_csv(folder / "decisions.csv", index=False)
    (folder / "_SUCCESS").write_text("")
    return p.ingest("reviews", batch_id)


def test_review_queue_finds_the_injected_flips(looped):
    queue = looped.sql("SELECT * FROM curation.review_queue ORDER BY rank")
    assert len(queue) > 10 and queue["rank"].tolist() == list(range(1, len(queue) + 1))
    assert (queue.given_label != queue.suggested_label).all()
    md = looped.instance.get_latest_materialization_event(
        AssetKey(["curation", "label_issues"])
    ).asset_materialization.metadata
    assert md["precision_vs_known"].value >= 0.5 and md["recall_vs_known"].value >= 0.5, (
        md["precision_vs_known"].value,
        md["recall_vs_known"].value,
    )
    assert "data:image/png;base64," in md["preview: review queue, given and suggested labels"].value


def test_reviews_become_a_curated_dataset_version_with_lineage(looped):
    before = looped.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()
    raw_before = looped.sql("SELECT * FROM raw.field_app ORDER BY batch_id, row_number")
    folder, counts = simulate_review(looped.data, batch_id="review-0001")
    assert counts.get("relabel", 0) > 10
    result = looped.ingest("reviews", "review-0001")
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert looped.refresh_data().success
    decisions = looped.sql("SELECT * FROM clean.review_decisions")
    assert len(decisions) == sum(counts.values())
    current = looped.sql("SELECT * FROM features.dataset_versions WHERE is_current").iloc[0]
    assert current.dataset_hash != before and current.relabelled == counts["relabel"]
    applied = latest_decisions(decisions)
    relabelled = applied[applied.decision == "relabel"]
    index = current_index(looped).set_index("sha256")["label"]
    assert (index[relabelled.sha256].to_numpy() == relabelled.new_label.to_numpy()).all()
    assert set(relabelled.batch_id) == {"review-0001"}
    assert not set(applied.loc[applied.decision == "exclude", "sha256"]) & set(index.index)
    # The version records what the review changed against its parent.
    changes = looped.sql("SELECT * FROM features.dataset_changes WHERE dataset_hash = ?", [current.dataset_hash])
    assert set(changes.loc[changes.change == "relabelled", "sha256"]) <= set(relabelled.sha256)
    assert set(changes.loc[changes.change == "removed", "decision"]) <= {"exclude"}
    # decisions never edit raw rows
    pd.testing.assert_frame_equal(raw_before, looped.sql("SELECT * FROM raw.field_app ORDER BY batch_id, row_number"))
    # the found flips no longer show up as issues once relabelled
    assert looped.refresh(selection=[AssetKey(["curation", "label_issues"])], run_config={}).success
    after = looped.instance.get_latest_materialization_event(
        AssetKey(["curation", "label_issues"])
    ).asset_materialization.metadata
    assert after["known_wrong_labels"].value < counts["relabel"]


def test_latest_decision_wins_and_bad_decisions_are_quarantined(looped):
    shas = looped.sql("SELECT sha256 FROM clean.images ORDER BY image_id LIMIT 40").sha256.tolist()
    sha = shas[0]
    base = {"image_sha256": sha, "reviewer": "ana", "reason": "checked"}
    when = "2026-11-19T10:00:00+00:00"
    late = deliver(
        looped,
        "review-late",
        [{**base, "decision": "relabel", "new_label": 3, "decided_at": "2026-11-20T10:00:00+00:00"}],
    )
    confirms = [
        {**base, "image_sha256": s, "decision": "confirm", "new_label": None, "decided_at": when} for s in shas[4:]
    ]
    early = deliver(
        looped,
        "review-early",
        confirms
        + [
            {**base, "decision": "exclude", "new_label": None, "decided_at": when},
            {**base, "image_sha256": "f" * 64, "decision": "confirm", "new_label": None, "decided_at": when},
            {**base, "image_sha256": shas[1], "decision": "delete", "new_label": None, "decided_at": when},
            {**base, "image_sha256": shas[2], "decision": "relabel", "new_label": 42, "decided_at": when},
        ],
    )
    assert late.success and early.success
    assert looped.refresh_data().success
    q = looped.sql("SELECT batch_id, reason FROM clean.quarantine WHERE source = 'reviews'")
    assert sorted(q[q.batch_id == "review-early"].reason) == ["unknown_decision", "unknown_image", "unknown_label"]
    decision = latest_decisions(looped.sql("SELECT * FROM clean.review_decisions WHERE sha256 = ?", [sha]))
    assert decision.decision.item() == "relabel" and decision.new_label.item() == 3, "delivered later, decided earlier"
    index = current_index(looped)
    assert index.loc[index.sha256 == sha, "label"].item() == 3
    evaluation = looped.refresh_data()
    assert all(e.passed for e in evaluation.get_asset_check_evaluations() if e.check_name == "accounting")


def test_a_review_batch_failing_its_contract_is_quarantined(looped):
    sha = looped.sql("SELECT sha256 FROM clean.images ORDER BY image_id LIMIT 1 OFFSET 1").sha256.item()
    result = deliver(
        looped,
        "review-bad",
        [
            {
                "image_sha256": sha,
                "decision": "exclude",
                "new_label": None,
                "reviewer": "bo",
                "reason": "blurry",
                "decided_at": "2026-11-21T10:00:00+00:00",
            }
        ],
        extra_columns={"approved_by": "nobody"},
    )
    assert not result.success
    assert looped.refresh_data().success
    q = looped.sql("SELECT reason, detail FROM clean.quarantine WHERE batch_id = 'review-bad'")
    assert q.reason.tolist() == ["batch_blocked"] and "approved_by" in q.detail.item()
    assert looped.sql("SELECT count(*) AS n FROM clean.review_decisions WHERE batch_id = 'review-bad'").n.item() == 0


def test_slice_analysis_is_materialized(looped):
    slices = looped.sql("SELECT * FROM curation.slices")
    assert {"source", "label", "contrast"} <= set(slices.dimension)
    for _, group in slices.groupby("dimension"):
        assert group["count"].sum() == slices[slices.dimension == "source"]["count"].sum()


def test_latest_decisions_orders_by_decision_time_then_delivery():
    d = pd.DataFrame(
        {
            "sha256": ["a", "a", "a", "b"],
            "decision": ["confirm", "relabel", "exclude", "confirm"],
            "decided_at": pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-03", "2026-01-01"]),
            "batch_id": ["r1", "r1", "r2", "r1"],
            "row_number": [0, 1, 0, 2],
        }
    )
    latest = latest_decisions(d).set_index("sha256")["decision"]
    assert latest.to_dict() == {"a": "exclude", "b": "confirm"}
