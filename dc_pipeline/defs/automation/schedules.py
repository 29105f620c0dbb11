"""Schedules: the nightly monitoring sweep, and the (stopped by default) weekly retrain and retention."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from dc_pipeline.catalog import NIGHTLY_SWEEP, PRUNE_JOB, RETRAIN_JOB, SWEEP_JOB, WEEKLY_PRUNE, WEEKLY_RETRAIN

nightly_monitoring = ScheduleDefinition(
    name=NIGHTLY_SWEEP,
    job_name=SWEEP_JOB,
    cron_schedule="0 2 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every night at 02:00: refresh clean data, features and the monitoring overview.",
)
weekly_retrain = ScheduleDefinition(
    name=WEEKLY_RETRAIN,
    job_name=RETRAIN_JOB,
    cron_schedule="0 3 * * 0",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Sundays at 03:00: retrain both models and run the promotion gate (stopped by default; the "
    "retraining trigger already retrains when the data says so).",
)
weekly_retention = ScheduleDefinition(
    name=WEEKLY_PRUNE,
    job_name=PRUNE_JOB,
    cron_schedule="0 4 * * 0",
    run_config={"ops": {"prune_versions": {"config": {"dry_run": False}}}},
    default_status=DefaultScheduleStatus.STOPPED,
    description="Sundays at 04:00: prune what the retention policy does not keep, for real (stopped by default: "
    "run the job's dry run first and read its plan).",
)
