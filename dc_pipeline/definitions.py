"""The Dagster code location: every stage's assets and checks, jobs, sensors, schedules and resources."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from dagster import Definitions, PreviewWarning

# Partition-scoped asset checks are "preview" in Dagster 1.13; they are what keeps a check on one
# landing batch from loading every batch, so we use them knowingly.
warnings.filterwarnings("ignore", category=PreviewWarning, message=".*partitions_def.*")

from dc_pipeline import automation  # noqa: E402
from dc_pipeline.jobs import ingestion_jobs, pipeline_jobs  # noqa: E402
from dc_pipeline.resources import PACKAGED_CONTRACTS, default_resources  # noqa: E402
from dc_pipeline.stages import augmentation, curation, evaluation, features, monitoring, training  # noqa: E402
from dc_pipeline.stages.cleaning import build_cleaning  # noqa: E402
from dc_pipeline.stages.ingestion import build_ingestion  # noqa: E402


def contract_sources(contracts_dir: str | Path | None = None) -> list[str]:
    """Source names, one per contract file (read at load time: a new contract is a new raw asset)."""
    directory = Path(contracts_dir or os.getenv("DC_CONTRACTS_DIR") or PACKAGED_CONTRACTS)
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.name.startswith("_"))


def build_definitions(sources: list[str], resources: dict, contracts_dir: str | Path | None = None) -> Definitions:
    from dc_pipeline.core.contracts import source_kinds

    kinds = source_kinds(contracts_dir or os.getenv("DC_CONTRACTS_DIR") or PACKAGED_CONTRACTS)
    images = [s for s in sources if kinds.get(s) == "images"]
    reviews = [s for s in sources if kinds.get(s) == "reviews"]
    per_source = [d for s in sources for d in build_ingestion(s)] + [
        d for s in images for d in monitoring.build_monitoring(s)]
    ingest_jobs = ingestion_jobs(images, reviews)
    return Definitions(
        assets=[
            *per_source, *build_cleaning(images, reviews),
            features.features, features.feature_expectations,
            augmentation.augmented_samples, augmentation.label_preservation,
            training.baseline_model, training.augmix_model,
            evaluation.corrupted_test_set, evaluation.model_evaluation, evaluation.promotion_gate,
            evaluation.champion, monitoring.overview, curation.label_issues, curation.slice_analysis,
        ],
        jobs=[*ingest_jobs, *pipeline_jobs()],
        sensors=[automation.build_landing_sensor(sources, ingest_jobs), automation.retraining_trigger,
                 automation.run_failure_alerts],
        schedules=[automation.nightly_monitoring, automation.weekly_retrain],
        resources={"retrain_policy": automation.RetrainPolicy(), **resources},
    )


defs = build_definitions(contract_sources(), default_resources())
