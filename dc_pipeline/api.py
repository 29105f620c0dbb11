"""The Python API users and later assets share.

    from dc_pipeline.api import load_model, load_split

    model = load_model("champion")            # an alias or a version id
    probs = model.predict_proba(images_uint8)   # [N, H, W] or [N, H, W, C], any size -> [N, K]
    x, y = load_split("test")                 # canonical images [N, S, S] float32 and class ids

Paths default to ``DC_DATA_DIR`` (default ``data``) and ``DC_WAREHOUSE`` (default
``<data>/warehouse.duckdb``); a ``data_dir`` argument means ``<data_dir>/warehouse.duckdb``. The warehouse is opened read-only, so this works while Dagster is idle
between steps; a step that is writing holds DuckDB's lock.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dc_pipeline.core.modeling import LoadedModel

__all__ = ["load_model", "load_split", "LoadedModel"]


def _paths(data_dir: str | Path | None, warehouse: str | Path | None) -> tuple[Path, Path]:
    """An explicit ``data_dir`` brings its own warehouse; otherwise both come from the environment."""
    if warehouse:
        return Path(data_dir or os.getenv("DC_DATA_DIR", "data")), Path(warehouse)
    if data_dir:
        return Path(data_dir), Path(data_dir) / "warehouse.duckdb"
    data = Path(os.getenv("DC_DATA_DIR", "data"))
    return data, Path(os.getenv("DC_WAREHOUSE") or data / "warehouse.duckdb")


@contextmanager
def _connect(path: Path):
    import duckdb

    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path}: materialize the pipeline first")
    conn = duckdb.connect(str(path), read_only=True)
    try:
        yield conn
    finally:
        conn.close()


def load_model(ref: str, data_dir: str | Path | None = None, warehouse: str | Path | None = None) -> LoadedModel:
    """The model version ``ref`` (a version id, ``champion`` or ``challenger``), weights verified by sha256.

    Raises ``RegistryError`` if the version is unknown or its weights file no longer matches the registry.
    """
    from dc_pipeline.core.modeling import build_loaded
    from dc_pipeline.core.registry import Registry

    data, db = _paths(data_dir, warehouse)
    with _connect(db) as conn:
        record, state = Registry(conn, data / "artifacts").load_weights(ref)
    return build_loaded(record, state)


def load_split(name: str, data_dir: str | Path | None = None, warehouse: str | Path | None = None,
               dataset_hash: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical images ``[N, S, S]`` (float32 in [0, 1]) and class ids of split ``name`` of the current
    dataset version (or of ``dataset_hash``)."""
    from dc_pipeline.core.features import DatasetVersion

    data, db = _paths(data_dir, warehouse)
    if dataset_hash is None:
        with _connect(db) as conn:
            row = conn.execute("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").fetchone()
        if row is None:
            raise LookupError("no current dataset version: materialize features/dataset_version first")
        dataset_hash = row[0]
    version = DatasetVersion(data / "datasets", dataset_hash)
    if not version.exists():
        raise FileNotFoundError(f"dataset version {dataset_hash} has no shards under {version.folder}")
    return version.split(name)
