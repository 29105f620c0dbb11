"""Dataset versions and model artifacts in S3-compatible object storage (a real S3 API server, moto, on
127.0.0.1): the same code paths as on the local disk, the same stored relative paths, the same refusals."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from dc_pipeline.core.data.dataset_store import DatasetStore, open_version
from dc_pipeline.core.data.retention import prune_versions
from dc_pipeline.core.ml.registry import Registry, RegistryError
from dc_pipeline.core.storage import Location, OutsideStorageRoot, storage_root
from dc_pipeline.ops.loopback import free_port, wait_for_port
from dc_pipeline.warehouse.migrations import WAREHOUSE, migrate

BUCKET = "dc-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
    try:
        wait_for_port(port, timeout=30, pid=server.pid)
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def root(s3_endpoint, request) -> Location:
    return storage_root("/unused", f"s3://{BUCKET}/{request.node.name}", s3_endpoint)


def members(shas: list[str], first_row: int = 0, split: str = "train") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sha256": shas,
            "image_id": [f"img-{s}" for s in shas],
            "label": np.arange(len(shas)) % 10,
            "split": split,
            "source": "field_app",
            "batch_id": "b1",
            "row": np.arange(first_row, first_row + len(shas), dtype=np.int64),
        }
    )


def test_a_lance_store_in_object_storage_keeps_every_version_readable(root):
    store = DatasetStore(root / "datasets", 8)
    assert not store.members_exist() and store.latest_version() is None
    shas = [f"{i:064x}" for i in range(40)]
    pixels = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32)
    for _, _, rows in store.write_pixels(shas, lambda part: pixels[[shas.index(s) for s in part]], recorded=0):
        assert (rows >= 0).all()
    v1, _ = store.write_members(None, members(shas[:30]))
    store._members().tags.create("a" * 64, v1)
    v2, added = store.write_members(None, members(shas[30:], first_row=30))
    store._members().tags.create("b" * 64, v2)
    assert v2 > v1 and len(added) == 10
    assert store.folder.uri.startswith(f"s3://{BUCKET}/") and store.members_exist()
    assert not Path("/unused").exists()

    first, second = open_version(root / "datasets", "a" * 64), open_version(root / "datasets", "b" * 64)
    assert len(first.sha256s()) == 30 and len(second.sha256s()) == 40  # the older version stays readable
    x, _ = second.split("train")
    np.testing.assert_array_equal(x, pixels[np.argsort(shas)])
    with pytest.raises(FileNotFoundError):
        open_version(root / "datasets", "c" * 64)

    stats = prune_versions(root / "datasets", ["a" * 64], protect={8: {v2}})
    assert stats["lance_tags"] == 1 and stats["lance_versions"] >= 1
    with pytest.raises(FileNotFoundError):
        open_version(root / "datasets", "a" * 64)
    assert len(open_version(root / "datasets", "b" * 64).sha256s()) == 40


def test_registry_artifacts_in_object_storage(root, tmp_path):
    import torch

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    migrate(conn, tmp_path, WAREHOUSE)
    registry = Registry(conn, root / "artifacts")
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    kw = {"dataset_hash": "d" * 64, "code": {"label": "t"}, "config": {}, "seed": 0, "model_spec": {}, "run_id": None}
    version_id, created = registry.register("baseline", state, **kw)
    assert created
    record = registry.get(version_id)
    assert record["weights_path"] == f"artifacts/models/{version_id}/weights.safetensors"  # as on the local disk
    weights = root / record["weights_path"]
    assert weights.is_file() and (weights.parent / "model.json").is_file()
    _, loaded = registry.load_weights(version_id)
    assert torch.equal(loaded["w"], state["w"])

    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # tampered in the bucket
    with pytest.raises(RegistryError, match="sha256"):
        registry.load_weights(version_id)
    assert registry.register("baseline", state, **kw) == (version_id, False)  # repairs the object
    registry.load_weights(version_id)

    conn.execute("UPDATE registry.models SET weights_path = '../elsewhere/weights.safetensors'")
    with pytest.raises(RegistryError):
        registry.load_weights(version_id)


def test_a_location_never_leaves_its_root(root):
    for bad in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(OutsideStorageRoot):
            root / bad
