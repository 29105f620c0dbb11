"""Cleaning: from raw rows of every source to accepted unique images, lineage and quarantine.

Every raw row ends in exactly one place: accepted (the kept copy of an image), duplicate (another
copy of an accepted image, kept in lineage) or quarantine (with a reason code and a detail).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from dc_pipeline.core.data.contracts import Contracts, check_timestamp, normalize_label
from dc_pipeline.core.data.images import ImageRejected, ObjectStore, inspect_image

IMAGE_COLUMNS = [
    "image_id",
    "sha256",
    "label",
    "source",
    "batch_id",
    "record_id",
    "row_number",
    "captured_at",
    "device_id",
    "width",
    "height",
    "channels",
    "mode",
    "n_copies",
]
QUARANTINE_COLUMNS = [
    "source",
    "batch_id",
    "manifest_file",
    "manifest_sha256",
    "row_number",
    "record_id",
    "image_sha256",
    "reason",
    "detail",
]
LINEAGE_COLUMNS = [
    "sha256",
    "image_id",
    "role",
    "source",
    "batch_id",
    "manifest_file",
    "row_number",
    "record_id",
    "label",
]

# Reason codes, in the order they are tested; the first that applies is recorded.
REASONS = {
    "batch_blocked": "the batch failed a blocking check (schema contract or batch quality); nothing of it flows on",
    "unparseable_record": "the manifest row could not be parsed",
    "invalid_text": "a value holds a NUL byte, bytes that are not UTF-8 or a lone surrogate, a line break inside a "
    "CSV value, or more characters than the bound: it cannot be taken as delivered",
    "missing_record_id": "the record has no id",
    "missing_image_reference": "the record names no image",
    "image_path_outside_batch": "the image path points outside the batch folder",
    "invalid_image_path": "the image path is not one a file system accepts (NUL byte, over-long, not text)",
    "image_is_link": "the image path is or passes through a symbolic link, or the file has several hard links: "
    "links are never followed",
    "image_not_regular_file": "the image path names a folder, FIFO, device or socket, not a regular file",
    "missing_image_file": "the manifest names an image file that is not in the batch",
    "unreadable_image_file": "the image file is there but cannot be read (permissions, I/O error)",
    "image_file_too_large": "the image file exceeds the size limit and was not read",
    "missing_label": "the label is empty",
    "unknown_label": "the label is not in the source's vocabulary",
    "invalid_timestamp": "the capture time does not match the contract's format",
    "implausible_timestamp": "the capture time is before the earliest plausible time or in the future",
    "undecodable_image": "the image bytes cannot be decoded (for example a truncated file)",
    "unsupported_format": "the image container format is not accepted",
    "unsupported_mode": "the pixel mode (channels) is not accepted",
    "image_too_large": "the image has more pixels than the decompression-bomb guard allows",
    "image_dimensions_out_of_bounds": "the image is smaller or larger than the accepted bounds",
    "conflicting_record_id": "the same record id was delivered with different content or label",
    "label_conflict": "the same image (same sha256) was delivered with different labels",
}


# Why a whole batch was refused at ingestion (no raw rows: its records are accounted as refused with it).
BATCH_REFUSALS = {
    "unsafe_batch_folder": "the batch folder, or its source folder, is a link or not a folder: nothing in it is read",
    "unsafe_success_marker": "_SUCCESS is a link, folder, FIFO, device or socket, not a regular file",
    "manifest_missing": "the batch has no manifest named as the contract says",
    "unsafe_manifest": "the manifest is a link (symbolic or hard), folder, FIFO, device or socket: it is not read",
    "manifest_too_large": "the manifest, or for parquet its declared or decoded data, exceeds manifests.max_bytes",
    "too_many_records": "the manifest has more records than manifests.max_rows",
    "too_many_columns": "the manifest has more columns than manifests.max_columns",
    "unreadable_manifest": "the manifest cannot be parsed as its format (corrupt parquet, nested parquet columns, an "
    "unterminated CSV quote), so its records cannot be counted",
}


def row_error_reason(row_error: str) -> tuple[str, str]:
    """A raw row's error as ``(reason code, detail)``: ``"<code>: <detail>"`` when ingestion named a code."""
    code, sep, detail = row_error.partition(": ")
    return (code, detail) if sep and code in REASONS else ("unparseable_record", row_error)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value).strip() != ""


def _timestamp_detail(raw, ts, why: str, contract, project) -> str:
    if why == "invalid_timestamp":
        return f"{raw!r} does not match {contract.timestamp_format}"
    shown = ts.isoformat() if ts is not None else repr(raw)
    return f"{shown} outside [{project.earliest.date()}, now + {project.max_future}]"


@dataclass(frozen=True)
class CleanResult:
    images: pd.DataFrame
    quarantine: pd.DataFrame
    lineage: pd.DataFrame


def clean(
    raw: pd.DataFrame,
    contracts: Contracts,
    store: ObjectStore,
    blocked_batches: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> CleanResult:
    """Validate, normalize and deduplicate raw rows (all sources together).

    ``raw`` has the raw table columns (source, batch_id, row_number, record_id, image_sha256,
    image_error, label_raw, captured_raw, ...). ``blocked_batches`` maps (source, batch_id) to the
    reason the batch is blocked.
    """
    now = now or datetime.now(UTC)
    project = contracts.project
    quarantine: list[dict] = []
    candidates: list[dict] = []
    decoded: dict[str, object] = {}

    def reject(row: dict, reason: str, detail: str) -> None:
        quarantine.append(
            {
                **{k: row.get(k) for k in QUARANTINE_COLUMNS},
                "image_sha256": row.get("image_sha256"),
                "reason": reason,
                "detail": detail,
            }
        )

    for row in raw.sort_values(["source", "batch_id", "row_number"]).to_dict("records"):
        key = (row["source"], row["batch_id"])
        if key in blocked_batches:
            reject(row, "batch_blocked", blocked_batches[key])
            continue
        if row.get("row_error"):
            reject(row, *row_error_reason(row["row_error"]))
            continue
        if not _present(row.get("record_id")):
            reject(row, "missing_record_id", "record id is empty")
            continue
        if row.get("image_error"):
            reject(
                row,
                row["image_error"],
                f"image reference {row.get('image_ref')!r}: {REASONS.get(row['image_error'], '')}",
            )
            continue
        contract = contracts[row["source"]]
        label, why = normalize_label(row.get("label_raw"), contract, project.classes)
        if why:
            reject(row, why, f"label {row.get('label_raw')!r} is not one of the source's labels")
            continue
        ts, why = check_timestamp(row.get("captured_raw"), contract, project.earliest, project.plausible_until(now))
        if why:
            reject(row, why, _timestamp_detail(row.get("captured_raw"), ts, why, contract, project))
            continue
        sha = row["image_sha256"]
        if sha not in decoded:
            try:
                decoded[sha] = inspect_image(store.get(sha), project)
            except ImageRejected as exc:
                decoded[sha] = exc
        info = decoded[sha]
        if isinstance(info, ImageRejected):
            reject(row, info.reason, info.detail)
            continue
        candidates.append(
            {
                **row,
                "label": label,
                "captured_at": ts,
                "width": info.width,
                "height": info.height,
                "channels": info.channels,
                "mode": info.mode,
            }
        )

    cand = pd.DataFrame(candidates)
    if len(cand):
        # A record id must mean one record within a source: same content and same label.
        variants = (
            cand.groupby(["source", "record_id"])[["image_sha256", "label"]]
            .transform(lambda s: s.nunique())
            .max(axis=1)
        )
        conflict = variants > 1
        for row in cand[conflict].to_dict("records"):
            reject(
                row,
                "conflicting_record_id",
                f"record id {row['record_id']!r} appears in {row['source']} with different image or label",
            )
        cand = cand[~conflict]
        # The same image with different labels cannot be trusted either way.
        n_labels = cand.groupby("image_sha256")["label"].transform("nunique")
        for row in cand[n_labels > 1].to_dict("records"):
            others = sorted(set(cand.loc[cand.image_sha256 == row["image_sha256"], "label"]))
            reject(row, "label_conflict", f"image {row['image_sha256'][:12]} delivered with labels {others}")
        cand = cand[n_labels <= 1]

    if len(cand):
        cand = cand.sort_values(["image_sha256", "captured_at", "source", "batch_id", "row_number"])
        cand["role"] = "duplicate"
        first = ~cand.duplicated("image_sha256")
        cand.loc[first, "role"] = "kept"
        cand["image_id"] = cand["source"] + ":" + cand["record_id"].astype(str)
        kept_id = cand[first].set_index("image_sha256")["image_id"]
        copies = cand.groupby("image_sha256").size()
        images = cand[first].copy()
        images["sha256"] = images["image_sha256"]
        images["n_copies"] = images["sha256"].map(copies).astype(int)
        images = images[IMAGE_COLUMNS].sort_values("image_id").reset_index(drop=True)
        lineage = cand.assign(sha256=cand["image_sha256"], image_id=cand["image_sha256"].map(kept_id))
        lineage = lineage[LINEAGE_COLUMNS].reset_index(drop=True)
    else:
        images = pd.DataFrame(columns=IMAGE_COLUMNS)
        lineage = pd.DataFrame(columns=LINEAGE_COLUMNS)
    q = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    return CleanResult(
        images=images,
        quarantine=q.sort_values(["source", "batch_id", "row_number"]).reset_index(drop=True),
        lineage=lineage,
    )


DECISION_COLUMNS = [
    "sha256",
    "decision",
    "new_label",
    "reviewer",
    "reason",
    "decided_at",
    "source",
    "batch_id",
    "row_number",
]
REVIEW_REASONS = {
    "unknown_image": "the decision names an image that is not among the accepted images",
    "unknown_decision": "the decision is not relabel, confirm or exclude",
    "missing_reviewer": "the decision does not say who made it",
}


def clean_reviews(
    raw: pd.DataFrame,
    contracts: Contracts,
    known_images: set[str],
    blocked_batches: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate reviewers' decisions (decision times in the same plausible window as capture times).
    Returns ``(accepted decisions, quarantine rows)``."""
    from dc_pipeline.core.data.contracts import DECISIONS

    now = now or datetime.now(UTC)
    project = contracts.project
    accepted, rejected = [], []

    def reject(row: dict, reason: str, detail: str) -> None:
        rejected.append(
            {
                **{k: row.get(k) for k in QUARANTINE_COLUMNS},
                "record_id": row.get("image_sha256"),
                "reason": reason,
                "detail": detail,
            }
        )

    for row in raw.sort_values(["source", "batch_id", "row_number"]).to_dict("records"):
        contract = contracts[row["source"]]
        key = (row["source"], row["batch_id"])
        label, why = normalize_label(row.get("label_raw"), contract, contracts.project.classes)
        decided, when = check_timestamp(
            row.get("decided_raw"), contract, project.earliest, project.plausible_until(now)
        )
        if key in blocked_batches:
            reject(row, "batch_blocked", blocked_batches[key])
        elif row.get("row_error"):
            reject(row, *row_error_reason(row["row_error"]))
        elif not row.get("image_sha256"):
            reject(row, "missing_image_reference", "the decision names no image")
        elif row["image_sha256"] not in known_images:
            reject(row, "unknown_image", f"image {row['image_sha256'][:12]} is not an accepted image")
        elif row.get("decision") not in DECISIONS:
            reject(row, "unknown_decision", f"decision {row.get('decision')!r} not in {DECISIONS}")
        elif row["decision"] == "relabel" and why:
            reject(row, why, f"relabel to {row.get('label_raw')!r}: not one of the classes")
        elif when:
            reject(row, when, _timestamp_detail(row.get("decided_raw"), decided, when, contract, project))
        elif not _present(row.get("reviewer")):
            reject(row, "missing_reviewer", "the reviewer is empty")
        else:
            accepted.append(
                {
                    "sha256": row["image_sha256"],
                    "decision": row["decision"],
                    "new_label": label if row["decision"] == "relabel" else None,
                    "reviewer": row["reviewer"],
                    "reason": row.get("reason"),
                    "decided_at": decided.replace(tzinfo=None),
                    "source": row["source"],
                    "batch_id": row["batch_id"],
                    "row_number": row["row_number"],
                }
            )
    decisions = pd.DataFrame(accepted, columns=DECISION_COLUMNS).astype({"new_label": "Int64"})
    return decisions, pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS)


REASONS.update(REVIEW_REASONS)


def latest_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decision in force per image: the latest by decision time, then by delivery order."""
    ordered = decisions.sort_values(["decided_at", "batch_id", "row_number"])
    return ordered.drop_duplicates("sha256", keep="last").reset_index(drop=True)
