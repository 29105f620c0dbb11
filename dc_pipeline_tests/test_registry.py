"""The registry on its own: lineage, sha256 verification, alias history (the gate: test_evidence.py)."""

import pytest
import torch

from dc_pipeline.core.ml.registry import Registry, RegistryError
from dc_pipeline.warehouse.connect import connect


@pytest.fixture
def registry(tmp_path):
    with connect(tmp_path / "w.duckdb", tmp_path) as conn:  # a migrated warehouse: the registry's tables
        yield Registry(conn, tmp_path / "artifacts")


def weights(seed):
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": torch.randn(4, 3, generator=g), "layer.bias": torch.zeros(4)}


def register(registry, seed, kind="augmix"):
    return registry.register(
        kind,
        weights(seed),
        dataset_hash="d" * 64,
        code={"commit": "abc", "dirty": False, "label": "abc"},
        config={"lr": 0.1},
        seed=seed,
        model_spec={"classes": [0, 1]},
        run_id="run-1",
    )


def test_register_is_content_addressed_and_keeps_lineage(registry):
    vid, created = register(registry, 1)
    assert created and vid.startswith("augmix-")
    assert register(registry, 1) == (vid, False), "identical weights are the same version"
    record = registry.get(vid)
    assert record["dataset_hash"] == "d" * 64 and record["config"] == {"lr": 0.1} and record["seed"] == 1
    assert record["code_commit"] == "abc" and record["dagster_run_id"] == "run-1"
    _, state = registry.load_weights(vid)
    assert torch.equal(state["layer.weight"], weights(1)["layer.weight"])


def test_tampered_weights_are_refused(registry):
    vid, _ = register(registry, 2)
    path = registry.root / registry.get(vid)["weights_path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="changed on disk"):
        registry.load_weights(vid)


def test_alias_moves_are_recorded(registry):
    a, _ = register(registry, 3)
    b, _ = register(registry, 4)
    with pytest.raises(RegistryError):
        registry.resolve("champion") and registry.get("champion")
    assert registry.set_alias("champion", a, "first")
    assert not registry.set_alias("champion", a, "again"), "no move, no history row"
    assert registry.set_alias("champion", b, "better")
    assert registry.get("champion")["version_id"] == b
    history = registry.conn.execute(
        "SELECT from_version, to_version, reason FROM registry.alias_history ORDER BY moved_at"
    ).fetchall()
    assert history == [(None, a, "first"), (a, b, "better")]


@pytest.mark.parametrize("stored", ["/etc/passwd", "../outside/weights.safetensors", "artifacts/../../x"])
def test_weights_outside_the_data_folder_are_refused(registry, stored):
    vid, _ = register(registry, 5)
    registry.conn.execute("UPDATE registry.models SET weights_path = ? WHERE version_id = ?", [stored, vid])
    with pytest.raises(RegistryError, match="data folder"):
        registry.load_weights(vid)
