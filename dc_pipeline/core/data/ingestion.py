"""Ingesting one landing batch: manifest, schema verdict, image bytes into the store, raw rows with provenance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dc_pipeline.core.data.contracts import SourceContract
from dc_pipeline.core.data.images import ObjectStore, read_image_file
from dc_pipeline.core.data.manifests import Manifest, SchemaVerdict, canonical_rows, check_schema, is_complete, read_manifest

RAW_COLUMNS = [
    "source", "batch_id", "row_number", "record_id", "image_ref", "image_sha256", "image_error",
    "label_raw", "captured_raw", "device_id", "row_error", "raw_record",
    "manifest_file", "manifest_sha256", "contract_version", "code_version", "ingested_at",
]


REVIEW_RAW_COLUMNS = [
    "source", "batch_id", "row_number", "image_sha256", "decision", "label_raw", "reviewer", "reason",
    "decided_raw", "row_error", "raw_record",
    "manifest_file", "manifest_sha256", "contract_version", "code_version", "ingested_at",
]


class IncompleteBatch(ValueError):
    """The batch has no ``_SUCCESS`` marker yet: it must not be read."""


@dataclass(frozen=True)
class IngestedBatch:
    manifest: Manifest
    verdict: SchemaVerdict
    rows: pd.DataFrame  # RAW_COLUMNS, one row per manifest record

    def schema_record(self, previous_hash: str | None) -> dict:
        """The batch's row for the schema history table."""
        import json

        first = self.rows.iloc[0] if len(self.rows) else None
        return {
            "source": first["source"] if first is not None else None,
            "batch_id": first["batch_id"] if first is not None else None,
            "manifest_file": self.manifest.path.name,
            "manifest_sha256": self.manifest.sha256,
            "record_count": len(self.manifest.records),
            "columns": json.dumps(self.manifest.column_types, sort_keys=True),
            "schema_hash": self.manifest.schema_hash(),
            "previous_schema_hash": previous_hash,
            "changed_from_previous": previous_hash is not None and previous_hash != self.manifest.schema_hash(),
            "status": self.verdict.status,
            "messages": json.dumps(self.verdict.messages),
            "renames": json.dumps(self.verdict.renames, sort_keys=True),
        }


def ingest_batch(batch_dir: Path, source: str, batch_id: str, contract: SourceContract, store: ObjectStore,
                 max_file_bytes: int, code_version: str, now: datetime | None = None) -> IngestedBatch:
    """Read a complete batch; every manifest row becomes a raw row, whatever is wrong with it."""
    if not is_complete(batch_dir):
        raise IncompleteBatch(f"{batch_dir} has no _SUCCESS marker: the batch is still being delivered")
    manifest = read_manifest(batch_dir, contract)
    verdict = check_schema(manifest, contract)
    now = now or datetime.now(timezone.utc)
    provenance = {"source": source, "batch_id": batch_id, "manifest_file": manifest.path.name,
                  "manifest_sha256": manifest.sha256, "contract_version": contract.version,
                  "code_version": code_version, "ingested_at": now.replace(tzinfo=None)}
    if contract.kind == "reviews":
        rows = [{**rec, **provenance} for rec in canonical_rows(manifest, contract, verdict)]
        return IngestedBatch(manifest=manifest, verdict=verdict, rows=_typed(rows, REVIEW_RAW_COLUMNS))
    rows = []
    for rec in canonical_rows(manifest, contract, verdict):
        value = rec.pop("image_value")
        data, error, ref = None, None, None
        if contract.image_kind == "path":
            ref = None if value is None else str(value)
            data, error = read_image_file(batch_dir, ref, max_file_bytes)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            ref, data = "inline", bytes(value)
            if len(data) > max_file_bytes:
                data, error = None, "image_file_too_large"
        else:
            error = "missing_image_reference"
        rows.append({**rec, **provenance, "image_ref": ref, "image_error": error,
                     "image_sha256": store.put(data) if data is not None else None})
    return IngestedBatch(manifest=manifest, verdict=verdict, rows=_typed(rows, RAW_COLUMNS))


def _typed(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Explicit column types: an all-empty column must still be VARCHAR in DuckDB."""
    frame = pd.DataFrame(rows, columns=columns)
    frame["row_number"] = frame["row_number"].astype("int64")
    for col in columns:
        if col not in ("row_number", "ingested_at"):
            frame[col] = frame[col].astype("string")
    return frame


def expected_batch_size(previous_counts: list[int], low: float = 0.2, high: float = 5.0) -> tuple[int, int | None]:
    """Plausible record count for a new batch, from the median of a source's previous batches."""
    if not previous_counts:
        return 1, None
    median = float(pd.Series(previous_counts).median())
    return max(1, int(median * low)), int(median * high) + 1


def health_frame(rows: pd.DataFrame, contract: SourceContract, classes: tuple[int, ...]) -> pd.DataFrame:
    """Per raw row, what a batch-quality check looks at: an id, whether the label maps, a timestamp and
    whether the payload (image bytes, or a known decision) is there."""
    from dc_pipeline.core.data.contracts import DECISIONS, normalize_label, parse_timestamp

    labels_ok = [normalize_label(v, contract, classes)[1] is None for v in rows["label_raw"]]
    if contract.kind == "reviews":
        relabel = (rows["decision"] == "relabel").fillna(False).to_numpy()
        frame = pd.DataFrame({"record_id": rows["image_sha256"],
                              "label_ok": [ok or not r for ok, r in zip(labels_ok, relabel)],
                              "captured_at": [parse_timestamp(v, contract) for v in rows["decided_raw"]],
                              "payload_ok": rows["decision"].isin(DECISIONS).fillna(False)})
    else:
        frame = pd.DataFrame({"record_id": rows["record_id"], "label_ok": labels_ok,
                              "captured_at": [parse_timestamp(v, contract) for v in rows["captured_raw"]],
                              "payload_ok": rows["image_sha256"].notna()})
    frame["captured_at"] = pd.to_datetime(frame["captured_at"], utc=True).dt.tz_localize(None)
    frame["payload_ok"] = frame["payload_ok"].astype(bool)
    return frame
