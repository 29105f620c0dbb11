"""Dataset versions in Lance: every image's pixels stored once, each version a tagged version of its members.

Per canonical image size, ``<datasets>/lance-<size>/`` holds

- ``pixels.lance``: append-only (sha256, pixels as ``fixed_size_list<float32>[size * size]``). A row is
  never updated or deleted, so its position never moves; ``features.pixel_rows`` records where each image is.
- ``members.lance``: one row per member image (sha256, image_id, label, split, source, batch_id, row into
  ``pixels.lance``). A dataset version is one Lance version of it, tagged with the dataset hash. The next
  version deletes the rows of the images it drops or changes and appends their new rows, so versions share
  the unchanged fragments and no pixel is copied.

The dataset hash names the content, independently of order and of how it was reached: the sha256 of
``lance-v1:<size>:<sum>`` where ``sum`` is the sum, modulo 2**256, of one 256-bit term per member
(``sha256("<image sha256>:<label>:<split>")``). A batch updates it by subtracting the terms of the rows it
drops and adding those of the rows it brings.

Versions of releases before 0.3 are npy folders (``features.DatasetVersion``); ``open_version`` opens
either kind by hash, with the same interface.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dc_pipeline.core.data.features import SPLITS, DatasetVersion
from dc_pipeline.core.storage import Location, as_location

HASH_SCHEME = "lance-v1"
MODULUS = 1 << 256
MEMBER_COLUMNS = ["sha256", "image_id", "label", "split", "source", "batch_id"]
STORE_COLUMNS = [*MEMBER_COLUMNS, "row"]
DEFAULT_CACHE_BYTES = 256 * 2**20
"""A split up to this size is read into memory once by its reader; a larger one is read minibatch by minibatch."""
PIXEL_CHUNK = 8192  # images decoded and appended at a time


# -- identity ------------------------------------------------------------------------------------------------
def member_term(sha256: str, label: int, split: str) -> int:
    return int(hashlib.sha256(f"{sha256}:{int(label)}:{split}".encode()).hexdigest(), 16)


def content_sum(sha256s: Iterable[str], labels: Iterable[int], splits: Iterable[str], start: int = 0) -> int:
    """``start`` plus the members' terms, modulo 2**256: an order-independent multiset hash."""
    total = start
    for sha, label, split in zip(sha256s, labels, splits):
        total += member_term(sha, label, split)
    return total % MODULUS


def without(total: int, sha256s: Iterable[str], labels: Iterable[int], splits: Iterable[str]) -> int:
    """``total`` with these members' terms taken out."""
    return (total - content_sum(sha256s, labels, splits)) % MODULUS


def version_hash(image_size: int, total: int) -> str:
    return hashlib.sha256(f"{HASH_SCHEME}:{int(image_size)}:{total:064x}".encode()).hexdigest()


def frame_sum(rows: pd.DataFrame, start: int = 0) -> int:
    return content_sum(rows["sha256"], rows["label"], rows["split"], start)


# -- membership diff -----------------------------------------------------------------------------------------
@dataclass
class MembershipDiff:
    """How a target membership differs from the head's, over the images looked at.

    ``added``: target rows of images the head lacks; ``removed``: head rows of images the target lacks;
    ``changed``: target rows whose label (or split) differs, with ``previous_label``/``previous_split``;
    ``updated``: target rows that differ in other columns only (image_id, source, batch_id after a
    different copy became the kept one): same content hash, new row in the store."""

    added: pd.DataFrame
    removed: pd.DataFrame
    changed: pd.DataFrame
    updated: pd.DataFrame
    dropped: pd.DataFrame  # head rows to delete from the store (removed, changed, updated)

    @property
    def empty(self) -> bool:
        return not (len(self.added) or len(self.removed) or len(self.changed) or len(self.updated))

    @property
    def appended(self) -> pd.DataFrame:
        """Target rows to append to the store (added, changed, updated)."""
        parts = [p for p in (self.added, self.changed, self.updated) if len(p)]
        if not parts:
            return self.added.iloc[0:0]
        return pd.concat(parts, ignore_index=True).sort_values("sha256", ignore_index=True)

    def content_sum(self, head_sum: int) -> int:
        """The target's sum from the head's: out with the removed and the changed rows' old terms, in with the
        added and the changed rows' new terms."""
        total = without(head_sum, self.removed["sha256"], self.removed["label"], self.removed["split"])
        total = without(total, self.changed["sha256"], self.changed["previous_label"], self.changed["previous_split"])
        total = frame_sum(self.added, total)
        return frame_sum(self.changed, total)


def membership_diff(target: pd.DataFrame, head: pd.DataFrame) -> MembershipDiff:
    """Compare the target rows with the head's rows of the same images (both with ``MEMBER_COLUMNS``; other
    columns ride along). Either may lack an image: absent from the target = not a member any more."""
    t, h = target.drop_duplicates("sha256"), head.drop_duplicates("sha256")
    t, h = t.set_axis(t["sha256"].to_numpy(), axis=0), h.set_axis(h["sha256"].to_numpy(), axis=0)
    both = t.index.intersection(h.index)
    added = t.loc[t.index.difference(h.index)]
    removed = h.loc[h.index.difference(t.index)]
    tb, hb = t.loc[both], h.loc[both]
    content = (tb["label"].astype("int64") != hb["label"].astype("int64")) | (tb["split"] != hb["split"])
    other = pd.Series(False, index=both)
    for col in ("image_id", "source", "batch_id", "decision"):
        if col in tb.columns and col in hb.columns:
            other |= tb[col].astype("string").fillna("\0") != hb[col].astype("string").fillna("\0")
    changed = tb[content].assign(previous_label=hb.loc[content, "label"], previous_split=hb.loc[content, "split"])
    updated = tb[~content & other]
    dropped = h.loc[removed.index.union(changed.index).union(updated.index)]

    def tidy(df: pd.DataFrame) -> pd.DataFrame:
        return df.sort_values("sha256").reset_index(drop=True)

    return MembershipDiff(tidy(added), tidy(removed), tidy(changed), tidy(updated), tidy(dropped))


# -- the store -----------------------------------------------------------------------------------------------
def _pixels_schema(size: int):
    import pyarrow as pa

    return pa.schema([("sha256", pa.string()), ("pixels", pa.list_(pa.float32(), size * size))])


def _members_table(rows: pd.DataFrame):
    import pyarrow as pa

    return pa.table(
        {
            "sha256": pa.array(rows["sha256"].astype(str).tolist(), pa.string()),
            "image_id": pa.array(rows["image_id"].astype("string").tolist(), pa.string()),
            "label": pa.array(rows["label"].astype("int64").to_numpy(), pa.int64()),
            "split": pa.array(rows["split"].astype(str).tolist(), pa.string()),
            "source": pa.array(rows["source"].astype("string").tolist(), pa.string()),
            "batch_id": pa.array(rows["batch_id"].astype("string").tolist(), pa.string()),
            "row": pa.array(rows["row"].astype("int64").to_numpy(), pa.int64()),
        }
    )


def _to_images(column, size: int) -> np.ndarray:
    """A ``fixed_size_list<float32>`` column as ``[n, size, size]`` float32."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if not values.flags.writeable:  # Arrow's buffers are read-only; callers get arrays of their own
        values = values.copy()
    return values.reshape(len(arr), size, size)


def _in_list(values: Iterable[int]) -> str:
    return ", ".join(str(int(v)) for v in values)


class DatasetStore:
    """The Lance store of one canonical image size under the datasets folder."""

    def __init__(self, datasets_root: str | Path | Location, image_size: int):
        self.root, self.image_size = as_location(datasets_root), int(image_size)

    @property
    def folder(self) -> Location:
        return self.root / f"lance-{self.image_size}"

    @property
    def pixels_uri(self) -> str:
        return (self.folder / "pixels.lance").uri

    @property
    def members_uri(self) -> str:
        return (self.folder / "members.lance").uri

    @property
    def storage_options(self) -> dict | None:
        """Lance's options for the store's location (S3 endpoint and credentials; None on the local disk)."""
        return self.root.storage_options

    def members_exist(self) -> bool:
        return (self.folder / "members.lance").is_dir()

    def _pixels(self):
        import lance

        if not (self.folder / "pixels.lance").is_dir():
            return None
        return lance.dataset(self.pixels_uri, storage_options=self.storage_options)

    def _members(self, version: int | str | None = None):
        import lance

        return lance.dataset(self.members_uri, version=version, storage_options=self.storage_options)

    # pixels
    def pixel_count(self) -> int:
        ds = self._pixels()
        return 0 if ds is None else int(ds.count_rows())

    def write_pixels(
        self, sha256s: list[str], load: Callable[[list[str]], np.ndarray], recorded: int, chunk: int = PIXEL_CHUNK
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """Store the pixels of ``sha256s`` (``load`` decodes a chunk of them to ``[n, size, size]``), chunk by
        chunk; yields (sha256s, pixels, rows) per chunk. ``recorded``: the rows the warehouse knows of. Rows
        after those were appended by a run that died before its warehouse transaction: an image found there
        with the same pixels keeps that row (so a re-run ends where an uninterrupted run would), the others
        are left unused and the new rows go after them."""
        import lance
        import pyarrow as pa

        ds = self._pixels()
        count = 0 if ds is None else int(ds.count_rows())
        orphans: dict[str, int] = {}
        if ds is not None and count > recorded:
            names = ds.take(list(range(recorded, count)), columns=["sha256"]).column("sha256").to_pylist()
            for i, sha in enumerate(names):
                orphans.setdefault(sha, recorded + i)
        self.folder.mkdir(parents=True, exist_ok=True)
        for lo in range(0, len(sha256s), chunk):
            part = list(sha256s[lo : lo + chunk])
            x = np.ascontiguousarray(load(part), dtype=np.float32)
            rows = np.full(len(part), -1, np.int64)
            candidates = [i for i, s in enumerate(part) if s in orphans]
            if candidates and ds is not None:
                stored = _to_images(
                    ds.take([orphans[part[i]] for i in candidates], columns=["pixels"]).column("pixels"),
                    self.image_size,
                )
                for k, i in enumerate(candidates):
                    if np.array_equal(stored[k], x[i], equal_nan=True):
                        rows[i] = orphans.pop(part[i])
            new = np.flatnonzero(rows < 0)
            if len(new):
                table = pa.table(
                    {
                        "sha256": pa.array([part[i] for i in new], pa.string()),
                        "pixels": pa.FixedSizeListArray.from_arrays(
                            pa.array(x[new].reshape(-1), pa.float32()), self.image_size**2
                        ),
                    },
                    schema=_pixels_schema(self.image_size),
                )
                ds = lance.write_dataset(
                    table,
                    self.pixels_uri,
                    mode="append" if ds is not None else "create",
                    storage_options=self.storage_options,
                )
                rows[new] = count + np.arange(len(new))
                count += len(new)
            yield part, x, rows

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """Pixels of ``rows`` (positions in ``pixels.lance``), in that order: ``[n, size, size]`` float32."""
        if len(rows) == 0:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        ds = self._pixels()
        return _to_images(ds.take(np.asarray(rows, np.int64), columns=["pixels"]).column("pixels"), self.image_size)

    # members
    def latest_version(self) -> int | None:
        return int(self._members().latest_version) if self.members_exist() else None

    def has_version(self, version: int) -> bool:
        """Whether the members store still holds Lance version ``version``."""
        if not self.members_exist():
            return False
        try:
            self._members(int(version))
        except (ValueError, OSError):
            return False
        return True

    def restore(self, version: int) -> None:
        """Make ``version`` the latest again (a new Lance version with its content): undoes what a run that died
        before its warehouse transaction wrote after it."""
        self._members(int(version)).restore()

    def write_members(
        self, dropped: pd.DataFrame | None, rows: pd.DataFrame, overwrite: bool = False
    ) -> tuple[int, dict]:
        """A new members version: delete the ``dropped`` rows (sha256, member_addr: their Lance row addresses),
        append ``rows`` (``STORE_COLUMNS``); with ``overwrite``, ``rows`` is the whole membership. Returns the
        new Lance version and the row address of each appended sha256."""
        import lance

        self.folder.mkdir(parents=True, exist_ok=True)
        table = _members_table(rows)
        if overwrite or not self.members_exist():
            ds = lance.write_dataset(
                table,
                self.members_uri,
                mode="overwrite" if self.members_exist() else "create",
                storage_options=self.storage_options,
            )
            fragments = ds.get_fragments()
        else:
            ds = self._members()
            if dropped is not None and len(dropped):
                ds.delete(self._where(ds, dropped))
            before = {f.fragment_id for f in ds.get_fragments()}
            if len(table):
                ds = lance.write_dataset(table, self.members_uri, mode="append", storage_options=self.storage_options)
            ds = self._members()
            fragments = [f for f in ds.get_fragments() if f.fragment_id not in before]
        addresses: dict[str, int] = {}
        if fragments and len(table):
            found = ds.scanner(columns=["sha256"], with_row_address=True, fragments=fragments).to_table()
            addresses = dict(zip(found.column("sha256").to_pylist(), found.column("_rowaddr").to_pylist()))
        return int(ds.version), addresses

    @staticmethod
    def _where(ds, dropped: pd.DataFrame) -> str:
        """The delete predicate of ``dropped``: by row address (no scan), once the addresses are seen to still
        hold those images; by sha256 (a scan) when they do not (say, the store was compacted since)."""
        shas = set(dropped["sha256"])
        addresses = sorted({int(a) for a in dropped["member_addr"].dropna()})
        if len(addresses) == len(shas):
            by_address = f"_rowaddr IN ({_in_list(addresses)})"
            found = ds.to_table(columns=["sha256"], filter=by_address).column("sha256").to_pylist()
            if len(found) == len(shas) and set(found) == shas:
                return by_address
        return "sha256 IN ({})".format(", ".join("'" + s.replace("'", "''") + "'" for s in sorted(shas)))

    def tags(self) -> dict[str, int]:
        if not self.members_exist():
            return {}
        return {name: int(info["version"]) for name, info in self._members().tags.list().items()}

    def tag_version(self, dataset_hash: str) -> int | None:
        """The Lance version ``dataset_hash`` names in this store, None when none (one lookup, not a listing)."""
        if not self.members_exist():
            return None
        try:
            return int(self._members().tags.get_version(dataset_hash))
        except ValueError:  # Lance: "Ref not found"
            return None

    def tag(self, dataset_hash: str, version: int) -> int:
        """Name ``version`` by ``dataset_hash``, unless the hash names a version already (the same content,
        reached before): returns the Lance version the hash names."""
        existing = self.tag_version(dataset_hash)
        if existing is not None:
            return existing
        self._members().tags.create(dataset_hash, int(version))
        return int(version)

    def members(self, version: int | str, columns: list[str] | None = None, split: str | None = None) -> pd.DataFrame:
        ds = self._members(version)
        table = ds.to_table(columns=columns or STORE_COLUMNS, filter=f"split = '{split}'" if split else None)
        return table.to_pandas()


# -- reading a version ---------------------------------------------------------------------------------------
class LanceSplitReader:
    """One split of a Lance version, sorted by sha256: ``len``, ``labels``, ``take(indices)`` -> float32
    ``[n, S, S]`` in the order of ``indices``. Pixels are taken from ``pixels.lance`` per call; a split of at
    most ``cache_bytes`` is read into memory on the first take instead (the same values either way)."""

    def __init__(self, store: DatasetStore, rows: np.ndarray, labels: np.ndarray, cache_bytes: int | None = None):
        self.store, self.rows, self.labels = store, np.asarray(rows, np.int64), np.asarray(labels, np.int64)
        size = store.image_size
        self.cache_bytes = DEFAULT_CACHE_BYTES if cache_bytes is None else int(cache_bytes)
        self._cache: np.ndarray | None = None
        self._pixels = store._pixels() if len(self.rows) else None
        self._size = size

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), self._size, self._size)

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def take(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64).reshape(-1)
        if self._cache is None and len(self.rows) * self._size**2 * 4 <= self.cache_bytes and len(self.rows):
            self._cache = self._read(self.rows)
        if self._cache is not None:
            return np.ascontiguousarray(self._cache[idx])
        return self._read(self.rows[idx])

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0, self._size, self._size), np.float32)
        column = self._pixels.take(rows, columns=["pixels"]).column("pixels")
        return _to_images(column, self._size)


@dataclass(frozen=True)
class LanceVersion:
    """A dataset version stored in a Lance store, with ``features.DatasetVersion``'s interface. Within a split,
    images are ordered by sha256, as in the npy versions."""

    root: Location
    hash: str
    image_size: int
    lance_version: int

    @property
    def store(self) -> DatasetStore:
        return DatasetStore(self.root, self.image_size)

    @property
    def folder(self) -> Location:
        return self.store.folder

    def exists(self) -> bool:
        return self.store.tag_version(self.hash) == self.lance_version

    def _split_rows(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; one of {SPLITS}")
        rows = self.store.members(self.lance_version, ["sha256", "label", "row"], split=name)
        return rows.sort_values("sha256", kind="stable", ignore_index=True)

    def index(self) -> pd.DataFrame:
        """Columns sha256, image_id, label, split, source, batch_id, position (within the split)."""
        members = self.store.members(self.lance_version, MEMBER_COLUMNS)
        members["label"] = members["label"].astype("int64")
        parts = []
        for split in SPLITS:
            part = members[members["split"] == split].sort_values("sha256", kind="stable")
            parts.append(part.assign(position=np.arange(len(part), dtype=np.int64)))
        return pd.concat(parts, ignore_index=True)

    def sha256s(self) -> np.ndarray:
        return self.store.members(self.lance_version, ["sha256"])["sha256"].to_numpy()

    def split(self, name: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        rows = self._split_rows(name)
        return self.store.pixels(rows["row"].to_numpy()), rows["label"].to_numpy(np.int64)

    def reader(self, name: str, cache_bytes: int | None = None) -> LanceSplitReader:
        rows = self._split_rows(name)
        return LanceSplitReader(self.store, rows["row"].to_numpy(), rows["label"].to_numpy(np.int64), cache_bytes)


def lance_stores(datasets_root: str | Path | Location) -> list[DatasetStore]:
    root = as_location(datasets_root)
    out = []
    for folder in root.iterdir() if root.is_dir() else []:
        size = folder.name.removeprefix("lance-")
        if folder.name.startswith("lance-") and size.isdigit() and (folder / "members.lance").is_dir():
            out.append(DatasetStore(root, int(size)))
    return out


def open_version(datasets_root: str | Path | Location, dataset_hash: str) -> DatasetVersion | LanceVersion:
    """The dataset version ``dataset_hash``: an npy folder of a release before 0.3 (only ever on the local
    disk), or a tag of a Lance store (local or in object storage). Raises ``FileNotFoundError`` when neither
    holds it."""
    root = as_location(datasets_root)
    npy = DatasetVersion(Path(root.uri), dataset_hash)  # checks the hash's form
    if not root.is_s3 and npy.exists():
        return npy
    for store in lance_stores(datasets_root):
        version = store.tag_version(dataset_hash)
        if version is not None:
            return LanceVersion(root, dataset_hash, store.image_size, version)
    raise FileNotFoundError(
        f"dataset version {dataset_hash} is not under {datasets_root}: no npy folder of that name and no Lance "
        "store with that tag"
    )
