"""The scoring service (FastAPI over ``dc_pipeline.core.serving``)."""
