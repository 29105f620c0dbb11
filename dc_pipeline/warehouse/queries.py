"""Reads that several stages share, answered by the tables' owners' schemas."""

from __future__ import annotations

from pathlib import Path

from dc_pipeline.catalog import T

PUBLISHED = "is_current AND status = 'published'"
"""The dataset version that passed its blocking checks last: the one every reader and training uses."""


def published_dataset_hash(conn) -> str | None:
    """The hash of the published dataset version, None before the first one passed its checks."""
    row = conn.execute(f"SELECT dataset_hash FROM {T.DATASET_VERSIONS} WHERE {PUBLISHED}").fetchall()
    return row[0][0] if row else None


def current_dataset_version(conn) -> dict:
    """The published dataset version (a staged one under audit, or one its checks rejected, never is)."""
    row = conn.execute(f"SELECT * FROM {T.DATASET_VERSIONS} WHERE {PUBLISHED}").df()
    if row.empty:
        raise ValueError(
            "no published dataset version yet: materialize features/dataset_version (it is published once "
            "its blocking check feature_expectations passes)"
        )
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


def labelled_predictions(conn, versions: tuple[str, ...] | None = None, answered_only: bool = False):
    """The scoring service's predictions whose images have a label by now (joined on the image's sha256 with
    the clean images' labels, reviews included): ``request_id``, ``arm``, ``answered``, ``model_version``,
    ``predicted_class``, ``routing``, ``label``; of ``versions`` only when given."""
    where = ["TRUE"] + (["p.answered"] if answered_only else [])
    params: list = []
    if versions is not None:
        where.append(f"p.model_version IN ({', '.join('?' for _ in versions)})")
        params += list(versions)
    return conn.execute(
        "SELECT p.request_id, p.arm, p.answered, p.model_version, p.predicted_class, p.routing, i.label "
        f"FROM {T.SERVED_PREDICTIONS} p JOIN (SELECT sha256, any_value(label) AS label FROM {T.CLEAN_IMAGES} "
        f"WHERE label IS NOT NULL GROUP BY sha256) i ON i.sha256 = p.image_sha256 WHERE {' AND '.join(where)}",
        params,
    ).df()


def labelled_prediction_counts(conn, versions: tuple[str, ...]) -> dict[str, int]:
    """How many requests each of ``versions`` scored (answered or shadow) whose images have a label by now."""
    marks = ", ".join("?" for _ in versions)
    rows = conn.execute(
        f"SELECT p.model_version, count(DISTINCT p.request_id) FROM {T.SERVED_PREDICTIONS} p "
        f"WHERE p.model_version IN ({marks}) AND p.image_sha256 IN "
        f"(SELECT sha256 FROM {T.CLEAN_IMAGES} WHERE label IS NOT NULL) GROUP BY p.model_version",
        list(versions),
    ).fetchall()
    return {version: int(n) for version, n in rows}
