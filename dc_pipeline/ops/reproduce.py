"""Reproduce a registered model: retrain from its recorded dataset, config and seed; compare the weights."""

from __future__ import annotations

from pathlib import Path


def reproduce(ref: str, data_dir: Path, warehouse: str | Path | None = None) -> int:
    """Retrain from the recorded dataset hash, config and seed; 0 when the weights' sha256 matches."""
    from dc_pipeline.api import storage
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.ml.inference import class_index
    from dc_pipeline.core.ml.registry import Registry
    from dc_pipeline.core.ml.training import TrainConfig, train
    from dc_pipeline.core.provenance import code_version
    from dc_pipeline.warehouse.connect import read_warehouse

    data = Path(data_dir)
    db = str(warehouse or data / "warehouse.duckdb")
    with read_warehouse(db) as conn:
        record = Registry(conn, storage(data) / "artifacts").get(ref)
    classes = record["model_spec"]["classes"]
    version = open_version(storage(data) / "datasets", record["dataset_hash"])
    splits = {s: version.reader(s) for s in ("train", "val")}  # read as training reads them
    now = code_version()
    print(
        f"reproducing {record['version_id']} ({record['kind']}) on dataset {record['dataset_hash'][:12]}, "
        f"seed {record['seed']}; recorded code {record['code_version']}, current code {now['label']}"
    )
    result = train(
        splits["train"],
        class_index(splits["train"].labels, classes),
        splits["val"],
        class_index(splits["val"].labels, classes),
        TrainConfig(**record["config"]),
        mode=record["kind"],
    )
    same = result.weights_sha256 == record["weights_sha256"]
    print(f"registered weights sha256 {record['weights_sha256']}\nretrained  weights sha256 {result.weights_sha256}")
    print(
        "MATCH: bit-identical weights"
        if same
        else "MISMATCH: the weights differ"
        + ("" if now["label"] == record["code_version"] else " (the code version differs too)")
    )
    return 0 if same else 1
