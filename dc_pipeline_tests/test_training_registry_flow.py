"""Training, evaluation, registry and promotion through the real assets, plus the public API."""

import hashlib
import io

import duckdb
import numpy as np
import pytest
from dagster import AssetCheckSeverity, AssetKey
from PIL import Image

from dc_pipeline.api import load_model, load_split
from dc_pipeline.catalog import JUDGE_JOB
from dc_pipeline.core.data.dataset_store import open_version
from dc_pipeline.core.ml.registry import RegistryError
from dc_pipeline.core.serving.prediction_log import PREDICTIONS_FOLDER, PredictionLog
from dc_pipeline.ops.reproduce import reproduce

from .conftest import tiny_run_config


def test_models_are_registered_with_lineage_and_the_first_is_promoted(demo):
    models = demo.sql("SELECT * FROM registry.models ORDER BY kind")
    assert list(models.kind) == ["augmix", "baseline"]
    current = demo.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()
    assert (models.dataset_hash == current).all()
    for row in models.itertuples():
        assert row.weights_path == f"artifacts/models/{row.version_id}/weights.safetensors"  # relative
        data = (demo.data / row.weights_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.weights_sha256
        assert row.version_id == f"{row.kind}-{row.weights_sha256[:12]}"
        assert row.code_version and row.dagster_run_id and '"epochs": 6' in row.config
    aliases = dict(demo.sql("SELECT alias, version_id FROM registry.aliases").values.tolist())
    augmix = models[models.kind == "augmix"].version_id.item()
    assert aliases == {"challenger": augmix, "champion": augmix}
    history = demo.sql("SELECT * FROM registry.alias_history WHERE alias = 'champion'")
    assert len(history) == 1 and history.from_version.isna().all() and "first model" in history.reason.item()
    gate = demo.sql("SELECT * FROM registry.gate_decisions")
    assert gate.passed.all() and (gate.challenger == augmix).all()


def test_evaluation_covers_every_corruption_and_both_models(demo):
    from dc_pipeline.core.ml.corruptions import CORRUPTIONS

    metrics = demo.sql("SELECT * FROM evaluation.metrics")
    per = metrics[metrics.metric == "error"].groupby("kind").size()
    assert per.to_dict() == {"augmix": 5 * len(CORRUPTIONS), "baseline": 5 * len(CORRUPTIONS)}
    assert len(CORRUPTIONS) >= 12
    summary = metrics[metrics.corruption.isna()].pivot(index="metric", columns="kind", values="value")
    for name in (
        "clean_error",
        "mce",
        "ece_clean",
        "rms_calibration_corrupted",
        "automation_rate_corrupted",
        "automation_threshold",
    ):
        assert summary.loc[name].notna().all(), name
    assert (summary.loc["mce"] >= summary.loc["clean_error"] - 0.05).all()
    event = demo.instance.get_latest_materialization_event(AssetKey(["evaluation", "model_evaluation"]))
    md = event.asset_materialization.metadata
    assert "](data:image/png;base64," in md["plot: reliability"].value
    assert "augmix_relative_mce" in md and "per_source_error" in md


def test_load_model_predicts_like_training_on_raw_uint8_images(demo):
    model = load_model("champion", data_dir=demo.data)
    x_test, y_test = load_split("test", data_dir=demo.data)
    current = demo.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()
    index = open_version(demo.data / "datasets", current).index()
    index = index[index.split == "test"].sort_values("position")
    # The original bytes of the first test images (8x8 gray or 16x16 RGB), as a user would hold them.
    raw = [
        np.asarray(Image.open(io.BytesIO((demo.data / "objects" / s[:2] / s).read_bytes()))) for s in index.sha256[:40]
    ]
    by_shape: dict = {}
    for i, img in enumerate(raw):
        by_shape.setdefault(img.shape, []).append(i)
    assert len(by_shape) == 2, "both 8x8 gray and 16x16 RGB images are exercised"
    for rows in by_shape.values():
        probs = model.predict_proba(np.stack([raw[i] for i in rows]))
        assert probs.shape == (len(rows), 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(probs, model.predict_canonical(x_test[rows]), atol=1e-6)
    big = np.stack([np.asarray(Image.fromarray(raw[by_shape[(8, 8)][0]]).resize((64, 64)))])
    assert model.predict_proba(big).shape == (1, 10)
    with pytest.raises(ValueError, match="uint8"):
        model.predict_proba(x_test[:2])


def test_reproduce_gives_bit_identical_weights(demo, capsys):
    assert (
        reproduce(
            "baseline-"
            + demo.sql("SELECT weights_sha256 FROM registry.models WHERE kind = 'baseline'").weights_sha256.item()[:12],
            demo.data,
        )
        == 0
    )
    assert "MATCH" in capsys.readouterr().out


def test_gate_refuses_a_challenger_that_does_not_beat_the_champion(pipeline):
    pipeline.ingest_all()
    assert pipeline.refresh().success
    champion = pipeline.sql("SELECT version_id FROM registry.aliases WHERE alias = 'champion'").version_id.item()
    strict = tiny_run_config(seed=1, gate={"mce_relative_margin": 0.99})  # must beat the champion's mCE by 99%
    result = pipeline.refresh(run_config=strict)
    assert result.success, "a refused challenger is an outcome, not a failed run"
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate")
    assert not gate.passed and gate.severity == AssetCheckSeverity.WARN and "refused" in gate.metadata["verdict"].value
    kept = result.asset_materializations_for_node("registry__champion")[0].metadata
    assert not kept["moved"].value and "refused" in kept["summary"].value
    with duckdb.connect(str(pipeline.data / "alerts.duckdb"), read_only=True) as conn:
        alerts = conn.execute("SELECT kind, run_id, message FROM main.run_failures").fetchall()
    assert [(k, r) for k, r, _ in alerts] == [("challenger_refused", result.run_id)] and "stays" in alerts[0][2]
    assert (
        pipeline.sql("SELECT version_id FROM registry.aliases WHERE alias = 'champion'").version_id.item() == champion
    )
    challenger = pipeline.sql("SELECT version_id FROM registry.aliases WHERE alias = 'challenger'").version_id.item()
    assert challenger != champion
    # the champion was re-evaluated on the same test data the challenger was judged on
    champion_rows = pipeline.sql(
        "SELECT DISTINCT version_id, dataset_hash FROM evaluation.metrics WHERE kind = 'champion'"
    )
    assert champion_rows.version_id.tolist() == [champion]
    decisions = pipeline.sql("SELECT passed, challenger FROM registry.gate_decisions ORDER BY decided_at")
    assert decisions.passed.tolist() == [True, False] and decisions.challenger.iloc[-1] == challenger

    # The scoring service then ran both in shadow mode, and labels arrived for the images it scored: the
    # challenger was wrong on a third of them. Judged again (no training), with an offline policy it would
    # pass, the live evidence holds it back; without the live evidence it is promoted.
    images = pipeline.sql("SELECT sha256, label FROM clean.images WHERE label IS NOT NULL ORDER BY sha256 LIMIT 300")
    log = PredictionLog(pipeline.data.joinpath(*PREDICTIONS_FOLDER))
    for i, image in enumerate(images.itertuples()):
        for version, arm, wrong in ((champion, "champion", False), (challenger, "challenger", i % 3 == 0)):
            log.append(
                {
                    "request_id": f"request-{i}",
                    "arm": arm,
                    "answered": arm == "champion",
                    "model_version": version,
                    "predicted_class": (image.label + 1) % 10 if wrong else image.label,
                    "confidence": 0.99,
                    "routing": "auto_accept",
                    "image_sha256": image.sha256,
                }
            )
    log.flush()
    lenient = tiny_run_config(
        gate={"mce_relative_margin": -10.0, "max_clean_error_increase": 1.0, "calibration_tolerance": 1.0}
    )["ops"]
    judge = pipeline.defs.resolve_job_def(JUDGE_JOB)
    ops = {k: v for k, v in lenient.items() if k.startswith("evaluation__")}
    held = judge.execute_in_process(instance=pipeline.instance, run_config={"ops": ops})
    assert held.success
    gate = next(e for e in held.get_asset_check_evaluations() if e.check_name == "promotion_gate")
    verdict = gate.metadata["verdict"].value
    assert not gate.passed and "live error is worse beyond noise" in verdict and "paired, 300 and 300" in verdict
    assert "paired, 300 and 300 labelled predictions" in gate.metadata["live_evidence"].value
    assert pipeline.sql("SELECT count(*) AS n FROM serving.predictions").n.item() == 600
    offline_only = {**ops}
    offline_only["evaluation__model_evaluation_promotion_gate"]["config"]["use_live_evidence"] = False
    promoted = judge.execute_in_process(instance=pipeline.instance, run_config={"ops": offline_only})
    assert promoted.success and pipeline.check_passed(promoted, "promotion_gate") == [True]
    assert (
        pipeline.sql("SELECT version_id FROM registry.aliases WHERE alias = 'champion'").version_id.item() == challenger
    )


def test_load_model_refuses_tampered_weights(pipeline):
    pipeline.ingest_all()
    assert pipeline.refresh().success
    record = pipeline.sql("SELECT version_id, weights_path FROM registry.models WHERE kind = 'augmix'").iloc[0]
    assert load_model(record.version_id, data_dir=pipeline.data).version_id == record.version_id
    weights = pipeline.data / record.weights_path
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="refusing"):
        load_model("champion", data_dir=pipeline.data)
    with pytest.raises(RegistryError, match="not in the registry"):
        load_model("augmix-000000000000", data_dir=pipeline.data)


def test_launchpad_training_defaults_match_the_core():
    """The Dagster Config mirrors the core's TrainConfig (kept apart so definitions never import torch)."""
    from dc_pipeline.core.ml.training import TrainConfig
    from dc_pipeline.defs.training.assets import TrainingConfig, train_config

    assert train_config(TrainingConfig(), 10) == TrainConfig()
