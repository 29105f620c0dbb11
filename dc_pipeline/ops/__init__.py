"""Operations the ``dc-pipeline`` command, the API and the jobs share: materialize, reproduce, simulate a
reviewer. Each takes the settings (``dc_pipeline.settings``) and never reads the environment itself."""
