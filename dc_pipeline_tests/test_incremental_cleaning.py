"""Cleaning batch by batch: the result does not depend on the order batches arrive in, equals the full
rebuild from the raw tables, and re-cleaning or re-delivering a batch replaces that batch's rows only."""

import hashlib
import random
import shutil
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pytest

from dc_pipeline.catalog import T, contract_sources
from dc_pipeline.core.data.contracts import source_kinds
from dc_pipeline.core.data.incremental_cleaning import clean_pending, rebuild
from dc_pipeline.core.data.manifests import SUCCESS_MARKER
from dc_pipeline.demo.batches import write_demo_batch
from dc_pipeline.demo.landing import PRODUCTION_SOURCE
from dc_pipeline_tests.conftest import make_pipeline

TABLES = {
    T.CLEAN_IMAGES: ["sha256"],
    T.LINEAGE: ["source", "batch_id", "row_number"],
    T.QUARANTINE: ["source", "batch_id", "row_number"],
    T.REVIEW_DECISIONS: ["source", "batch_id", "row_number"],
}


def _field_app_rows(landing, batch: str) -> pd.DataFrame:
    return pd.read_csv(landing / "field_app" / batch / "manifest.csv", dtype=str, keep_default_na=False)


def _write_field_app(landing, batch: str, rows: pd.DataFrame, images: dict[str, bytes]) -> None:
    folder = landing / "field_app" / batch
    (folder / "images").mkdir(parents=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    rows.to_csv(folder / "manifest.csv", index=False)
    (folder / SUCCESS_MARKER).write_text("done")


def add_cross_batch_deliveries(landing) -> dict:
    """A late field_app batch whose records relate to earlier ones in every way the rules know, and a
    review batch about images of it (so in some orders the decisions arrive before their images)."""
    first = _field_app_rows(landing, "batch-0001")
    first = first[(first["label"] != "") & first["file"].str.startswith("images/")]
    good = [r for r in first.to_dict("records") if (landing / "field_app" / "batch-0001" / r["file"]).is_file()]
    earlier, conflicting, clashing = good[0], good[1], good[2]

    def copy_of(rec: dict, new_id: str, **changes) -> tuple[dict, bytes]:
        data = (landing / "field_app" / "batch-0001" / rec["file"]).read_bytes()
        return {**rec, "image_id": new_id, "file": f"images/{new_id}.png", **changes}, data

    captured = datetime.fromisoformat(earlier["captured_at"].replace("Z", "+00:00"))
    rows, images = [], {}
    for rec, data in (
        copy_of(earlier, "90001", captured_at=(captured - timedelta(days=3)).isoformat()),  # an earlier capture
        copy_of(conflicting, "90002", label=str((int(conflicting["label"]) + 1) % 10)),  # another label
        copy_of(good[3], clashing["image_id"]),  # a record id already used for another image
        copy_of(good[4], "90004"),  # a plain duplicate
    ):
        rows.append(rec)
        images[rec["file"]] = data
    _write_field_app(landing, "batch-9001", pd.DataFrame(rows), images)
    # A copy of the image whose record id batch-9001 reuses: its outcome depends on that other record.
    rec, data = copy_of(clashing, "90005")
    _write_field_app(landing, "batch-9002", pd.DataFrame([rec]), {rec["file"]: data})

    shas = [hashlib.sha256(images[r["file"]]).hexdigest() for r in rows]
    accepted = hashlib.sha256((landing / "field_app" / "batch-0001" / good[5]["file"]).read_bytes()).hexdigest()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    reviews = landing / "reviews" / "review-0001"
    reviews.mkdir(parents=True)
    pd.DataFrame(
        [
            {"image_sha256": shas[0], "decision": "relabel", "new_label": "3", "reviewer": "r", "reason": "x"},
            {"image_sha256": shas[3], "decision": "exclude", "new_label": "", "reviewer": "r", "reason": "x"},
            {"image_sha256": shas[1], "decision": "confirm", "new_label": "", "reviewer": "r", "reason": "x"},
            {"image_sha256": accepted, "decision": "confirm", "new_label": "", "reviewer": "", "reason": "x"},
            {"image_sha256": "0" * 64, "decision": "confirm", "new_label": "", "reviewer": "r", "reason": "x"},
        ]
    ).assign(decided_at=now).to_csv(reviews / "decisions.csv", index=False)
    (reviews / SUCCESS_MARKER).write_text("done")
    return {"earlier": shas[0], "conflicting": shas[1], "duplicate": shas[3]}


@pytest.fixture(scope="module")
def delivered(tmp_path_factory):
    """Every demo batch plus the cross-batch ones, through raw ingestion and its batch checks only."""
    p = make_pipeline(tmp_path_factory.mktemp("incremental"))
    p.shas = add_cross_batch_deliveries(p.landing)
    write_demo_batch(p.landing, PRODUCTION_SOURCE, n=40, drift="none", seed=1, batch_id="unlabelled-1")
    p.batches = []
    for source in contract_sources():
        for batch in sorted(x.name for x in (p.landing / source).iterdir()):
            assert p.ingest(source, batch).success
            p.batches.append((source, batch))
    kinds = source_kinds(p.resources["lake"].contracts_dir)
    p.image_sources = sorted(s for s, k in kinds.items() if k != "reviews")
    p.review_sources = sorted(s for s, k in kinds.items() if k == "reviews")
    return p


def _connect(db):
    @contextmanager
    def connect():
        conn = duckdb.connect(str(db))
        try:
            yield conn
        finally:
            conn.close()

    return connect


def _copy(p, tmp_path, name: str):
    db = tmp_path / f"{name}.duckdb"
    shutil.copy(p.data / "warehouse.duckdb", db)
    return _connect(db)


def _clean(p, connect, run_id: str, only=None, repair: bool = False):
    lake = p.resources["lake"]
    args = (connect, lake.contracts(), lake.object_store(), p.image_sources, p.review_sources, run_id)
    return rebuild(*args) if repair else clean_pending(*args, only=only)


def snapshot(connect) -> dict[str, pd.DataFrame]:
    with connect() as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table}").df().sort_values(key).reset_index(drop=True)
            for table, key in TABLES.items()
        }


def assert_same(a: dict, b: dict) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(a[table], b[table], check_dtype=False, obj=table)


def test_any_batch_order_gives_the_full_rebuild(delivered, tmp_path):
    p = delivered
    full = _copy(p, tmp_path, "full")
    _clean(p, full, "repair", repair=True)
    expected = snapshot(full)
    # The cross-batch rules did apply (otherwise equality proves little).
    images, quarantine = expected[T.CLEAN_IMAGES], expected[T.QUARANTINE]
    kept = images.set_index("sha256")
    assert kept.loc[p.shas["earlier"], "image_id"] == "field_app:90001"  # the earlier capture is the kept copy
    assert p.shas["conflicting"] not in kept.index
    assert {"label_conflict", "conflicting_record_id", "unknown_image", "missing_reviewer"} <= set(quarantine.reason)
    decisions = expected[T.REVIEW_DECISIONS]
    assert set(decisions["decision"]) == {"relabel", "exclude"}

    orders = [list(p.batches), list(reversed(p.batches))]
    rng = random.Random(11)
    for _ in range(2):
        orders.append(rng.sample(p.batches, len(p.batches)))
    for i, order in enumerate(orders):
        connect = _copy(p, tmp_path, f"order{i}")
        for j, batch in enumerate(order):
            run = _clean(p, connect, f"o{i}-{j}", only=[batch])
            assert run.cleaned == [batch]
        assert_same(snapshot(connect), expected)


def test_cleaning_again_changes_nothing_and_a_redelivery_only_its_batch(delivered, tmp_path):
    p = delivered
    connect = _copy(p, tmp_path, "again")
    first = _clean(p, connect, "first")
    assert sorted(first.cleaned) == sorted(p.batches)
    before = snapshot(connect)
    assert _clean(p, connect, "nothing").cleaned == []  # nothing changed: nothing is read

    with connect() as conn:  # forget one batch: it is cleaned again, to the same rows
        conn.execute(f"DELETE FROM {T.CLEANED_BATCHES} WHERE batch_id = 'batch-9001'")
    again = _clean(p, connect, "again")
    assert again.cleaned == [("field_app", "batch-9001")]
    assert again.raw_rows == 4
    assert_same(snapshot(connect), before)
    with connect() as conn:
        seqs = conn.execute(f"SELECT seq, count(*) FROM {T.CLEAN_CHANGES} GROUP BY 1 ORDER BY 1").fetchall()
    assert len(seqs) == 2 and seqs[1][1] < seqs[0][1] / 10  # the second run recomputed the batch's closure only

    # A changed re-delivery (the label conflict withdrawn) replaces that batch's rows; the demo image it
    # conflicted with is accepted again; rows of unrelated batches stay as they were.
    manifest = p.landing / "field_app" / "batch-9001" / "manifest.csv"
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    rows[rows["image_id"] != "90002"].to_csv(manifest, index=False)
    shutil.copy(tmp_path / "again.duckdb", p.data / "warehouse.duckdb")
    assert p.ingest("field_app", "batch-9001").success
    connect = _connect(p.data / "warehouse.duckdb")
    run = _clean(p, connect, "redelivered")
    assert run.cleaned == [("field_app", "batch-9001")]
    after = snapshot(connect)
    assert p.shas["conflicting"] in set(after[T.CLEAN_IMAGES]["sha256"])
    closure = run.changed_images

    def untouched(df: pd.DataFrame, column: str, key: list[str]) -> pd.DataFrame:
        rows = df[(df["batch_id"] != "batch-9001") & ~df[column].isin(closure)]
        return rows.sort_values(key).reset_index(drop=True)

    for table, key in TABLES.items():
        column = "image_sha256" if table == T.QUARANTINE else "sha256"
        pd.testing.assert_frame_equal(
            untouched(after[table], column, key), untouched(before[table], column, key), check_dtype=False
        )
    full = _copy(p, tmp_path, "full-after")
    _clean(p, full, "repair", repair=True)
    assert_same(after, snapshot(full))
