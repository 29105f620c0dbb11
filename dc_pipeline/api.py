"""The Python API users and later assets share.

    from dc_pipeline.api import load_model, load_split

    model = load_model("champion")            # an alias or a version id
    probs = model.predict_proba(images_uint8)   # [N, H, W] or [N, H, W, C], any size -> [N, K]
    x, y = load_split("test")                 # canonical images [N, S, S] float32 and class ids

Paths come from the settings (``dc_pipeline.settings``: ``DC_DATA_DIR``, ``DC_WAREHOUSE``, exported
variables over ``.env``); a ``data_dir`` argument means that folder and its own ``warehouse.duckdb``.
The warehouse is opened read-only. While a run's step writes it (DuckDB lets one process open a file
being written), a reader waits up to ``wait_seconds`` and then raises ``WarehouseBusy`` naming the run.
Every file read is contained in the data folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dc_pipeline.core.ml.inference import LoadedModel
from dc_pipeline.warehouse.connect import READ_WAIT_SECONDS, WarehouseBusy

__all__ = ["load_model", "load_split", "LoadedModel", "WarehouseBusy"]


def data_paths(data_dir: str | Path | None = None, warehouse: str | Path | None = None) -> tuple[Path, str]:
    """(data folder, warehouse: its DuckDB file or PostgreSQL URL): an explicit ``data_dir`` brings its own
    warehouse file; otherwise both come from the settings (the readers' URL, DC_WAREHOUSE_READ_URL, when set)."""
    from dc_pipeline.settings import get_settings

    if data_dir is not None:
        data = Path(data_dir).resolve()
        return data, str(warehouse) if warehouse else str(data / "warehouse.duckdb")
    settings = get_settings()
    return settings.data_dir, str(warehouse) if warehouse else settings.warehouse_read_location


def storage(data_dir: Path):
    """Where dataset versions and artifacts are: the settings' object store when there is one, else ``data_dir``."""
    from dc_pipeline.core.storage import storage_root
    from dc_pipeline.settings import get_settings

    settings = get_settings()
    return storage_root(data_dir, settings.object_store_url, settings.s3_endpoint_url)


def load_model(
    ref: str,
    data_dir: str | Path | None = None,
    warehouse: str | Path | None = None,
    wait_seconds: float = READ_WAIT_SECONDS,
) -> LoadedModel:
    """The model version ``ref`` (a version id, ``champion`` or ``challenger``), weights verified by sha256.

    Raises ``RegistryError`` if the version is unknown or its weights file no longer matches the registry,
    and ``WarehouseBusy`` (naming the run) if a run's step still writes the warehouse after ``wait_seconds``.
    """
    from dc_pipeline.core.ml.inference import build_loaded
    from dc_pipeline.core.ml.registry import Registry
    from dc_pipeline.warehouse.connect import read_warehouse

    data, db = data_paths(data_dir, warehouse)
    with read_warehouse(db, wait_seconds) as conn:
        record, state = Registry(conn, storage(data) / "artifacts").load_weights(ref)
    return build_loaded(record, state)


def load_split(
    name: str,
    data_dir: str | Path | None = None,
    warehouse: str | Path | None = None,
    dataset_hash: str | None = None,
    wait_seconds: float = READ_WAIT_SECONDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical images ``[N, S, S]`` (float32 in [0, 1]) and class ids of split ``name`` of the published
    dataset version (the last one that passed its checks), or of ``dataset_hash`` (any version still stored,
    of this release's Lance stores or an npy folder of an earlier one), ordered by image sha256.

    Raises ``FileNotFoundError`` when no store holds ``dataset_hash``, and ``WarehouseBusy`` (naming the run)
    if a run's step still writes the warehouse after ``wait_seconds``."""
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.warehouse.connect import read_warehouse
    from dc_pipeline.warehouse.queries import published_dataset_hash

    data, db = data_paths(data_dir, warehouse)
    if dataset_hash is None:
        with read_warehouse(db, wait_seconds) as conn:
            dataset_hash = published_dataset_hash(conn)
        if dataset_hash is None:
            raise LookupError(
                "no published dataset version: materialize features/dataset_version (a version is published "
                "once its blocking check passes)"
            )
    return open_version(storage(data) / "datasets", dataset_hash).split(name)
