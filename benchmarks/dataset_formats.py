"""Dataset versions that share storage: Lance (``pylance``) against Delta Lake (``deltalake``) on our workload.

Needs both libraries, which the pipeline itself does not (yet) depend on:
``.venv/bin/pip install -c requirements.lock pylance deltalake`` (pylance 14.0.2 and deltalake 1.6.6 were
measured; neither moves a locked package). Run from the repository root: ``python benchmarks/dataset_formats.py``
(``--quick`` for a tiny run). The workload
is the model input of dc-pipeline: float32 ``[N, 28, 28]`` images in [0, 1] (sklearn's digits upsampled, with a
per-image jitter so every image is unique) plus per-image metadata (sha256, image_id, label, split, source,
batch_id). A dataset version is a set of (sha256, label, split) named by its content hash
(``features.dataset_hash``); consecutive versions alternate a landing batch (200 new images) and a review batch
(30 relabels, 5 exclusions). Each format is measured in two layouts:

- ``log``: an append-only image table (pixels and the image's fixed metadata, never rewritten) and a small
  append-only membership log (version seq, row, label, split; an exclusion is split ``excluded``). A version is
  the image table and the log as they stood when it was made; its labels are the last log entry of each row.
- ``inplace``: one table with the label and split beside the pixels; a review updates those rows in place
  (Lance ``merge_insert``, Delta ``MERGE``).

Measured side by side, the stores interleaved and medians taken: (a) seconds and bytes written (growth of the
store's folder) for one landing and one review version on top of each base size; (b) storage of the base plus
20 versions against full copies of every version (today's npy shards); (c) opening the oldest version by its
hash and reading its train split into numpy; (d) taking 256 random train rows for a training batch; (e) peak RSS
of a subprocess streaming the largest train split in batches of 256; (f) every version re-read by hash still
hashes to its name after later versions, and retention: drop the versions no model references, then compact,
checking what survives. The tables are printed and written to ``benchmarks/results/dataset_formats.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dc_pipeline.core.data.features import dataset_hash, split_of

RESULTS = Path(__file__).resolve().parent / "results" / "dataset_formats.md"
SIDE = 28
PIXELS = SIDE * SIDE
SOURCES = np.array(["field_app", "partner_api", "legacy_erp"])
SALT = "bench"
EXCLUDED = "excluded"
LANDING, RELABELS, EXCLUSIONS = 200, 30, 5
ROW_GROUP = 1024  # rows per row group for both formats (Lance's default; Delta's writer is told the same)
DELTA_CONFIG = {"delta.logRetentionDuration": "interval 36500 days"}  # time travel must not expire after 30 days


# ---------------------------------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------------------------------


def digit_templates() -> np.ndarray:
    from scipy import ndimage
    from sklearn.datasets import load_digits

    d = load_digits()
    return ndimage.zoom(d.images / 16.0, (1, 3.5, 3.5), order=1).clip(0, 1).astype(np.float32), d.target


@dataclass
class Batch:
    """New images in the order they land: ``row`` is the image's ordinal in the store (0, 1, ...)."""

    row: np.ndarray
    pixels: np.ndarray
    sha256: np.ndarray
    image_id: np.ndarray
    source: np.ndarray
    batch_id: np.ndarray
    label: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


def make_batch(templates, rng: np.random.Generator, start: int, n: int, batch_id: str) -> Batch:
    x, y = templates
    idx = rng.integers(0, len(x), n)
    pixels = x[idx] * rng.uniform(0.9, 1.0, (n, SIDE, SIDE)).astype(np.float32)  # zeros stay zero, all unique
    sha = np.array([hashlib.sha256(p.tobytes()).hexdigest() for p in pixels], dtype=object)
    return Batch(
        row=np.arange(start, start + n, dtype=np.int64),
        pixels=pixels,
        sha256=sha,
        image_id=np.array([f"{batch_id}-{i:06d}" for i in range(n)], dtype=object),
        source=SOURCES[rng.integers(0, len(SOURCES), n)].astype(object),
        batch_id=np.full(n, batch_id, dtype=object),
        label=y[idx].astype(np.int64),
        split=np.array([split_of(s, SALT) for s in sha], dtype=object),
    )


class Truth:
    """What every store must hold: labels and splits of every row, per version."""

    def __init__(self) -> None:
        self.sha = np.zeros(0, dtype=object)
        self.label = np.zeros(0, dtype=np.int64)
        self.split = np.zeros(0, dtype=object)
        self.pixels: list[np.ndarray] = []
        self.versions: list[tuple[str, np.ndarray, np.ndarray]] = []  # (hash, label, split) of rows 0..n-1

    def land(self, b: Batch) -> str:
        self.sha = np.concatenate([self.sha, b.sha256])
        self.label = np.concatenate([self.label, b.label])
        self.split = np.concatenate([self.split, b.split])
        self.pixels.append(b.pixels)
        return self._version()

    def review(self, rows: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> str:
        self.label[rows] = labels
        self.split[rows] = splits
        return self._version()

    def _version(self) -> str:
        live = self.split != EXCLUDED
        h = dataset_hash(list(self.sha[live]), list(self.label[live]), list(self.split[live]))
        self.versions.append((h, self.label.copy(), self.split.copy()))
        return h

    def expected(self, h: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, images, labels) of one split of version ``h``, rows ascending."""
        _, label, splits = next(v for v in self.versions if v[0] == h)
        rows = np.flatnonzero(splits == split)
        images = np.concatenate(self.pixels)
        return rows, images[rows], label[rows]


def review_batch(truth: Truth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    live = np.flatnonzero(truth.split != EXCLUDED)
    chosen = rng.choice(live, RELABELS + EXCLUSIONS, replace=False)
    rows = np.sort(chosen)
    labels = truth.label[rows].copy()
    splits = truth.split[rows].copy()
    relabel = np.isin(rows, chosen[:RELABELS])
    labels[relabel] = (labels[relabel] + rng.integers(1, 10, relabel.sum())) % 10
    splits[~relabel] = EXCLUDED
    return rows, labels, splits


def folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def image_table(b: Batch, with_labels: bool) -> pa.Table:
    cols = {
        "row": pa.array(b.row),
        "sha256": pa.array(b.sha256, pa.string()),
        "image_id": pa.array(b.image_id, pa.string()),
        "source": pa.array(b.source, pa.string()),
        "batch_id": pa.array(b.batch_id, pa.string()),
    }
    if with_labels:
        cols["label"] = pa.array(b.label)
        cols["split"] = pa.array(b.split, pa.string())
    cols["pixels"] = pa.FixedSizeListArray.from_arrays(pa.array(b.pixels.reshape(-1)), PIXELS)
    return pa.table(cols)


def log_table(seq: int, rows: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "seq": pa.array(np.full(len(rows), seq, dtype=np.int64)),
            "row": pa.array(rows.astype(np.int64)),
            "label": pa.array(labels.astype(np.int64)),
            "split": pa.array(splits, pa.string()),
        }
    )


def fold_log(log: pa.Table, split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last entry per row of a membership log -> (rows ascending, labels, splits) of the live rows (of ``split``)."""
    seq = log.column("seq").to_numpy()
    row = log.column("row").to_numpy()
    order = np.lexsort((seq, row))
    row_sorted = row[order]
    last = order[np.r_[row_sorted[1:] != row_sorted[:-1], True]]
    splits = log.column("split").to_numpy(zero_copy_only=False)[last]
    keep = splits != EXCLUDED if split is None else splits == split
    return row[last][keep], log.column("label").to_numpy()[last][keep], splits[keep]


def to_images(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy()
    return flat.reshape(-1, SIDE, SIDE)


def reorder(got_rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in ``got_rows`` of each ``wanted`` row (a filter returns rows in storage order)."""
    order = np.argsort(got_rows, kind="stable")
    return order[np.searchsorted(got_rows[order], wanted)]


# ---------------------------------------------------------------------------------------------------------------
# Stores: the same operations in each format and layout
# ---------------------------------------------------------------------------------------------------------------


class Store:
    fmt = ""
    layout = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seq = 0

    @property
    def name(self) -> str:
        return f"{self.fmt} {self.layout}"

    def create(self, b: Batch, h: str) -> None:
        raise NotImplementedError

    def land(self, b: Batch, h: str) -> None:
        raise NotImplementedError

    def review(self, rows: np.ndarray, labels: np.ndarray, splits: np.ndarray, h: str) -> None:
        raise NotImplementedError

    def members(self, h: str, split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows ascending, labels, splits) of version ``h``'s live rows (of ``split``): metadata only."""
        raise NotImplementedError

    def images(self, h: str, rows: np.ndarray, columns=("pixels",)) -> pa.Table:
        """The image rows ``rows`` of version ``h``, in that order."""
        raise NotImplementedError

    def sampler(self, h: str, split: str):
        """Open version ``h`` once: (rows ascending, labels, take) where ``take(i)`` returns the images of
        ``rows[i]`` as float32 ``[k, 28, 28]``: what a training loader calls for each batch."""
        raise NotImplementedError

    def stream(self, h: str, split: str, batch: int):
        """Yield (images, labels) of one split in batches: what bounded-memory training reads."""
        rows, labels, take = self.sampler(h, split)
        for i in range(0, len(rows), batch):
            idx = np.arange(i, min(i + batch, len(rows)))
            yield take(idx), labels[idx]

    def read_split(self, h: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, labels, take = self.sampler(h, split)
        return rows, take(np.arange(len(rows))), labels

    def content_hash(self, h: str) -> str:
        rows, labels, splits = self.members(h, None)
        sha = self.images(h, rows, ("sha256",)).column("sha256").to_pylist()
        return dataset_hash(sha, list(labels), list(splits))

    def prune(self, keep: set[str], compact: bool) -> tuple[int, int]:
        """Drop every version outside ``keep`` (optionally compacting first): (files a dry run lists, files deleted)."""
        raise NotImplementedError

    def opens(self, numbers) -> bool:
        """Whether the table version(s) ``numbers`` of a version can still be read whole."""
        raise NotImplementedError


class LanceLog(Store):
    fmt, layout = "lance", "log"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.img, self.log = str(root / "images.lance"), str(root / "members.lance")
        self.numbers: dict[str, tuple[int, int]] = {}

    def _tag(self, img: int, log: int, h: str) -> None:
        import lance

        lance.dataset(self.img).tags.create(h, img)
        lance.dataset(self.log).tags.create(h, log)
        self.numbers[h] = (img, log)

    def create(self, b, h):
        import lance

        a = lance.write_dataset(image_table(b, False), self.img, mode="create", max_rows_per_group=ROW_GROUP)
        m = lance.write_dataset(log_table(0, b.row, b.label, b.split), self.log, mode="create")
        self._tag(a.version, m.version, h)

    def land(self, b, h):
        import lance

        self.seq += 1
        a = lance.write_dataset(image_table(b, False), self.img, mode="append", max_rows_per_group=ROW_GROUP)
        m = lance.write_dataset(log_table(self.seq, b.row, b.label, b.split), self.log, mode="append")
        self._tag(a.version, m.version, h)

    def review(self, rows, labels, splits, h):
        import lance

        self.seq += 1
        m = lance.write_dataset(log_table(self.seq, rows, labels, splits), self.log, mode="append")
        self._tag(lance.dataset(self.img).version, m.version, h)

    def members(self, h, split):
        import lance

        return fold_log(lance.dataset(self.log, version=h).to_table(), split)

    def images(self, h, rows, columns=("pixels",)):
        import lance

        # the image table only appends, so a row's ordinal is its position in every version
        return lance.dataset(self.img, version=h).take(pa.array(rows), columns=list(columns))

    def sampler(self, h, split):
        import lance

        rows, labels, _ = self.members(h, split)
        ds = lance.dataset(self.img, version=h)
        return rows, labels, lambda i: to_images(ds.take(pa.array(rows[i]), columns=["pixels"]).column("pixels"))

    def prune(self, keep, compact):
        return lance_prune((self.img, self.log), keep, compact)

    def opens(self, numbers):
        import lance

        try:
            img = lance.dataset(self.img, version=numbers[0])
            img.take([0, img.count_rows() - 1], columns=["pixels"])
            lance.dataset(self.log, version=numbers[1]).to_table()
            return True
        except Exception:
            return False


def lance_prune(paths, keep: set[str], compact: bool) -> tuple[int, int]:
    import lance

    listed = deleted = 0
    for path in paths:
        ds = lance.dataset(path)
        for tag in list(ds.tags.list()):
            if tag not in keep:
                ds.tags.delete(tag)
        if compact:
            ds.optimize.compact_files(target_rows_per_fragment=1024 * 1024)
        ds = lance.dataset(path)
        plan = ds.explain_cleanup_old_versions(older_than=timedelta(0), error_if_tagged_old_versions=False)
        listed += plan.stats.data_files_removed
        deleted += ds.cleanup_old_versions(
            older_than=timedelta(0), error_if_tagged_old_versions=False
        ).data_files_removed
    return listed, deleted


class LanceInplace(Store):
    fmt, layout = "lance", "inplace"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.path = str(root / "images.lance")
        self.numbers: dict[str, int] = {}

    def _tag(self, version: int, h: str) -> None:
        import lance

        lance.dataset(self.path).tags.create(h, version)
        self.numbers[h] = version

    def create(self, b, h):
        import lance

        ds = lance.write_dataset(image_table(b, True), self.path, mode="create", max_rows_per_group=ROW_GROUP)
        self._tag(ds.version, h)

    def land(self, b, h):
        import lance

        ds = lance.write_dataset(image_table(b, True), self.path, mode="append", max_rows_per_group=ROW_GROUP)
        self._tag(ds.version, h)

    def review(self, rows, labels, splits, h):
        import lance

        src = pa.table({"row": pa.array(rows), "label": pa.array(labels), "split": pa.array(splits, pa.string())})
        lance.dataset(self.path).merge_insert("row").when_matched_update_all().execute(src)
        self._tag(lance.dataset(self.path).version, h)

    def _meta(self, ds):
        t = ds.to_table(columns=["row", "label", "split"])
        return t.column("row").to_numpy(), t.column("label").to_numpy(), t.column("split").to_numpy(False)

    def members(self, h, split):
        import lance

        row, label, splits = self._meta(lance.dataset(self.path, version=h))
        keep = splits != EXCLUDED if split is None else splits == split
        order = np.argsort(row[keep])
        return row[keep][order], label[keep][order], splits[keep][order]

    def images(self, h, rows, columns=("pixels",)):
        import lance

        # an update moves its rows: a version's positions come from its own row column
        ds = lance.dataset(self.path, version=h)
        return ds.take(pa.array(reorder(self._meta(ds)[0], rows)), columns=list(columns))

    def sampler(self, h, split):
        import lance

        ds = lance.dataset(self.path, version=h)
        row, label, splits = self._meta(ds)
        pos = np.flatnonzero(splits == split)
        pos = pos[np.argsort(row[pos])]
        return row[pos], label[pos], lambda i: to_images(ds.take(pa.array(pos[i]), columns=["pixels"]).column("pixels"))

    def read_split(self, h, split):
        import lance

        t = lance.dataset(self.path, version=h).to_table(
            columns=["row", "label", "pixels"], filter=f"split = '{split}'"
        )
        order = np.argsort(t.column("row").to_numpy())
        return (
            t.column("row").to_numpy()[order],
            to_images(t.column("pixels"))[order],
            t.column("label").to_numpy()[order],
        )

    def stream(self, h, split, batch):
        import lance

        ds = lance.dataset(self.path, version=h)
        for rb in ds.to_batches(columns=["label", "pixels"], filter=f"split = '{split}'", batch_size=batch):
            yield to_images(pa.chunked_array([rb.column("pixels")])), rb.column("label").to_numpy()

    def prune(self, keep, compact):
        return lance_prune((self.path,), keep, compact)

    def opens(self, number):
        import lance

        try:
            lance.dataset(self.path, version=number).to_table(columns=["pixels"])
            return True
        except Exception:
            return False


class DeltaStore(Store):
    """Delta has no tags: ``versions.json`` maps a dataset hash to the table versions (the integration would keep
    that mapping in the warehouse); the hash is also written into each commit's metadata."""

    fmt = "delta"
    tables: tuple[str, ...] = ()

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self.map_path = root / "versions.json"
        self.numbers: dict[str, list[int]] = {}
        self.open: dict = {}

    def _path(self, name: str) -> str:
        return str(self.root / name)

    def _write(self, name: str, data: pa.Table, h: str) -> int:
        from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake

        create = name not in self.open
        write_deltalake(
            self._path(name) if create else self.open[name],
            data,
            mode="error" if create else "append",
            configuration=DELTA_CONFIG if create else None,
            writer_properties=WriterProperties(max_row_group_size=ROW_GROUP),
            commit_properties=CommitProperties(custom_metadata={"dataset_hash": h}),
        )
        if create:
            self.open[name] = DeltaTable(self._path(name))
        return self.open[name].version()

    def _tag(self, versions: list[int], h: str) -> None:
        self.numbers[h] = versions
        tmp = self.map_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.numbers))
        tmp.replace(self.map_path)

    def _table(self, name: str, h):
        from deltalake import DeltaTable

        version = self.numbers[h][self.tables.index(name)] if isinstance(h, str) else h
        return DeltaTable(self._path(name), version=version)

    def images(self, h, rows, columns=("pixels",)):
        return take_by_key(self._table("images", h).to_pyarrow_dataset(), rows, columns)

    def prune(self, keep, compact):
        from deltalake import DeltaTable

        listed = deleted = 0
        kept = [v for h, v in self.numbers.items() if h in keep]
        for i, name in enumerate(self.tables):
            t = DeltaTable(self._path(name))
            if compact:
                t.optimize.compact()
                t = DeltaTable(self._path(name))
            options = {"retention_hours": 0, "enforce_retention_duration": False}
            keep_versions = sorted({v[i] for v in kept} | {t.version()})
            listed += len(t.vacuum(dry_run=True, keep_versions=keep_versions, **options))
            deleted += len(t.vacuum(dry_run=False, keep_versions=keep_versions, **options))
            self.open[name] = DeltaTable(self._path(name))
        for h in [h for h in self.numbers if h not in keep]:
            del self.numbers[h]
        return listed, deleted

    def opens(self, numbers):
        try:
            for name, version in zip(self.tables, numbers):
                self._table(name, version).to_pyarrow_table()
            return True
        except Exception:
            return False


def take_by_key(ds, rows: np.ndarray, columns=("pixels",)) -> pa.Table:
    """Rows by key: a Delta table is a set of files with no row order, so a take is a filter on ``row``."""
    t = ds.to_table(columns=["row", *columns], filter=pc.field("row").isin(pa.array(rows)))
    return t.take(pa.array(reorder(t.column("row").to_numpy(), rows)))


class DeltaLog(DeltaStore):
    layout = "log"
    tables = ("images", "members")

    def create(self, b, h):
        self._tag(
            [
                self._write("images", image_table(b, False), h),
                self._write("members", log_table(0, b.row, b.label, b.split), h),
            ],
            h,
        )

    def land(self, b, h):
        self.seq += 1
        img = self._write("images", image_table(b, False), h)
        log = self._write("members", log_table(self.seq, b.row, b.label, b.split), h)
        self._tag([img, log], h)

    def review(self, rows, labels, splits, h):
        self.seq += 1
        log = self._write("members", log_table(self.seq, rows, labels, splits), h)
        self._tag([self.open["images"].version(), log], h)

    def members(self, h, split):
        return fold_log(self._table("members", h).to_pyarrow_table(), split)

    def sampler(self, h, split):
        rows, labels, _ = self.members(h, split)
        ds = self._table("images", h).to_pyarrow_dataset()
        return rows, labels, lambda i: to_images(take_by_key(ds, rows[i]).column("pixels"))

    def read_split(self, h, split):
        # one filtered scan: the split's rows in storage order, put in row order after
        rows, labels, _ = self.members(h, split)
        t = take_by_key(self._table("images", h).to_pyarrow_dataset(), rows)
        return rows, to_images(t.column("pixels")), labels

    def stream(self, h, split, batch):
        rows, labels, _ = self.members(h, split)
        ds = self._table("images", h).to_pyarrow_dataset()
        for rb in ds.to_batches(
            columns=["row", "pixels"], filter=pc.field("row").isin(pa.array(rows)), batch_size=batch
        ):
            if rb.num_rows:
                got = rb.column("row").to_numpy()
                yield to_images(pa.chunked_array([rb.column("pixels")])), labels[np.searchsorted(rows, got)]


class DeltaInplace(DeltaStore):
    layout = "inplace"
    tables = ("images",)

    def create(self, b, h):
        self._tag([self._write("images", image_table(b, True), h)], h)

    def land(self, b, h):
        self._tag([self._write("images", image_table(b, True), h)], h)

    def review(self, rows, labels, splits, h):
        from deltalake import CommitProperties, WriterProperties

        src = pa.table({"row": pa.array(rows), "label": pa.array(labels), "split": pa.array(splits, pa.string())})
        t = self.open["images"]
        t.merge(
            src,
            predicate="t.row = s.row",
            source_alias="s",
            target_alias="t",
            writer_properties=WriterProperties(max_row_group_size=ROW_GROUP),
            commit_properties=CommitProperties(custom_metadata={"dataset_hash": h}),
        ).when_matched_update({"label": "s.label", "split": "s.split"}).execute()
        self._tag([t.version()], h)

    def members(self, h, split):
        t = self._table("images", h).to_pyarrow_table(columns=["row", "label", "split"])
        row, label, splits = t.column("row").to_numpy(), t.column("label").to_numpy(), t.column("split").to_numpy(False)
        keep = splits != EXCLUDED if split is None else splits == split
        order = np.argsort(row[keep])
        return row[keep][order], label[keep][order], splits[keep][order]

    def sampler(self, h, split):
        rows, labels, _ = self.members(h, split)
        ds = self._table("images", h).to_pyarrow_dataset()
        return rows, labels, lambda i: to_images(take_by_key(ds, rows[i]).column("pixels"))

    def read_split(self, h, split):
        t = self._table("images", h).to_pyarrow_table(
            columns=["row", "label", "pixels"], filters=[("split", "=", split)]
        )
        order = np.argsort(t.column("row").to_numpy())
        return (
            t.column("row").to_numpy()[order],
            to_images(t.column("pixels"))[order],
            t.column("label").to_numpy()[order],
        )

    def stream(self, h, split, batch):
        # files written by MERGE hold string_view columns where the table schema says string: cast to compare
        ds = self._table("images", h).to_pyarrow_dataset()
        for rb in ds.to_batches(
            columns=["label", "pixels"], filter=pc.field("split").cast(pa.string()) == split, batch_size=batch
        ):
            if rb.num_rows:
                yield to_images(pa.chunked_array([rb.column("pixels")])), rb.column("label").to_numpy()


STORES = {cls.fmt + " " + cls.layout: cls for cls in (LanceLog, DeltaLog, LanceInplace, DeltaInplace)}


# ---------------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------------


def timed_write(store: Store, op, *args) -> tuple[float, int]:
    before = folder_bytes(store.root)
    t0 = time.perf_counter()
    op(*args)
    return time.perf_counter() - t0, folder_bytes(store.root) - before


def high_water_kb() -> int:
    """Peak RSS of this process. Linux's VmHWM starts afresh at exec; ``ru_maxrss`` would carry the parent's
    RSS at fork into the child."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stream_child(name: str, root: str, h: str, split: str, batch: int) -> None:
    """Runs in a subprocess: peak RSS of streaming one split, against the peak once the libraries are loaded."""
    import deltalake  # noqa: F401  (both libraries loaded before the baseline)
    import lance  # noqa: F401

    store = STORES[name](Path(root))
    if isinstance(store, DeltaStore):
        store.numbers = json.loads(store.map_path.read_text())
    before = high_water_kb()
    n, t0, checksum = 0, time.perf_counter(), 0.0
    for x, y in store.stream(h, split, batch):
        n += len(y)
        checksum += float(x.sum()) + float(y.sum())
    seconds = time.perf_counter() - t0
    peak = high_water_kb()
    print(json.dumps({"rows": n, "seconds": seconds, "rss_before_kb": before, "peak_kb": peak, "checksum": checksum}))


def measure_stream(store: Store, h: str, split: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--stream-child", store.name, str(store.root), h, split, str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{store.name} stream failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_size(n: int, args, workdir: Path, templates, report: dict) -> None:
    rng = np.random.default_rng(n)
    truth = Truth()
    stores = [cls(workdir / f"{n}" / name.replace(" ", "_")) for name, cls in STORES.items()]
    for s in stores:
        s.root.mkdir(parents=True, exist_ok=True)
    base = make_batch(templates, rng, 0, n, "base")
    h0 = truth.land(base)
    t_create = {}
    for s in stores:
        t0 = time.perf_counter()
        s.create(base, h0)
        t_create[s.name] = time.perf_counter() - t0
    base_bytes = {s.name: folder_bytes(s.root) for s in stores}
    print(f"\n== base {n:,} images; created in " + ", ".join(f"{k} {v:.2f}s" for k, v in t_create.items()), flush=True)

    land: dict[str, list] = {s.name: [] for s in stores}
    review: dict[str, list] = {s.name: [] for s in stores}
    for cycle in range(args.cycles):
        order = stores[cycle % len(stores) :] + stores[: cycle % len(stores)]  # rotate who goes first
        b = make_batch(templates, rng, len(truth.sha), LANDING, f"landing-{cycle:03d}")
        h = truth.land(b)
        for s in order:
            land[s.name].append(timed_write(s, s.land, b, h))
        rows, labels, splits = review_batch(truth, rng)
        h = truth.review(rows, labels, splits)
        for s in order:
            review[s.name].append(timed_write(s, s.review, rows, labels, splits, h))
    versions = [v[0] for v in truth.versions]

    # (c) the oldest version by its hash, train split into numpy; checked against what it held when it was made
    oldest = versions[0]
    want_rows, want_x, want_y = truth.expected(oldest, "train")
    reads: dict[str, list[float]] = {s.name: [] for s in stores}
    for r in range(args.read_repeats):
        for s in stores[r % len(stores) :] + stores[: r % len(stores)]:
            t0 = time.perf_counter()
            rows, x, y = s.read_split(oldest, "train")
            reads[s.name].append(time.perf_counter() - t0)
            assert np.array_equal(rows, want_rows) and np.array_equal(y, want_y) and np.array_equal(x, want_x), s.name

    # (d) 256 random train rows of the newest version, opened once (as a training loader would) outside the timing
    newest = versions[-1]
    ref_rows = truth.expected(newest, "train")[0]
    samplers = {s.name: s.sampler(newest, "train") for s in stores}
    for s in stores:
        assert np.array_equal(samplers[s.name][0], ref_rows), s.name
    takes: dict[str, list[float]] = {s.name: [] for s in stores}
    all_x = np.concatenate(truth.pixels)
    for r in range(args.take_repeats):
        pick = rng.choice(len(ref_rows), args.take, replace=False)
        for s in stores[r % len(stores) :] + stores[: r % len(stores)]:
            t0 = time.perf_counter()
            x = samplers[s.name][2](pick)
            takes[s.name].append(time.perf_counter() - t0)
            assert np.array_equal(x, all_x[ref_rows[pick]]), s.name
    del samplers

    # (f) every version still hashes to its name after all later versions (all of them at the smallest size)
    check = versions if n == min(args.sizes) else [versions[0], versions[len(versions) // 2], versions[-1]]
    verified = {s.name: sum(s.content_hash(h) == h for h in check) for s in stores}

    full_copies = sum(int((v[2] != EXCLUDED).sum()) * (PIXELS * 4 + 8) for v in truth.versions)
    report["sizes"][n] = {
        "versions": len(versions),
        "full_copies": full_copies,
        "rows": {
            s.name: {
                "create_s": t_create[s.name],
                "base_bytes": base_bytes[s.name],
                "land_s": statistics.median(t for t, _ in land[s.name]),
                "land_bytes": statistics.median(b for _, b in land[s.name]),
                "review_s": statistics.median(t for t, _ in review[s.name]),
                "review_bytes": statistics.median(b for _, b in review[s.name]),
                "storage": folder_bytes(s.root),
                "read_s": statistics.median(reads[s.name]),
                "read_rows": len(want_rows),
                "take_ms": 1000 * statistics.median(takes[s.name]),
                "verified": f"{verified[s.name]}/{len(check)}",
            }
            for s in stores
        },
    }
    for s in stores:
        r = report["sizes"][n]["rows"][s.name]
        print(
            f"{s.name:14s} land {r['land_s'] * 1000:7.1f} ms {r['land_bytes'] / 1e3:9.1f} kB | review "
            f"{r['review_s'] * 1000:7.1f} ms {r['review_bytes'] / 1e3:9.1f} kB | storage {r['storage'] / 1e6:8.1f} MB | "
            f"read {r['read_s']:.3f} s | take {r['take_ms']:.1f} ms | hashes {r['verified']}",
            flush=True,
        )

    if n == max(args.sizes):  # (e) streaming memory on the largest train split
        report["stream"] = {}
        for s in stores:
            res = measure_stream(s, newest, "train", args.take)
            res["split_bytes"] = len(ref_rows) * PIXELS * 4
            report["stream"][s.name] = res
            print(f"{s.name:14s} stream {res}", flush=True)

    if n == args.retention_size:  # (f) retention: keep what models reference, drop the rest
        keep = {versions[0], versions[len(versions) // 2], versions[-1]}
        dropped = [h for h in versions if h not in keep]
        report["retention"] = {"size": n, "kept": len(keep), "dropped": len(dropped)}
        for s in stores:
            dropped_number = s.numbers[dropped[0]]  # table version number(s) of the first dropped version
            before = folder_bytes(s.root)
            listed, files = s.prune(keep, compact=False)
            after_prune = folder_bytes(s.root)
            listed_c, files_c = s.prune(keep, compact=True)
            after_compact = folder_bytes(s.root)
            kept_ok = sum(s.content_hash(h) == h for h in keep)
            dropped_opens = s.opens(dropped_number)
            # a new version still lands after the pruning
            b = make_batch(templates, rng, len(truth.sha), LANDING, "after-prune")
            s.land(b, "f" * 64)
            appended = s.members("f" * 64, None)[0].max() == len(truth.sha) + LANDING - 1
            report["retention"][s.name] = {
                "before": before,
                "after_prune": after_prune,
                "after_compact": after_compact,
                "files": f"{listed}/{files}, {listed_c}/{files_c}",
                "kept_ok": f"{kept_ok}/{len(keep)}",
                "dropped_opens": dropped_opens,
                "append_after": bool(appended),
            }
            print(f"{s.name:14s} retention {report['retention'][s.name]}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def mb(b: float) -> str:
    return f"{b / 1e6:,.2f} MB" if b >= 1e5 else f"{b / 1e3:,.1f} kB"


def render(report: dict, args, load: tuple[float, float], wall: float) -> str:
    import deltalake
    import lance

    lines = [
        "# Dataset versions: Lance vs Delta Lake",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- pylance {lance.__version__}, deltalake {deltalake.__version__}, pyarrow {pa.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}",
        f"- CPU: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}; local disk "
        f"({args.workdir or tempfile.gettempdir()})",
        f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}; whole run {wall:.0f} s",
        "- WARNING: the machine is shared; stores are interleaved (rotated order each cycle) and medians taken",
        f"- workload: float32 28x28 images in [0, 1] (digits upsampled, per-image jitter) + sha256, image_id, "
        f"source, batch_id, label, split; after the base, {args.cycles} cycles of a landing version "
        f"({LANDING} new images) and a review version ({RELABELS} relabels + {EXCLUSIONS} exclusions) = "
        f"{2 * args.cycles} versions; row groups of {ROW_GROUP} rows in both formats; Delta log retention set "
        "to 100 years",
        "- layouts: `log` = append-only image table + append-only membership log (seq, row, label, split); "
        "`inplace` = label and split in the image table, reviews update rows (Lance merge_insert, Delta MERGE)",
        "- bytes written = growth of the store's folder; full copies = every version as npy shards "
        "(N x 3,136 B images + 8 B label), what `DatasetVersion` writes today",
        "- how a row is fetched: Lance `take(positions)` on the version (the log layout's image table only appends, "
        "so a row's ordinal is its position; the inplace layout maps rows to positions per version); Delta has no "
        "row positions, so a take is a filter `row IN (...)` over `to_pyarrow_dataset()` (pyarrow defaults)",
        "- naming: Lance tags each table's version with the 64-hex dataset hash (`tags.create`, opened with "
        "`lance.dataset(uri, version=hash)`); Delta has no tags: a mapping hash -> table versions (here "
        "`versions.json`), the hash also written into the commit metadata",
        "- Delta writer: `deltalake` defaults (parquet uncompressed, dictionary pages) except row groups; Lance "
        "defaults",
        "",
        "## (a) one new version on top of the base: median seconds and bytes written",
        "",
        "| base images | store | landing (200 images) s | landing bytes | review (30+5) s | review bytes |",
        "|---:|:--|---:|---:|---:|---:|",
    ]
    sizes = report["sizes"]
    for n, res in sizes.items():
        for name, r in res["rows"].items():
            lines.append(
                f"| {n:,} | {name} | {r['land_s']:.3f} | {mb(r['land_bytes'])} | {r['review_s']:.3f} | "
                f"{mb(r['review_bytes'])} |"
            )
    lines += [
        "",
        f"## (b) storage of the base + {2 * args.cycles} versions against full copies",
        "",
        "| base images | store | base on disk | all versions on disk | full copies (npy) | disk / full copies |",
        "|---:|:--|---:|---:|---:|---:|",
    ]
    for n, res in sizes.items():
        for name, r in res["rows"].items():
            lines.append(
                f"| {n:,} | {name} | {mb(r['base_bytes'])} | {mb(r['storage'])} | {mb(res['full_copies'])} | "
                f"{r['storage'] / res['full_copies']:.3f} |"
            )
    lines += [
        "",
        "## (c) open the oldest version by hash, train split to numpy; (d) take 256 random train rows",
        "",
        f"(c) median of {args.read_repeats}, checked bit-identical to what the version held; (d) median of "
        f"{args.take_repeats} takes from the newest version, rows resolved once; (f) versions re-read by hash "
        "whose content still hashes to the name (all versions at the smallest size, oldest/middle/newest above)",
        "",
        "| base images | store | train rows | (c) open + read s | (d) take 256 ms | (f) hashes verified |",
        "|---:|:--|---:|---:|---:|---:|",
    ]
    for n, res in sizes.items():
        for name, r in res["rows"].items():
            lines.append(
                f"| {n:,} | {name} | {r['read_rows']:,} | {r['read_s']:.3f} | {r['take_ms']:.1f} | {r['verified']} |"
            )
    if "stream" in report:
        lines += [
            "",
            f"## (e) streaming the newest train split in batches of {args.take} (subprocess, peak RSS)",
            "",
            "| store | rows | split as float32 | RSS before (libraries loaded) | peak RSS | peak - before | seconds |",
            "|:--|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in report["stream"].items():
            lines.append(
                f"| {name} | {r['rows']:,} | {mb(r['split_bytes'])} | {mb(r['rss_before_kb'] * 1024)} | "
                f"{mb(r['peak_kb'] * 1024)} | {mb((r['peak_kb'] - r['rss_before_kb']) * 1024)} | {r['seconds']:.2f} |"
            )
    if "retention" in report:
        ret = report["retention"]
        lines += [
            "",
            f"## (f) retention at {ret['size']:,} images: keep {ret['kept']} versions (oldest, middle, newest), "
            f"drop {ret['dropped']}",
            "",
            "Lance: delete the dropped versions' tags, `cleanup_old_versions(older_than=0, "
            "error_if_tagged_old_versions=False)`; then `optimize.compact_files()` and clean up again. Delta: "
            "`vacuum(retention_hours=0, enforce_retention_duration=False, keep_versions=[kept])`; then "
            "`optimize.compact()` and vacuum again. 'dropped opens': a dropped version can still be read; "
            "'append after': a new version lands after the pruning. Compacting while kept versions still "
            "reference the small files writes a second copy: the old files go only when no kept version needs them. "
            "Delta cannot drop a version, only files: a dropped version whose files are still live stays readable "
            "(until its log entries expire).",
            "",
            "| store | before | after prune | after compact + prune | data files listed by dry run / deleted "
            "(prune, compact + prune) | kept versions verified "
            "| dropped opens | append after |",
            "|:--|---:|---:|---:|---:|---:|:--|:--|",
        ]
        for name in STORES:
            r = ret[name]
            lines.append(
                f"| {name} | {mb(r['before'])} | {mb(r['after_prune'])} | {mb(r['after_compact'])} | "
                f"{r['files']} | {r['kept_ok']} | {r['dropped_opens']} | {r['append_after']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--cycles", type=int, default=10, help="landing + review cycles (2 versions each)")
    parser.add_argument("--read-repeats", type=int, default=3)
    parser.add_argument("--take-repeats", type=int, default=50)
    parser.add_argument("--take", type=int, default=256, help="rows per random take and per streamed batch")
    parser.add_argument("--retention-size", type=int, default=None, help="base size for (f); default the middle")
    parser.add_argument("--workdir", default=None, help="where the stores go (default a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny run: sizes 500 2000, 2 cycles")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--stream-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        name, root, h, split, batch = args.stream_child
        stream_child(name, root, h, split, int(batch))
        return
    if args.quick:
        args.sizes, args.cycles, args.read_repeats, args.take_repeats = [500, 2_000], 2, 2, 10
    args.sizes = sorted(args.sizes)
    if args.retention_size is None:
        args.retention_size = args.sizes[len(args.sizes) // 2]

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    templates = digit_templates()
    report: dict = {"sizes": {}}
    workdir = Path(tempfile.mkdtemp(prefix="dataset_formats_", dir=args.workdir))
    try:
        for n in args.sizes:
            run_size(n, args, workdir, templates, report)
            shutil.rmtree(workdir / f"{n}", ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(report, args, (load_before, os.getloadavg()[0]), time.perf_counter() - t0)
    print("\n" + text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
