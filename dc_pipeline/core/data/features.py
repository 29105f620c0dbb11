"""Features: split assignment, the canonical model input, per-image statistics, and the npy dataset versions
of releases before 0.3 (``DatasetVersion``; newer versions live in Lance stores, ``dataset_store``).

An npy version is identified by sha256 over the sorted (image sha256, label, split) triples (``dataset_hash``),
so the same images with the same labels and splits always give the same hash, wherever they came from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def split_of(sha256: str, salt: str, val_share: float = 0.15, test_share: float = 0.15) -> str:
    """Deterministic split from the image's content hash: an image keeps its split as data grows."""
    u = int.from_bytes(hashlib.sha256(f"{salt}:{sha256}".encode()).digest()[:8], "big") / 2**64
    if u < test_share:
        return "test"
    if u < test_share + val_share:
        return "val"
    return "train"


def dataset_hash(sha256s: list[str], labels: list[int], splits: list[str]) -> str:
    triples = sorted(zip(sha256s, (int(v) for v in labels), splits))
    return hashlib.sha256(json.dumps(triples, separators=(",", ":")).encode()).hexdigest()


def canonical_array(images: list[bytes], size: int) -> np.ndarray:
    """Decode to grayscale ``size`` x ``size`` float32 in [0, 1]: ``[N, size, size]``."""
    from dc_pipeline.core.data.images import to_grayscale_array

    if not images:
        return np.zeros((0, size, size), np.float32)
    return np.stack([to_grayscale_array(data, size) for data in images])


def image_statistics(x: np.ndarray, ink_threshold: float = 0.5) -> pd.DataFrame:
    """Per-image statistics for monitoring and slicing, vectorized over ``[N, H, W]`` in [0, 1]."""
    n, h, w = x.shape
    flat = x.reshape(n, -1)
    mass = flat.sum(axis=1)
    safe = np.where(mass > 0, mass, 1.0)
    rows, cols = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    com_y = (x.sum(axis=2) * rows).sum(axis=1) / safe / max(h - 1, 1)
    com_x = (x.sum(axis=1) * cols).sum(axis=1) / safe / max(w - 1, 1)
    gy, gx = np.gradient(x, axis=(1, 2))
    lap = -4 * x[:, 1:-1, 1:-1] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]
    ink = x > ink_threshold
    any_row, any_col = ink.any(axis=2), ink.any(axis=1)

    def extent(mask: np.ndarray) -> np.ndarray:
        first = mask.argmax(axis=1)
        last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        return np.where(mask.any(axis=1), last - first + 1, 0) / mask.shape[1]

    return pd.DataFrame(
        {
            "mean_intensity": flat.mean(axis=1),
            "contrast": flat.std(axis=1),
            "ink_fraction": ink.reshape(n, -1).mean(axis=1),
            "edge_energy": np.sqrt(gx**2 + gy**2).reshape(n, -1).mean(axis=1),
            "sharpness": lap.reshape(n, -1).var(axis=1),
            "center_of_mass_x": np.where(mass > 0, com_x, 0.5),
            "center_of_mass_y": np.where(mass > 0, com_y, 0.5),
            "bbox_width": extent(any_col),
            "bbox_height": extent(any_row),
        }
    ).astype("float64")


STAT_COLUMNS = list(image_statistics(np.zeros((1, 4, 4), np.float32)).columns)


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset version on disk: ``<root>/<hash>/{split}.images.npy``, ``{split}.labels.npy`` and ``index.parquet``."""

    root: Path
    hash: str

    def __post_init__(self) -> None:
        if not (
            isinstance(self.hash, str) and len(self.hash) == 64 and all(c in "0123456789abcdef" for c in self.hash)
        ):
            raise ValueError(f"{self.hash!r} is not a dataset hash (64 lowercase hex digits)")

    @property
    def folder(self) -> Path:
        return self.root / self.hash

    def exists(self) -> bool:
        return (self.folder / "index.parquet").is_file()

    def write(self, index: pd.DataFrame, images: np.ndarray) -> None:
        """Write the shards once (a version is immutable); ``index`` rows align with ``images``. They are
        written into a temporary folder of this process, renamed into place whole: a killed writer leaves
        no version folder, only a temporary one, which the next write removes."""
        if self.exists():
            return
        from dc_pipeline.core.atomic import remove_abandoned, temporary

        self.root.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.root)
        tmp = temporary(self.folder)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        ordered = []
        for split in SPLITS:
            mask = (index["split"] == split).to_numpy()
            np.save(tmp / f"{split}.images.npy", images[mask])
            np.save(tmp / f"{split}.labels.npy", index.loc[mask, "label"].to_numpy(np.int64))
            ordered.append(index[mask].assign(position=np.arange(int(mask.sum()))))
        pd.concat(ordered).to_parquet(tmp / "index.parquet", index=False)
        try:
            tmp.rename(self.folder)
        except OSError:  # written meanwhile by another process: the same content, keep that one
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.exists():
                raise

    def split(self, name: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; one of {SPLITS}")
        mode = "r" if mmap else None
        return (
            np.load(self.folder / f"{name}.images.npy", mmap_mode=mode),
            np.load(self.folder / f"{name}.labels.npy"),
        )

    def index(self) -> pd.DataFrame:
        return pd.read_parquet(self.folder / "index.parquet")

    def sha256s(self) -> np.ndarray:
        """The member images' sha256 (any order)."""
        return pd.read_parquet(self.folder / "index.parquet", columns=["sha256"])["sha256"].to_numpy()

    def reader(self, name: str, cache_bytes: int | None = None) -> ArrayReader:
        """Split ``name`` for bounded-memory training: the shard is memory-mapped, rows are read as taken."""
        return ArrayReader(*self.split(name, mmap=True))


class ArrayReader:
    """A split held as arrays (or memory-mapped shards): ``len``, ``labels``, ``take(indices)`` -> float32
    ``[n, S, S]`` in the order of ``indices``. What ``core.ml.training.train`` reads minibatches from."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)

    def take(self, indices) -> np.ndarray:
        return np.ascontiguousarray(self.images[np.asarray(indices, np.int64)], dtype=np.float32)
