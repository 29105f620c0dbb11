"""The Dagster code location: every stage's assets and checks, with their resources."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from dagster import Definitions, PreviewWarning

# Partition-scoped asset checks are "preview" in Dagster 1.13; they are what keeps a check on one
# landing batch from loading every batch, so we use them knowingly.
warnings.filterwarnings("ignore", category=PreviewWarning, message=".*partitions_def.*")

from dc_pipeline.jobs import downstream_job, ingestion_jobs
from dc_pipeline.resources import PACKAGED_CONTRACTS, default_resources
from dc_pipeline.stages import augmentation, evaluation, features, training
from dc_pipeline.stages.cleaning import build_cleaning
from dc_pipeline.stages.ingestion import build_ingestion


def contract_sources(contracts_dir: str | Path | None = None) -> list[str]:
    """Source names, one per contract file (read at load time: a new contract is a new raw asset)."""
    directory = Path(contracts_dir or os.getenv("DC_CONTRACTS_DIR") or PACKAGED_CONTRACTS)
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.name.startswith("_"))


def build_definitions(sources: list[str], resources: dict) -> Definitions:
    assets_and_checks = [d for s in sources for d in build_ingestion(s)] + build_cleaning(sources) + [
        features.features, features.feature_expectations,
        augmentation.augmented_samples, augmentation.label_preservation,
        training.baseline_model, training.augmix_model,
        evaluation.corrupted_test_set, evaluation.model_evaluation, evaluation.promotion_gate, evaluation.champion]
    return Definitions(assets=assets_and_checks, resources=resources,
                       jobs=[*ingestion_jobs(sources), downstream_job(sources)])


defs = build_definitions(contract_sources(), default_resources())
