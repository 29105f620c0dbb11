"""Headless materialization: ingest every complete landing batch, refresh downstream, score each batch.

The runs execute here, in this process, but as runs of the code location the UI serves (``dagster dev -m
dc_pipeline.definitions``): each carries that location's origin, so the Overview timeline, the Runs page,
their logs and re-execution treat them like runs launched from the UI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

from dc_pipeline.catalog import (
    AB_REPORT,
    AUDIT_TRAIL,
    CHAMPION,
    CODE_LOCATION,
    OVERVIEW,
    PREDICTION_LOG,
    REFRESH_JOB,
    SWEEP_JOB,
    batches_of,
    drift_key,
    ingest_job_name,
    raw_key,
    scores_key,
)
from dc_pipeline.core.data.landing import scan_landing


def location_job_origin(job_name: str):
    """The origin a run of ``job_name`` has when the UI's code location launches it."""
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_LOCATION)
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=CODE_LOCATION)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def actor_tags() -> dict[str, str]:
    """The audit trail's actor of runs this process starts: the dc-pipeline command and the OS user."""
    import getpass

    from dc_pipeline.core.governance.audit import ACTOR_TAG

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {ACTOR_TAG: f"dc-pipeline:{user}"}


def execute_as_location_run(
    job_def,
    instance,
    *,
    partition_key: str | None = None,
    asset_selection: Sequence | None = None,
    run_config: Mapping | None = None,
):
    """Execute ``job_def`` in this process (like ``execute_in_process``: one process, no step launch cost) as a
    run of the UI's code location. Returns Dagster's execution result."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run
    from dagster._core.execution.execute_in_process import merge_run_tags

    selection = list(asset_selection) if asset_selection else None
    job = job_def.as_ephemeral_job(resource_defs={}, input_values={})
    if not run_config and partition_key and job.partitioned_config:
        run_config = job.partitioned_config.get_run_config_for_partition_key(partition_key)
    tags = {**merge_run_tags(job_def, partition_key, None, selection, instance, run_config), **actor_tags()}
    run = instance.create_run_for_job(
        job_def=job.get_subset(asset_selection=set(selection)) if selection else job,
        run_config=run_config or {},
        tags=tags,
        asset_selection=frozenset(selection) if selection else None,
        remote_job_origin=location_job_origin(job_def.name),
    )
    return execute_run(InMemoryJob(job), run, instance)


def materialize_all(
    defs, instance, lake, log: Callable[[str], None] = print, refresh_config: Mapping | None = None
) -> bool:
    """Register every complete landing batch as a partition and ingest the ones not ingested yet; when an image
    batch was new (or there is no champion yet) refresh downstream (with ``refresh_config``, the launchpad's
    defaults if None) and score the new batches (every batch, the first time) with the new champion and report
    their drift; then the monitoring overview, the scoring service's new predictions with the A/B report, and the
    audit trail. The landing scan is the sensor's. Run again, it does only what
    new batches need: the cost follows the new batches, not the history.

    Returns True when every run succeeded. A batch that fails its blocking checks fails its own run and
    stays out of clean data; the others go on.
    """
    from dc_pipeline.core.data.contracts import source_kinds

    contracts = lake.contracts()
    kinds = source_kinds(lake.contracts_dir)
    manifests = {s: contracts[s].manifest_file for s in kinds}
    landed = scan_landing(lake.landing, manifests, log, limits=contracts.project.manifests)
    ok = True

    def run(job: str, what: str, **kwargs) -> None:
        nonlocal ok
        result = execute_as_location_run(defs.resolve_job_def(job), instance, **kwargs)
        ok &= result.success
        log(f"{what}: {'ok' if result.success else 'FAILED (see the run in the UI)'}")

    had_champion = instance.get_latest_materialization_event(CHAMPION) is not None
    ingested_now = []
    for source in sorted(kinds):
        batches = [b.batch_id for b in landed if b.source == source]
        known = set(instance.get_dynamic_partitions(batches_of(source).name))
        if new := [b for b in batches if b not in known]:
            instance.add_dynamic_partitions(batches_of(source).name, new)
        ingested = instance.get_materialized_partitions(raw_key(source))
        for b in [b for b in landed if b.source == source and b.batch_id not in ingested]:
            run(ingest_job_name(source), f"ingest {b.key}", partition_key=b.batch_id)
            ingested_now.append(b)
    images_now = [b for b in ingested_now if kinds[b.source] == "images"]
    if images_now or not had_champion:
        run(REFRESH_JOB, REFRESH_JOB, run_config=refresh_config)
        # Score with the (new) champion: every batch when there was none before, else the batches just ingested
        # (scored in their ingest run by the previous champion); earlier batches keep the scores they were served.
        for b in images_now if had_champion else [b for b in landed if kinds.get(b.source) == "images"]:
            run(
                ingest_job_name(b.source),
                f"score and drift {b.key}",
                partition_key=b.batch_id,
                asset_selection=[scores_key(b.source), drift_key(b.source)],
            )
    else:
        log("no new image batch: clean data, models and scores are current")
    # the overview, the scoring service's new predictions and the A/B report, and the audit trail of these runs
    run(SWEEP_JOB, "monitoring overview", asset_selection=[OVERVIEW, PREDICTION_LOG, AB_REPORT, AUDIT_TRAIL])
    return ok
