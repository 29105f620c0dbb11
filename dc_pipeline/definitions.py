"""The Dagster code location (``dagster dev -m dc_pipeline.definitions``): loads ``dc_pipeline.defs``."""

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    from dc_pipeline.defs import build_definitions

    return build_definitions()
