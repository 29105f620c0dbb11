"""The demo landing zone: scikit-learn's digits delivered by three sources, each its own way.

This module is the demo's configuration, the only place that knows the data are digits. It writes
complete batches (``_SUCCESS`` last) under ``<landing>/<source>/<batch_id>/`` and, beside the
landing zone, the ground truth of what it injected (``injected_faults.csv``, ``label_flips.csv``),
which the pipeline itself never reads.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dc_pipeline.core.data.manifests import SUCCESS_MARKER

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HOLDOUT_SHARE = 0.25
FLIP_SHARE = 0.03
# initial batches: (source, batch_id, number of digits)
INITIAL_BATCHES = [
    ("field_app", "batch-0001", 300),
    ("field_app", "batch-0002", 260),
    ("partner_api", "batch-0001", 240),
    ("partner_api", "batch-0002", 200),
    ("legacy_erp", "batch-0001", 348),
]
# Injected faults: the reason code cleaning must give each affected record.
FAULTS = {
    "cross_source_duplicate": "kept once, the other copy recorded as a duplicate in lineage",
    "cross_source_label_conflict": "label_conflict",
    "null_label": "missing_label",
    "unknown_label": "unknown_label",
    "truncated_png": "undecodable_image",
    "missing_file": "missing_image_file",
    "duplicate_id_different_label": "conflicting_record_id",
    "near_duplicate": "kept as its own image, grouped with its original as a near-duplicate (same split)",
}


@dataclass(frozen=True)
class Digit:
    index: int  # row in sklearn's digits
    pixels: np.ndarray  # 8x8 uint8, 0..255
    label: int


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, d.target.astype(int)


def split_indices(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (initial, holdout) split of the digit indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * HOLDOUT_SHARE))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def partner_png(pixels: np.ndarray) -> bytes:
    """16x16 RGB: the partner upsamples and sends colour images."""
    big = np.kron(pixels, np.ones((2, 2), dtype=np.uint8))
    return png_bytes(np.stack([big, big, big], axis=-1))


def _finish(batch_dir: Path) -> None:
    (batch_dir / SUCCESS_MARKER).write_text(datetime.now(UTC).isoformat())


# ---------------------------------------------------------------------------------------------
# Writers, one per source format. A record is a dict of manifest fields plus "_image" (bytes, or
# None for a file the manifest names but the batch lacks).


def write_field_app(batch_dir: Path, records: list[dict]) -> None:
    (batch_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in records:
        if rec["_image"] is not None:
            (batch_dir / rec["file"]).write_bytes(rec["_image"])
        rows.append({k: v for k, v in rec.items() if not k.startswith("_")})
    pd.DataFrame(rows).to_csv(batch_dir / "manifest.csv", index=False)
    _finish(batch_dir)


def write_partner_api(batch_dir: Path, records: list[dict]) -> None:
    (batch_dir / "img").mkdir(parents=True, exist_ok=True)
    with open(batch_dir / "manifest.jsonl", "w") as fh:
        for rec in records:
            if rec["_image"] is not None:
                (batch_dir / rec["image_path"]).write_bytes(rec["_image"])
            fh.write(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}) + "\n")
    _finish(batch_dir)


def write_legacy_erp(batch_dir: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    batch_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("RECORD_ID", pa.int64()), ("IMG", pa.binary()), ("CLASS_CODE", pa.string()), ("CREATED", pa.string())]
    )
    cols = {name: [rec.get(name) for rec in records] for name in schema.names}
    pq.write_table(pa.table(cols, schema=schema), batch_dir / "manifest.parquet")
    _finish(batch_dir)


def write_production(batch_dir: Path, records: list[dict]) -> None:
    (batch_dir / "frames").mkdir(parents=True, exist_ok=True)
    for rec in records:
        (batch_dir / rec["file"]).write_bytes(rec["_image"])
    pd.DataFrame([{k: v for k, v in rec.items() if not k.startswith("_")} for rec in records]).to_csv(
        batch_dir / "manifest.csv", index=False
    )
    _finish(batch_dir)


PRODUCTION_SOURCE = "production"
"""The demo's unlabelled source: the deployed model's inputs; the true digits go to ``UNLABELLED_TRUTH``."""
UNLABELLED_TRUTH = "unlabelled_truth.csv"
WRITERS = {
    "field_app": write_field_app,
    "partner_api": write_partner_api,
    "legacy_erp": write_legacy_erp,
    PRODUCTION_SOURCE: write_production,
}


def to_source_record(
    source: str, rid: int, digit: Digit, captured: datetime, rng: np.random.Generator, label: object = "__true__"
) -> dict:
    """A digit in the given source's own format; ``label`` overrides the delivered label."""
    y = digit.label if label == "__true__" else label
    if source == "field_app":
        offset = timedelta(minutes=int(rng.choice([0, 120, -300, 330])))
        return {
            "image_id": f"fa-{rid:06d}",
            "file": f"images/fa-{rid:06d}.png",
            "label": "" if y is None else y,
            "captured_at": captured.astimezone(timezone(offset)).isoformat(timespec="seconds"),
            "device_id": f"dev-{int(rng.integers(1, 7)):02d}",
            "_image": png_bytes(digit.pixels),
        }
    if source == "partner_api":
        word = y if not isinstance(y, (int, np.integer)) else (int(y) if rng.random() < 0.15 else DIGIT_WORDS[int(y)])
        return {
            "id": 500000 + rid,
            "image_path": f"img/{500000 + rid}.png",
            "digit": word,
            "ts": int(captured.timestamp() * 1000),
            "_image": partner_png(digit.pixels),
        }
    if source == "legacy_erp":
        code = y if not isinstance(y, (int, np.integer)) else f"D{int(y)}"
        return {
            "RECORD_ID": 900000 + rid,
            "IMG": png_bytes(digit.pixels),
            "CLASS_CODE": code,
            "CREATED": captured.strftime("%d/%m/%Y"),
            "_image": None,
        }
    if source == PRODUCTION_SOURCE:  # no label column: the label is withheld, whatever ``label`` says
        return {
            "frame_id": f"pr-{rid:06d}",
            "file": f"frames/pr-{rid:06d}.png",
            "captured_at": captured.isoformat(timespec="seconds"),
            "camera_id": f"cam-{int(rng.integers(1, 4)):02d}",
            "_image": png_bytes(digit.pixels),
        }
    raise ValueError(f"unknown demo source {source!r}")


def image_key(source: str) -> str:
    return {"field_app": "_image", "partner_api": "_image", "legacy_erp": "IMG", PRODUCTION_SOURCE: "_image"}[source]


def record_id_of(source: str, rec: dict) -> str:
    key = {"field_app": "image_id", "partner_api": "id", "legacy_erp": "RECORD_ID", PRODUCTION_SOURCE: "frame_id"}
    return str(rec[key[source]])


def write_demo_landing(landing: str | Path, seed: int = 7) -> dict[str, int]:
    """Write the initial demo batches and the ground-truth files. Returns counts per fault type."""
    landing = Path(landing)
    images, labels = load_digits_uint8()
    initial, _ = split_indices(seed, len(labels))
    rng = np.random.default_rng(seed + 1)
    rng.shuffle(initial)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    faults: list[dict] = []
    flips: list[dict] = []
    batches: dict[tuple[str, str], list[dict]] = {}
    cursor = 0
    rid = 1
    for source, batch_id, n in INITIAL_BATCHES:
        recs = []
        for idx in initial[cursor : cursor + n]:
            d = Digit(int(idx), images[idx], int(labels[idx]))
            captured = start + timedelta(seconds=int(rng.integers(0, 60 * 86400)))
            given: object = "__true__"
            if rng.random() < FLIP_SHARE:  # a plausible but wrong label: what reviewers must find
                given = int(rng.choice([c for c in range(10) if c != d.label]))
                flips.append(
                    {
                        "source": source,
                        "batch_id": batch_id,
                        "digit_index": d.index,
                        "true_label": d.label,
                        "given_label": given,
                    }
                )
            rec = to_source_record(source, rid, d, captured, rng, given)
            rec["_digit"] = d
            if given != "__true__":
                flips[-1]["record_id"] = record_id_of(source, rec)
            recs.append(rec)
            rid += 1
        batches[(source, batch_id)] = recs
        cursor += n

    def mark(source: str, batch_id: str, rec: dict, fault: str) -> None:
        faults.append(
            {
                "source": source,
                "batch_id": batch_id,
                "record_id": record_id_of(source, rec),
                "fault": fault,
                "expected": FAULTS[fault],
            }
        )

    # Faults, a few percent per source, at fixed positions drawn from the seed.
    fa1, fa2 = batches[("field_app", "batch-0001")], batches[("field_app", "batch-0002")]
    pa1, pa2 = batches[("partner_api", "batch-0001")], batches[("partner_api", "batch-0002")]
    le1 = batches[("legacy_erp", "batch-0001")]
    pick = lambda recs, k: [recs[i] for i in rng.choice(len(recs), size=k, replace=False)]  # noqa: E731
    used: set[int] = set()

    def fresh(recs: list[dict], k: int) -> list[dict]:
        out = [r for r in pick(recs, len(recs)) if id(r) not in used][:k]
        used.update(id(r) for r in out)
        return out

    for rec in fresh(fa1, 4) + fresh(fa2, 2):  # null labels
        rec["label"] = ""
        mark("field_app", "batch-0001" if rec in fa1 else "batch-0002", rec, "null_label")
    for rec in fresh(pa1, 3):
        rec["digit"] = None
        mark("partner_api", "batch-0001", rec, "null_label")
    for rec, bad in zip(fresh(pa2, 3), ["eleven", "?", "ten"]):  # unknown labels
        rec["digit"] = bad
        mark("partner_api", "batch-0002", rec, "unknown_label")
    for rec, bad in zip(fresh(le1, 3), ["DX", "D10", "d?"]):
        rec["CLASS_CODE"] = bad
        mark("legacy_erp", "batch-0001", rec, "unknown_label")
    for rec in fresh(fa2, 3):  # truncated PNG files
        rec["_image"] = rec["_image"][: len(rec["_image"]) // 2]
        mark("field_app", "batch-0002", rec, "truncated_png")
    for rec in fresh(le1, 2):
        rec["IMG"] = rec["IMG"][: len(rec["IMG"]) // 2]
        mark("legacy_erp", "batch-0001", rec, "truncated_png")
    for rec in fresh(fa1, 3):  # manifest rows whose file is missing
        rec["_image"] = None
        mark("field_app", "batch-0001", rec, "missing_file")
    for rec in fresh(pa1, 3):
        rec["_image"] = None
        mark("partner_api", "batch-0001", rec, "missing_file")
    # The same id delivered again with another image and another label (both copies are suspect).
    for src, recs, batch_id, key in (
        ("field_app", fa2, "batch-0002", "image_id"),
        ("legacy_erp", le1, "batch-0001", "RECORD_ID"),
    ):
        a, b = fresh(recs, 4)[:2], fresh(recs, 4)[:2]
        label_key = "label" if src == "field_app" else "CLASS_CODE"
        for first, second in zip(a, b):
            if first[label_key] == second[label_key]:
                continue
            second[key] = first[key]
            if src == "field_app":
                second["file"] = second["file"].replace(".png", "-b.png")
            mark(src, batch_id, first, "duplicate_id_different_label")
    # Images delivered by two sources: field_app's files appear again inline in legacy_erp.
    for rec in fresh(fa1, 15):
        d: Digit = rec["_digit"]
        conflict = len([f for f in faults if f["fault"] == "cross_source_label_conflict"]) < 6
        given = int(rec["label"])
        twin = to_source_record(
            "legacy_erp", rid, d, start + timedelta(days=30), rng, (given + 1) % 10 if conflict else given
        )
        rid += 1
        le1.append(twin)
        fault = "cross_source_label_conflict" if conflict else "cross_source_duplicate"
        mark("field_app", "batch-0001", rec, fault)
        mark("legacy_erp", "batch-0001", twin, fault)
        if conflict:
            faults[-1]["expected"] = faults[-2]["expected"] = "label_conflict"

    # Near-duplicates: field_app digits delivered again by the partner, upsampled to 16x16 RGB with a little
    # noise (another sha256, the same picture): without the split guard they could land in train and test.
    for rec in fresh(fa2, 8):
        d = rec["_digit"]
        noisy = np.clip(d.pixels.astype(np.int16) + rng.integers(-3, 4, size=d.pixels.shape), 0, 255)
        twin = to_source_record(
            "partner_api", rid, Digit(d.index, noisy.astype(np.uint8), d.label), start + timedelta(days=40), rng
        )
        rid += 1
        pa2.append(twin)
        mark("field_app", "batch-0002", rec, "near_duplicate")
        mark("partner_api", "batch-0002", twin, "near_duplicate")

    for (source, batch_id), recs in batches.items():
        WRITERS[source](landing / source / batch_id, [{k: v for k, v in r.items() if k != "_digit"} for r in recs])
    truth = landing.parent / "demo"
    truth.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(faults).to_csv(truth / "injected_faults.csv", index=False)
    pd.DataFrame(flips, columns=["source", "batch_id", "digit_index", "true_label", "given_label", "record_id"]).to_csv(
        truth / "label_flips.csv", index=False
    )
    return pd.DataFrame(faults).groupby("fault").size().to_dict()
