"""Ingesting one landing batch: manifest, schema verdict, image bytes into the store, raw rows with provenance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dc_pipeline.core.contracts import SourceContract
from dc_pipeline.core.images import ObjectStore, read_image_file
from dc_pipeline.core.manifests import Manifest, SchemaVerdict, canonical_rows, check_schema, is_complete, read_manifest

RAW_COLUMNS = [
    "source", "batch_id", "row_number", "record_id", "image_ref", "image_sha256", "image_error",
    "label_raw", "captured_raw", "device_id", "row_error", "raw_record",
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
        rows.append({
            **rec,
            "source": source,
            "batch_id": batch_id,
            "image_ref": ref,
            "image_sha256": store.put(data) if data is not None else None,
            "image_error": error,
            "manifest_file": manifest.path.name,
            "manifest_sha256": manifest.sha256,
            "contract_version": contract.version,
            "code_version": code_version,
            "ingested_at": now.replace(tzinfo=None),
        })
    frame = pd.DataFrame(rows, columns=RAW_COLUMNS)
    frame["row_number"] = frame["row_number"].astype("int64")
    for col in RAW_COLUMNS:  # explicit text types: an all-empty column must still be VARCHAR in DuckDB
        if col not in ("row_number", "ingested_at"):
            frame[col] = frame[col].astype("string")
    return IngestedBatch(manifest=manifest, verdict=verdict, rows=frame)


def expected_batch_size(previous_counts: list[int], low: float = 0.2, high: float = 5.0) -> tuple[int, int | None]:
    """Plausible record count for a new batch, from the median of a source's previous batches."""
    if not previous_counts:
        return 1, None
    median = float(pd.Series(previous_counts).median())
    return max(1, int(median * low)), int(median * high) + 1
