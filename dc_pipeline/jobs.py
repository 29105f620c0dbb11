"""Jobs: ingesting one landing batch of a source, and rebuilding everything downstream of ingestion."""

from dagster import AssetSelection, define_asset_job

from dc_pipeline.stages.ingestion import batches_of, raw_key


def ingest_job_name(source: str) -> str:
    return f"ingest_{source}"


def ingestion_jobs(sources: list[str]) -> list:
    """One partitioned job per source: its raw asset for one batch, with that batch's checks."""
    return [
        define_asset_job(
            ingest_job_name(s),
            selection=AssetSelection.assets(raw_key(s)),
            partitions_def=batches_of(s),
            description=f"Ingest one landing batch of `{s}` and run its batch checks.",
        )
        for s in sources
    ]


def downstream_job(sources: list[str]):
    """Everything that is not a raw asset (cleaning and the stages after it), with their checks."""
    return define_asset_job(
        "refresh_downstream",
        selection=AssetSelection.all() - AssetSelection.groups("ingestion"),
        description="Rebuild cleaning and every later stage from the raw tables.",
    )
