"""Retention: which dataset versions and artifacts are kept, and pruning the rest.

Kept, whatever the policy: the published version, versions staged for their audit, the newest version
written (the head, which the next one is computed from), and every version a registered model was trained
on (so ``dc-pipeline reproduce`` and ``load_split(dataset_hash=...)`` keep working for every model). Of the
others, the ``keep_last`` newest and those younger than ``keep_days`` are kept. Pruning a version of a Lance
store deletes its tag and then the Lance versions no tag names (their manifests and the fragments and
deletion files only they used); pixels are shared by every version and stay. A version of the npy format
of releases before 0.3 is a folder of its own, removed whole.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from dc_pipeline.core.storage import Location, as_location

KEEP, PRUNE = "keep", "prune"


@dataclass(frozen=True)
class RetentionRule:
    keep_last: int
    keep_days: float
    report_days: float


def plan_versions(
    versions: pd.DataFrame, referenced: set[str], head: str | None, rule: RetentionRule, now: datetime
) -> pd.DataFrame:
    """Per dataset version (rows of ``features.dataset_versions`` not pruned yet): ``action`` keep or prune
    and ``why``. ``referenced``: hashes registered models were trained on."""
    out = versions[["dataset_hash", "format", "status", "is_current", "created_at", "path"]].copy()
    out = out.sort_values("created_at", ascending=False).reset_index(drop=True)
    newest = set(out["dataset_hash"].head(max(rule.keep_last, 0)))
    cutoff = now - timedelta(days=rule.keep_days)
    actions, whys = [], []
    for row in out.itertuples(index=False):
        reasons = []
        if row.status == "published" and row.is_current:
            reasons.append("published (current)")
        if row.status == "staged":
            reasons.append("staged for its audit")
        if row.dataset_hash == head:
            reasons.append("newest written (head)")
        if row.dataset_hash in referenced:
            reasons.append("a registered model was trained on it")
        if row.dataset_hash in newest:
            reasons.append(f"among the {rule.keep_last} newest")
        if pd.Timestamp(row.created_at) >= pd.Timestamp(cutoff):
            reasons.append(f"younger than {rule.keep_days:g} days")
        actions.append(KEEP if reasons else PRUNE)
        whys.append("; ".join(reasons) or "none of the keep rules applies")
    out["action"], out["why"] = actions, whys
    return out


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links are not followed)."""
    if not path.is_dir() or path.is_symlink():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def npy_folder(datasets_root: Path, dataset_hash: str) -> Path | None:
    """The npy folder of ``dataset_hash`` when it is a real folder directly under ``datasets_root``."""
    from dc_pipeline.core.data.features import DatasetVersion

    folder = DatasetVersion(datasets_root, dataset_hash).folder
    return folder if folder.is_dir() and not folder.is_symlink() else None


def prune_versions(
    datasets_root: str | Path | Location, hashes: list[str], protect: dict[int, set[int]] | None = None
) -> dict[str, int]:
    """Remove the dataset versions ``hashes`` from the datasets folder: npy folders, Lance tags, then the
    Lance versions no tag names, except those in ``protect`` (image size -> Lance versions: the head's,
    which the next features run starts from). Pixels are never compacted or deleted: a row's position is
    what ``features.pixel_rows`` records. Returns what was removed."""
    from dc_pipeline.core.data.dataset_store import lance_stores

    root = as_location(datasets_root)
    stats = {"npy_folders": 0, "lance_tags": 0, "lance_versions": 0, "bytes_removed": 0}
    wanted = set(hashes)
    for h in sorted(wanted) if not root.is_s3 else []:  # npy folders predate object storage
        folder = npy_folder(root.local_path(), h)
        if folder is not None:
            stats["bytes_removed"] += folder_bytes(folder)
            shutil.rmtree(folder)
            stats["npy_folders"] += 1
    for store in lance_stores(root):
        import lance

        ds = lance.dataset(store.members_uri, storage_options=store.storage_options)
        dropped = [t for t in ds.tags.list() if t in wanted]
        for tag in dropped:
            ds.tags.delete(tag)
        stats["lance_tags"] += len(dropped)
        members = store.folder / "members.lance"
        before = members.total_bytes()
        ds = lance.dataset(store.members_uri, storage_options=store.storage_options)
        keep = {int(info["version"]) for info in ds.tags.list().values()} | set(
            (protect or {}).get(store.image_size, ())
        )
        doomed = [int(v["version"]) for v in ds.versions() if int(v["version"]) not in keep]
        if doomed:
            cleaned = ds.cleanup_old_versions(
                older_than=timedelta(0), error_if_tagged_old_versions=False, versions=doomed
            )
            stats["lance_versions"] += int(cleaned.old_versions)
        stats["bytes_removed"] += max(before - members.total_bytes(), 0)
    return stats


def prunable_lance_versions(
    datasets_root: str | Path | Location, keep: set[str], protect: dict[int, set[int]] | None = None
) -> dict[str, int]:
    """What pruning would remove from the Lance stores if only the tags in ``keep`` stayed: tags and Lance
    versions (tagged versions stay, as do ``protect``'s and each store's latest)."""
    from dc_pipeline.core.data.dataset_store import lance_stores

    out = {"lance_tags": 0, "lance_versions": 0}
    for store in lance_stores(as_location(datasets_root)):
        import lance

        ds = lance.dataset(store.members_uri, storage_options=store.storage_options)
        tags = ds.tags.list()
        kept_versions = {int(info["version"]) for name, info in tags.items() if name in keep}
        kept_versions.add(int(ds.latest_version))
        kept_versions |= set((protect or {}).get(store.image_size, ()))
        out["lance_tags"] += sum(1 for name in tags if name not in keep)
        out["lance_versions"] += sum(1 for v in ds.versions() if int(v["version"]) not in kept_versions)
    return out


def stale_reports(reports: str | Path, days: float, now: datetime) -> list[Path]:
    """Rendered drift reports (regular files) older than ``days``."""
    folder = Path(reports)
    if not folder.is_dir():
        return []
    cutoff = (now - timedelta(days=days)).timestamp()
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.lstat().st_mtime < cutoff)
