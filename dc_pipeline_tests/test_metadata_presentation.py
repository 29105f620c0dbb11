"""What the Dagster UI shows of each asset: a one-line summary first, tables without ``nan``, no numpy reprs,
pictures named for what they show with alt text, files and folders as path metadata."""

import base64
import io
import re
import shutil

import duckdb
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, materialize
from dagster._core.definitions.metadata import (
    JsonMetadataValue,
    MarkdownMetadataValue,
    PathMetadataValue,
    TextMetadataValue,
)
from PIL import Image

from dc_pipeline.catalog import (
    AUGMENTED_SAMPLES,
    CHAMPION,
    CORRUPTED_TEST,
    DATASET_VERSION,
    DECISIONS,
    IMAGE_STATS,
    IMAGES,
    LABEL_ISSUES,
    LABELLING_QUEUE,
    LINEAGE,
    MODEL_EVALUATION,
    OVERVIEW,
    QUARANTINE,
    SLICE_ANALYSIS,
    batches_of,
    drift_key,
    raw_key,
    scores_key,
)
from dc_pipeline.defs.monitoring.assets import build_drift, build_overview
from dc_pipeline.defs.raw.assets import build_ingestion
from dc_pipeline.defs.resources import resources_for
from dc_pipeline.defs.scoring.assets import build_scoring

from .conftest import Pipeline

# Assets of the demo's refresh (and its ingestion) whose metadata must open with a summary line.
SUMMARISED = [
    raw_key("field_app"),
    IMAGES,
    QUARANTINE,
    LINEAGE,
    DECISIONS,
    DATASET_VERSION,
    IMAGE_STATS,
    AUGMENTED_SAMPLES,
    CORRUPTED_TEST,
    MODEL_EVALUATION,
    CHAMPION,
    LABEL_ISSUES,
    SLICE_ANALYSIS,
    LABELLING_QUEUE,
]
MISSING_CELL = re.compile(r"\|[ \t]*(?:nan|NaN|None|<NA>|NaT)[ \t]*(?=\|)")
NUMPY_REPR = re.compile(r"np\.(?:int|float|uint|bool_?|str_)\d*\(")
IMAGE = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
LOOKS_LIKE_A_FILE = re.compile(r"^[\w./-]+\.(?:npz|npy|safetensors|html|json|lance|parquet|duckdb|csv)$")


def metadata_of(instance, key: AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    assert event is not None, f"{key.to_user_string()} was never materialized"
    return event.asset_materialization.metadata


def text_of(value) -> str:
    if isinstance(value, JsonMetadataValue):
        import json

        return json.dumps(value.value)
    return str(value.value) if hasattr(value, "value") else str(value)


def problems(key: AssetKey, metadata: dict, summary_first: bool = True) -> list[str]:
    """Everything this module's rules find wrong with one asset's metadata."""
    name, found = key.to_user_string(), []
    first_key, first = next(iter(metadata.items()), (None, None))
    if summary_first:
        if first_key != "summary" or not isinstance(first, TextMetadataValue):
            found.append(f"{name}: the first entry is {first_key!r} ({type(first).__name__}), not a text summary")
        elif "\n" in first.value or not 10 <= len(first.value) <= 400:
            found.append(f"{name}: the summary is not one short line: {first.value!r}")
    for k, v in metadata.items():
        text = text_of(v)
        if NUMPY_REPR.search(text):
            found.append(f"{name}/{k}: a numpy repr: {NUMPY_REPR.search(text).group(0)}")
        if isinstance(v, MarkdownMetadataValue):
            cell = MISSING_CELL.search(text)
            if cell:
                found.append(f"{name}/{k}: a missing value shown as {cell.group(0)!r}")
            images = IMAGE.findall(text)
            for alt, _ in images:
                if not alt.strip():
                    found.append(f"{name}/{k}: a markdown image without alt text")
            if images and not k.startswith(("plot: ", "preview: ")):
                found.append(f"{name}/{k}: holds a picture but its key does not say what it shows")
        if isinstance(v, TextMetadataValue | str) and LOOKS_LIKE_A_FILE.match(text):
            found.append(f"{name}/{k}: a location as plain text ({text}), not path metadata")
    return found


def check_evaluations(instance) -> list:
    """Every asset check evaluation of every run on ``instance`` (the ingestion runs' batch checks too)."""
    return [
        entry.dagster_event.event_specific_data
        for run in instance.get_runs()
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    ]


def test_demo_assets_open_with_a_summary_and_read_cleanly(demo):
    found = []
    for key in SUMMARISED:
        found += problems(key, metadata_of(demo.instance, key))
    # Asset checks: the same rules, except that a check need not open with a summary.
    evaluations = check_evaluations(demo.instance)
    assert {"batch_quality", "feature_expectations", "near_duplicates", "promotion_gate"} <= {
        e.check_name for e in evaluations
    }
    for evaluation in evaluations:
        found += problems(evaluation.asset_key, dict(evaluation.metadata), summary_first=False)
    assert not found, "\n".join(found)


def test_batch_quality_reads_as_text_not_a_dict(demo):
    quality = [e for e in check_evaluations(demo.instance) if e.check_name == "batch_quality"]
    assert quality
    for evaluation in quality:
        summary = evaluation.metadata["summary"].value
        assert re.match(r"\d+ of \d+ expectations met on \d+ records", summary), summary
        assert "{" not in summary and "{" not in (evaluation.description or "")
    (spec,) = build_ingestion("field_app")[1].check_specs
    assert "{" not in spec.description and "5% of ids" in spec.description


def test_headline_figures_are_in_the_summaries(demo):
    evaluation = metadata_of(demo.instance, MODEL_EVALUATION)
    line = evaluation["summary"].value
    assert line.startswith("AugMix clean error ") and " vs baseline " in line and "mCE " in line, line
    assert f"{100 * evaluation['augmix_clean_error'].value:.1f}%" in line
    assert f"mCE {evaluation['augmix_mce'].value:.3f} [" in line, line  # each figure with its interval
    assert f" vs {evaluation['baseline_mce'].value:.3f} [" in line and "(95% intervals)" in line, line
    issues = metadata_of(demo.instance, LABEL_ISSUES)
    assert issues["summary"].value.startswith(f"{issues['flagged'].value} of {issues['images_checked'].value} images")
    version = metadata_of(demo.instance, DATASET_VERSION)
    assert version["dataset_hash"].value[:12] in version["summary"].value


def test_pictures_are_named_labelled_and_decode(demo):
    checks = {
        MODEL_EVALUATION: ["plot: error by corruption", "plot: reliability"],
        AUGMENTED_SAMPLES: ["preview: AugMix views"],
        CORRUPTED_TEST: ["preview: corruptions by severity"],
        LABEL_ISSUES: ["preview: review queue, given and suggested labels"],
    }
    for key, names in checks.items():
        metadata = metadata_of(demo.instance, key)
        assert list(metadata)[1] == names[0], f"{key.to_user_string()}: the main picture comes after the summary"
        for name in names:
            text = metadata[name].value
            images = IMAGE.findall(text)
            assert len(images) == 1 and text.startswith("*"), (key, name, text[:200])  # a caption, then the image
            alt, data = images[0]
            assert len(alt) > 10
            with Image.open(io.BytesIO(base64.b64decode(data))) as img:
                assert img.width > 150 and img.height > 100, (name, img.size)


def test_locations_are_path_metadata_that_exist(demo):
    paths = {
        AUGMENTED_SAMPLES: ["path"],
        CORRUPTED_TEST: ["path"],
        DATASET_VERSION: ["path"],
        CHAMPION: ["weights", "model_card"],
        MODEL_EVALUATION: ["augmix_weights", "baseline_weights"],
        raw_key("field_app"): ["landing_batch"],
    }
    for key, names in paths.items():
        metadata = metadata_of(demo.instance, key)
        for name in names:
            assert isinstance(metadata[name], PathMetadataValue), (key, name, metadata[name])
            path = str(metadata[name].value)
            assert not path.startswith("/"), f"{path} is not relative to the data folder"
            assert (demo.data / path).exists(), path


def test_no_log_line_shows_a_numpy_repr(demo):
    messages = [
        entry.user_message
        for run in demo.instance.get_runs()
        for entry in demo.instance.all_logs(run.run_id)
        if entry.user_message
    ]
    assert messages
    bad = [m for m in messages if NUMPY_REPR.search(m)]
    assert not bad, bad[:5]


@pytest.fixture(scope="module")
def monitored(demo, tmp_path_factory):
    """A copy of the demo's data folder (the demo stays untouched) with one batch scored and drift-reported,
    a second, unlabelled batch's summary row, and the overview."""
    data = tmp_path_factory.mktemp("monitored") / "data"
    shutil.copytree(demo.data, data)
    p = Pipeline(data=data, instance=DagsterInstance.ephemeral(), resources=resources_for(data))
    p.instance.add_dynamic_partitions(batches_of("field_app").name, ["batch-0001"])
    assets = [*build_scoring("field_app"), *build_drift("field_app")]
    assert materialize(assets, partition_key="batch-0001", instance=p.instance, resources=p.resources).success
    with duckdb.connect(str(data / "warehouse.duckdb")) as conn:  # a batch with no labels: error unknown
        conn.execute(
            "INSERT INTO scoring.batch_summary SELECT * REPLACE ('batch-0099' AS batch_id, NULL AS error, "
            "NULL AS accepted_error, 0 AS labelled, scored_at + INTERVAL 1 MINUTE AS scored_at) "
            "FROM scoring.batch_summary"
        )
    assert materialize([build_overview(["field_app"])], instance=p.instance, resources=p.resources).success
    return p


def test_monitoring_metadata_reads_cleanly(monitored):
    found = []
    for key in (scores_key("field_app"), drift_key("field_app"), OVERVIEW):
        found += problems(key, metadata_of(monitored.instance, key))
    assert not found, "\n".join(found)
    drift = metadata_of(monitored.instance, drift_key("field_app"))
    assert drift["summary"].value.startswith(f"verdict {drift['verdict'].value} on {drift['images'].value} images")
    assert "most drifted feature " in drift["summary"].value
    assert isinstance(drift["html_report"], PathMetadataValue)
    assert (monitored.data / drift["html_report"].value).is_file()
    assert {"plot: most drifted image features", "plot: champion confidence"} <= set(drift)
    overview = metadata_of(monitored.instance, OVERVIEW)
    assert overview["summary"].value.startswith("latest batch field_app/batch-0099: automation rate ")
    assert "drift verdict not reported" in overview["summary"].value
    table = overview["table"].value
    unlabelled = next(line for line in table.splitlines() if "batch-0099" in line)
    assert "–" in unlabelled and "nan" not in unlabelled.lower(), unlabelled
    assert "plot: automation rate and review queue per batch" in overview
