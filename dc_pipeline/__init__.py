"""dc-pipeline: a data-centric ML pipeline orchestrated by Dagster."""
