"""Retention: a dry run lists what would go and deletes nothing; a real run prunes exactly that, and every
version a registered model was trained on, the published one and the head stay loadable by hash."""

import numpy as np
import pytest

from dc_pipeline.api import load_split
from dc_pipeline.catalog import PRUNE_JOB
from dc_pipeline.core.data.dataset_store import open_version
from dc_pipeline.defs import build_definitions
from dc_pipeline.defs.resources import RetentionPolicy
from dc_pipeline_tests.conftest import make_pipeline, tiny_run_config


def _prune(p, dry_run: bool) -> dict:
    job = p.defs.resolve_job_def(PRUNE_JOB)
    result = job.execute_in_process(
        instance=p.instance, run_config={"ops": {"prune_versions": {"config": {"dry_run": dry_run}}}}
    )
    assert result.success
    return result.output_for_node("prune_versions")


def test_prune_keeps_what_models_were_trained_on_and_dry_run_deletes_nothing(tmp_path):
    p = make_pipeline(tmp_path)
    p.resources["retention"] = RetentionPolicy(keep_last_versions=0, keep_days=0, report_days=0)
    p.defs = build_definitions(p.resources)
    batches = [(s, b.name) for s in ("field_app", "partner_api") for b in sorted((p.landing / s).iterdir())]
    assert len(batches) >= 3
    hashes = []
    for i, (source, batch) in enumerate(batches[:3]):
        assert p.ingest(source, batch).success
        assert p.refresh_data().success
        hashes.append(p.sql("SELECT dataset_hash FROM features.head")["dataset_hash"].item())
        if i == 0:  # models are trained (and registered, whatever the gate says) on the first version
            p.refresh(run_config=tiny_run_config(epochs=1))
    assert len(set(hashes)) == 3
    trained_on = set(p.sql("SELECT DISTINCT dataset_hash FROM registry.models")["dataset_hash"])
    assert trained_on == {hashes[0]}
    before = {h: load_split("train", p.data, dataset_hash=h) for h in hashes}

    planned = _prune(p, dry_run=True)
    assert planned["pruned"] == [hashes[1]]
    for h in hashes:  # nothing deleted
        open_version(p.data / "datasets", h)

    done = _prune(p, dry_run=False)
    assert done["pruned"] == [hashes[1]] and done["lance_tags"] == 1 and done["lance_versions"] >= 1
    with pytest.raises(FileNotFoundError):
        open_version(p.data / "datasets", hashes[1])
    for h in (hashes[0], hashes[2]):  # the model's version and the published head, bit for bit
        x, y = load_split("train", p.data, dataset_hash=h)
        assert np.array_equal(x, before[h][0]) and np.array_equal(y, before[h][1])
    pruned = p.sql("SELECT dataset_hash FROM features.dataset_versions WHERE pruned_at IS NOT NULL")
    assert list(pruned["dataset_hash"]) == [hashes[1]]
    assert _prune(p, dry_run=True)["pruned"] == []  # pruned once
