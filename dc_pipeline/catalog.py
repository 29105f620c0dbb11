"""Shared names: asset keys, groups, partitions, pools, jobs and warehouse tables.

One name per level: an asset group, its folder under ``dc_pipeline/defs/``, its asset key prefix and its
warehouse schema are the same word. This module imports nothing from the Dagster shell (``defs``), so the
core, the warehouse, the shell and the tests all take their names from here.
"""

from __future__ import annotations

from dagster import AssetKey, DynamicPartitionsDefinition

CODE_LOCATION = "dc_pipeline.definitions"
"""The code location's name: the module ``dagster dev -m`` and ``workspace.yaml`` load."""

# -- groups (= key prefix = folder under defs/ = warehouse schema) ---------------------------------------
RAW = "raw"
CLEAN = "clean"
FEATURES = "features"
AUGMENTATION = "augmentation"
TRAINING = "training"
EVALUATION = "evaluation"
REGISTRY = "registry"
SCORING = "scoring"
MONITORING = "monitoring"
CURATION = "curation"
SERVING = "serving"
GROUPS = (RAW, CLEAN, FEATURES, AUGMENTATION, TRAINING, EVALUATION, REGISTRY, SCORING, MONITORING, CURATION, SERVING)

# -- pools -------------------------------------------------------------------------------------------------
DUCKDB_POOL = "duckdb"
"""Every step that opens the embedded DuckDB file: one writer per file, so they run one at a time."""
HISTORY_POOL = "warehouse_history"
"""On a shared (PostgreSQL) warehouse: the steps that read shared history, decide and rewrite it (cleaning
against every earlier image, dataset versions, curation queues, the champion alias), one at a time."""
CELERY_QUEUE_TAG = "dagster-celery/queue"


def warehouse_pool(own_rows: bool = False) -> str | None:
    """The pool of a step that opens the warehouse. On the embedded DuckDB file every such step is in
    ``duckdb``. On a shared warehouse only steps that rewrite shared history are serialised (``warehouse_history``);
    steps that write only their own rows (``own_rows``: one batch's, one model's) run side by side."""
    from dc_pipeline.settings import get_settings

    if not get_settings().shared_warehouse:
        return DUCKDB_POOL
    return None if own_rows else HISTORY_POOL


def accelerator_tags() -> dict[str, str]:
    """Tags of the steps that want an accelerator (training, augmentation, evaluation, scoring, drift): with
    Celery workers they go to the accelerator queue (``DC_ACCELERATOR_QUEUE``); in one process they mean nothing."""
    from dc_pipeline.settings import get_settings

    return {CELERY_QUEUE_TAG: get_settings().accelerator_queue}


# -- per-source assets and partitions ----------------------------------------------------------------------
def raw_key(source: str) -> AssetKey:
    return AssetKey([RAW, source])


def scores_key(source: str) -> AssetKey:
    """``scoring/scores_<source>``: named apart from ``raw/<source>``, which the asset graph labels by name alone."""
    return AssetKey([SCORING, f"scores_{source}"])


def drift_key(source: str) -> AssetKey:
    return AssetKey([MONITORING, f"drift_{source}"])


def batches_of(source: str) -> DynamicPartitionsDefinition:
    """The landing batches of one source (keys are batch ids)."""
    return DynamicPartitionsDefinition(name=f"{source}_batches")


# -- assets ------------------------------------------------------------------------------------------------
IMAGES = AssetKey([CLEAN, "images"])
QUARANTINE = AssetKey([CLEAN, "quarantine"])
LINEAGE = AssetKey([CLEAN, "lineage"])
DECISIONS = AssetKey([CLEAN, "review_decisions"])
DATASET_VERSION = AssetKey([FEATURES, "dataset_version"])
IMAGE_STATS = AssetKey([FEATURES, "image_stats"])
AUGMENTED_SAMPLES = AssetKey([AUGMENTATION, "augmented_samples"])
BASELINE_MODEL = AssetKey([TRAINING, "baseline_model"])
AUGMIX_MODEL = AssetKey([TRAINING, "augmix_model"])
CORRUPTED_TEST = AssetKey([EVALUATION, "corrupted_test_set"])
MODEL_EVALUATION = AssetKey([EVALUATION, "model_evaluation"])
CHAMPION = AssetKey([REGISTRY, "champion"])
AUDIT_TRAIL = AssetKey([REGISTRY, "audit_trail"])
OVERVIEW = AssetKey([MONITORING, "overview"])
LABEL_ISSUES = AssetKey([CURATION, "label_issues"])
SLICE_ANALYSIS = AssetKey([CURATION, "slice_analysis"])
LABELLING_QUEUE = AssetKey([CURATION, "labelling_queue"])
PREDICTION_LOG = AssetKey([SERVING, "prediction_log"])
AB_REPORT = AssetKey([SERVING, "ab_report"])

# -- jobs --------------------------------------------------------------------------------------------------
RETRAIN_JOB = "retrain"
REFRESH_JOB = "refresh_downstream"
SWEEP_JOB = "monitoring_sweep"
PRUNE_JOB = "prune_dataset_versions"
SERVING_JOB = "serving_report"
JUDGE_JOB = "judge_challenger"
DATA_GROUPS = (CLEAN, FEATURES)
MODEL_GROUPS = (AUGMENTATION, TRAINING, EVALUATION, REGISTRY)


def ingest_job_name(source: str) -> str:
    return f"ingest_{source}"


# -- sensors and schedules ---------------------------------------------------------------------------------
LANDING_SENSOR = "landing_zone_sensor"
RETRAINING_TRIGGER = "retraining_trigger"
CHALLENGER_EVIDENCE = "challenger_evidence"
FAILURE_ALERTS = "run_failure_alerts"
NIGHTLY_SWEEP = "nightly_monitoring_sweep"
WEEKLY_RETRAIN = "weekly_full_retrain"
WEEKLY_PRUNE = "weekly_retention"


# -- warehouse tables (schema.table); each is declared, with its owner, in dc_pipeline.warehouse.tables ----
class T:
    """Warehouse table names."""

    SCHEMA_HISTORY = "raw.schema_history"
    BATCH_GATE = "raw.batch_gate"
    CLEAN_IMAGES = "clean.images"
    QUARANTINE = "clean.quarantine"
    LINEAGE = "clean.lineage"
    REVIEW_DECISIONS = "clean.review_decisions"
    CANDIDATES = "clean.candidates"
    REVIEW_ROWS = "clean.review_rows"
    CLEANED_BATCHES = "clean.batches"
    CLEAN_CHANGES = "clean.changes"
    DATASET_VERSIONS = "features.dataset_versions"
    DATASET_MEMBERS = "features.dataset_members"
    DATASET_INDEX = "features.dataset_index"
    CURATION_LINEAGE = "features.curation_lineage"
    IMAGE_STATS = "features.image_stats"
    PIXEL_ROWS = "features.pixel_rows"
    HEAD_MEMBERS = "features.members"
    DATASET_CHANGES = "features.dataset_changes"
    DATASET_HEAD = "features.head"
    CURRENT_MODELS = "training.current_models"
    RETRAINING_ATTEMPTS = "training.retraining_attempts"
    EVALUATION_METRICS = "evaluation.metrics"
    EVALUATION_OUTCOMES = "evaluation.outcomes"
    MODELS = "registry.models"
    ALIASES = "registry.aliases"
    ALIAS_HISTORY = "registry.alias_history"
    GATE_DECISIONS = "registry.gate_decisions"
    AUDIT_EVENTS = "registry.audit_events"
    SERVED_PREDICTIONS = "serving.predictions"
    PREDICTION_LOG_FILES = "serving.prediction_log_files"
    AB_FIGURES = "serving.ab_figures"
    PREDICTIONS = "scoring.predictions"
    BATCH_SUMMARY = "scoring.batch_summary"
    DRIFT_HISTORY = "monitoring.drift_history"
    DRIFT_VERDICTS = "monitoring.drift_verdicts"
    REVIEW_QUEUE = "curation.review_queue"
    SLICES = "curation.slices"
    LABELLING_QUEUE = "curation.labelling_queue"
    FINGERPRINTS = "features.fingerprints"
    NEAR_DUPLICATES = "features.near_duplicates"
    NEAR_DUPLICATE_GROUPS = "features.near_duplicate_groups"
    QUALITY_ISSUES = "features.quality_issues"
    OUTLIERS = "features.outliers"
    RUN_FAILURES = "main.run_failures"  # in the alerts file, not the warehouse


def raw_table(source: str) -> str:
    return f"{RAW}.{source}"


def contract_sources(contracts_dir=None) -> list[str]:
    """Source names, one per contract file in ``contracts_dir`` (default: the settings')."""
    from dc_pipeline.core.data.contracts import source_kinds

    if contracts_dir is None:
        from dc_pipeline.settings import get_settings

        contracts_dir = get_settings().contracts_dir
    return sorted(source_kinds(contracts_dir))
