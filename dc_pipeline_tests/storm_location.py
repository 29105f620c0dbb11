"""The code location the storm test serves (``dagster api grpc`` through the daemon's code-server registry):
the project's assets, checks, jobs and landing sensor over the data folder ``DC_TEST_DATA``. Each run
executes its steps one after another in its own run process (the in-process executor, one process per run
rather than one per step); the other sensors are left out of the storm."""

import os

from dagster import Definitions, in_process_executor

from dc_pipeline.catalog import LANDING_SENSOR
from dc_pipeline.defs import build_definitions
from dc_pipeline.defs.resources import resources_for

_project = build_definitions(resources_for(os.environ["DC_TEST_DATA"]))
defs = Definitions(
    assets=_project.assets,
    asset_checks=_project.asset_checks,
    jobs=_project.jobs,
    sensors=[s for s in _project.sensors if s.name == LANDING_SENSOR],
    resources=_project.resources,
    executor=in_process_executor,
)
