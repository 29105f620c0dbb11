"""Dataset versions in Lance: an order-independent content hash updated per batch, versions that share
storage, every version (and an npy one of an earlier release) loadable by hash after later ones, recovery
from a run that died between its Lance writes and its warehouse transaction, readers for training."""

import io
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dc_pipeline.api import load_split
from dc_pipeline.catalog import T
from dc_pipeline.core.data.dataset_store import (
    DatasetStore,
    LanceVersion,
    content_sum,
    frame_sum,
    membership_diff,
    open_version,
    version_hash,
)
from dc_pipeline.core.data.features import SPLITS, DatasetVersion, canonical_array, split_of
from dc_pipeline.core.data.images import ObjectStore
from dc_pipeline.core.data.incremental_features import SplitSettings, write_features
from dc_pipeline.core.paths import to_relative
from dc_pipeline.warehouse.connect import connect
from dc_pipeline.warehouse.io import append_rows, transaction

SETTINGS = SplitSettings(image_size=8, split_salt="test-salt", val_share=0.15, test_share=0.15)


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


class Lake:
    """A data folder and warehouse that a cleaning run's results are written into directly (clean.images,
    clean.review_decisions and the clean.changes that name them), and the features run over it."""

    def __init__(self, root: Path):
        self.root, self.objects, self.seq = root, ObjectStore(root / "objects"), 0
        self.datasets = root / "datasets"

    @contextmanager
    def connect(self):
        with connect(self.root / "warehouse.duckdb", self.root) as conn, transaction(conn):
            yield conn

    def sql(self, query: str, params=None) -> pd.DataFrame:
        with self.connect() as conn:
            return conn.execute(query, params or []).df()

    def _changed(self, conn, shas) -> None:
        self.seq += 1
        append_rows(
            conn,
            T.CLEAN_CHANGES,
            pd.DataFrame({"seq": self.seq, "sha256": sorted(set(shas)), "run_id": "r", "changed_at": datetime.now()}),
        )

    def land(self, batch: str, seeds) -> pd.DataFrame:
        rows = pd.DataFrame(
            [
                {
                    "image_id": f"{batch}-{s}",
                    "sha256": self.objects.put(png(s)),
                    "label": s % 10,
                    "source": "field_app",
                    "batch_id": batch,
                    "device_id": f"dev-{s % 3}",
                }
                for s in seeds
            ]
        )
        with self.connect() as conn:
            append_rows(conn, T.CLEAN_IMAGES, rows)
            self._changed(conn, rows["sha256"])
        return rows

    def review(self, batch: str, decisions: list[tuple[str, str, int | None]]) -> None:
        when = datetime(2026, 11, 1) + timedelta(days=self.seq)
        rows = pd.DataFrame(
            [
                {"sha256": s, "decision": d, "new_label": n, "decided_at": when, "batch_id": batch, "row_number": i}
                for i, (s, d, n) in enumerate(decisions)
            ]
        ).astype({"new_label": "Int64"})
        with self.connect() as conn:
            append_rows(conn, T.REVIEW_DECISIONS, rows.assign(source="reviews"))
            self._changed(conn, rows["sha256"])

    def drop(self, shas: list[str]) -> None:
        """Images cleaning took out of clean.images (a later conflicting copy)."""
        with self.connect() as conn:
            conn.execute(f"DELETE FROM {T.CLEAN_IMAGES} WHERE sha256 IN ({', '.join('?' * len(shas))})", shas)
            self._changed(conn, shas)

    def features(self, settings: SplitSettings = SETTINGS):
        return write_features(
            self.connect, self.objects, self.datasets, settings, "test", lambda p: to_relative(p, self.root)
        )

    def expected(self, settings: SplitSettings = SETTINGS) -> pd.DataFrame:
        """The membership the clean tables call for, computed directly: latest decision applied, split by hash."""
        images = self.sql(f"SELECT sha256, label FROM {T.CLEAN_IMAGES}")
        decisions = self.sql(
            f"SELECT * FROM {T.REVIEW_DECISIONS} ORDER BY decided_at, batch_id, row_number"
        ).drop_duplicates("sha256", keep="last")
        gone = set(decisions.loc[decisions.decision == "exclude", "sha256"])
        new = dict(zip(decisions.loc[decisions.decision == "relabel", "sha256"], decisions.new_label))
        images = images[~images.sha256.isin(gone)].copy()
        images["label"] = [int(new.get(s, v)) for s, v in zip(images.sha256, images.label)]
        images["split"] = [
            split_of(s, settings.split_salt, settings.val_share, settings.test_share) for s in images.sha256
        ]
        return images.sort_values("sha256", ignore_index=True)

    def expected_split(self, members: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
        part = members[members.split == split].sort_values("sha256")
        return canonical_array([self.objects.get(s) for s in part.sha256], 8), part.label.to_numpy(np.int64)


def members(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shas = [f"{int(v):064x}" for v in rng.integers(0, 2**62, n)]
    return pd.DataFrame(
        {
            "sha256": shas,
            "image_id": [f"i{k}" for k in range(n)],
            "label": rng.integers(0, 10, n),
            "split": [split_of(s, "salt") for s in shas],
            "source": "s",
            "batch_id": "b",
        }
    )


def test_the_content_hash_ignores_order_and_a_batch_updates_it_to_the_from_scratch_value():
    head = members(500, 0)
    total = frame_sum(head)
    assert total == frame_sum(head.sample(frac=1, random_state=1))
    assert version_hash(8, total) != version_hash(28, total), "the image size is part of the identity"
    one_label = head.assign(label=np.where(np.arange(500) == 7, (head.label + 1) % 10, head.label))
    assert frame_sum(one_label) != total

    # The next membership: 40 images gone, 30 relabelled, 60 new, 20 with only a new image id.
    target = head.iloc[40:].copy()
    target.loc[target.index[:30], "label"] = (target.label.iloc[:30] + 1) % 10
    target.loc[target.index[30:50], "image_id"] = "other copy"
    target = pd.concat([target, members(60, 1)], ignore_index=True).sample(frac=1, random_state=2)
    diff = membership_diff(target, head)
    assert (len(diff.added), len(diff.removed), len(diff.changed), len(diff.updated)) == (60, 40, 30, 20)
    assert set(diff.dropped.sha256) == set(diff.removed.sha256) | set(diff.changed.sha256) | set(diff.updated.sha256)
    assert len(diff.appended) == 110
    assert diff.content_sum(total) == frame_sum(target) == content_sum(target.sha256, target.label, target.split)
    # Only the images looked at are compared: the head's other rows are not in the diff.
    assert membership_diff(target.iloc[:0], head.iloc[:0]).empty


def test_a_new_version_stores_only_what_changed_and_hashes_as_a_rebuild_would(tmp_path):
    lake = Lake(tmp_path / "lake")
    first = lake.land("b1", range(300))
    v1 = lake.features()
    assert v1.rebuild_reason and v1.new_version and v1.added == 300 and v1.pixels_written == 300
    store = DatasetStore(lake.datasets, 8)
    files_v1 = {p for p in store.folder.local_path().rglob("*") if p.is_file()}
    bytes_v1 = sum(p.stat().st_size for p in files_v1)
    fragments_v1 = {f.fragment_id for f in store._members(v1.dataset_hash).get_fragments()}

    lake.land("b2", range(1000, 1050))
    shas = first.sha256.tolist()
    lake.review(
        "r1", [(s, "relabel", (i + 3) % 10) for i, s in enumerate(shas[:5])] + [(s, "exclude", None) for s in shas[5:8]]
    )
    lake.drop(shas[8:10])
    v2 = lake.features()
    assert not v2.rebuild_reason and v2.parent_hash == v1.dataset_hash
    assert (v2.added, v2.removed, v2.relabelled, v2.pixels_written) == (50, 5, 5, 50)
    assert v2.n_images == 300 + 50 - 5 and v2.decisions == {"exclude": 3, "relabel": 5}

    # The pixels of the first version were not written again, and its fragments are shared.
    assert store.pixel_count() == 350
    assert {f.fragment_id for f in store._members(v2.dataset_hash).get_fragments()} >= fragments_v1
    assert all(p.is_file() for p in files_v1), "a new version never rewrites a file of an older one"
    grown = sum(p.stat().st_size for p in store.folder.local_path().rglob("*") if p.is_file()) - bytes_v1
    assert 0 < grown < 0.4 * bytes_v1, (grown, bytes_v1)
    stats = lake.sql(f"SELECT sha256, image_size, dataset_hash FROM {T.IMAGE_STATS}")
    assert len(stats) == 350 and stats.sha256.is_unique and stats.dataset_hash.isna().all()
    changes = lake.sql(f"SELECT * FROM {T.DATASET_CHANGES} WHERE dataset_hash = ?", [v2.dataset_hash])
    assert changes.groupby("change").size().to_dict() == {"added": 50, "removed": 5, "relabelled": 5}
    removed = changes[changes.change == "removed"].set_index("sha256").decision
    assert removed.loc[shas[5:8]].eq("exclude").all() and removed.loc[shas[8:10]].isna().all()

    # The identity is the content's: the hash, recorded sum and counts equal those of a rebuild of this state.
    expected = lake.expected()
    version = open_version(lake.datasets, v2.dataset_hash)
    index = version.index()
    pd.testing.assert_frame_equal(
        index[["sha256", "label", "split"]].sort_values("sha256", ignore_index=True),
        expected[["sha256", "label", "split"]],
    )
    assert v2.dataset_hash == version_hash(8, frame_sum(expected))
    record = lake.sql(f"SELECT * FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [v2.dataset_hash]).iloc[0]
    assert int(record.content_sum, 16) == frame_sum(expected) and record.n_images == len(expected)
    assert record.n_train == (expected.split == "train").sum() and record.format == "lance"
    head = lake.sql(f"SELECT * FROM {T.HEAD_MEMBERS}").sort_values("sha256", ignore_index=True)
    pd.testing.assert_frame_equal(head[["sha256", "label", "split"]], expected[["sha256", "label", "split"]])
    rebuilt = lake.features(SplitSettings(8, "other-salt", 0.15, 0.15))  # new settings: built whole
    assert rebuilt.rebuild_reason and rebuilt.dataset_hash != v2.dataset_hash
    again = lake.features()  # and back: the same content as v2, the same name, its tag reused
    assert again.rebuild_reason and again.dataset_hash == v2.dataset_hash
    assert lake.features().wrote_store is False, "nothing changed since: no new version"


def test_every_version_loads_by_hash_after_later_ones_were_written(tmp_path):
    lake = Lake(tmp_path / "lake")
    # A dataset version of release 0.2: an npy folder.
    old = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(12)], "image_id": "x", "label": np.arange(12) % 3})
    old = old.assign(split=[SPLITS[i % 3] for i in range(12)], source="s", batch_id="b")
    old_hash = "e" * 64
    old_pixels = np.random.default_rng(0).random((12, 4, 4), np.float32)
    DatasetVersion(lake.datasets, old_hash).write(old, old_pixels)

    shas, wanted = [], {}
    for k, seeds in enumerate([range(0, 120), range(200, 260), range(300, 330)]):
        shas += lake.land(f"b{k}", seeds).sha256.tolist()
        if k == 2:
            lake.review("r", [(shas[0], "relabel", 7), (shas[1], "exclude", None)])
        run = lake.features()
        wanted[run.dataset_hash] = lake.expected()
    assert len(wanted) == 3

    npy = open_version(lake.datasets, old_hash)
    assert isinstance(npy, DatasetVersion)
    x, y = npy.split("val")
    assert np.array_equal(x, old_pixels[old.split == "val"]) and np.array_equal(y, old.label[old.split == "val"])
    for dataset_hash, expected in wanted.items():
        version = open_version(lake.datasets, dataset_hash)
        assert isinstance(version, LanceVersion) and version.exists()
        index = version.index()
        assert list(index.columns) == ["sha256", "image_id", "label", "split", "source", "batch_id", "position"]
        assert len(index) == len(expected) and set(index.sha256) == set(expected.sha256)
        for split in SPLITS:
            x, y = load_split(split, data_dir=lake.root, dataset_hash=dataset_hash)
            x_want, y_want = lake.expected_split(expected, split)
            assert np.array_equal(x, x_want) and np.array_equal(y, y_want), (dataset_hash[:8], split)
            part = index[index.split == split]
            assert part.sha256.is_monotonic_increasing and (part.position == np.arange(len(part))).all()
    with pytest.raises(FileNotFoundError):
        open_version(lake.datasets, "f" * 64)
    with pytest.raises(ValueError):
        open_version(lake.datasets, "not a hash")


def test_a_run_that_died_before_its_warehouse_transaction_is_undone(tmp_path):
    """Lance written, the warehouse not: the next run restores the head's members version, reuses the pixels
    the dead run stored, and ends where an uninterrupted run ends."""
    reference, crashed = Lake(tmp_path / "reference"), Lake(tmp_path / "crashed")
    for lake in (reference, crashed):
        lake.land("b1", range(100))
        assert lake.features().new_version
        lake.land("b2", range(500, 540))
    done = reference.features()

    # What the dead run wrote before dying: the batch's pixels, a members version, a tag; then another
    # (as if a second attempt died half way) that deleted every member.
    store = DatasetStore(crashed.datasets, 8)
    recorded = crashed.sql(f"SELECT count(*) AS n FROM {T.PIXEL_ROWS}").n.item()
    new = crashed.sql(f"SELECT * FROM {T.CLEAN_IMAGES} WHERE batch_id = 'b2' ORDER BY sha256")
    loaded = list(
        store.write_pixels(
            list(new.sha256), lambda s: canonical_array([crashed.objects.get(v) for v in s], 8), recorded
        )
    )
    rows = np.concatenate([r for _, _, r in loaded])
    dead = new.assign(split=[split_of(s, "test-salt") for s in new.sha256], row=rows)
    version, _ = store.write_members(None, dead)
    store.tag(done.dataset_hash, version)
    store.write_members(crashed.sql(f"SELECT sha256, member_addr FROM {T.HEAD_MEMBERS}"), dead.iloc[:0])
    assert len(store.members(store.latest_version(), ["sha256"])) == 40
    head_version = crashed.sql(f"SELECT lance_version FROM {T.DATASET_HEAD}").lance_version.item()
    assert store.latest_version() != head_version

    rerun = crashed.features()
    assert rerun.dataset_hash == done.dataset_hash and rerun.new_version
    assert rerun.pixels_written == 40 and store.pixel_count() == 140, "the dead run's pixels were reused"
    for table, key in ((T.PIXEL_ROWS, "sha256"), (T.HEAD_MEMBERS, "sha256"), (T.DATASET_CHANGES, "sha256")):
        a = reference.sql(
            f"SELECT * EXCLUDE (written_at) FROM {table}" if table == T.PIXEL_ROWS else f"SELECT * FROM {table}"
        )
        b = crashed.sql(
            f"SELECT * EXCLUDE (written_at) FROM {table}" if table == T.PIXEL_ROWS else f"SELECT * FROM {table}"
        )
        a, b = (f.drop(columns=["member_addr"], errors="ignore").sort_values(key, ignore_index=True) for f in (a, b))
        pd.testing.assert_frame_equal(a, b, obj=table)
    latest = store.members(store.latest_version()).sort_values("sha256", ignore_index=True)
    tagged = open_version(crashed.datasets, done.dataset_hash).index()
    assert set(latest.sha256) == set(tagged.sha256) == set(crashed.expected().sha256)
    for split in SPLITS:
        x, y = open_version(crashed.datasets, done.dataset_hash).split(split)
        x_ref, y_ref = open_version(reference.datasets, done.dataset_hash).split(split)
        assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)


def test_a_reader_takes_what_the_split_holds_and_trains_the_same_weights(tmp_path):
    from dc_pipeline.core.ml.training import TrainConfig, train

    lake = Lake(tmp_path / "lake")
    lake.land("b1", range(200))
    version = open_version(lake.datasets, lake.features().dataset_hash)
    x, y = version.split("train")
    order = np.random.default_rng(0).permutation(len(y))
    streamed, cached = version.reader("train", cache_bytes=0), version.reader("train")
    assert len(streamed) == len(y) and np.array_equal(streamed.labels, y)
    assert np.array_equal(streamed.take(order[:37]), x[order[:37]]) and not streamed.cached
    assert np.array_equal(cached.take(order), x[order]) and cached.cached
    assert streamed.take([]).shape == (0, 8, 8)

    cfg = TrainConfig(epochs=2, width=4, batch_size=16, n_classes=10, threads=1)
    xv, yv = version.split("val")
    from_arrays = train(x, y, xv, yv, cfg)
    from_reader = train(streamed, streamed.labels, version.reader("val", cache_bytes=0), yv, cfg)
    assert from_reader.weights_sha256 == from_arrays.weights_sha256
    assert [h["val_error"] for h in from_reader.history] == [h["val_error"] for h in from_arrays.history]


def test_rows_that_moved_in_the_store_are_still_found(tmp_path):
    """Compaction moves rows to new addresses. Done behind the warehouse's back it is undone like a dead run's
    write; and a delete whose recorded addresses no longer hold its images finds them by sha256."""
    import lance

    lake = Lake(tmp_path / "lake")
    shas = lake.land("b1", range(120)).sha256.tolist()
    lake.features()
    lake.drop(shas[:10])
    lake.features()
    store = DatasetStore(lake.datasets, 8)
    lance.dataset(store.members_uri).optimize.compact_files(materialize_deletions_threshold=0.0)
    head = lake.sql(f"SELECT sha256, member_addr FROM {T.HEAD_MEMBERS} ORDER BY sha256")
    moved = store.members(store.latest_version(), ["sha256"])
    store.write_members(
        head.iloc[:3], head.iloc[:0].assign(image_id="", label=0, split="", source="", batch_id="", row=0)
    )
    left = set(store.members(store.latest_version(), ["sha256"]).sha256)
    assert left == set(moved.sha256) - set(head.sha256[:3]), "found by sha256 at their new addresses"

    lake.drop(shas[10:15])
    lake.land("b2", range(500, 520))
    run = lake.features()
    expected = lake.expected()
    index = open_version(lake.datasets, run.dataset_hash).index()
    assert sorted(index.sha256) == list(expected.sha256) and run.dataset_hash == version_hash(8, frame_sum(expected))
    assert set(store.members(store.latest_version(), ["sha256"]).sha256) == set(expected.sha256)
