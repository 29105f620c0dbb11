"""Single labelled records: micro-batches in the source's own format, through the real ingestion."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from dc_pipeline.core.data.contracts import load_contracts
from dc_pipeline.core.serving.records import STAGING, MicroBatchWriter, RecordContractError
from dc_pipeline.settings import PACKAGED_CONTRACTS

from .conftest import make_pipeline


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("source", ["field_app", "partner_api"])
def test_records_become_a_batch_the_real_ingestion_accepts(tmp_path, source) -> None:
    contracts = load_contracts(PACKAGED_CONTRACTS)
    pipeline = make_pipeline(tmp_path, demo=False)
    writer = MicroBatchWriter(pipeline.landing, contracts[source], max_records=5, max_seconds=3600)
    staged = [writer.add(png(20 * i + 5), ".png", i) for i in range(5)]
    batch_id = staged[0]["batch_id"]
    assert {s["batch_id"] for s in staged} == {batch_id}, "five records, one batch"
    folder = pipeline.landing / source / batch_id
    assert (folder / "_SUCCESS").is_file() and (folder / contracts[source].manifest_file).is_file()
    assert not any((pipeline.landing / STAGING / source).iterdir()), "nothing left staged"
    result = pipeline.ingest(source, batch_id)
    assert result.success
    raw = pipeline.sql(f"SELECT count(*) AS n FROM raw.{source} WHERE batch_id = ?", [batch_id])
    assert raw["n"].iloc[0] == 5
    pipeline.refresh_data(features=False)
    clean = pipeline.sql("SELECT label FROM clean.images WHERE source = ? ORDER BY label", [source])
    assert clean["label"].tolist() == [0, 1, 2, 3, 4]


def test_a_batch_closes_after_its_time_and_a_stopped_writer_loses_nothing(tmp_path) -> None:
    contracts = load_contracts(PACKAGED_CONTRACTS)
    landing = tmp_path / "landing"
    writer = MicroBatchWriter(landing, contracts["field_app"], max_records=100, max_seconds=0.05)
    first = writer.add(png(10), ".png", 3)
    assert not (landing / "field_app" / first["batch_id"]).exists(), "open until due"
    time.sleep(0.1)
    assert writer.close_if_due() == first["batch_id"]
    assert (landing / "field_app" / first["batch_id"] / "_SUCCESS").is_file()
    # a writer that stops with a batch open: the next one closes it on start, with every record
    stopped = MicroBatchWriter(landing, contracts["field_app"], max_records=100, max_seconds=3600)
    left = [stopped.add(png(30 + i), ".png", i) for i in range(3)]
    del stopped
    again = MicroBatchWriter(landing, contracts["field_app"], max_records=100, max_seconds=3600)
    assert again.recover() == [left[0]["batch_id"]]
    manifest = (landing / "field_app" / left[0]["batch_id"] / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 3


def test_contracts_that_cannot_take_records_are_refused_up_front() -> None:
    contracts = load_contracts(PACKAGED_CONTRACTS)
    with pytest.raises(RecordContractError, match="files named in the manifest"):
        MicroBatchWriter(PACKAGED_CONTRACTS, contracts["legacy_erp"])  # inline image bytes
    with pytest.raises(RecordContractError):
        MicroBatchWriter(PACKAGED_CONTRACTS, contracts["reviews"])
