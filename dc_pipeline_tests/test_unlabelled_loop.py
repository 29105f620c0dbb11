"""The real-world loop: unlabelled production batches through the real sensors, scoring and drift, the labelling
queue chosen by active learning, labels back as decisions, and the next dataset version with them."""

import pandas as pd
import pytest
from dagster import build_sensor_context

from dc_pipeline.core.data.contracts import load_contracts, normalize_label
from dc_pipeline.core.data.incremental_cleaning import batch_accounting
from dc_pipeline.defs.automation.sensors import build_landing_sensor
from dc_pipeline.demo.batches import write_demo_batch
from dc_pipeline.demo.landing import PRODUCTION_SOURCE, UNLABELLED_TRUTH
from dc_pipeline.ops.review import simulate_labelling
from dc_pipeline.settings import get_settings

from .conftest import SOURCES, make_pipeline
from .test_monitoring_flow import run_sensor_requests


def test_a_contract_may_declare_labels_optional():
    contracts = load_contracts(get_settings().contracts_dir)
    production, field_app = contracts[PRODUCTION_SOURCE], contracts["field_app"]
    assert not production.labels_required and field_app.labels_required
    classes = contracts.project.classes
    assert normalize_label("", production, classes) == (None, None)  # unlabelled, accepted
    assert normalize_label("eleven", production, classes) == (None, "unknown_label")  # a wrong label is still wrong
    assert normalize_label("", field_app, classes) == (None, "missing_label")


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    p = make_pipeline(tmp_path_factory.mktemp("unlabelled"))
    p.ingest_all()
    assert p.refresh().success  # a champion
    p.sensor = build_landing_sensor(SOURCES)
    p.cursor = p.sensor(build_sensor_context(instance=p.instance, resources=p.resources)).cursor

    def tick():
        result = p.sensor(build_sensor_context(instance=p.instance, resources=p.resources, cursor=p.cursor))
        p.cursor = result.cursor
        runs = run_sensor_requests(p, result)
        assert all(r.success for r in runs), [r.run_id for r in runs if not r.success]
        return result, runs

    p.tick = tick
    p.batch = write_demo_batch(p.landing, PRODUCTION_SOURCE, n=120, drift="none", seed=3)
    p.first_result, p.first_runs = tick()
    return p


def test_unlabelled_batch_is_accepted_accounted_scored_and_monitored(loop):
    batch = loop.batch.name
    assert [r.partition_key for r in loop.first_result.run_requests] == [batch]
    images = loop.sql("SELECT * FROM clean.images WHERE source = ? AND batch_id = ?", [PRODUCTION_SOURCE, batch])
    assert len(images) == 120 and images["label"].isna().all()
    quarantined = loop.sql("SELECT count(*) AS n FROM clean.quarantine WHERE batch_id = ?", [batch]).n.item()
    assert quarantined == 0
    with __import__("duckdb").connect(str(loop.data / "warehouse.duckdb"), read_only=True) as conn:
        table = batch_accounting(conn, [PRODUCTION_SOURCE], [(PRODUCTION_SOURCE, batch)])
    row = table.iloc[0]
    assert row.balanced and row.manifest_records == 120 and row.unlabelled == 120
    run = loop.first_runs[0]
    assert all(
        e.passed for e in run.get_asset_check_evaluations() if e.check_name in ("accounting", "clean_expectations")
    )

    # Never in a split until labelled.
    members = loop.sql("SELECT count(*) AS n FROM features.members WHERE source = ?", [PRODUCTION_SOURCE]).n.item()
    assert members == 0

    scores = loop.sql("SELECT * FROM scoring.predictions WHERE batch_id = ?", [batch])
    assert len(scores) == 120 and scores["label"].isna().all()
    summary = loop.sql("SELECT * FROM scoring.batch_summary WHERE batch_id = ?", [batch]).iloc[0]
    assert summary.labelled == 0 and pd.isna(summary.error)

    history = loop.sql("SELECT DISTINCT section FROM monitoring.drift_history WHERE batch_id = ?", [batch])
    sections = set(history.section)
    assert {"features", "embeddings", "predictions", "schema"} <= sections
    assert not {"labels", "error"} & sections, "the label parts need labels"


def test_active_learning_fills_the_labelling_queue_within_the_budget(loop):
    queue = loop.sql("SELECT * FROM curation.labelling_queue ORDER BY rank")
    assert len(queue) == 50  # the default budget
    assert queue["sha256"].is_unique and queue["rank"].tolist() == list(range(1, 51))
    assert set(queue["reason"]) <= {"uncertainty", "slice"} and queue["reason"].notna().all()
    pool = loop.sql("SELECT sha256 FROM clean.images WHERE label IS NULL")
    assert set(queue["sha256"]) <= set(pool["sha256"])
    # Uncertainty leads: the picks are less sure, on average, than the images left in the pool.
    scores = loop.sql("SELECT sha256, confidence FROM scoring.predictions WHERE batch_id = ?", [loop.batch.name])
    picked = scores["sha256"].isin(queue["sha256"])
    assert scores.loc[picked, "confidence"].mean() < scores.loc[~picked, "confidence"].mean()


def test_labels_come_back_through_the_reviews_source_into_the_next_version(loop):
    before = loop.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()
    folder, counts = simulate_labelling(loop.data)
    assert counts == {"label": 50, "left_open": 0}
    result, runs = loop.tick()
    assert [r.job_name for r in result.run_requests] == ["ingest_reviews"]

    decisions = loop.sql("SELECT * FROM clean.review_decisions WHERE decision = 'label'")
    assert len(decisions) == 50 and set(decisions["reviewer"]) == {"simulated-labeller"}
    assert decisions["decided_at"].notna().all()
    current = loop.sql("SELECT * FROM features.dataset_versions WHERE is_current").iloc[0]
    assert current.dataset_hash != before and current.labelled == 50
    changes = loop.sql("SELECT * FROM features.dataset_changes WHERE dataset_hash = ?", [current.dataset_hash])
    added = changes[changes["decision"] == "label"]
    assert len(added) == 50 and set(added["change"]) == {"added"}
    truth = pd.read_csv(loop.data / "demo" / UNLABELLED_TRUTH, dtype={"record_id": str})
    lineage = loop.sql("SELECT source, record_id, sha256 FROM clean.lineage WHERE source = ?", [PRODUCTION_SOURCE])
    expected = dict(truth.merge(lineage, on=["source", "record_id"])[["sha256", "true_label"]].values.tolist())
    assert all(int(label) == int(expected[s]) for s, label in zip(added["sha256"], added["label"]))
    members = loop.sql("SELECT count(*) AS n FROM features.members WHERE source = ?", [PRODUCTION_SOURCE]).n.item()
    assert members == 50

    # Answered items leave the queue's open set, and the run that took the answers in tops it up again from
    # the 70 images still unlabelled; a new unlabelled batch finds the queue at its budget.
    queue = loop.sql("SELECT * FROM curation.labelling_queue ORDER BY queued_at, rank")
    assert len(queue) == 100 and queue["sha256"].is_unique
    assert not set(queue["sha256"].iloc[50:]) & set(decisions["sha256"])
    write_demo_batch(loop.landing, PRODUCTION_SOURCE, n=60, drift="none", seed=4)
    loop.tick()
    assert len(loop.sql("SELECT * FROM curation.labelling_queue")) == 100
    assert simulate_labelling(loop.data)[1] == {"label": 50, "left_open": 0}
