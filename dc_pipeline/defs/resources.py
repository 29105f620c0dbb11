"""Every resource of the code location, built once from the settings (``dc_pipeline.settings``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from dc_pipeline.settings import PACKAGED_CONTRACTS, Settings, get_settings


class DataLake(ConfigurableResource):
    """The pipeline's folders: landing zone, image store, dataset versions, artifacts, reports, contracts.

    Paths stored in the warehouse and in metadata are relative to ``root`` (see ``relative``), so the data
    folder can be moved.
    """

    root: str = Field(description="Data folder; the others are sub-folders of it.")
    contracts_dir: str = Field(default=str(PACKAGED_CONTRACTS), description="Folder of source contracts (YAML).")

    @property
    def landing(self) -> Path:
        return Path(self.root) / "landing"

    @property
    def objects(self) -> Path:
        return Path(self.root) / "objects"

    @property
    def datasets(self) -> Path:
        return Path(self.root) / "datasets"

    @property
    def artifacts(self) -> Path:
        return Path(self.root) / "artifacts"

    @property
    def reports(self) -> Path:
        return Path(self.root) / "reports"

    def root_path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    def relative(self, path: str | Path) -> str:
        """``path`` as stored: relative to the data folder."""
        from dc_pipeline.core.paths import to_relative

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
    are applied when the resource first connects in a process."""

    database: str = Field(description="Path of the DuckDB file.")
    data_dir: str = Field(description="Data folder that stored relative paths are relative to.")

    @contextmanager
    def get_connection(self) -> Iterator:
        from dc_pipeline.warehouse.connect import connect

        with connect(self.database, self.data_dir) as conn:
            yield conn


class LabelAudit(ConfigurableResource):
    """Where known label errors are listed, for measuring detection (the demo's injected flips); never
    used to decide anything."""

    ground_truth_path: Optional[str] = Field(default=None, description="CSV with source, record_id, true_label.")


class RetrainPolicy(ConfigurableResource):
    """When the retraining trigger fires on new data."""

    new_data_share: float = Field(
        default=0.20, description="Retrain when accepted images not in the champion's dataset reach this share of it."
    )


class Alerts(ConfigurableResource):
    """Where failed runs are reported: a table in its own DuckDB file, the log, and an optional webhook."""

    database: str = Field(
        description="DuckDB file of the alerts table (never the warehouse, so an alert "
        "never waits for the warehouse lock)."
    )
    webhook_url: Optional[str] = Field(default=None, description="URL each alert is POSTed to as JSON.")
    timeout_seconds: float = Field(default=5.0, description="Webhook timeout.")


def build_resources(settings: Settings | None = None) -> dict:
    """The resources for ``settings`` (default: the process's settings)."""
    s = settings or get_settings()
    data = str(s.data_dir)
    return {
        "lake": DataLake(root=data, contracts_dir=str(s.contracts_dir)),
        "warehouse": Warehouse(database=str(s.warehouse_path), data_dir=data),
        "label_audit": LabelAudit(ground_truth_path=str(s.label_ground_truth) if s.label_ground_truth else None),
        "retrain_policy": RetrainPolicy(),
        "alerts": Alerts(database=str(s.alerts_path), webhook_url=s.alert_webhook),
    }


def resources_for(data_dir: str | Path, contracts_dir: str | Path | None = None, **overrides) -> dict:
    """Resources rooted at an explicit folder (tests, scripts); the demo's ground truth when it is there."""
    data_dir = Path(data_dir).resolve()
    truth = data_dir / "demo" / "label_flips.csv"
    settings = get_settings().model_copy(
        update={
            "data_dir": data_dir,
            "warehouse": None,
            "contracts_dir": Path(contracts_dir or PACKAGED_CONTRACTS),
            "label_ground_truth": truth if truth.exists() else None,
            "alert_webhook": None,
        }
    )
    return {**build_resources(settings), **overrides}
