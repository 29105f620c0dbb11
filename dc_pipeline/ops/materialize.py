"""Headless materialization: ingest every complete landing batch, refresh downstream, score each batch."""

from __future__ import annotations

from collections.abc import Callable

from dc_pipeline.catalog import REFRESH_JOB, batches_of, drift_key, ingest_job_name, scores_key
from dc_pipeline.core.data.landing import scan_landing


def materialize_all(defs, instance, lake, log: Callable[[str], None] = print) -> bool:
    """Register every complete landing batch as a partition, ingest each, refresh downstream, then score
    each image batch and report its drift with the new champion. The landing scan is the sensor's.

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
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)
        ok &= result.success
        log(f"{what}: {'ok' if result.success else 'FAILED (see the run in the UI)'}")

    for source in sorted(kinds):
        batches = [b.batch_id for b in landed if b.source == source]
        known = set(instance.get_dynamic_partitions(batches_of(source).name))
        if new := [b for b in batches if b not in known]:
            instance.add_dynamic_partitions(batches_of(source).name, new)
        for batch in batches:
            run(ingest_job_name(source), f"ingest {source}/{batch}", partition_key=batch)
    run(REFRESH_JOB, REFRESH_JOB)
    for b in landed:
        if kinds.get(b.source) == "images":  # score each batch with the (new) champion
            run(
                ingest_job_name(b.source),
                f"score and drift {b.key}",
                partition_key=b.batch_id,
                asset_selection=[scores_key(b.source), drift_key(b.source)],
            )
    return ok
