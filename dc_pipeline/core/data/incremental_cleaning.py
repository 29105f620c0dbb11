"""Cleaning batch by batch: a new batch costs what the batch costs.

A batch's records are read, decoded and checked once (``cleaning.validate_images`` /
``validate_reviews``); the records that pass wait in ``clean.candidates`` / ``clean.review_rows``. The
rules that span batches (record id conflicts, label conflicts, which copy of an image is kept, whether a
review names an accepted image) only relate records that share a sha256 or a (source, record id), so a
batch's outcome is recomputed over the closure of those keys, found by key lookups, and only those rows of ``clean.images``, ``clean.lineage``, ``clean.quarantine`` and ``clean.review_decisions`` are
replaced. Batches are cleaned again exactly when their raw delivery or a blocking gate verdict changes
(``clean.batches`` remembers what each was cleaned from), so the result does not depend on the order in
which batches arrive and equals :func:`rebuild`, the full repair operation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from dc_pipeline.catalog import T, raw_table
from dc_pipeline.core.data.cleaning import (
    CANDIDATE_COLUMNS,
    CROSS_BATCH_REASONS,
    DECISION_COLUMNS,
    IMAGE_COLUMNS,
    LINEAGE_COLUMNS,
    QUARANTINE_COLUMNS,
    REVIEW_ROW_COLUMNS,
    decide_reviews,
    resolve,
    validate_images,
    validate_reviews,
)
from dc_pipeline.core.data.contracts import Contracts
from dc_pipeline.core.data.images import ObjectStore

Batch = tuple[str, str]
Connect = Callable[[], AbstractContextManager]

IN_CHUNK = 1000  # keys up to which a lookup is an IN list (a filter pushed into the scan), above: a semi-join
CHUNK_ROWS = 50_000  # raw records cleaned per transaction at most (unless one batch is larger)


@dataclass
class CleaningRun:
    """What one cleaning run did."""

    seq: int | None = None
    cleaned: list[Batch] = field(default_factory=list)
    touched: set[Batch] = field(default_factory=set)
    changed_images: set[str] = field(default_factory=set)
    blocked: dict[Batch, str] = field(default_factory=dict)
    raw_rows: int = 0


# -- lookups -------------------------------------------------------------------------------------------------
def _chunks(values: Iterable, size: int = IN_CHUNK) -> Iterator[list]:
    items = sorted({v for v in values if v is not None and v == v})
    for i in range(0, len(items), size):
        yield items[i : i + size]


def select_in(conn, sql: str, column: str, values: Iterable, params: list | None = None) -> pd.DataFrame:
    """``sql`` (a SELECT ... FROM ... WHERE <conditions or TRUE>) restricted to ``column IN values``.

    Only the key column is scanned to find the rows (DuckDB pushes the filter into its columnar scan), then
    the matching rows are read: milliseconds per 100,000 rows of history. ART indexes were measured and
    dropped: DuckDB writes a table's whole index at every checkpoint, so the bytes a batch writes grew with
    the history (12 MB per 200-image batch at 100,000 images, against 0.6 MB without)."""
    keys = sorted({v for v in values if v is not None and v == v})
    if not keys:
        return conn.execute(f"{sql} AND FALSE", params or []).df()
    if len(keys) > IN_CHUNK:
        conn.register("_select_keys", pd.DataFrame({"k": keys}))
        try:
            return conn.execute(f"{sql} AND {column} IN (SELECT k FROM _select_keys)", params or []).df()
        finally:
            conn.unregister("_select_keys")
    return conn.execute(f"{sql} AND {column} IN ({', '.join('?' * len(keys))})", [*(params or []), *keys]).df()


def delete_in(conn, table: str, column: str, values: Iterable, where: str = "TRUE", params: list | None = None) -> None:
    keys = sorted({v for v in values if v is not None and v == v})
    if len(keys) > IN_CHUNK:
        conn.register("_delete_keys", pd.DataFrame({"k": keys}))
        try:
            conn.execute(
                f"DELETE FROM {table} WHERE {where} AND {column} IN (SELECT k FROM _delete_keys)", params or []
            )
        finally:
            conn.unregister("_delete_keys")
    elif keys:
        conn.execute(
            f"DELETE FROM {table} WHERE {where} AND {column} IN ({', '.join('?' * len(keys))})",
            [*(params or []), *keys],
        )


def _by_source(batches: Iterable[Batch]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for source, batch in sorted(set(batches)):
        out.setdefault(source, []).append(batch)
    return out


def _select_batches(conn, table: str, columns: str, batches: Iterable[Batch]) -> pd.DataFrame:
    frames = [
        select_in(conn, f"SELECT {columns} FROM {table} WHERE source = ?", "batch_id", ids, [source])
        for source, ids in _by_source(batches).items()
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return conn.execute(f"SELECT {columns} FROM {table} LIMIT 0").df()
    return pd.concat(frames, ignore_index=True)


def _delete_batches(conn, table: str, batches: Iterable[Batch]) -> None:
    for source, ids in _by_source(batches).items():
        delete_in(conn, table, "batch_id", ids, "source = ?", [source])


def _insert(conn, table: str, df: pd.DataFrame) -> None:
    from dc_pipeline.warehouse.io import append_rows

    if len(df):
        append_rows(conn, table, df)


def _table_exists(conn, table: str) -> bool:
    from dc_pipeline.warehouse.io import table_exists

    return table_exists(conn, table)


# -- which batches need cleaning -----------------------------------------------------------------------------
Stamp = tuple[object, object]  # (latest raw observation, latest gate verdict) of a batch


def batch_stamps(conn, sources: list[str]) -> dict[Batch, tuple[Stamp, int]]:
    """Per batch of ``sources``: when its latest raw delivery and its latest blocking gate verdict were
    written, and its record count. One row per batch observation is read, never the records."""
    if not sources:
        return {}
    marks = ", ".join("?" * len(sources))
    rows = conn.execute(
        f"SELECT source, batch_id, max(observed_at), arg_max(record_count, observed_at) "
        f"FROM {T.SCHEMA_HISTORY} WHERE source IN ({marks}) GROUP BY ALL",
        sources,
    ).fetchall()
    gates = {
        (s, b): at
        for s, b, at in conn.execute(
            f"SELECT source, batch_id, max(evaluated_at) FROM {T.BATCH_GATE} WHERE source IN ({marks}) GROUP BY ALL",
            sources,
        ).fetchall()
    }
    return {(s, b): ((observed, gates.get((s, b))), int(n or 0)) for s, b, observed, n in rows}


def pending_batches(conn, sources: list[str]) -> dict[Batch, tuple[Stamp, int]]:
    """The batches whose raw delivery or gate verdicts changed since cleaning last took them in."""
    stamps = batch_stamps(conn, sources)
    seen = {
        (s, b): (observed, gate)
        for s, b, observed, gate in conn.execute(
            f"SELECT source, batch_id, raw_observed_at, gate_evaluated_at FROM {T.CLEANED_BATCHES}"
        ).fetchall()
    }
    return {k: v for k, v in sorted(stamps.items()) if seen.get(k) != v[0]}


def blocked_batches(conn, batches: Iterable[Batch]) -> dict[Batch, str]:
    """Of ``batches``, those without a recorded pass of every blocking batch check, with the reason. Fail
    closed: a check that failed, raised or never ran keeps its batch out."""
    from dc_pipeline.core.data.ingestion import BLOCKING_BATCH_CHECKS

    wanted = sorted(set(batches))
    verdicts: dict[tuple[str, str, str], tuple[bool, str]] = {}
    for source, ids in _by_source(wanted).items():
        rows = select_in(
            conn,
            f"SELECT source, batch_id, check_name, passed, detail FROM {T.BATCH_GATE} WHERE source = ?",
            "batch_id",
            ids,
            [source],
        )
        for s, b, c, p, d in rows.itertuples(index=False):
            verdicts[(s, b, c)] = (bool(p), d or "")
    out: dict[Batch, str] = {}
    for key in wanted:
        reasons = []
        for check in BLOCKING_BATCH_CHECKS:
            verdict = verdicts.get((*key, check))
            if verdict is None:
                reasons.append(f"{check}: check did not complete")
            elif not verdict[0]:
                reasons.append(f"{check} failed: {verdict[1]}")
        if reasons:
            out[key] = "; ".join(reasons)
    return out


def _chunked(pending: dict[Batch, tuple[Stamp, int]], budget: int = CHUNK_ROWS) -> Iterator[list[Batch]]:
    chunk: list[Batch] = []
    rows = 0
    for key, (_, n) in pending.items():
        if chunk and rows + n > budget:
            yield chunk
            chunk, rows = [], 0
        chunk.append(key)
        rows += n
    if chunk:
        yield chunk


def load_raw(conn, batches: list[Batch]) -> pd.DataFrame:
    """The raw records of ``batches`` only (a lookup by batch id in each source's raw table)."""
    frames = []
    for source, ids in _by_source(batches).items():
        if _table_exists(conn, raw_table(source)):
            frames.append(select_in(conn, f"SELECT * FROM {raw_table(source)} WHERE TRUE", "batch_id", ids))
    frames = [f for f in frames if len(f)]
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["source", "batch_id", "row_number"])
    )


# -- applying a chunk of image batches ------------------------------------------------------------------------
def _pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["source"], df["record_id"])) if len(df) else set()


def _rows_with_record_ids(conn, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    rows = select_in(conn, f"SELECT * FROM {T.CANDIDATES} WHERE TRUE", "record_id", {r for _, r in pairs})
    if len(rows):
        rows = rows[[(s, r) in pairs for s, r in zip(rows["source"], rows["record_id"])]]
    return rows


def apply_image_batches(
    conn, batches: list[Batch], candidates: pd.DataFrame, rejected: pd.DataFrame
) -> tuple[set[str], set[Batch]]:
    """Replace ``batches``' records and re-resolve the images they share keys with. Returns the sha256s
    whose rows were recomputed and the batches whose rows may have changed."""
    old = _select_batches(conn, T.CANDIDATES, "source, batch_id, record_id, image_sha256", batches)
    for table in (T.CANDIDATES, T.QUARANTINE):
        _delete_batches(conn, table, batches)
    _insert(conn, T.CANDIDATES, candidates[CANDIDATE_COLUMNS])
    _insert(conn, T.QUARANTINE, rejected[QUARANTINE_COLUMNS])

    seeds = pd.concat([old, candidates[old.columns]], ignore_index=True)
    groups = _pairs(seeds)
    shas = set(seeds["image_sha256"]) | set(_rows_with_record_ids(conn, groups)["image_sha256"])
    by_sha = select_in(conn, f"SELECT * FROM {T.CANDIDATES} WHERE TRUE", "image_sha256", shas)
    closure = pd.concat([by_sha, _rows_with_record_ids(conn, _pairs(by_sha))], ignore_index=True)
    closure = closure.drop_duplicates(["source", "batch_id", "row_number"])
    result = resolve(closure)

    touched = set(batches)
    for table, column in ((T.LINEAGE, "sha256"), (T.QUARANTINE, "image_sha256")):
        before = select_in(conn, f"SELECT DISTINCT source, batch_id FROM {table} WHERE TRUE", column, shas)
        touched |= set(zip(before["source"], before["batch_id"]))
    for table in (T.CLEAN_IMAGES, T.LINEAGE):
        _delete_batches(conn, table, batches)
        delete_in(conn, table, "sha256", shas)
    marks = ", ".join("?" * len(CROSS_BATCH_REASONS))
    delete_in(conn, T.QUARANTINE, "image_sha256", shas, f"reason IN ({marks})", list(CROSS_BATCH_REASONS))

    images = result.images[result.images["sha256"].isin(shas)]
    lineage = result.lineage[result.lineage["sha256"].isin(shas)]
    conflicts = result.quarantine[result.quarantine["image_sha256"].isin(shas)]
    _insert(conn, T.CLEAN_IMAGES, images[IMAGE_COLUMNS])
    _insert(conn, T.LINEAGE, lineage[LINEAGE_COLUMNS])
    _insert(conn, T.QUARANTINE, conflicts[QUARANTINE_COLUMNS])
    for frame in (lineage, conflicts):
        touched |= set(zip(frame["source"], frame["batch_id"]))
    return shas, touched


def apply_review_batches(
    conn, batches: list[Batch], review_rows: pd.DataFrame, rejected: pd.DataFrame, changed_images: set[str]
) -> tuple[set[str], set[Batch]]:
    """Replace ``batches``' review records and decide again every review of an image they name or whose
    acceptance changed (``changed_images``). Returns the images whose decisions were recomputed and the
    review batches whose rows may have changed."""
    old = _select_batches(conn, T.REVIEW_ROWS, "image_sha256", batches)
    for table in (T.REVIEW_ROWS, T.REVIEW_DECISIONS, T.QUARANTINE):
        _delete_batches(conn, table, batches)
    _insert(conn, T.REVIEW_ROWS, review_rows[REVIEW_ROW_COLUMNS])
    _insert(conn, T.QUARANTINE, rejected[QUARANTINE_COLUMNS])

    shas = set(old["image_sha256"]) | set(review_rows["image_sha256"]) | set(changed_images)
    rows = select_in(conn, f"SELECT * FROM {T.REVIEW_ROWS} WHERE TRUE", "image_sha256", shas)
    if rows.empty:
        return set(), set(batches)
    known = set(select_in(conn, f"SELECT sha256 FROM {T.CLEAN_IMAGES} WHERE TRUE", "sha256", shas)["sha256"])
    decisions, undecided = decide_reviews(rows, known)
    keys = rows[["source", "batch_id", "row_number"]]
    conn.register("_review_keys", keys)
    try:
        delete_in(conn, T.REVIEW_DECISIONS, "sha256", shas)
        delete_in(
            conn,
            T.QUARANTINE,
            "image_sha256",
            shas,
            "(source, batch_id, row_number) IN (SELECT source, batch_id, row_number FROM _review_keys)",
        )
    finally:
        conn.unregister("_review_keys")
    _insert(conn, T.REVIEW_DECISIONS, decisions[DECISION_COLUMNS])
    _insert(conn, T.QUARANTINE, undecided[QUARANTINE_COLUMNS])
    return set(rows["image_sha256"]), set(batches) | set(zip(rows["source"], rows["batch_id"]))


# -- a cleaning run -------------------------------------------------------------------------------------------
def _record_run(
    conn,
    run: CleaningRun,
    cleaned: dict[Batch, tuple[Stamp, int]],
    kinds: dict[str, str],
    blocked: dict[Batch, str],
    raw_rows: dict[Batch, int],
    touched: set[Batch],
    changed: set[str],
    run_id: str,
) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    if run.seq is None:
        run.seq = int(conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM {T.CLEAN_CHANGES}").fetchall()[0][0])
    _insert(
        conn,
        T.CLEAN_CHANGES,
        pd.DataFrame({"seq": run.seq, "sha256": sorted(changed), "run_id": run_id, "changed_at": now}),
    )
    _delete_batches(conn, T.CLEANED_BATCHES, cleaned)
    _insert(
        conn,
        T.CLEANED_BATCHES,
        pd.DataFrame(
            [
                {
                    "source": s,
                    "batch_id": b,
                    "kind": kinds[s],
                    "raw_observed_at": stamp[0],
                    "gate_evaluated_at": stamp[1],
                    "blocked": blocked.get((s, b)),
                    "raw_rows": raw_rows.get((s, b), 0),
                    "cleaned_at": now,
                    "cleaned_run_id": run_id,
                    "touched_run_id": run_id,
                }
                for (s, b), (stamp, _) in cleaned.items()
            ]
        ),
    )
    for source, ids in _by_source(touched - set(cleaned)).items():
        for chunk in _chunks(ids):
            conn.execute(
                f"UPDATE {T.CLEANED_BATCHES} SET touched_run_id = ? WHERE source = ? "
                f"AND batch_id IN ({', '.join('?' * len(chunk))})",
                [run_id, source, *chunk],
            )


def clean_pending(
    connect: Connect,
    contracts: Contracts,
    store: ObjectStore,
    sources: list[str],
    review_sources: list[str],
    run_id: str,
    log: Callable[[str], None] = lambda _: None,
    only: Iterable[Batch] | None = None,
) -> CleaningRun:
    """Clean every batch whose delivery or gate verdicts changed since it was last cleaned (of ``only``, when
    given), chunk by chunk. Each chunk reads its raw records (one connection), checks and decodes them (none
    held), then writes its outcome in one transaction, so a crash leaves whole chunks cleaned and the rest
    pending."""
    kinds = {**dict.fromkeys(sources, "images"), **dict.fromkeys(review_sources, "reviews")}
    run = CleaningRun()
    with connect() as conn:
        pending = pending_batches(conn, [*sources, *review_sources])
    if only is not None:
        wanted = set(only)
        pending = {k: v for k, v in pending.items() if k in wanted}
    if len(pending) > 1:
        log(f"{len(pending)} batches to clean")
    for chunk in _chunked(pending):
        with connect() as conn:
            raw = load_raw(conn, chunk)
            blocked = blocked_batches(conn, chunk)
        is_review = raw["source"].isin(review_sources) if len(raw) else pd.Series([], dtype=bool)
        candidates, rejected = validate_images(raw[~is_review], contracts, store, blocked)
        review_rows, review_rejected = validate_reviews(raw[is_review], contracts, blocked)
        counts = raw.groupby(["source", "batch_id"]).size().to_dict() if len(raw) else {}
        with connect() as conn:
            from dc_pipeline.warehouse.io import transaction

            with transaction(conn):
                image_batches = [k for k in chunk if kinds[k[0]] == "images"]
                review_batches = [k for k in chunk if kinds[k[0]] == "reviews"]
                changed, touched = apply_image_batches(conn, image_batches, candidates, rejected)
                if review_sources:
                    decided, review_touched = apply_review_batches(
                        conn, review_batches, review_rows, review_rejected, changed
                    )
                    changed |= decided
                    touched |= review_touched
                _record_run(
                    conn,
                    run,
                    {k: pending[k] for k in chunk},
                    kinds,
                    blocked,
                    counts,
                    touched,
                    changed,
                    run_id,
                )
        run.cleaned += chunk
        run.touched |= touched
        run.changed_images |= changed
        run.blocked.update(blocked)
        run.raw_rows += len(raw)
    return run


def rebuild(
    connect: Connect,
    contracts: Contracts,
    store: ObjectStore,
    sources: list[str],
    review_sources: list[str],
    run_id: str,
    log: Callable[[str], None] = lambda _: None,
) -> CleaningRun:
    """The repair operation: forget every clean row and clean every batch again from the raw tables. Every
    image that had or has a clean row is recorded as changed, so the next dataset version sees them all."""
    with connect() as conn:
        before = set(conn.execute(f"SELECT sha256 FROM {T.CLEAN_IMAGES}").df()["sha256"])
        before |= set(conn.execute(f"SELECT DISTINCT sha256 FROM {T.REVIEW_DECISIONS}").df()["sha256"])
        for table in (
            T.CLEAN_IMAGES,
            T.LINEAGE,
            T.QUARANTINE,
            T.REVIEW_DECISIONS,
            T.CANDIDATES,
            T.REVIEW_ROWS,
            T.CLEANED_BATCHES,
        ):
            conn.execute(f"DELETE FROM {table}")
    log(f"rebuilding clean data from the raw tables ({len(before)} images had clean rows)")
    run = clean_pending(connect, contracts, store, sources, review_sources, run_id, log)
    gone = before - run.changed_images
    if gone:
        with connect() as conn:
            if run.seq is None:
                run.seq = int(conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM {T.CLEAN_CHANGES}").fetchall()[0][0])
            _insert(
                conn,
                T.CLEAN_CHANGES,
                pd.DataFrame(
                    {
                        "seq": run.seq,
                        "sha256": sorted(gone),
                        "run_id": run_id,
                        "changed_at": datetime.now(UTC).replace(tzinfo=None),
                    }
                ),
            )
        run.changed_images |= gone
    return run


# -- what the checks read -------------------------------------------------------------------------------------
def touched_in_run(conn, run_id: str) -> list[Batch]:
    """The batches whose clean rows the run ``run_id`` may have changed."""
    rows = conn.execute(
        f"SELECT source, batch_id FROM {T.CLEANED_BATCHES} WHERE touched_run_id = ? ORDER BY ALL", [run_id]
    ).fetchall()
    return [(s, b) for s, b in rows]


def _count_by_batch(conn, table: str, batches: list[Batch] | None, extra: str = "") -> pd.DataFrame:
    columns = f"source, batch_id{extra}"
    if batches is None:
        return conn.execute(f"SELECT {columns} FROM {table}").df()
    return _select_batches(conn, table, columns, batches)


def batch_accounting(conn, sources: list[str], batches: list[Batch] | None = None) -> pd.DataFrame:
    """Per batch (all when ``batches`` is None): records in the manifest, raw rows, accepted, duplicates
    and quarantined, and whether they balance; ``unlabelled``: of the accepted records and duplicates, those
    delivered without a label (accounted like any other). A refused batch has no raw rows: its records are refused."""
    rows = _count_by_batch(conn, T.SCHEMA_HISTORY, batches, ", record_count, status, observed_at")
    history = (
        rows.sort_values("observed_at")
        .groupby(["source", "batch_id"], as_index=False)
        .last()
        .rename(columns={"record_count": "manifest_records"})[["source", "batch_id", "manifest_records", "status"]]
    )
    raw = [
        _count_by_batch(conn, raw_table(s), None if batches is None else [b for b in batches if b[0] == s])
        for s in sources
        if _table_exists(conn, raw_table(s))
    ]
    frames = {
        "raw_rows": pd.concat(raw, ignore_index=True) if raw else pd.DataFrame(columns=["source", "batch_id"]),
        "lineage": _count_by_batch(conn, T.LINEAGE, batches, ", role, label IS NULL AS unlabelled"),
        "decisions": _count_by_batch(conn, T.REVIEW_DECISIONS, batches),
        "quarantined": _count_by_batch(conn, T.QUARANTINE, batches),
    }

    def counted(df: pd.DataFrame, name: str) -> pd.DataFrame:
        return df.groupby(["source", "batch_id"]).size().rename(name).reset_index()

    lineage = frames["lineage"]
    accepted = pd.concat(
        [counted(lineage[lineage["role"] == "kept"], "accepted"), counted(frames["decisions"], "accepted")]
    )
    table = (
        history.merge(counted(frames["raw_rows"], "raw_rows"), how="outer")
        .merge(accepted.groupby(["source", "batch_id"], as_index=False).sum(), how="outer")
        .merge(counted(lineage[lineage["role"] == "duplicate"], "duplicates"), how="outer")
        .merge(counted(frames["quarantined"], "quarantined"), how="outer")
        .merge(counted(lineage[lineage["unlabelled"].astype(bool)], "unlabelled"), how="outer")
    )
    table["refused"] = (table["status"] == "refused").fillna(False).astype(bool)
    table["status"] = table["status"].fillna("unknown")
    for col in ("manifest_records", "raw_rows", "accepted", "duplicates", "quarantined", "unlabelled"):
        table[col] = table[col].fillna(0).astype(int)
    taken = table["accepted"] + table["duplicates"] + table["quarantined"]
    table["balanced"] = (table["refused"] & (table["raw_rows"] == 0) & (taken == 0)) | (
        ~table["refused"] & (table["manifest_records"] == table["raw_rows"]) & (table["manifest_records"] == taken)
    )
    return table.sort_values(["source", "batch_id"]).reset_index(drop=True)


def global_balance(conn, sources: list[str]) -> dict[str, int]:
    """Table totals (counts, no rows read): every raw record of the batches cleaning has taken in (their raw
    rows as cleaning counted them) is in the lineage, the accepted decisions or the quarantine exactly once.
    Raw rows of batches not cleaned yet (another run landed them on a shared warehouse and its cleaning
    step waits for the pool) are reported as awaiting cleaning, never as lost; fewer raw rows than cleaning
    counted is a difference."""

    def count(table: str) -> int:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    raw = sum(count(raw_table(s)) for s in sources if _table_exists(conn, raw_table(s)))
    cleaned = int(conn.execute(f"SELECT coalesce(sum(raw_rows), 0) FROM {T.CLEANED_BATCHES}").fetchall()[0][0])
    placed = count(T.LINEAGE) + count(T.REVIEW_DECISIONS) + count(T.QUARANTINE)
    awaiting = raw - cleaned
    return {
        "raw_records": raw,
        "awaiting_cleaning": max(awaiting, 0),
        "placed_records": placed,
        "difference": (cleaned - placed) + min(awaiting, 0),
    }


def changed_images_in_run(conn, run_id: str) -> pd.DataFrame:
    """The clean.images rows of the images the run ``run_id`` recomputed."""
    shas = conn.execute(f"SELECT DISTINCT sha256 FROM {T.CLEAN_CHANGES} WHERE run_id = ?", [run_id]).df()["sha256"]
    return select_in(conn, f"SELECT * FROM {T.CLEAN_IMAGES} WHERE TRUE", "sha256", shas)
