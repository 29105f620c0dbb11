"""New demo batches for the landing zone, optionally with drift, drawn from the held-out digits.

``write_demo_landing`` (in ``demo_data``) writes the initial batches from the initial three quarters
of the digits and reserves the holdout quarter. ``write_demo_batch`` delivers later batches from that
holdout, in one source's own format, with one kind of drift:

- image drift (``rotate``, ``noise``, ``blur``, ``invert``, ``contrast``): the 8x8 pixels are changed
  before encoding; the manifest schema is as the contract says, so the schema check says ``ok``;
- ``label_shift``: the class mix is skewed (70% of the batch from classes 0 and 1);
- ``schema_rename``: one column is renamed to an alias the contract lists (schema check: ``warning``);
- ``schema_type``: one column changes to an incompatible type (schema check: ``blocked``).

Records come from :func:`build_demo_batch`, a pure function of ``(source, n, drift, seed)``: the same
seed gives the same records whatever the batch id; other sources, drifts or seeds draw independently. Each record carries ``_digit_index`` (its row in
scikit-learn's digits) and ``_drift``, which the writers leave out of the manifest.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from dc_pipeline.demo.landing import (
    DIGIT_WORDS,
    PRODUCTION_SOURCE,
    UNLABELLED_TRUTH,
    WRITERS,
    Digit,
    _finish,
    load_digits_uint8,
    split_indices,
    to_source_record,
)

DRIFT_KINDS = ("none", "rotate", "noise", "blur", "invert", "contrast", "label_shift", "schema_rename", "schema_type")
IMAGE_DRIFTS = ("rotate", "noise", "blur", "invert", "contrast")
ROTATE_DEGREES = (20.0, 40.0)  # absolute angle range; the sign is random
NOISE_SIGMA = 40.0  # gray levels
BLUR_SIGMA = 1.0  # pixels
CONTRAST_FACTOR = 0.4  # pixels move towards the image mean by this factor
LABEL_SHIFT_CLASSES = (0, 1)
LABEL_SHIFT_SHARE = 0.7  # share of the batch drawn from LABEL_SHIFT_CLASSES; the rest from the others
# schema_rename: column -> an alias the source's contract lists for it
SCHEMA_RENAMES = {
    "field_app": ("captured_at", "capture_time"),
    "partner_api": ("ts", "timestamp"),
    "legacy_erp": ("CREATED", "CREATED_ON"),
    "production": ("captured_at", "capture_time"),
}
# Record numbers of new batches start here; the initial batches use 1..~1400.
RECORD_BASE = 100_000
RECORDS_PER_BLOCK = 10_000  # one block per (seed, drift), so two drift batches never share an id
# Capture times lie in the two weeks before this (or before now, if that is earlier).
DEFAULT_CAPTURE_END = datetime(2026, 11, 15, tzinfo=UTC)
CAPTURE_SPAN = timedelta(days=14)
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_digits_uint8()
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def drift_pixels(pixels: np.ndarray, drift: str, rng: np.random.Generator) -> np.ndarray:
    """Apply an image drift to one 8x8 uint8 image; other drift kinds return it unchanged."""
    x = pixels.astype(np.float64)
    if drift == "rotate":
        angle = rng.uniform(*ROTATE_DEGREES) * rng.choice([-1.0, 1.0])
        x = ndimage.rotate(x, angle, reshape=False, order=1, mode="constant", cval=0.0)
    elif drift == "noise":
        x = x + rng.normal(0.0, NOISE_SIGMA, size=x.shape)
    elif drift == "blur":
        x = ndimage.gaussian_filter(x, sigma=BLUR_SIGMA)
    elif drift == "invert":
        x = 255.0 - x
    elif drift == "contrast":
        x = x.mean() + CONTRAST_FACTOR * (x - x.mean())
    return np.rint(x).clip(0, 255).astype(np.uint8)


def _pick(pool: np.ndarray, k: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if k > len(pool):
        raise ValueError(f"the holdout has only {len(pool)} {what}; cannot draw {k} without repeating digits")
    return rng.choice(pool, size=k, replace=False)


def _stream(seed: int, source: str, drift: str, purpose: int) -> np.random.Generator:
    """An independent random stream per (seed, source, drift, purpose)."""
    source_key = int.from_bytes(hashlib.sha256(source.encode()).digest()[:4], "big")
    return np.random.default_rng([seed, source_key, DRIFT_KINDS.index(drift), purpose])


def select_holdout_digits(source: str, n: int, drift: str, seed: int, demo_seed: int = 7) -> np.ndarray:
    """Indices into scikit-learn's digits for a new batch, drawn without replacement from the holdout.

    The draw depends on (seed, source, drift), so batches of other sources or drifts are drawn
    independently (they still overlap by chance: the holdout has only ~450 digits).
    """
    _, labels = _digits()
    _, holdout = split_indices(demo_seed, len(labels))
    rng = _stream(seed, source, drift, 0)
    if drift != "label_shift":
        return _pick(holdout, n, rng, "digits")
    shifted = np.isin(labels[holdout], LABEL_SHIFT_CLASSES)
    n_major = int(round(n * LABEL_SHIFT_SHARE))
    chosen = np.concatenate(
        [
            _pick(holdout[shifted], n_major, rng, f"digits of classes {LABEL_SHIFT_CLASSES}"),
            _pick(holdout[~shifted], n - n_major, rng, "digits of the other classes"),
        ]
    )
    return rng.permutation(chosen)


def record_number(seed: int, drift: str, i: int) -> int:
    """Record number of the ``i``-th record (0-based) of a new batch; disjoint from the initial batches'."""
    return RECORD_BASE + RECORDS_PER_BLOCK * (seed * len(DRIFT_KINDS) + DRIFT_KINDS.index(drift)) + i + 1


def _apply_schema_drift(source: str, rec: dict, drift: str) -> None:
    if drift == "schema_rename":
        old, new = SCHEMA_RENAMES[source]
        rec[new] = rec.pop(old)
    elif drift == "schema_type":
        if source == "field_app":  # the contract wants integer labels
            rec["label"] = DIGIT_WORDS[int(rec["label"])]
        elif source == "production":  # the contract wants ISO 8601 text
            rec["captured_at"] = int(datetime.fromisoformat(rec["captured_at"]).timestamp())
        elif source == "partner_api":  # the contract wants epoch milliseconds
            rec["ts"] = datetime.fromtimestamp(rec["ts"] / 1000, tz=UTC).isoformat(timespec="seconds")
        else:  # the contract wants integer record ids
            rec["RECORD_ID"] = f"R{rec['RECORD_ID']}"


def build_demo_batch(
    source: str, n: int, drift: str, seed: int, demo_seed: int = 7, captured_until: datetime | None = None
) -> list[dict]:
    """The records of a new batch in ``source``'s own format (``_``-prefixed keys are not written)."""
    if source not in WRITERS:
        raise ValueError(f"unknown demo source {source!r}; known: {sorted(WRITERS)}")
    if drift not in DRIFT_KINDS:
        raise ValueError(f"unknown drift {drift!r}; one of {DRIFT_KINDS}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if not 1 <= n < RECORDS_PER_BLOCK:
        raise ValueError(f"n must be in 1..{RECORDS_PER_BLOCK - 1}")
    images, labels = _digits()
    indices = select_holdout_digits(source, n, drift, seed, demo_seed)
    pixel_rng = _stream(seed, source, drift, 1)
    field_rng = _stream(seed, source, drift, 2)
    end = min(captured_until or DEFAULT_CAPTURE_END, datetime.now(UTC))
    records = []
    for i, idx in enumerate(indices):
        digit = Digit(int(idx), drift_pixels(images[idx], drift, pixel_rng), int(labels[idx]))
        captured = end - timedelta(seconds=int(field_rng.integers(0, int(CAPTURE_SPAN.total_seconds()))))
        rec = to_source_record(source, record_number(seed, drift, i), digit, captured, field_rng)
        _apply_schema_drift(source, rec, drift)
        rec["_digit_index"] = digit.index
        rec["_drift"] = drift
        records.append(rec)
    return records


def _write_legacy_erp_drifted(batch_dir: Path, records: list[dict], drift: str) -> None:
    """The legacy ERP writer has a fixed Arrow schema, so schema drift needs its own (``_SUCCESS`` last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    created = SCHEMA_RENAMES["legacy_erp"][1] if drift == "schema_rename" else "CREATED"
    record_id = pa.string() if drift == "schema_type" else pa.int64()
    schema = pa.schema(
        [("RECORD_ID", record_id), ("IMG", pa.binary()), ("CLASS_CODE", pa.string()), (created, pa.string())]
    )
    batch_dir.mkdir(parents=True, exist_ok=True)
    cols = {name: [rec.get(name) for rec in records] for name in schema.names}
    pq.write_table(pa.table(cols, schema=schema), batch_dir / "manifest.parquet")
    _finish(batch_dir)


def default_batch_id(drift: str, seed: int, now: datetime | None = None) -> str:
    """``batch-<UTC yyyymmddHHMMSS>-<drift>-<seed>``; sorts after the initial ``batch-000N`` ids."""
    now = now or datetime.now(UTC)
    return f"batch-{now.astimezone(UTC):%Y%m%d%H%M%S}-{drift.replace('_', '-')}-{seed}"


def write_demo_batch(
    landing: Path,
    source: str,
    n: int,
    drift: str,
    seed: int,
    batch_id: str | None = None,
    demo_seed: int = 7,
    captured_until: datetime | None = None,
) -> Path:
    """Write one complete new batch to ``landing/<source>/<batch_id>/`` and return its folder.

    An explicit ``batch_id`` whose folder exists is refused (``FileExistsError``); the default id gets
    a ``-2``, ``-3``... suffix instead.
    """
    records = build_demo_batch(source, n, drift, seed, demo_seed, captured_until)
    parent = Path(landing) / source
    if batch_id is None:
        base = default_batch_id(drift, seed)
        batch_id, k = base, 1
        while (parent / batch_id).exists():
            k += 1
            batch_id = f"{base}-{k}"
    elif not _BATCH_ID.fullmatch(batch_id):
        raise ValueError(f"batch id {batch_id!r}: use letters, digits, '.', '_' and '-' only")
    batch_dir = parent / batch_id
    if batch_dir.exists():
        raise FileExistsError(f"{batch_dir} exists; a delivered batch is never overwritten")
    parent.mkdir(parents=True, exist_ok=True)
    batch_dir.mkdir()  # claims the id (fails if another writer took it meanwhile)
    if source == "legacy_erp" and drift in ("schema_rename", "schema_type"):
        _write_legacy_erp_drifted(batch_dir, records, drift)
    else:
        WRITERS[source](batch_dir, records)
    if source == PRODUCTION_SOURCE:
        record_unlabelled_truth(Path(landing).parent / "demo" / UNLABELLED_TRUTH, batch_id, records)
    return batch_dir


def record_unlabelled_truth(path: Path, batch_id: str, records: list[dict]) -> None:
    """Append the withheld digits of an unlabelled batch (what the simulated labeller answers from)."""
    import pandas as pd

    _, labels = _digits()
    rows = pd.DataFrame(
        {
            "source": PRODUCTION_SOURCE,
            "batch_id": batch_id,
            "record_id": [str(r["frame_id"]) for r in records],
            "true_label": [int(labels[r["_digit_index"]]) for r in records],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, mode="a", header=not path.exists(), index=False)
