"""Cleaning: from raw rows of every source to accepted unique images, lineage and quarantine.

Every raw row ends in exactly one place: accepted (the kept copy of an image), duplicate (another
copy of an accepted image, kept in lineage) or quarantine (with a reason code and a detail).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from dc_pipeline.core.data.contracts import Contracts, check_timestamp, normalize_label
from dc_pipeline.core.data.images import ImageRejected, ObjectStore

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


CANDIDATE_COLUMNS = [
    "source",
    "batch_id",
    "manifest_file",
    "manifest_sha256",
    "row_number",
    "record_id",
    "image_sha256",
    "label",
    "captured_at",
    "device_id",
    "width",
    "height",
    "channels",
    "mode",
]
CROSS_BATCH_REASONS = ("conflicting_record_id", "label_conflict")
"""Reasons that depend on other batches' records: recomputed over the images a new batch touches."""


def _utc(value) -> datetime | None:
    """A naive timestamp column value (UTC) as an aware datetime; None when absent."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)).to_pydatetime()


def batch_now(row: dict, now: datetime | None) -> datetime:
    """The "now" a record's plausibility is judged at: its batch's ingestion time, so the verdict does not
    depend on when (or in which order) cleaning runs; ``now`` overrides it."""
    return now or _utc(row.get("ingested_at")) or datetime.now(UTC)


def _quarantine_row(row: dict, reason: str, detail: str) -> dict:
    return {**{k: row.get(k) for k in QUARANTINE_COLUMNS}, "reason": reason, "detail": detail}


def _decode(shas: list[str], store: ObjectStore, project) -> dict[str, object]:
    """Each image decoded once (on every core for a large batch): sha256 -> ``DecodedImage`` or
    ``ImageRejected``."""
    from dc_pipeline.core.data.images import inspect_stored
    from dc_pipeline.core.parallel import map_chunks

    unique = sorted(set(shas))
    return dict(zip(unique, [r for part in map_chunks(inspect_stored, unique, str(store.root), project) for r in part]))


def validate_images(
    raw: pd.DataFrame,
    contracts: Contracts,
    store: ObjectStore,
    blocked_batches: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-record checks, which need nothing but the record, its batch and its image: ``(candidates,
    quarantine)``. The record checks come first; each image of a record that passed them is then read and
    decoded once."""
    project = contracts.project
    quarantine: list[dict] = []
    passed: list[tuple[dict, int, datetime]] = []
    for row in raw.sort_values(["source", "batch_id", "row_number"]).to_dict("records"):
        key = (row["source"], row["batch_id"])
        if key in blocked_batches:
            quarantine.append(_quarantine_row(row, "batch_blocked", blocked_batches[key]))
            continue
        if row.get("row_error"):
            quarantine.append(_quarantine_row(row, *row_error_reason(row["row_error"])))
            continue
        if not _present(row.get("record_id")):
            quarantine.append(_quarantine_row(row, "missing_record_id", "record id is empty"))
            continue
        if row.get("image_error"):
            detail = f"image reference {row.get('image_ref')!r}: {REASONS.get(row['image_error'], '')}"
            quarantine.append(_quarantine_row(row, row["image_error"], detail))
            continue
        contract = contracts[row["source"]]
        label, why = normalize_label(row.get("label_raw"), contract, project.classes)
        if why:
            detail = f"label {row.get('label_raw')!r} is not one of the source's labels"
            quarantine.append(_quarantine_row(row, why, detail))
            continue
        at = batch_now(row, now)
        ts, why = check_timestamp(row.get("captured_raw"), contract, project.earliest, project.plausible_until(at))
        if why:
            detail = _timestamp_detail(row.get("captured_raw"), ts, why, contract, project)
            quarantine.append(_quarantine_row(row, why, detail))
            continue
        passed.append((row, label, ts))
    decoded = _decode([row["image_sha256"] for row, _, _ in passed], store, project)
    candidates: list[dict] = []
    for row, label, ts in passed:
        info = decoded[row["image_sha256"]]
        if isinstance(info, ImageRejected):
            quarantine.append(_quarantine_row(row, info.reason, info.detail))
            continue
        candidates.append(
            {
                **{k: row.get(k) for k in CANDIDATE_COLUMNS},
                "label": label,
                "captured_at": ts.astimezone(UTC).replace(tzinfo=None),
                "width": info.width,
                "height": info.height,
                "channels": info.channels,
                "mode": info.mode,
            }
        )
    q = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    return (
        pd.DataFrame(candidates, columns=CANDIDATE_COLUMNS).astype({"label": "Int64"}),
        q.sort_values(["source", "batch_id", "row_number"]).reset_index(drop=True),
    )


def resolve(candidates: pd.DataFrame) -> CleanResult:
    """The cross-batch rules over candidate records: a record id used for different content or labels
    quarantines all its records (conflicting_record_id); then an image delivered with different labels
    quarantines all its copies (label_conflict); then each image's earliest capture (ties: source, batch,
    row) is kept and the other copies are duplicates. A missing label (an unlabelled record) conflicts with
    nothing; the image takes the label of its labelled copies, if any. Every rule looks only at records sharing a record id
    or a sha256, so resolving the records that share them with a batch gives the same rows as resolving
    everything."""
    cand = pd.DataFrame(candidates, columns=CANDIDATE_COLUMNS).astype({"label": "Int64"})
    quarantine: list[dict] = []
    if len(cand):
        # A record id must mean one record within a source: same content and same label.
        by_record = cand.groupby(["source", "record_id"])
        conflict = (by_record["image_sha256"].transform("nunique") > 1) | (by_record["label"].transform("nunique") > 1)
        for row in cand[conflict].to_dict("records"):
            detail = f"record id {row['record_id']!r} appears in {row['source']} with different image or label"
            quarantine.append(_quarantine_row(row, "conflicting_record_id", detail))
        cand = cand[~conflict]
        # The same image with different labels cannot be trusted either way.
        n_labels = cand.groupby("image_sha256")["label"].transform("nunique")
        conflicting = cand[n_labels > 1]
        labels_of = conflicting.groupby("image_sha256")["label"].agg(lambda s: sorted({int(v) for v in s.dropna()}))
        for row in conflicting.to_dict("records"):
            detail = f"image {row['image_sha256'][:12]} delivered with labels {labels_of[row['image_sha256']]}"
            quarantine.append(_quarantine_row(row, "label_conflict", detail))
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
        # An image is labelled when any copy is (copies agree, or label_conflict took them all out): an
        # unlabelled production copy of a labelled image does not make it unlabelled.
        images["label"] = images["image_sha256"].map(cand.groupby("image_sha256")["label"].first()).astype("Int64")
        images["sha256"] = images["image_sha256"]
        images["n_copies"] = images["sha256"].map(copies).astype(int)
        images = images[IMAGE_COLUMNS].sort_values("image_id").reset_index(drop=True)
        lineage = cand.assign(sha256=cand["image_sha256"], image_id=cand["image_sha256"].map(kept_id))
        lineage = lineage[LINEAGE_COLUMNS].sort_values(["source", "batch_id", "row_number"]).reset_index(drop=True)
    else:
        images = pd.DataFrame(columns=IMAGE_COLUMNS)
        lineage = pd.DataFrame(columns=LINEAGE_COLUMNS)
    q = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    return CleanResult(images=images, quarantine=q, lineage=lineage)


def clean(
    raw: pd.DataFrame,
    contracts: Contracts,
    store: ObjectStore,
    blocked_batches: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> CleanResult:
    """Validate, normalize and deduplicate raw rows of every source together: the full rebuild.

    ``raw`` has the raw table columns (source, batch_id, row_number, record_id, image_sha256,
    image_error, label_raw, captured_raw, ingested_at, ...). ``blocked_batches`` maps (source, batch_id) to
    the reason the batch is blocked. Capture times are judged at each batch's ingestion time unless ``now``
    is given.
    """
    candidates, rejected = validate_images(raw, contracts, store, blocked_batches, now)
    result = resolve(candidates)
    q = pd.concat([rejected, result.quarantine], ignore_index=True) if len(result.quarantine) else rejected
    return CleanResult(
        images=result.images,
        quarantine=q.sort_values(["source", "batch_id", "row_number"]).reset_index(drop=True),
        lineage=result.lineage,
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
    "unknown_decision": "the decision is not relabel, confirm, exclude or label",
    "missing_reviewer": "the decision does not say who made it",
}


REVIEW_ROW_COLUMNS = [
    "source",
    "batch_id",
    "manifest_file",
    "manifest_sha256",
    "row_number",
    "image_sha256",
    "decision",
    "new_label",
    "reviewer",
    "reason",
    "decided_at",
    "reason_if_known",
    "detail_if_known",
]


def validate_reviews(
    raw: pd.DataFrame,
    contracts: Contracts,
    blocked_batches: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-record checks of reviewers' decisions: ``(review rows, quarantine)``. A review row names an
    image and carries the verdict it gets once that image is known (``reason_if_known`` None: accepted),
    so a decision that arrives before its image is decided when the image arrives."""
    from dc_pipeline.core.data.contracts import DECISIONS, LABELLING_DECISIONS

    project = contracts.project
    rows, rejected = [], []
    for row in raw.sort_values(["source", "batch_id", "row_number"]).to_dict("records"):
        key = (row["source"], row["batch_id"])
        record = {**row, "record_id": row.get("image_sha256")}
        if key in blocked_batches:
            rejected.append(_quarantine_row(record, "batch_blocked", blocked_batches[key]))
            continue
        if row.get("row_error"):
            rejected.append(_quarantine_row(record, *row_error_reason(row["row_error"])))
            continue
        if not row.get("image_sha256"):
            rejected.append(_quarantine_row(record, "missing_image_reference", "the decision names no image"))
            continue
        contract = contracts[row["source"]]
        label, why = normalize_label(row.get("label_raw"), contract, project.classes)
        at = batch_now(row, now)
        decided, when = check_timestamp(row.get("decided_raw"), contract, project.earliest, project.plausible_until(at))
        verdict: tuple[str | None, str | None] = (None, None)
        if row.get("decision") not in DECISIONS:
            verdict = ("unknown_decision", f"decision {row.get('decision')!r} not in {DECISIONS}")
        elif row["decision"] in LABELLING_DECISIONS and (why or label is None):
            verdict = (why or "missing_label", f"{row['decision']} to {row.get('label_raw')!r}: not one of the classes")
        elif when:
            verdict = (when, _timestamp_detail(row.get("decided_raw"), decided, when, contract, project))
        elif not _present(row.get("reviewer")):
            verdict = ("missing_reviewer", "the reviewer is empty")
        accepted = verdict[0] is None
        rows.append(
            {
                **{k: row.get(k) for k in ("source", "batch_id", "manifest_file", "manifest_sha256", "row_number")},
                "image_sha256": row["image_sha256"],
                "decision": row.get("decision"),
                "new_label": label if accepted and row["decision"] in LABELLING_DECISIONS else None,
                "reviewer": row.get("reviewer"),
                "reason": row.get("reason"),
                "decided_at": decided.astimezone(UTC).replace(tzinfo=None) if accepted else None,
                "reason_if_known": verdict[0],
                "detail_if_known": verdict[1],
            }
        )
    review_rows = pd.DataFrame(rows, columns=REVIEW_ROW_COLUMNS).astype({"new_label": "Int64"})
    return review_rows, pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS)


def decide_reviews(review_rows: pd.DataFrame, known_images: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Review rows against the accepted images: ``(accepted decisions, quarantine rows)``."""
    accepted, rejected = [], []
    for row in review_rows.to_dict("records"):
        record = {**row, "record_id": row["image_sha256"]}
        if row["image_sha256"] not in known_images:
            detail = f"image {row['image_sha256'][:12]} is not an accepted image"
            rejected.append(_quarantine_row(record, "unknown_image", detail))
        elif _present(row.get("reason_if_known")):
            rejected.append(_quarantine_row(record, row["reason_if_known"], row["detail_if_known"]))
        else:
            accepted.append({**{k: row.get(k) for k in DECISION_COLUMNS}, "sha256": row["image_sha256"]})
    decisions = pd.DataFrame(accepted, columns=DECISION_COLUMNS).astype({"new_label": "Int64"})
    return decisions, pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS)


def clean_reviews(
    raw: pd.DataFrame,
    contracts: Contracts,
    known_images: set[str],
    blocked_batches: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate reviewers' decisions (decision times in the same plausible window as capture times).
    Returns ``(accepted decisions, quarantine rows)``."""
    review_rows, rejected = validate_reviews(raw, contracts, blocked_batches, now)
    decisions, undecided = decide_reviews(review_rows, known_images)
    quarantine = pd.concat([rejected, undecided], ignore_index=True)
    return decisions, quarantine.sort_values(["source", "batch_id", "row_number"]).reset_index(drop=True)


REASONS.update(REVIEW_REASONS)


def latest_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decision in force per image: the latest by decision time, then by delivery order."""
    ordered = decisions.sort_values(["decided_at", "batch_id", "row_number"])
    return ordered.drop_duplicates("sha256", keep="last").reset_index(drop=True)
