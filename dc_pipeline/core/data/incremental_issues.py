"""Data issues batch by batch: fingerprints, near-duplicate groups, quality issues and outliers of new images.

The features run calls this for the images cleaning changed (labelled or not). Each image is fingerprinted once
(``features.fingerprints``); its near-duplicate candidates are the stored images sharing one of its four hash
bands within a few hash bits (equi-joins in DuckDB), verified on the thumbnails; the pairs found join groups
whose anchor is the image of the group that arrived first, so an image keeps its split when near-copies of it
arrive. The split of a dataset member is drawn from its group's anchor: a near-duplicate group never straddles
train, validation and test. Quality issues and outliers are judged against the robust figures (median, MAD) of
every image fingerprinted so far, computed in SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from dc_pipeline.catalog import T
from dc_pipeline.core.curation import data_issues as di
from dc_pipeline.core.data.incremental_cleaning import delete_in, select_in

BANDS = di.BAND_COLUMNS
FINGERPRINT_COLUMNS = [
    "sha256",
    "dhash",
    *BANDS,
    "thumb",
    "brightness",
    "contrast",
    "sharpness",
    "log_sharpness",
    "entropy",
    "source",
    "width",
    "height",
    "fingerprinted_at",
]
OUTLIER = "outlier"
MAD_TO_SD = 1.4826  # the median absolute deviation of normal data times this is its standard deviation


def missing_fingerprints(conn, shas) -> list[str]:
    """The sha256s among ``shas`` not fingerprinted yet."""
    known = set(select_in(conn, f"SELECT sha256 FROM {T.FINGERPRINTS} WHERE TRUE", "sha256", shas)["sha256"])
    return sorted({s for s in shas if s not in known})


def compute_fingerprints(objects, rows: pd.DataFrame) -> pd.DataFrame:
    """Fingerprints of ``rows`` (sha256, source, width, height of clean.images) from box-resampled thumbnails,
    decoded from the object store on every core for a large batch."""
    from dc_pipeline.core.data.images import thumbnails_stored
    from dc_pipeline.core.parallel import map_chunks

    rows = rows.drop_duplicates("sha256").reset_index(drop=True)
    shas = rows["sha256"].tolist()
    parts = map_chunks(thumbnails_stored, shas, str(objects.root), di.FINGERPRINT_SIZE)
    size = di.FINGERPRINT_SIZE
    x = np.concatenate(parts) if parts else np.zeros((0, size, size), np.float32)
    fp = di.fingerprints(x)
    fp.insert(0, "sha256", shas)
    for col in ("source", "width", "height"):
        fp[col] = rows[col].to_numpy()
    fp["fingerprinted_at"] = datetime.now(UTC).replace(tzinfo=None)
    return fp


def _candidates(conn, fp: pd.DataFrame, max_hamming: int = di.MAX_HAMMING) -> pd.DataFrame:
    """Stored fingerprints that share a band with one of ``fp``'s and lie within ``max_hamming`` bits of it:
    the only images that can be near-duplicates. The band equi-joins and the Hamming filter run in DuckDB, so a
    common band value (a blank region hashes to zero bits) does not bring its thousands of images into memory;
    only the survivors' thumbnails are read."""
    conn.register("_new_fingerprints", fp[["sha256", "dhash", *BANDS]])
    try:
        near = " UNION ".join(
            f"SELECT f.sha256 FROM {T.FINGERPRINTS} f JOIN _new_fingerprints n ON f.{band} = n.{band} "
            f"WHERE bit_count(xor(f.dhash, n.dhash)) <= {int(max_hamming)}"
            for band in BANDS
        )
        shas = [r[0] for r in conn.execute(near).fetchall()]
    finally:
        conn.unregister("_new_fingerprints")
    return select_in(conn, f"SELECT sha256, dhash, thumb FROM {T.FINGERPRINTS} WHERE TRUE", "sha256", shas)


def _anchors(conn, column: str, values) -> dict[str, str]:
    rows = select_in(conn, f"SELECT sha256, anchor FROM {T.NEAR_DUPLICATE_GROUPS} WHERE TRUE", column, values)
    return dict(zip(rows["sha256"], rows["anchor"]))


def anchors_of(conn, shas) -> dict[str, str]:
    """The near-duplicate group anchor of each of ``shas`` that is in a group."""
    return _anchors(conn, "sha256", shas)


def _reference(conn) -> tuple[dict, dict]:
    """Robust figures (median, scaled MAD) over every fingerprinted image, and each source's median size: SQL
    aggregates, no row read into memory."""
    figures = di.REFERENCE_FIGURES
    parts = ", ".join(f"median({f}), mad({f})" for f in figures)
    row = conn.execute(f"SELECT {parts} FROM {T.FINGERPRINTS}").fetchall()[0]
    reference = {f: (float(row[2 * i] or 0.0), MAD_TO_SD * float(row[2 * i + 1] or 0.0)) for i, f in enumerate(figures)}
    sizes = conn.execute(
        f"SELECT source, median(width), median(height) FROM {T.FINGERPRINTS} GROUP BY source"
    ).fetchall()
    return reference, {s: (float(w), float(h)) for s, w, h in sizes if w is not None and h is not None}


def _regroup(conn, pairs: pd.DataFrame) -> dict[str, str]:
    """Anchors after ``pairs`` join the stored groups (``data_issues.near_duplicate_anchors``: a group's
    earliest-fingerprinted image is its anchor, so an image in the dataset keeps its split when near-copies of
    it arrive)."""
    shas = set(pairs["sha256_a"]) | set(pairs["sha256_b"])
    known = anchors_of(conn, shas)
    members = _anchors(conn, "anchor", set(known.values())) if known else {}
    arrived = select_in(
        conn,
        f"SELECT sha256, fingerprinted_at FROM {T.FINGERPRINTS} WHERE TRUE",
        "sha256",
        shas | set(members),
    )
    arrival = dict(zip(arrived["sha256"], arrived["fingerprinted_at"]))
    return di.near_duplicate_anchors(pairs, known, lambda anchors: members, arrival)


def record_data_issues(conn, fp: pd.DataFrame) -> set[str]:
    """Store ``fp`` (new fingerprints), find their near-duplicates, regroup, and judge their quality; in the
    caller's transaction. Returns the sha256s whose group anchor changed (their split may change)."""
    from dc_pipeline.warehouse.io import append_rows

    if fp.empty:
        return set()
    now = datetime.now(UTC).replace(tzinfo=None)
    candidates = _candidates(conn, fp)
    append_rows(conn, T.FINGERPRINTS, fp[FINGERPRINT_COLUMNS])
    pairs = di.near_duplicate_pairs(fp, candidates)
    changed: dict[str, str] = {}
    if len(pairs):
        append_rows(conn, T.NEAR_DUPLICATES, pairs.assign(found_at=now))
        changed = _regroup(conn, pairs)
        if changed:
            delete_in(conn, T.NEAR_DUPLICATE_GROUPS, "sha256", changed)
            append_rows(
                conn,
                T.NEAR_DUPLICATE_GROUPS,
                pd.DataFrame({"sha256": list(changed), "anchor": list(changed.values())}),
            )
    reference, typical = _reference(conn)
    issues = di.quality_issues(fp, reference, fp[["sha256", "source", "width", "height"]], typical)
    outliers = issues[issues["issue"] == OUTLIER]
    quality = issues[issues["issue"] != OUTLIER]
    if len(quality):
        append_rows(conn, T.QUALITY_ISSUES, quality[["sha256", "issue", "score", "detail"]].assign(found_at=now))
    if len(outliers):
        append_rows(conn, T.OUTLIERS, outliers[["sha256", "score", "detail"]].assign(found_at=now))
    return set(changed)


def straddling_pairs(conn, audited: pd.DataFrame, split_of: Callable[[set[str]], dict[str, str]]) -> pd.DataFrame:
    """Near-duplicate pairs with an image among ``audited`` (sha256, split: the images a version's audit covers)
    whose two images are members of the version in different splits: a leak of the picture across splits.
    ``split_of(shas)`` gives the version's split of each of ``shas`` that is a member."""
    shas = set(audited["sha256"])
    found = [
        select_in(conn, f"SELECT sha256_a, sha256_b, hamming, distance FROM {T.NEAR_DUPLICATES} WHERE TRUE", c, shas)
        for c in ("sha256_a", "sha256_b")
    ]
    pairs = pd.concat(found, ignore_index=True).drop_duplicates(["sha256_a", "sha256_b"])
    if pairs.empty:
        return pairs.assign(split_a=pd.Series(dtype=str), split_b=pd.Series(dtype=str))
    splits = split_of(set(pairs["sha256_a"]) | set(pairs["sha256_b"]))
    pairs = pairs.assign(split_a=pairs["sha256_a"].map(splits), split_b=pairs["sha256_b"].map(splits))
    both = pairs["split_a"].notna() & pairs["split_b"].notna()
    return pairs[both & (pairs["split_a"] != pairs["split_b"])].reset_index(drop=True)


def newest_findings(conn) -> dict[str, pd.DataFrame]:
    """The findings about the images fingerprinted most recently (the newest features run that met new images):
    ``images`` (their fingerprints), ``near_duplicates``, ``quality`` and ``outliers``."""
    latest = f"(SELECT sha256 FROM {T.FINGERPRINTS} WHERE fingerprinted_at = (SELECT max(fingerprinted_at) FROM {T.FINGERPRINTS}))"
    return {
        "images": conn.execute(f"SELECT sha256, thumb, source FROM {T.FINGERPRINTS} WHERE sha256 IN {latest}").df(),
        "near_duplicates": conn.execute(
            f"SELECT * FROM {T.NEAR_DUPLICATES} WHERE sha256_a IN {latest} OR sha256_b IN {latest} "
            "ORDER BY distance, sha256_a"
        ).df(),
        "quality": conn.execute(
            f"SELECT * FROM {T.QUALITY_ISSUES} WHERE sha256 IN {latest} ORDER BY score DESC, sha256"
        ).df(),
        "outliers": conn.execute(
            f"SELECT * FROM {T.OUTLIERS} WHERE sha256 IN {latest} ORDER BY score DESC, sha256"
        ).df(),
    }


def thumbnails(conn, shas: list[str]) -> dict[str, np.ndarray]:
    """The stored thumbnails (``FINGERPRINT_SIZE`` square, in [0, 1]) of ``shas``."""
    rows = select_in(conn, f"SELECT sha256, thumb FROM {T.FINGERPRINTS} WHERE TRUE", "sha256", shas)
    size = di.FINGERPRINT_SIZE
    return {
        s: np.frombuffer(bytes(t), np.uint8).reshape(size, size).astype(np.float32) / 255.0
        for s, t in zip(rows["sha256"], rows["thumb"])
    }
