"""Ingesting one landing batch: manifest, schema verdict, image bytes into the store, raw rows with provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from dc_pipeline.core.data.contracts import ProjectSpec, SourceContract
from dc_pipeline.core.data.images import ObjectStore, read_image_file
from dc_pipeline.core.data.manifests import (
    SUCCESS_MARKER,
    Manifest,
    ManifestError,
    SchemaVerdict,
    canonical_rows,
    check_schema,
    delivery_fingerprint,
    read_manifest,
    storable,
)
from dc_pipeline.core.data.safe_files import MISSING, BatchFolder, UnsafeFile

RAW_COLUMNS = [
    "source",
    "batch_id",
    "row_number",
    "record_id",
    "image_ref",
    "image_sha256",
    "image_error",
    "label_raw",
    "captured_raw",
    "device_id",
    "row_error",
    "raw_record",
    "manifest_file",
    "manifest_sha256",
    "contract_version",
    "code_version",
    "ingested_at",
]


REVIEW_RAW_COLUMNS = [
    "source",
    "batch_id",
    "row_number",
    "image_sha256",
    "decision",
    "label_raw",
    "reviewer",
    "reason",
    "decided_raw",
    "row_error",
    "raw_record",
    "manifest_file",
    "manifest_sha256",
    "contract_version",
    "code_version",
    "ingested_at",
]


# The per-batch checks whose recorded pass a batch needs before cleaning takes any of its records.
BLOCKING_BATCH_CHECKS = ("schema_contract", "batch_quality")


class IncompleteBatch(ValueError):
    """The batch has no ``_SUCCESS`` marker yet (or no folder): it must not be read."""


@dataclass(frozen=True)
class Refusal:
    """Why a batch was refused as a whole, unread or partly read: none of its records is taken."""

    reason: str  # a batch refusal code (``cleaning.BATCH_REFUSALS``)
    detail: str
    record_count: int | None  # when the records could still be counted (parquet metadata)

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class IngestedBatch:
    source: str
    batch_id: str
    manifest_file: str
    fingerprint: str  # the manifest's sha256, or the refusal's fingerprint: what the landing scan saw
    verdict: SchemaVerdict
    rows: pd.DataFrame  # RAW_COLUMNS (or REVIEW_RAW_COLUMNS), one row per manifest record
    manifest: Manifest | None = None  # None when the batch was refused
    refusal: Refusal | None = None

    def schema_record(self, previous_hash: str | None) -> dict:
        """The batch's row for the schema history table."""
        import json

        m = self.manifest
        schema_hash = m.schema_hash() if m is not None else None
        return {
            "source": self.source,
            "batch_id": self.batch_id,
            "manifest_file": self.manifest_file,
            "manifest_sha256": self.fingerprint,
            "record_count": len(m.records) if m is not None else self.refusal.record_count,
            "columns": json.dumps(m.column_types if m is not None else {}, sort_keys=True),
            "schema_hash": schema_hash,
            "previous_schema_hash": previous_hash,
            "changed_from_previous": bool(schema_hash and previous_hash and previous_hash != schema_hash),
            "status": self.verdict.status,
            "messages": json.dumps(self.verdict.messages),
            "renames": json.dumps(self.verdict.renames, sort_keys=True),
        }


def ingest_batch(
    landing: Path,
    source: str,
    batch_id: str,
    contract: SourceContract,
    store: ObjectStore,
    project: ProjectSpec,
    code_version: str,
    now: datetime | None = None,
) -> IngestedBatch:
    """Read a complete batch from ``landing/source/batch_id``; every manifest row becomes a raw row,
    whatever is wrong with it. A batch that cannot be read safely or is past a bound comes back refused
    (no rows, a reason); an incomplete one raises ``IncompleteBatch``."""
    limits = project.manifests
    columns = REVIEW_RAW_COLUMNS if contract.kind == "reviews" else RAW_COLUMNS

    def refused(reason: str, detail: str, fingerprint: str, record_count: int | None = None) -> IngestedBatch:
        refusal = Refusal(reason, storable(detail), record_count)
        return IngestedBatch(
            source=source,
            batch_id=batch_id,
            manifest_file=contract.manifest_file,
            fingerprint=fingerprint,
            verdict=SchemaVerdict("refused", {}, [refusal.message]),
            rows=_typed([], columns),
            refusal=refusal,
        )

    try:
        folder = BatchFolder.open(landing, source, batch_id)
    except UnsafeFile as exc:
        if exc.kind == MISSING:
            raise IncompleteBatch(f"{source}/{batch_id} has no batch folder: {exc.detail}") from None
        fingerprint = hashlib.sha256(f"refused:unsafe_batch_folder:{exc.kind}".encode()).hexdigest()
        return refused("unsafe_batch_folder", exc.detail, fingerprint)
    with folder:
        marker = folder.kind(SUCCESS_MARKER)
        if marker == "missing":
            raise IncompleteBatch(f"{source}/{batch_id} has no _SUCCESS marker: the batch is still being delivered")
        if marker != "file":
            return refused(
                "unsafe_success_marker",
                f"{SUCCESS_MARKER} is a {marker}, not a regular file",
                delivery_fingerprint(folder, contract.manifest_file, limits),
            )
        try:
            manifest = read_manifest(folder, contract, limits)
        except ManifestError as exc:
            return refused(
                exc.reason, exc.detail, delivery_fingerprint(folder, contract.manifest_file, limits), exc.record_count
            )
        verdict = check_schema(manifest, contract)
        now = now or datetime.now(UTC)
        provenance = {
            "source": source,
            "batch_id": batch_id,
            "manifest_file": manifest.path.name,
            "manifest_sha256": manifest.sha256,
            "contract_version": contract.version,
            "code_version": code_version,
            "ingested_at": now.replace(tzinfo=None),
        }
        done = {
            "source": source,
            "batch_id": batch_id,
            "manifest_file": contract.manifest_file,
            "fingerprint": manifest.sha256,
            "verdict": verdict,
            "manifest": manifest,
        }
        if contract.kind == "reviews":
            rows = [{**rec, **provenance} for rec in canonical_rows(manifest, contract, verdict)]
            return IngestedBatch(**done, rows=_typed(rows, REVIEW_RAW_COLUMNS))
        rows = []
        for rec in canonical_rows(manifest, contract, verdict):
            value = rec.pop("image_value")
            data, error, ref = None, None, None
            if contract.image_kind == "path":
                ref = None if value is None else storable(str(value))
                data, error = read_image_file(folder, None if value is None else str(value), project.max_file_bytes)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                ref, data = "inline", bytes(value)
                if len(data) > project.max_file_bytes:
                    data, error = None, "image_file_too_large"
            else:
                error = "missing_image_reference"
            rows.append(
                {
                    **rec,
                    **provenance,
                    "image_ref": ref,
                    "image_error": error,
                    "image_sha256": store.put(data) if data is not None else None,
                }
            )
        return IngestedBatch(**done, rows=_typed(rows, RAW_COLUMNS))


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


# Where an implausible time is put for the batch-quality check: outside any plausible window, yet within
# what pandas represents (a year-9999 or an epoch-1e30 time would not fit in a datetime64[ns] column).
_TOO_EARLY = datetime(1678, 1, 1)
_TOO_LATE = datetime(2262, 1, 1)


def health_frame(
    rows: pd.DataFrame, contract: SourceContract, project: ProjectSpec, now: datetime | None = None
) -> pd.DataFrame:
    """Per raw row, what a batch-quality check looks at: an id, whether the label maps, a timestamp
    (NaT when it does not parse; outside the plausible window when it is implausible) and whether the
    payload (image bytes, or a known decision) is there."""
    from dc_pipeline.core.data.contracts import DECISIONS, check_timestamp, normalize_label

    now = now or datetime.now(UTC)
    latest = project.plausible_until(now)

    def when(raw) -> datetime | None:
        ts, why = check_timestamp(raw, contract, project.earliest, latest)
        if why == "invalid_timestamp":
            return None
        if why == "implausible_timestamp":
            return _TOO_EARLY if ts is not None and ts < project.earliest else _TOO_LATE
        return ts.astimezone(UTC).replace(tzinfo=None)

    labels_ok = [normalize_label(v, contract, project.classes)[1] is None for v in rows["label_raw"]]
    if contract.kind == "reviews":
        relabel = (rows["decision"] == "relabel").fillna(False).to_numpy()
        frame = pd.DataFrame(
            {
                "record_id": rows["image_sha256"],
                "label_ok": [ok or not r for ok, r in zip(labels_ok, relabel)],
                "captured_at": [when(v) for v in rows["decided_raw"]],
                "payload_ok": rows["decision"].isin(DECISIONS).fillna(False),
            }
        )
    else:
        frame = pd.DataFrame(
            {
                "record_id": rows["record_id"],
                "label_ok": labels_ok,
                "captured_at": [when(v) for v in rows["captured_raw"]],
                "payload_ok": rows["image_sha256"].notna(),
            }
        )
    frame["captured_at"] = pd.to_datetime(frame["captured_at"]).astype("datetime64[ns]")
    frame["payload_ok"] = frame["payload_ok"].astype(bool)
    return frame
