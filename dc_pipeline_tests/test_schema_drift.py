"""Schema drift against the source contracts: aliases are mapped with a warning, anything else blocks."""

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def copy_batch(pipeline, source, new_id, src="batch-0001"):
    target = pipeline.landing / source / new_id
    shutil.copytree(pipeline.landing / source / src, target)
    return target


def edit_csv(batch, change):
    frame = pd.read_csv(batch / "manifest.csv", dtype=str, keep_default_na=False)
    change(frame).to_csv(batch / "manifest.csv", index=False)


def schema_verdict(result):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_contract")


def test_alias_rename_is_mapped_with_a_warning(pipeline):
    batch = copy_batch(pipeline, "field_app", "batch-renamed")
    edit_csv(batch, lambda f: f.rename(columns={"captured_at": "capture_time", "device_id": "device"}))
    result = pipeline.ingest("field_app", "batch-renamed")
    assert result.success
    assert schema_verdict(result).passed
    history = pipeline.sql("SELECT * FROM raw.schema_history WHERE batch_id = 'batch-renamed'")
    assert history["status"].item() == "warning"
    assert json.loads(history["renames"].item()) == {"capture_time": "captured_at", "device": "device_id"}
    assert "capture_time" in history["messages"].item()
    raw = pipeline.sql("SELECT captured_raw, device_id FROM raw.field_app WHERE batch_id = 'batch-renamed'")
    assert raw["captured_raw"].notna().all() and raw["device_id"].notna().all()


def drifted_batches(pipeline):
    """(source, batch_id, expected message part) for each blocking kind of drift."""
    unknown = copy_batch(pipeline, "field_app", "batch-unknown-col")
    edit_csv(unknown, lambda f: f.assign(operator="alice"))
    missing = copy_batch(pipeline, "field_app", "batch-missing-col")
    edit_csv(missing, lambda f: f.drop(columns=["captured_at"]))
    retyped = copy_batch(pipeline, "legacy_erp", "batch-retyped")
    table = pq.read_table(retyped / "manifest.parquet")
    ids = pa.array([f"R{v}" for v in table.column("RECORD_ID").to_pylist()])
    pq.write_table(table.set_column(0, "RECORD_ID", ids), retyped / "manifest.parquet")
    return [
        ("field_app", "batch-unknown-col", "unknown column 'operator'"),
        ("field_app", "batch-missing-col", "required column 'captured_at' is missing"),
        ("legacy_erp", "batch-retyped", "column 'RECORD_ID' has type ['string']"),
    ]


def test_unknown_missing_and_retyped_columns_block_the_batch(pipeline):
    pipeline.ingest_all()
    cases = drifted_batches(pipeline)
    for source, batch_id, message in cases:
        result = pipeline.ingest(source, batch_id)
        assert not result.success, "a failed blocking check fails the run"
        evaluation = schema_verdict(result)
        assert not evaluation.passed
        assert message in evaluation.metadata["messages"].value
        history = pipeline.sql("SELECT status, messages FROM raw.schema_history WHERE batch_id = ?", [batch_id])
        assert history["status"].item() == "blocked" and message in history["messages"].item()
        kept = pipeline.sql(f"SELECT count(*) AS n FROM raw.{source} WHERE batch_id = ?", [batch_id])
        assert kept["n"].item() > 0, "the raw batch is kept, with the reason"
    refreshed = pipeline.refresh_data()
    assert refreshed.success
    for source, batch_id, message in cases:
        images = pipeline.sql("SELECT count(*) AS n FROM clean.lineage WHERE batch_id = ?", [batch_id])
        assert images["n"].item() == 0, "nothing of a blocked batch flows downstream"
        q = pipeline.sql("SELECT reason, detail FROM clean.quarantine WHERE batch_id = ?", [batch_id])
        raw = pipeline.sql(f"SELECT count(*) AS n FROM raw.{source} WHERE batch_id = ?", [batch_id])
        assert len(q) == raw["n"].item() and set(q["reason"]) == {"batch_blocked"}
        assert message in q["detail"].iloc[0]


def test_a_mostly_broken_batch_fails_batch_quality_and_stays_out(pipeline):
    batch = copy_batch(pipeline, "partner_api", "batch-garbage")
    lines = [json.loads(line) for line in (batch / "manifest.jsonl").read_text().splitlines()]
    for rec in lines[: len(lines) // 2]:
        rec["digit"] = "unreadable"
    (batch / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = pipeline.ingest("partner_api", "batch-garbage")
    assert not result.success
    quality = next(e for e in result.get_asset_check_evaluations() if e.check_name == "batch_quality")
    assert not quality.passed
    assert quality.metadata["expectations_failed"].value == 1
    assert pipeline.refresh_data(features=False).success
    q = pipeline.sql("SELECT reason, detail FROM clean.quarantine WHERE batch_id = 'batch-garbage'")
    assert len(q) == len(lines) and set(q["reason"]) == {"batch_blocked"}
    assert "batch_quality failed" in q["detail"].iloc[0]


def test_an_incomplete_batch_is_never_read(pipeline):
    batch = copy_batch(pipeline, "field_app", "batch-partial")
    (batch / "_SUCCESS").unlink()
    result = pipeline.ingest("field_app", "batch-partial")
    assert not result.success
    assert not (pipeline.data / "warehouse.duckdb").exists(), "nothing of the incomplete batch was written"
