"""New demo batches from the holdout digits, with image, label and schema drift."""

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dc_pipeline.core.data.contracts import load_contracts, normalize_label, parse_timestamp
from dc_pipeline.core.data.manifests import canonical_rows, check_schema, is_complete, read_manifest
from dc_pipeline.demo.batches import (
    DRIFT_KINDS,
    IMAGE_DRIFTS,
    LABEL_SHIFT_CLASSES,
    build_demo_batch,
    write_demo_batch,
)
from dc_pipeline.demo.landing import INITIAL_BATCHES, load_digits_uint8, split_indices, write_demo_landing

CONTRACTS = load_contracts(Path(__file__).resolve().parents[1] / "dc_pipeline" / "contracts")
SOURCES = ("field_app", "partner_api", "legacy_erp")
IMAGES, LABELS = load_digits_uint8()
INITIAL, HOLDOUT = split_indices(7, len(LABELS))
EXPECTED_STATUS = {"schema_rename": "warning", "schema_type": "blocked"}


def decode(source: str, value: object, batch_dir: Path) -> np.ndarray:
    """The 8x8 gray pixels of a delivered image (partner images are 2x upsampled RGB)."""
    data = value if isinstance(value, bytes) else (batch_dir / str(value)).read_bytes()
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[::2, ::2, 0] if source == "partner_api" else arr


def read(batch_dir: Path, source: str):
    contract = CONTRACTS[source]
    manifest = read_manifest(batch_dir, contract)
    verdict = check_schema(manifest, contract)
    return manifest, verdict, canonical_rows(manifest, contract, verdict)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("drift", DRIFT_KINDS)
def test_each_drift_writes_a_complete_readable_batch_with_the_expected_verdict(tmp_path, source, drift):
    n = 12
    batch = write_demo_batch(tmp_path / "landing", source, n, drift, seed=3, batch_id="batch-new")
    assert batch == tmp_path / "landing" / source / "batch-new"
    assert is_complete(batch)
    manifest, verdict, rows = read(batch, source)
    assert len(manifest.records) == n and not manifest.row_errors
    assert verdict.status == EXPECTED_STATUS.get(drift, "ok"), verdict.messages
    if drift == "schema_rename":
        assert len(verdict.renames) == 1 and "renamed" in verdict.messages[0]
    if verdict.blocked:
        return
    records = build_demo_batch(source, n, drift, seed=3)
    for row, rec in zip(rows, records):
        label, why = normalize_label(row["label_raw"], CONTRACTS[source], CONTRACTS.project.classes)
        assert why is None and label == LABELS[rec["_digit_index"]]
        ts = parse_timestamp(row["captured_raw"], CONTRACTS[source])
        assert ts is not None and datetime(2000, 1, 1, tzinfo=UTC) < ts <= datetime.now(UTC)
        assert decode(source, row["image_value"], batch).shape == (8, 8)


def test_the_success_marker_is_written_last(tmp_path):
    for source in SOURCES:
        batch = write_demo_batch(tmp_path, source, 5, "schema_type", seed=1)
        marker = (batch / "_SUCCESS").stat().st_mtime_ns
        assert all(p.stat().st_mtime_ns <= marker for p in batch.rglob("*") if p.is_file())


def test_blocked_schema_type_names_the_changed_column(tmp_path):
    expected = {"field_app": "'label'", "partner_api": "'ts'", "legacy_erp": "'RECORD_ID'"}
    for source, column in expected.items():
        _, verdict, _ = read(write_demo_batch(tmp_path, source, 5, "schema_type", seed=0), source)
        assert any(column in m and "has type ['string']" in m for m in verdict.messages), verdict.messages


@pytest.mark.parametrize("drift", IMAGE_DRIFTS + ("none",))
def test_images_come_from_the_holdout_and_image_drift_changes_them(tmp_path, drift):
    for source in SOURCES:
        batch = write_demo_batch(tmp_path, source, 30, drift, seed=5)
        _, _, rows = read(batch, source)
        records = build_demo_batch(source, 30, drift, seed=5)
        indices = np.array([r["_digit_index"] for r in records])
        assert np.isin(indices, HOLDOUT).all() and len(set(indices)) == 30
        got = np.stack([decode(source, row["image_value"], batch) for row in rows]).astype(int)
        original = IMAGES[indices].astype(int)
        diff = np.abs(got - original).mean(axis=(1, 2))
        if drift == "none":
            assert (diff == 0).all()
        else:
            assert (diff > 0).all(), f"{drift}: every image changes"
            assert diff.mean() > 10, f"{drift}: the change is visible (mean abs diff {diff.mean():.1f})"
        if drift == "invert":
            assert (got == 255 - original).all()
        if drift == "contrast":
            assert got.std(axis=(1, 2)).mean() < 0.5 * original.std(axis=(1, 2)).mean()


def test_label_shift_skews_the_class_mix():
    n = 100
    for source in SOURCES:
        labels = LABELS[[r["_digit_index"] for r in build_demo_batch(source, n, "label_shift", seed=2)]]
        share = np.isin(labels, LABEL_SHIFT_CLASSES).mean()
        assert share == pytest.approx(0.7, abs=0.01)
        assert len(set(labels[~np.isin(labels, LABEL_SHIFT_CLASSES)])) >= 6, "the rest spread over other classes"
        baseline = LABELS[[r["_digit_index"] for r in build_demo_batch(source, n, "none", seed=2)]]
        assert np.isin(baseline, LABEL_SHIFT_CLASSES).mean() < 0.35
    with pytest.raises(ValueError, match="holdout has only"):
        build_demo_batch("field_app", 400, "label_shift", seed=0)


def test_same_seed_gives_the_same_records_whatever_the_batch_id(tmp_path):
    for source in SOURCES:
        a = write_demo_batch(tmp_path, source, 20, "noise", seed=4, batch_id="batch-a")
        b = write_demo_batch(tmp_path, source, 20, "noise", seed=4, batch_id="batch-b")
        manifest_a, _, rows_a = read(a, source)
        manifest_b, _, rows_b = read(b, source)
        assert manifest_a.sha256 == manifest_b.sha256
        for ra, rb in zip(rows_a, rows_b):
            assert ra["record_id"] == rb["record_id"] and ra["label_raw"] == rb["label_raw"]
            assert (decode(source, ra["image_value"], a) == decode(source, rb["image_value"], b)).all()
        c = write_demo_batch(tmp_path, source, 20, "noise", seed=6, batch_id="batch-c")
        assert read(c, source)[0].sha256 != manifest_a.sha256


def test_other_sources_and_drifts_draw_other_digits():
    """Otherwise a batch per source (or per drift) with one seed would be all cross-batch duplicates."""
    draws = {
        (source, drift): {r["_digit_index"] for r in build_demo_batch(source, 50, drift, seed=1)}
        for source in SOURCES
        for drift in ("none", "schema_rename")
    }
    for a in draws:
        for b in draws:
            if a != b:
                assert len(draws[a] & draws[b]) < 25, (a, b)


def test_existing_batches_are_never_overwritten_and_default_ids_are_unique(tmp_path):
    write_demo_batch(tmp_path, "field_app", 3, "none", seed=0, batch_id="batch-x")
    with pytest.raises(FileExistsError):
        write_demo_batch(tmp_path, "field_app", 3, "rotate", seed=0, batch_id="batch-x")
    ids = {write_demo_batch(tmp_path, "field_app", 3, "none", seed=0).name for _ in range(3)}
    assert len(ids) == 3 and all(i.startswith("batch-2") and i > "batch-0001" for i in ids)
    with pytest.raises(ValueError):
        write_demo_batch(tmp_path, "field_app", 3, "none", seed=0, batch_id="../escape")
    with pytest.raises(ValueError):
        write_demo_batch(tmp_path, "field_app", 3, "sideways", seed=0)
    with pytest.raises(ValueError):
        write_demo_batch(tmp_path, "ftp_drop", 3, "none", seed=0)


def test_record_ids_do_not_collide_with_the_initial_batches_or_each_other(tmp_path):
    landing = tmp_path / "landing"
    write_demo_landing(landing, seed=7)

    def ids(source: str, batch_dir: Path) -> set[str]:
        return {r["record_id"] for r in read(batch_dir, source)[2]}

    for source in SOURCES:
        initial = set().union(*(ids(source, landing / s / b) for s, b, _ in INITIAL_BATCHES if s == source))
        new = [
            ids(source, write_demo_batch(landing, source, 40, drift, seed=seed))
            for drift in ("none", "rotate", "label_shift")
            for seed in (0, 1)
        ]
        assert all(len(ids_) == 40 and not ids_ & initial for ids_ in new)
        assert len(set().union(*new)) == 40 * len(new), "batches of other seeds or drifts use other ids"


def test_partner_schema_type_writes_iso_strings(tmp_path):
    batch = write_demo_batch(tmp_path, "partner_api", 4, "schema_type", seed=0)
    lines = [json.loads(x) for x in (batch / "manifest.jsonl").read_text().splitlines()]
    assert all(isinstance(x["ts"], str) and datetime.fromisoformat(x["ts"]).year >= 2000 for x in lines)
    frame = pd.read_csv(write_demo_batch(tmp_path, "field_app", 4, "schema_type", seed=0) / "manifest.csv")
    assert set(frame["label"]) <= {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
