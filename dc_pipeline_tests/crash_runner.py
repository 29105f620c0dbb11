"""One pipeline run in this process, over a data folder and a persistent Dagster instance (DAGSTER_HOME):
what the crash-consistency test starts, kills and starts again.

    python -m dc_pipeline_tests.crash_runner <data folder> <job> [<partition> [<run id to re-execute from failure>]]

``DC_TEST_KILL_AT=<point>:<n>`` kills this process with SIGKILL the n-th time the run reaches ``<point>``
(one of ``KILL_POINTS``). The points wrap the pipeline's own functions from here; the pipeline holds no
test hook. The run uses the in-process executor, so steps claim the ``duckdb`` pool slots of the instance
as a run worker does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _Countdown:
    def __init__(self, n: int):
        self.left = n

    def hit(self) -> bool:
        self.left -= 1
        return self.left == 0


def _wrap(owner, name: str, countdown: _Countdown, when: str = "after", only=None) -> None:
    """Replace ``owner.name`` by a wrapper that dies before or after the n-th call (``only(args)``: count
    only matching calls)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        counted = only is None or only(*args, **kwargs)
        if counted and when == "before" and countdown.hit():
            _die()
        out = original(*args, **kwargs)
        if counted and when == "after" and countdown.hit():
            _die()
        return out

    setattr(owner, name, wrapper)


def _arm_ingest(c: _Countdown) -> None:
    """Mid-ingestion: image objects stored, nothing written to the warehouse yet."""
    from dc_pipeline.core.data.images import ObjectStore

    _wrap(ObjectStore, "put", c)


def _arm_clean(c: _Countdown) -> None:
    """Mid-cleaning, inside its transaction: the batch's candidates and quarantine rows written, the images,
    lineage and ledger not yet."""
    import dc_pipeline.warehouse.io as io

    _wrap(io, "append_rows", c, only=lambda conn, table, df: table.startswith("clean."))


def _arm_version_write(c: _Countdown) -> None:
    """Mid-way through writing a dataset version to its Lance store: each write counts (pixels appended,
    members written, the version tagged); the 3rd is the tag, after which only the warehouse transaction
    is left."""
    import lance

    from dc_pipeline.core.data.dataset_store import DatasetStore

    _wrap(lance, "write_dataset", c)
    _wrap(DatasetStore, "tag", c)


def _arm_version_staged(c: _Countdown) -> None:
    """A dataset version staged in the warehouse, its audit not yet run."""
    import dc_pipeline.defs.features.assets as features

    _wrap(features, "audit", c, when="before")


def _arm_training(c: _Countdown) -> None:
    """Training a model (the first is registered already when n=2)."""
    import dc_pipeline.core.ml.training as training

    _wrap(training, "train", c, when="before")


def _arm_weights_mid_write(c: _Countdown) -> None:
    """A model's file half-way: written under its temporary name, not yet renamed into place."""
    import dc_pipeline.core.ml.registry as registry

    store = registry._store

    def dying_store(*args, **kwargs):
        replace = os.replace

        def dying_replace(src, dst):
            if c.hit():
                _die()
            replace(src, dst)

        os.replace = dying_replace
        try:
            return store(*args, **kwargs)
        finally:
            os.replace = replace

    registry._store = dying_store


def _arm_registered_files(c: _Countdown) -> None:
    """A model's files stored, its registry row not inserted."""
    import dc_pipeline.core.ml.registry as registry

    _wrap(registry, "_store", c)


def _arm_alias(c: _Countdown) -> None:
    """An alias moved inside its transaction, its history row not yet written."""
    from dc_pipeline.core.ml.registry import Registry

    original = Registry.set_alias

    def set_alias(self, *args, **kwargs):
        conn = self.conn

        class Dying:
            def execute(self, sql, *a, **k):
                if "registry.alias_history" in sql and c.hit():
                    _die()
                return conn.execute(sql, *a, **k)

            def __getattr__(self, name):
                return getattr(conn, name)

        import dc_pipeline.warehouse.io as io

        self.conn = dying = Dying()
        if id(conn) in io._OPEN:  # the stand-in is inside the same open transaction
            io._OPEN.add(id(dying))
        try:
            return original(self, *args, **kwargs)
        finally:
            io._OPEN.discard(id(dying))
            self.conn = conn

    Registry.set_alias = set_alias


KILL_POINTS = {
    "ingest": _arm_ingest,
    "clean": _arm_clean,
    "version_write": _arm_version_write,
    "version_staged": _arm_version_staged,
    "training": _arm_training,
    "weights_mid_write": _arm_weights_mid_write,
    "registered_files": _arm_registered_files,
    "alias": _arm_alias,
}


def selected_job():
    """The job named by ``DC_TEST_JOB`` over the data folder ``DC_TEST_DATA`` (a reconstructable target)."""
    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.resources import resources_for

    return build_definitions(resources_for(os.environ["DC_TEST_DATA"])).resolve_job_def(os.environ["DC_TEST_JOB"])


def main(argv: list[str]) -> int:
    from dagster import DagsterInstance, ReexecutionOptions, execute_job, reconstructable

    from dc_pipeline.catalog import batches_of
    from dc_pipeline_tests.conftest import tiny_run_config

    data, job = Path(argv[0]).resolve(), argv[1]
    partition = argv[2] if len(argv) > 2 and argv[2] else None
    parent = argv[3] if len(argv) > 3 else None
    os.environ["DC_TEST_DATA"], os.environ["DC_TEST_JOB"] = str(data), job
    spec = os.environ.get("DC_TEST_KILL_AT")
    if spec:
        point, n = spec.rsplit(":", 1)
        KILL_POINTS[point](_Countdown(int(n)))
    run_config = {"execution": {"config": {"in_process": {}}}}
    if job in ("retrain", "refresh_downstream"):  # the smallest models; any first model is promoted
        bounds = {"first_max_clean_error": 1.0, "first_max_mce": 1.0, "first_max_rms_calibration": 1.0}
        run_config.update(tiny_run_config(epochs=1, width=4, gate=bounds))
    with DagsterInstance.get() as instance:
        tags = {}
        if partition:
            source = job.removeprefix("ingest_")
            instance.add_dynamic_partitions(batches_of(source).name, [partition])
            tags["dagster/partition"] = partition
        result = execute_job(
            reconstructable(selected_job),
            instance,
            run_config=run_config,
            tags=tags,
            reexecution_options=ReexecutionOptions.from_failure(parent, instance) if parent else None,
        )
        print(json.dumps({"run_id": result.run_id, "success": result.success}))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
