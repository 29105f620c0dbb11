"""Reads that several stages share, answered by the tables' owners' schemas."""

from __future__ import annotations

from pathlib import Path

from dc_pipeline.catalog import T


def current_dataset_version(conn) -> dict:
    """The dataset version the latest features materialization published."""
    row = conn.execute(f"SELECT * FROM {T.DATASET_VERSIONS} WHERE is_current").df()
    if row.empty:
        raise ValueError("no dataset version yet: materialize features/dataset_version first")
    return row.iloc[0].to_dict()


def accepted_batch(conn, source: str, batch_id: str):
    """The accepted images of one landing batch (rows of clean.images), in image-id order."""
    return conn.execute(
        f"SELECT * FROM {T.CLEAN_IMAGES} WHERE source = ? AND batch_id = ? ORDER BY image_id", [source, batch_id]
    ).df()


def load_alias_model(conn, artifacts: str | Path, alias: str = "champion"):
    """The model an alias points to as a LoadedModel (weights verified), or None while it has none."""
    from dc_pipeline.core.ml.inference import build_loaded
    from dc_pipeline.core.ml.registry import Registry

    registry = Registry(conn, artifacts)
    if registry.alias(alias) is None:
        return None
    return build_loaded(*registry.load_weights(alias))


def canonical_batch(rows, lake, size: int):
    """The canonical arrays of ``rows`` (of clean.images) read from the lake's object store."""
    from dc_pipeline.core.data.features import canonical_array

    store = lake.object_store()
    return canonical_array([store.get(s) for s in rows["sha256"]], size)
