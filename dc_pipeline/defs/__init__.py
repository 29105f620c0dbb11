"""The Dagster shell: one folder per asset group (folder = group = asset key prefix = warehouse schema).

Each ``<group>/assets.py`` holds thin asset and check bodies that read inputs, call ``dc_pipeline.core``,
write through ``dc_pipeline.warehouse`` and report metadata. ``automation/`` holds the sensors and
schedules, ``jobs.py`` the jobs, ``resources.py`` every resource. Group folders never import each other;
their shared names come from ``dc_pipeline.catalog``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from dagster import Definitions, PreviewWarning

# Partition-scoped asset checks are "preview" in Dagster 1.13; they are what keeps a check on one
# landing batch from loading every batch, so we use them knowingly.
warnings.filterwarnings("ignore", category=PreviewWarning, message=".*partitions_def.*")


def build_definitions(resources: dict | None = None) -> Definitions:
    """Every asset, check, job, sensor and schedule; one raw asset (and scoring and drift asset) per source
    contract, read when the code location loads. ``resources`` default to the settings' (``build_resources``)."""
    from dc_pipeline.core.data.contracts import source_kinds, unlabelled_sources
    from dc_pipeline.defs.augmentation import assets as augmentation
    from dc_pipeline.defs.automation import schedules, sensors
    from dc_pipeline.defs.clean.assets import build_cleaning
    from dc_pipeline.defs.curation import assets as curation
    from dc_pipeline.defs.evaluation import assets as evaluation
    from dc_pipeline.defs.features import assets as features
    from dc_pipeline.defs.features import data_issues
    from dc_pipeline.defs.features.retention import prune_dataset_versions
    from dc_pipeline.defs.jobs import ingestion_jobs, pipeline_jobs
    from dc_pipeline.defs.monitoring.assets import build_drift, build_overview
    from dc_pipeline.defs.raw.assets import build_ingestion
    from dc_pipeline.defs.registry.assets import audit_trail, champion
    from dc_pipeline.defs.resources import build_resources, step_executor, step_output_storage
    from dc_pipeline.defs.scoring.assets import build_scoring
    from dc_pipeline.defs.serving import assets as serving
    from dc_pipeline.defs.training import assets as training

    resources = resources or {**build_resources(), **step_output_storage()}
    kinds = source_kinds(Path(resources["lake"].contracts_dir))
    images = [s for s, k in kinds.items() if k == "images"]
    reviews = [s for s, k in kinds.items() if k == "reviews"]
    sources = sorted(kinds)
    ingest_jobs = ingestion_jobs(images, reviews, unlabelled_sources(Path(resources["lake"].contracts_dir)))
    return Definitions(
        assets=[
            *[d for s in sources for d in build_ingestion(s)],
            *build_cleaning(images, reviews),
            features.features,
            features.feature_expectations,
            data_issues.near_duplicates,
            data_issues.image_quality,
            data_issues.outliers,
            augmentation.augmented_samples,
            augmentation.label_preservation,
            training.baseline_model,
            training.augmix_model,
            evaluation.corrupted_test_set,
            evaluation.model_evaluation,
            evaluation.promotion_gate,
            champion,
            audit_trail,
            *[d for s in images for d in build_scoring(s)],
            *[d for s in images for d in build_drift(s)],
            build_overview(images),
            curation.label_issues,
            curation.slice_analysis,
            curation.labelling_queue,
            serving.prediction_log,
            serving.ab_report,
        ],
        jobs=[*ingest_jobs, *pipeline_jobs(), prune_dataset_versions],
        sensors=[
            sensors.build_landing_sensor(sources, ingest_jobs),
            sensors.retraining_trigger,
            sensors.challenger_evidence,
            sensors.run_failure_alerts,
        ],
        schedules=[schedules.nightly_monitoring, schedules.weekly_retrain, schedules.weekly_retention],
        resources=resources,
        executor=step_executor(),
    )
