"""The Python API users and later assets share.

    from dc_pipeline.api import load_model, load_split

    model = load_model("champion")            # an alias or a version id
    probs = model.predict_proba(images_uint8)   # [N, H, W] or [N, H, W, C], any size -> [N, K]
    x, y = load_split("test")                 # canonical images [N, S, S] float32 and class ids

Paths come from the settings (``dc_pipeline.settings``: ``DC_DATA_DIR``, ``DC_WAREHOUSE``, exported
variables over ``.env``); a ``data_dir`` argument means that folder and its own ``warehouse.duckdb``.
The warehouse is opened read-only, so this works while Dagster is idle between steps; a step that is
writing holds DuckDB's lock. Every file read is contained in the data folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dc_pipeline.core.ml.inference import LoadedModel

__all__ = ["load_model", "load_split", "LoadedModel"]


def data_paths(data_dir: str | Path | None = None, warehouse: str | Path | None = None) -> tuple[Path, Path]:
    """(data folder, warehouse file): an explicit ``data_dir`` brings its own warehouse; otherwise both come
    from the settings."""
    from dc_pipeline.settings import get_settings

    if data_dir is not None:
        data = Path(data_dir).resolve()
        return data, Path(warehouse) if warehouse else data / "warehouse.duckdb"
    settings = get_settings()
    return settings.data_dir, Path(warehouse) if warehouse else settings.warehouse_path


def load_model(ref: str, data_dir: str | Path | None = None, warehouse: str | Path | None = None) -> LoadedModel:
    """The model version ``ref`` (a version id, ``champion`` or ``challenger``), weights verified by sha256.

    Raises ``RegistryError`` if the version is unknown or its weights file no longer matches the registry.
    """
    from dc_pipeline.core.ml.inference import build_loaded
    from dc_pipeline.core.ml.registry import Registry
    from dc_pipeline.warehouse.connect import read_warehouse

    data, db = data_paths(data_dir, warehouse)
    with read_warehouse(db) as conn:
        record, state = Registry(conn, data / "artifacts").load_weights(ref)
    return build_loaded(record, state)


def load_split(
    name: str, data_dir: str | Path | None = None, warehouse: str | Path | None = None, dataset_hash: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical images ``[N, S, S]`` (float32 in [0, 1]) and class ids of split ``name`` of the current
    dataset version (or of ``dataset_hash``)."""
    from dc_pipeline.core.data.features import DatasetVersion
    from dc_pipeline.warehouse.connect import read_warehouse

    data, db = data_paths(data_dir, warehouse)
    if dataset_hash is None:
        with read_warehouse(db) as conn:
            row = conn.execute("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").fetchone()
        if row is None:
            raise LookupError("no current dataset version: materialize features/dataset_version first")
        dataset_hash = row[0]
    version = DatasetVersion(data / "datasets", dataset_hash)
    if not version.exists():
        raise FileNotFoundError(f"dataset version {dataset_hash} has no shards under {version.folder}")
    return version.split(name)
