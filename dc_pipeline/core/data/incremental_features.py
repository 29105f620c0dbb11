"""Features batch by batch: the next dataset version from the images cleaning changed since the head.

The head (``features.head``) is the newest version written: its hash, settings, Lance version and the last
``clean.changes`` seq it contains; ``features.members`` holds its membership. A run reads the sha256s of the
changes after that seq, computes their target membership (the ``clean.images`` row with the latest review
decision applied, the split from the content hash), diffs it against their head rows, stores the pixels of
images it has not stored yet, writes the next members version (delete + append) and records it in one
warehouse transaction. Only with no head, or new settings, is the membership built from all of
``clean.images`` (a rebuild: once after an upgrade, or when the image size, salt or shares change).

Crash consistency: Lance is written first, then the warehouse in one transaction. A run that died in between
left a members version the warehouse does not know: the next run restores the head's version first. Pixels
it appended are reused when the same image comes again, or left unused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from dc_pipeline.catalog import T
from dc_pipeline.core.data.dataset_store import (
    MEMBER_COLUMNS,
    DatasetStore,
    MembershipDiff,
    frame_sum,
    membership_diff,
    version_hash,
)
from dc_pipeline.core.data.features import SPLITS, STAT_COLUMNS, split_of
from dc_pipeline.core.data.incremental_cleaning import select_in

STAGED, PUBLISHED, REJECTED, SUPERSEDED = "staged", "published", "rejected", "superseded"
SPLIT_RULE = "near-duplicate-group-anchor"
"""How a member's split is drawn: from its near-duplicate group's anchor (its own sha256 when alone). A head
written under another rule (releases before 0.4: the image's own sha256) is rebuilt once."""
IN_CHUNK = 1000
Connect = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class SplitSettings:
    """What a dataset version is built with; a change of any of them rebuilds the membership."""

    image_size: int
    split_salt: str
    val_share: float
    test_share: float

    split_rule: str = SPLIT_RULE

    def differs_from(self, head: dict) -> list[str]:
        return [
            name
            for name in ("image_size", "split_salt", "val_share", "test_share", "split_rule")
            if head.get(name) is None or head[name] != getattr(self, name)
        ]


@dataclass
class FeaturesRun:
    """What one features run did."""

    dataset_hash: str | None = None
    parent_hash: str | None = None
    store: str = ""
    rebuild_reason: str | None = None
    wrote_store: bool = False
    new_version: bool = False
    status: str | None = None
    clean_seq: int = 0
    touched: int = 0
    fingerprinted: int = 0
    added: int = 0
    removed: int = 0
    relabelled: int = 0
    updated: int = 0
    pixels_written: int = 0
    n_images: int = 0
    class_counts: dict = field(default_factory=dict)
    decisions: dict = field(default_factory=dict)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def split_counts(self) -> dict[str, int]:
        return {s: int(sum(self.class_counts.get(s, {}).values())) for s in SPLITS}


# -- lookups ---------------------------------------------------------------------------------------------------
def _chunks(values: Iterable, size: int = IN_CHUNK) -> Iterator[list]:
    items = sorted({v for v in values if v is not None and v == v})
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_head(conn) -> dict | None:
    head = conn.execute(f"SELECT * FROM {T.DATASET_HEAD} ORDER BY updated_at DESC LIMIT 1").df()
    return None if head.empty else head.iloc[0].to_dict()


def _published(conn) -> str | None:
    from dc_pipeline.warehouse.queries import published_dataset_hash

    return published_dataset_hash(conn)


# -- membership ------------------------------------------------------------------------------------------------
def target_members(
    images: pd.DataFrame, decisions: pd.DataFrame, settings: SplitSettings, anchors: dict[str, str] | None = None
) -> pd.DataFrame:
    """The dataset's rows for ``images`` (rows of clean.images): the latest review decision per image applied
    (exclude: not a member; relabel or label: the new label). An image without a label (unlabelled production
    data no labeller has answered yet) is not a member. The split is drawn from the content hash, or from the
    near-duplicate group's anchor (``anchors``: sha256 -> anchor) so that a group never straddles splits."""
    from dc_pipeline.core.data.cleaning import latest_decisions
    from dc_pipeline.core.data.contracts import LABELLING_DECISIONS

    applied = (
        latest_decisions(decisions) if len(decisions) else pd.DataFrame(columns=["sha256", "decision", "new_label"])
    )
    excluded = set(applied.loc[applied["decision"] == "exclude", "sha256"])
    labelling = applied[applied["decision"].isin(LABELLING_DECISIONS)]
    new_label = dict(zip(labelling["sha256"], labelling["new_label"]))
    how = dict(zip(labelling["sha256"], labelling["decision"]))
    out = images[~images["sha256"].isin(excluded)].copy()
    labels = [new_label.get(s, v) for s, v in zip(out["sha256"], out["label"])]
    labelled = np.asarray([v is not None and v is not pd.NA and v == v for v in labels], bool)
    out = out[labelled].copy()
    out["label"] = np.asarray([int(v) for v, ok in zip(labels, labelled) if ok], np.int64)
    out["decision"] = pd.array([how.get(s) for s in out["sha256"]], dtype="string")
    anchor = anchors or {}
    out["split"] = [
        split_of(anchor.get(s, s), settings.split_salt, settings.val_share, settings.test_share) for s in out["sha256"]
    ]
    return out.sort_values("sha256", ignore_index=True)


def normalized_counts(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """``{split: {label: n}}`` as the versions record it: splits with images, in split order, each with every
    label any split has (zeros included), labels in numeric order."""
    labels = sorted({lab for s in counts.values() for lab, n in s.items() if n > 0}, key=int)
    return {
        s: {lab: int(counts.get(s, {}).get(lab, 0)) for lab in labels}
        for s in SPLITS
        if sum(counts.get(s, {}).values()) > 0
    }


def class_counts(rows: pd.DataFrame, start: dict | None = None, sign: int = 1) -> dict[str, dict[str, int]]:
    out = {s: dict(v) for s, v in (start or {}).items()}
    for (split, label), n in rows.groupby(["split", "label"]).size().items():
        inner = out.setdefault(str(split), {})
        inner[str(int(label))] = inner.get(str(int(label)), 0) + sign * int(n)
    return out


def counts_after(parent: dict, diff: MembershipDiff) -> dict[str, dict[str, int]]:
    """The parent's class counts with the diff applied: O(batch)."""
    counts = class_counts(diff.removed, parent, -1)
    counts = class_counts(
        diff.changed.assign(label=diff.changed["previous_label"], split=diff.changed["previous_split"]), counts, -1
    )
    counts = class_counts(diff.added, counts)
    return normalized_counts(class_counts(diff.changed, counts))


def _batches(rows: pd.DataFrame) -> set[str]:
    return {f"{s}/{b}" for s, b in zip(rows["source"], rows["batch_id"])}


# -- a features run --------------------------------------------------------------------------------------------
def _decision_counts(conn) -> dict[str, int]:
    """Review decisions in force on accepted images (the latest per image, as ``latest_decisions`` orders
    them): what the version applied. One SQL aggregate; no decision is read into memory."""
    rows = conn.execute(
        f"SELECT decision, count(*) FROM (SELECT sha256, decision, row_number() OVER (PARTITION BY sha256 "
        f"ORDER BY decided_at DESC, batch_id DESC, row_number DESC) AS latest FROM {T.REVIEW_DECISIONS}) "
        f"WHERE latest = 1 AND sha256 IN (SELECT sha256 FROM {T.CLEAN_IMAGES}) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {str(k): int(v) for k, v in rows}


def _load_pixels(objects, size: int) -> Callable[[list[str]], np.ndarray]:
    """Canonical arrays of stored images, decoded on every core for a large batch."""
    from dc_pipeline.core.data.images import canonical_stored
    from dc_pipeline.core.parallel import map_chunks

    def load(shas: list[str]) -> np.ndarray:
        parts = map_chunks(canonical_stored, list(shas), str(objects.root), size)
        return np.concatenate(parts) if parts else np.zeros((0, size, size), np.float32)

    return load


def _pixel_figures(x: np.ndarray) -> dict[str, np.ndarray]:
    flat = x.reshape(len(x), -1)
    return {"min": flat.min(axis=1), "max": flat.max(axis=1), "nan_count": np.isnan(flat).sum(axis=1)}


def write_features(
    connect: Connect,
    objects,
    datasets_root: str | Path,
    settings: SplitSettings,
    code_label: str,
    relative: Callable[[Path], str],
    log: Callable[[str], None] = lambda _: None,
) -> FeaturesRun:
    """Write the next dataset version from the clean changes after the head (see the module docstring)."""
    from dc_pipeline.core.data.features import image_statistics
    from dc_pipeline.core.data.incremental_issues import (
        anchors_of,
        compute_fingerprints,
        missing_fingerprints,
        record_data_issues,
    )

    store = DatasetStore(datasets_root, settings.image_size)
    store_path = relative(store.folder)
    run = FeaturesRun(store=store_path)
    with connect() as conn:
        head = read_head(conn)
        latest_seq = int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {T.CLEAN_CHANGES}").fetchall()[0][0])
        reason = None
        if head is None:
            reason = "no head version yet (first run, or a data folder from before release 0.3)"
        elif differs := settings.differs_from(head):
            reason = f"settings changed: {', '.join(differs)}"
        elif head.get("store") != store_path or head.get("lance_version") is None:
            reason = f"the head's store {head.get('store')} is not {store_path}"
        elif not store.has_version(int(head["lance_version"])):
            reason = f"the head's members version {int(head['lance_version'])} is not in {store_path}"
        run.rebuild_reason, run.clean_seq = reason, latest_seq
        if reason is None and latest_seq <= int(head["clean_seq"] or 0):
            return _unchanged(conn, run, head)
        columns = "sha256, image_id, label, source, batch_id, device_id, width, height"
        if reason is None:
            touched = set(
                conn.execute(
                    f"SELECT DISTINCT sha256 FROM {T.CLEAN_CHANGES} WHERE seq > ? AND seq <= ?",
                    [int(head["clean_seq"] or 0), latest_seq],
                ).df()["sha256"]
            )
            images = select_in(conn, f"SELECT {columns} FROM {T.CLEAN_IMAGES} WHERE TRUE", "sha256", touched)
        else:
            images = conn.execute(f"SELECT {columns} FROM {T.CLEAN_IMAGES}").df()
            touched = set(images["sha256"])
            if images.empty:
                raise ValueError("clean.images is empty: nothing to build a dataset from")
        new_images = images[images["sha256"].isin(missing_fingerprints(conn, images["sha256"]))]
    # Data issues of the images not seen yet (decoded outside the transaction), then the membership, with the
    # split drawn from each image's near-duplicate group.
    fingerprints = compute_fingerprints(objects, new_images)
    with connect() as conn:
        regrouped = record_data_issues(conn, fingerprints) - touched
        if regrouped:
            log(f"{len(regrouped)} images joined a near-duplicate group with a new anchor: their split is redrawn")
            extra = select_in(conn, f"SELECT {columns} FROM {T.CLEAN_IMAGES} WHERE TRUE", "sha256", regrouped)
            images = pd.concat([images, extra], ignore_index=True)
            touched |= regrouped
        if reason is None:
            decisions = select_in(conn, f"SELECT * FROM {T.REVIEW_DECISIONS} WHERE TRUE", "sha256", touched)
            head_rows = select_in(conn, f"SELECT * FROM {T.HEAD_MEMBERS} WHERE TRUE", "sha256", touched)
            anchors = anchors_of(conn, touched)
        else:
            decisions = conn.execute(f"SELECT * FROM {T.REVIEW_DECISIONS}").df()
            head_rows = conn.execute(f"SELECT * FROM {T.HEAD_MEMBERS} LIMIT 0").df()
            anchors = dict(conn.execute(f"SELECT sha256, anchor FROM {T.NEAR_DUPLICATE_GROUPS}").fetchall())
        run.touched = len(touched)
        run.fingerprinted = len(fingerprints)
        target = target_members(images.drop(columns=["width", "height"]), decisions, settings, anchors)
        diff = membership_diff(target, head_rows)
        if reason is None and diff.empty:  # nothing the dataset sees changed: the head now covers these changes
            conn.execute(f"UPDATE {T.DATASET_HEAD} SET clean_seq = ?", [latest_seq])
            return _unchanged(conn, run, head)
        appended = diff.appended
        known = select_in(
            conn,
            f"SELECT sha256, row FROM {T.PIXEL_ROWS} WHERE image_size = ?",
            "sha256",
            appended["sha256"],
            [settings.image_size],
        )
        recorded = int(
            conn.execute(
                f"SELECT coalesce(max(row) + 1, 0) FROM {T.PIXEL_ROWS} WHERE image_size = ?", [settings.image_size]
            ).fetchall()[0][0]
        )
        parent = (
            conn.execute(f"SELECT * FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [head["dataset_hash"]]).df()
            if head is not None
            else pd.DataFrame()
        )
        run.decisions = _decision_counts(conn)

    # Pixels of the images the store lacks (decoded once per image and size), their figures and statistics.
    rows_of = dict(zip(known["sha256"], known["row"].astype("int64")))
    missing = [s for s in appended["sha256"] if s not in rows_of]
    meta = appended.set_index("sha256")
    pixel_frames, stat_frames = [], []
    now = datetime.now(UTC).replace(tzinfo=None)
    for shas, x, rows in store.write_pixels(missing, _load_pixels(objects, settings.image_size), recorded):
        rows_of.update(zip(shas, rows.tolist()))
        pixel_frames.append(
            pd.DataFrame(
                {"sha256": shas, "image_size": settings.image_size, "row": rows, **_pixel_figures(x), "written_at": now}
            )
        )
        stats = image_statistics(x)
        stats.insert(0, "sha256", shas)
        for col in ("image_id", "source", "batch_id", "device_id"):
            stats[col] = meta.loc[shas, col].to_numpy()
        stat_frames.append(stats.assign(image_size=settings.image_size))
    pixel_rows = pd.concat(pixel_frames, ignore_index=True) if pixel_frames else pd.DataFrame()
    run.stats = (
        pd.concat(stat_frames, ignore_index=True)
        if stat_frames
        else pd.DataFrame(columns=["sha256", *STAT_COLUMNS, "image_id", "source", "batch_id", "device_id"])
    )
    run.pixels_written = int(len(pixel_rows))
    appended = appended.assign(row=[rows_of[s] for s in appended["sha256"]])

    # The members version: the head's restored if a dead run wrote after it, then delete + append.
    if reason is None:
        if store.latest_version() != int(head["lance_version"]):
            log(
                f"members.lance is at version {store.latest_version()}, the head at {int(head['lance_version'])}: "
                "restoring the head's (a run died before recording what it wrote)"
            )
            store.restore(int(head["lance_version"]))
        lance_version, addresses = store.write_members(diff.dropped, appended)
        total = diff.content_sum(int(head["content_sum"], 16))
    else:
        lance_version, addresses = store.write_members(None, appended, overwrite=True)
        total = frame_sum(target)
    run.wrote_store = True
    dataset_hash = version_hash(settings.image_size, total)
    tagged = store.tag(dataset_hash, lance_version)
    run.dataset_hash = dataset_hash
    run.added, run.removed, run.relabelled, run.updated = (
        len(diff.added),
        len(diff.removed),
        len(diff.changed),
        len(diff.updated),
    )
    head_hash = head["dataset_hash"] if head is not None else None
    parent_row = parent.iloc[0].to_dict() if len(parent) else None
    if reason is None and parent_row is not None and parent_row.get("class_counts"):
        counts = counts_after(json.loads(parent_row["class_counts"]), diff)
    else:
        counts = normalized_counts(class_counts(target))
    run.class_counts = counts
    run.n_images = int(sum(run.split_counts.values()))
    run.parent_hash = head_hash if reason is None else None

    members = appended.assign(member_addr=[addresses[s] for s in appended["sha256"]])
    with connect() as conn:
        from dc_pipeline.warehouse.io import append_rows

        if len(pixel_rows):
            append_rows(conn, T.PIXEL_ROWS, pixel_rows)
        if len(run.stats):
            append_rows(conn, T.IMAGE_STATS, run.stats)
        if reason is None:
            for chunk in _chunks(diff.dropped["sha256"]):
                conn.execute(f"DELETE FROM {T.HEAD_MEMBERS} WHERE sha256 IN ({', '.join('?' * len(chunk))})", chunk)
        else:
            conn.execute(f"DELETE FROM {T.HEAD_MEMBERS}")
        if len(members):
            append_rows(conn, T.HEAD_MEMBERS, members[[*MEMBER_COLUMNS, "row", "decision", "member_addr"]])
        upstream = _upstream_batches(conn, parent_row if reason is None else None, diff, target)
        published = _published(conn)
        # A version named by the same hash before (a change undone) is staged again with this parent, unless it
        # is the published one, which stays as it was recorded.
        if dataset_hash not in (head_hash, published):
            conn.execute(f"DELETE FROM {T.DATASET_CHANGES} WHERE dataset_hash = ?", [dataset_hash])
            if reason is None and len(changes := _changes(diff, decisions, dataset_hash, run.parent_hash)):
                append_rows(conn, T.DATASET_CHANGES, changes)
            conn.execute(f"DELETE FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [dataset_hash])
            record = {
                "dataset_hash": dataset_hash,
                "created_at": now,
                "image_size": settings.image_size,
                "split_salt": settings.split_salt,
                "val_share": settings.val_share,
                "test_share": settings.test_share,
                "n_images": run.n_images,
                **{f"n_{s}": n for s, n in run.split_counts.items()},
                "class_counts": json.dumps(counts),
                "upstream_batches": json.dumps(upstream),
                "path": store_path,
                "code_version": code_label,
                "is_current": False,
                "relabelled": run.decisions.get("relabel", 0),
                "excluded": run.decisions.get("exclude", 0),
                "labelled": run.decisions.get("label", 0),
                "status": STAGED,
                "format": "lance",
                "lance_version": tagged,
                "content_sum": f"{total:064x}",
                "parent_hash": run.parent_hash,
                "clean_seq": latest_seq,
                "added": run.added,
                "removed": run.removed,
                "changed": run.relabelled,
            }
            append_rows(conn, T.DATASET_VERSIONS, pd.DataFrame([record]))
            run.new_version = True
        conn.execute(f"DELETE FROM {T.DATASET_HEAD}")
        append_rows(
            conn,
            T.DATASET_HEAD,
            pd.DataFrame(
                [
                    {
                        "dataset_hash": dataset_hash,
                        "image_size": settings.image_size,
                        "split_salt": settings.split_salt,
                        "val_share": settings.val_share,
                        "test_share": settings.test_share,
                        "store": store_path,
                        "lance_version": lance_version,
                        "clean_seq": latest_seq,
                        "content_sum": f"{total:064x}",
                        "updated_at": now,
                        "split_rule": settings.split_rule,
                    }
                ]
            ),
        )
        run.status = _status(conn, dataset_hash)
    return run


def _unchanged(conn, run: FeaturesRun, head: dict) -> FeaturesRun:
    """No new version: the run reports the head's."""
    run.dataset_hash = head["dataset_hash"]
    record = conn.execute(
        f"SELECT status, class_counts, parent_hash FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?",
        [run.dataset_hash],
    ).fetchall()
    if record:
        run.status, counts, run.parent_hash = record[0]
        run.class_counts = json.loads(counts) if counts else {}
        run.n_images = int(sum(run.split_counts.values()))
    run.decisions = _decision_counts(conn)
    return run


def _status(conn, dataset_hash: str) -> str | None:
    row = conn.execute(f"SELECT status FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [dataset_hash]).fetchall()
    return row[0][0] if row else None


def _upstream_batches(conn, parent: dict | None, diff: MembershipDiff, target: pd.DataFrame) -> list[str]:
    """The batches the version's images come from: the parent's, with the batches of the rows appended, less
    those whose last member this version dropped (counted in features.members, already updated)."""
    if parent is None or not parent.get("upstream_batches"):
        return sorted(_batches(target))
    batches = set(json.loads(parent["upstream_batches"])) | _batches(diff.appended)
    for name in sorted(_batches(diff.dropped) - _batches(diff.appended)):
        source, batch = name.split("/", 1)
        left = conn.execute(
            f"SELECT count(*) FROM {T.HEAD_MEMBERS} WHERE source = ? AND batch_id = ?", [source, batch]
        ).fetchall()[0][0]
        if not left:
            batches.discard(name)
    return sorted(batches)


def _changes(diff: MembershipDiff, decisions: pd.DataFrame, dataset_hash: str, parent: str | None) -> pd.DataFrame:
    from dc_pipeline.core.data.cleaning import latest_decisions

    applied = (
        latest_decisions(decisions) if len(decisions) else pd.DataFrame(columns=["sha256", "decision", "new_label"])
    )
    excluded = set(applied.loc[applied["decision"] == "exclude", "sha256"])
    frames = [
        pd.DataFrame(
            {
                "sha256": diff.added["sha256"],
                "change": "added",
                "label": diff.added["label"],
                "split": diff.added["split"],
                "decision": diff.added["decision"],
            }
        ),
        pd.DataFrame(
            {
                "sha256": diff.removed["sha256"],
                "change": "removed",
                "label": diff.removed["label"],
                "split": diff.removed["split"],
                "decision": ["exclude" if s in excluded else None for s in diff.removed["sha256"]],
            }
        ),
        pd.DataFrame(
            {
                "sha256": diff.changed["sha256"],
                "change": "relabelled",
                "label": diff.changed["label"],
                "split": diff.changed["split"],
                "previous_label": diff.changed["previous_label"],
                "decision": diff.changed["decision"],
            }
        ),
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).assign(dataset_hash=dataset_hash, parent_hash=parent)


# -- the audit's rows ------------------------------------------------------------------------------------------
def _passed(audit: str | None) -> bool:
    try:
        return bool(json.loads(audit)["passed"]) if audit else False
    except (ValueError, KeyError, TypeError):
        return False


def audit_scope(conn, meta: dict, max_chain: int = 1000) -> list[str] | None:
    """The versions whose changes the audit of ``meta`` must look at: its own and those of its ancestors back
    to the nearest that passed an audit (a rejected or never audited parent's changes are still unaudited).
    None: a version in that chain was built whole (no parent): audit the whole membership."""
    chain, row = [], meta
    while len(chain) < max_chain:
        chain.append(row["dataset_hash"])
        parent = row.get("parent_hash")
        if parent is None or parent != parent:
            return None
        found = conn.execute(f"SELECT * FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [parent]).df()
        if found.empty:
            return None
        row = found.iloc[0].to_dict()
        if _passed(row.get("audit")) or row.get("format") != "lance":
            return chain
    return None


def audit_rows(conn, datasets_root: str | Path, meta: dict) -> pd.DataFrame:
    """One row per member occurrence of the images the audit of Lance version ``meta`` covers (see
    ``audit_scope``): sha256, split and the pixel figures (min, max, NaN count) of the pixels as they are
    stored now, read back from the pixel store (NaN when an image has no pixels). A sha256 that occurs
    twice is an image in two rows of the version."""
    from dc_pipeline.core.data.dataset_store import open_version

    scope = audit_scope(conn, meta)
    size = int(meta["image_size"])
    head = read_head(conn)
    if scope is None:
        members = open_version(datasets_root, meta["dataset_hash"]).index()[["sha256", "split"]]
        figures = conn.execute(f"SELECT sha256, row FROM {T.PIXEL_ROWS} WHERE image_size = ?", [size]).df()
    else:
        shas = conn.execute(
            f"SELECT DISTINCT sha256 FROM {T.DATASET_CHANGES} WHERE change IN ('added', 'relabelled') "
            f"AND dataset_hash IN ({', '.join('?' * len(scope))})",
            scope,
        ).df()["sha256"]
        if head is not None and head["dataset_hash"] == meta["dataset_hash"]:
            members = select_in(conn, f"SELECT sha256, split FROM {T.HEAD_MEMBERS} WHERE TRUE", "sha256", shas)
        else:
            version = open_version(datasets_root, meta["dataset_hash"])
            index = version.index()
            members = index.loc[index["sha256"].isin(set(shas)), ["sha256", "split"]]
        figures = select_in(
            conn, f"SELECT sha256, row FROM {T.PIXEL_ROWS} WHERE image_size = ?", "sha256", shas, [size]
        )
    figures = stored_figures(DatasetStore(datasets_root, size), figures.drop_duplicates("sha256"))
    return members.merge(figures, on="sha256", how="left").reset_index(drop=True)


def stored_figures(store, rows: pd.DataFrame, chunk: int = 16384) -> pd.DataFrame:
    """Per image of ``rows`` (sha256, row): min, max and NaN count of its pixels read back from the store,
    ``chunk`` images at a time."""
    parts = []
    for lo in range(0, len(rows), chunk):
        part = rows.iloc[lo : lo + chunk]
        flat = store.pixels(part["row"].to_numpy(np.int64)).reshape(len(part), -1)
        parts.append(
            pd.DataFrame(
                {
                    "sha256": part["sha256"].to_numpy(),
                    "min": flat.min(axis=1, initial=np.inf),
                    "max": flat.max(axis=1, initial=-np.inf),
                    "nan_count": np.isnan(flat).sum(axis=1),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["sha256", "min", "max", "nan_count"])
    return pd.concat(parts, ignore_index=True)
