"""Jobs: processing one landing batch of a source, refreshing the data and models, retraining, the sweep."""

from dagster import AssetSelection, define_asset_job

from dc_pipeline.catalog import (
    AUDIT_TRAIL,
    CHAMPION,
    CORRUPTED_TEST,
    CURATION,
    DATA_GROUPS,
    JUDGE_JOB,
    LABELLING_QUEUE,
    MODEL_EVALUATION,
    MODEL_GROUPS,
    OVERVIEW,
    REFRESH_JOB,
    RETRAIN_JOB,
    SERVING,
    SERVING_JOB,
    SWEEP_JOB,
    batches_of,
    drift_key,
    ingest_job_name,
    raw_key,
    scores_key,
)


def ingestion_jobs(sources: list[str], review_sources: list[str] = (), unlabelled_sources: list[str] = ()) -> list:
    """Per source, one partitioned job for a landing batch: its raw asset and batch checks, then cleaning
    and features over all accepted data, then (for image sources) the batch's scores and drift report, and
    for sources that deliver unlabelled images, the labelling queue (active learning)."""
    jobs = [
        define_asset_job(
            ingest_job_name(s),
            selection=AssetSelection.assets(
                raw_key(s), scores_key(s), drift_key(s), *([LABELLING_QUEUE] if s in unlabelled_sources else [])
            )
            | AssetSelection.groups(*DATA_GROUPS),
            partitions_def=batches_of(s),
            description=f"Ingest one landing batch of `{s}`, refresh clean data and features, score the batch and "
            "report its drift"
            + (", and top up the labelling queue (its images arrive unlabelled)." if s in unlabelled_sources else "."),
        )
        for s in sources
    ]
    # Answers to the labelling queue arrive as reviews: the same run tops the queue up again.
    queue = [LABELLING_QUEUE] if unlabelled_sources else []
    return jobs + [
        define_asset_job(
            ingest_job_name(s),
            selection=AssetSelection.assets(raw_key(s), *queue) | AssetSelection.groups(*DATA_GROUPS),
            partitions_def=batches_of(s),
            description=f"Ingest one batch of reviewers' decisions from `{s}` and build the curated dataset version"
            + (", then top the labelling queue up again." if queue else "."),
        )
        for s in review_sources
    ]


def pipeline_jobs() -> list:
    return [
        define_asset_job(
            REFRESH_JOB,
            selection=AssetSelection.groups(*DATA_GROUPS, *MODEL_GROUPS, CURATION),
            description="Rebuild clean data, features, augmentation QC, both models, their evaluation, "
            "the promotion gate, the label-issue review queue and the slice analysis.",
        ),
        define_asset_job(
            RETRAIN_JOB,
            selection=AssetSelection.groups(*MODEL_GROUPS),
            description="Train both models on the current dataset version, evaluate them and run the promotion gate.",
        ),
        define_asset_job(
            SWEEP_JOB,
            selection=AssetSelection.groups(*DATA_GROUPS, CURATION, SERVING)
            | AssetSelection.assets(OVERVIEW, AUDIT_TRAIL),
            description="Nightly: refresh clean data, features, the review queue, the slice analysis, "
            "the monitoring overview and the audit trail, and take in the scoring service's predictions for "
            "the A/B report.",
        ),
        define_asset_job(
            SERVING_JOB,
            selection=AssetSelection.groups(SERVING),
            description="Take in the scoring service's new prediction log files and report each A/B arm's "
            "figures on the predictions labelled by now.",
        ),
        define_asset_job(
            JUDGE_JOB,
            selection=AssetSelection.assets(CORRUPTED_TEST, MODEL_EVALUATION, CHAMPION)
            | AssetSelection.groups(SERVING),
            description="Judge the current challenger again without training, now with the scoring service's "
            "evidence: take in new prediction logs, re-evaluate the newest models and the champion on the current "
            "data, run the promotion gate and move the champion alias if it passes.",
        ),
    ]
