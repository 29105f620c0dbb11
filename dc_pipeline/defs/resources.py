"""Every resource of the code location, built once from the settings (``dc_pipeline.settings``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr, field_validator

from dc_pipeline.catalog import T
from dc_pipeline.settings import PACKAGED_CONTRACTS, Settings, get_settings


class DataLake(ConfigurableResource):
    """The pipeline's folders: landing zone, image store, dataset versions, artifacts, reports, contracts.

    Paths stored in the warehouse and in metadata are relative to ``root`` (see ``relative``), so the data
    folder can be moved.
    """

    root: str = Field(description="Data folder; the others are sub-folders of it.")
    contracts_dir: str = Field(default=str(PACKAGED_CONTRACTS), description="Folder of source contracts (YAML).")
    object_store_url: Optional[str] = Field(
        default=None,
        description="s3://bucket/prefix where dataset versions and model artifacts live instead of the data "
        "folder (the multi-machine mode); credentials from the AWS_* variables.",
    )
    s3_endpoint_url: Optional[str] = Field(
        default=None, description="An S3-compatible server's URL instead of AWS (MinIO, a local S3 API server)."
    )

    @property
    def landing(self) -> Path:
        return Path(self.root) / "landing"

    @property
    def objects(self) -> Path:
        return Path(self.root) / "objects"

    @property
    def storage(self):
        """The root of dataset versions and artifacts: the object store when configured, else the data folder."""
        from dc_pipeline.core.storage import storage_root

        return storage_root(self.root, self.object_store_url, self.s3_endpoint_url)

    @property
    def datasets(self):
        """Where the Lance stores live (``core.storage.Location``: local or in object storage)."""
        return self.storage / "datasets"

    @property
    def artifacts(self):
        """Where registered models' files live (``core.storage.Location``)."""
        return self.storage / "artifacts"

    @property
    def reports(self) -> Path:
        return Path(self.root) / "reports"

    def root_path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    def relative(self, path) -> str:
        """``path`` as stored: relative to the data folder, or (a location in the object store) to its root."""
        from dc_pipeline.core.paths import to_relative
        from dc_pipeline.core.storage import Location

        if isinstance(path, Location) and path.is_s3:
            return path.relative_to(self.storage)
        return to_relative(path, self.root)

    def batch_dir(self, source: str, batch_id: str) -> Path:
        return self.landing / source / batch_id

    def contracts(self):
        from dc_pipeline.core.data.contracts import load_contracts

        return load_contracts(self.contracts_dir)

    def object_store(self):
        from dc_pipeline.core.data.images import ObjectStore

        return ObjectStore(self.objects)


class Warehouse(ConfigurableResource):
    """The DuckDB warehouse. Its tables are declared in ``dc_pipeline.warehouse.tables``; pending migrations
    are applied when the resource first connects in a process. Each ``get_connection()`` block is one
    transaction: all of its writes or none, also when the run is killed. While a block is open the file
    is marked as written by this run, so a reader that finds it locked is told which run holds it."""

    database: str = Field(description="Path of the DuckDB file, or the postgresql:// URL of a shared warehouse.")
    data_dir: str = Field(description="Data folder that stored relative paths are relative to.")
    _holder: dict = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.dagster_run
        self._holder = {"run_id": context.run_id, "job": run.job_name if run else None}

    @contextmanager
    def get_connection(self, wait_seconds: float | None = None) -> Iterator:
        """One transaction on a read-write connection; waits up to ``wait_seconds`` (default 120 s) for
        another process's lock, then raises ``WarehouseBusy``."""
        from dc_pipeline.warehouse.connect import connect
        from dc_pipeline.warehouse.io import transaction

        with (
            connect(self.database, self.data_dir, holder=self._holder, wait_seconds=wait_seconds) as conn,
            transaction(conn),
        ):
            yield conn


class LabelAudit(ConfigurableResource):
    """Where known label errors are listed, for measuring detection (the demo's injected flips); never
    used to decide anything."""

    ground_truth_path: Optional[str] = Field(default=None, description="CSV with source, record_id, true_label.")


class RetrainPolicy(ConfigurableResource):
    """When the retraining trigger may request a retraining on its own. It decides from what changed since
    its last attempt (recorded in training.retraining_attempts), never retrains the same dataset version
    twice by itself, backs off after refusals and failures, and caps its attempts per day. A manual
    `retrain` launch is always possible."""

    new_data_share: float = Field(
        default=0.20,
        ge=0,
        description="Retrain when the current dataset's images that neither the last attempt's dataset nor the "
        "champion's holds reach this share of them.",
    )
    backoff_minutes: float = Field(
        default=60.0,
        ge=0,
        description="After a refused or failed attempt, wait this long before the next one; the wait doubles "
        "with every further refusal or failure in a row (at most 7 days). 0: no back-off.",
    )
    max_attempts_per_day: int = Field(
        default=4, ge=0, description="At most this many automatic attempts in any 24 hours. 0: never on its own."
    )
    rearm_at: Optional[str] = Field(
        default=None,
        description="ISO time (UTC). Once it has passed, the trigger forgets the attempts made before it (the "
        "same-data rule, the back-off and what new data is compared with; the daily cap still counts them): one "
        "more attempt on the same data. A new dataset version re-arms by itself.",
    )

    @field_validator("rearm_at")
    @classmethod
    def _iso_time(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            datetime.fromisoformat(value)
        return value

    def policy(self):
        """The trigger's rules with these values (``dc_pipeline.core.ml.retraining.Policy``)."""
        from dc_pipeline.core.ml.retraining import Policy

        rearm = datetime.fromisoformat(self.rearm_at) if self.rearm_at else None
        if rearm is not None and rearm.tzinfo is not None:
            rearm = rearm.astimezone(UTC).replace(tzinfo=None)
        return Policy(self.new_data_share, self.backoff_minutes, self.max_attempts_per_day, rearm)


class RetentionPolicy(ConfigurableResource):
    """Which dataset versions and artifacts the `prune_dataset_versions` job keeps. Always kept: the published
    version, versions staged for their audit, the newest version written, and every version a registered
    model was trained on (registered models themselves are never pruned: they are the audit trail)."""

    keep_last_versions: int = Field(default=10, ge=0, description="Also keep this many newest dataset versions.")
    keep_days: float = Field(default=30.0, ge=0, description="Also keep dataset versions younger than this.")
    report_days: float = Field(default=90.0, ge=0, description="Delete rendered drift reports older than this.")


RUN_FAILURE = "run_failure"
CHALLENGER_REFUSED = "challenger_refused"


class Alerts(ConfigurableResource):
    """Where failed runs and refused challengers are reported: a table in its own DuckDB file, the log, and an
    optional webhook."""

    database: str = Field(
        description="DuckDB file of the alerts table (never the warehouse, so an alert "
        "never waits for the warehouse lock)."
    )
    webhook_url: Optional[str] = Field(default=None, description="URL each alert is POSTed to as JSON.")
    timeout_seconds: float = Field(default=5.0, description="Webhook timeout.")

    def raise_alert(self, kind: str, run_id: str, job_name: str, partition: str | None, message: str, log) -> None:
        """Record an alert of ``kind`` and post it to the webhook; a failing table or webhook is logged as a
        warning, never raised (the alert still reaches the log and whichever of the two works)."""
        row = {
            "failed_at": datetime.now(UTC).replace(tzinfo=None),
            "run_id": run_id,
            "job_name": job_name,
            "partition": partition,
            "message": message[:2000],
            "kind": kind,
        }
        try:
            self.record(row)
        except Exception as exc:  # noqa: BLE001 (the alert still goes to the log and the webhook)
            log.warning(f"could not store the alert in {self.database}: {exc}")
        if self.webhook_url:
            try:
                post_webhook(self.webhook_url, {**row, "failed_at": row["failed_at"].isoformat()}, self.timeout_seconds)
            except Exception as exc:  # noqa: BLE001 (an unreachable webhook must not hide the alert)
                log.warning(f"could not post the alert to the webhook: {exc}")

    def record(self, row: dict) -> None:
        """Append to the alerts table (its own DuckDB file, so an alert never waits for the warehouse lock)."""
        import pandas as pd

        from dc_pipeline.warehouse.connect import connect
        from dc_pipeline.warehouse.io import append_rows
        from dc_pipeline.warehouse.migrations import ALERTS

        with connect(self.database, None, migrations=ALERTS) as conn:
            append_rows(conn, T.RUN_FAILURES, pd.DataFrame([row]))


def post_webhook(url: str, payload: dict, timeout: float = 5.0) -> None:
    import json
    import urllib.parse
    import urllib.request

    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"the alert webhook must be an http(s) URL, not {url!r}")
    body, headers = json.dumps(payload).encode(), {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 (checked above)
    with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310 (scheme checked above)
        pass


def build_resources(settings: Settings | None = None) -> dict:
    """The resources for ``settings`` (default: the process's settings)."""
    s = settings or get_settings()
    data = str(s.data_dir)
    return {
        "lake": DataLake(
            root=data,
            contracts_dir=str(s.contracts_dir),
            object_store_url=s.object_store_url,
            s3_endpoint_url=s.s3_endpoint_url,
        ),
        "warehouse": Warehouse(database=s.warehouse_location, data_dir=data),
        "label_audit": LabelAudit(
            ground_truth_path=str(s.label_ground_truth_path) if s.label_ground_truth_path else None
        ),
        "retrain_policy": RetrainPolicy(),
        "retention": RetentionPolicy(),
        "alerts": Alerts(database=str(s.alerts_path), webhook_url=s.alert_webhook),
    }


def resources_for(data_dir: str | Path, contracts_dir: str | Path | None = None, **overrides) -> dict:
    """Resources rooted at an explicit folder (tests, scripts); the demo's ground truth when it is there."""
    data_dir = Path(data_dir).resolve()
    settings = get_settings().model_copy(
        update={
            "data_dir": data_dir,
            "warehouse": None,
            "warehouse_url": None,
            "object_store_url": None,
            "contracts_dir": Path(contracts_dir or PACKAGED_CONTRACTS),
            "label_ground_truth": None,  # label_ground_truth_path: the demo's list in data_dir when it is there
            "alert_webhook": None,
        }
    )
    return {**build_resources(settings), **overrides}


def s3_location(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix)."""
    if not url.startswith("s3://"):
        raise ValueError(f"object store URL {url!r} is not s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


def step_output_storage(settings: Settings | None = None) -> dict:
    """Where step outputs that cross processes go: the object store when there is one (steps on other
    machines read them there), else nothing to add (Dagster's default keeps them on the local disk)."""
    s = settings or get_settings()
    if not s.object_store_url:
        return {}
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    bucket, prefix = s3_location(s.object_store_url)
    s3 = S3Resource(endpoint_url=s.s3_endpoint_url, use_ssl=not (s.s3_endpoint_url or "").startswith("http://"))
    return {"io_manager": S3PickleIOManager(s3_resource=s3, s3_bucket=bucket, s3_prefix=f"{prefix}/step-outputs")}


def step_executor(settings: Settings | None = None):
    """Celery workers when a broker is configured (``DC_CELERY_BROKER_URL``); None: Dagster's default, each step
    a process next to the run. Steps tagged with the accelerator queue go to the workers that serve it."""
    s = settings or get_settings()
    if not s.celery_broker_url:
        return None
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {
            "broker": s.celery_broker_url,
            "backend": s.celery_backend_url or s.celery_broker_url,
            "config_source": {"worker_prefetch_multiplier": 1},
        },
        name="celery_workers",
    )
