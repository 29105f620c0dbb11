"""Resources: where the pipeline keeps its files and its warehouse. Paths come from environment variables."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from dagster_duckdb import DuckDBResource
from pydantic import Field

PACKAGED_CONTRACTS = Path(__file__).resolve().parent / "contracts"


class DataLake(ConfigurableResource):
    """The pipeline's folders: landing zone, image store, dataset versions, artifacts, reports, contracts."""

    root: str = Field(description="Data folder; the others default to sub-folders of it.")
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

    def batch_dir(self, source: str, batch_id: str) -> Path:
        return self.landing / source / batch_id

    def contracts(self):
        from dc_pipeline.core.contracts import load_contracts

        return load_contracts(self.contracts_dir)

    def object_store(self):
        from dc_pipeline.core.images import ObjectStore

        return ObjectStore(self.objects)


def default_resources() -> dict:
    """Resources read from ``DC_DATA_DIR``, ``DC_WAREHOUSE`` and ``DC_CONTRACTS_DIR`` (see ``.env``)."""
    import os

    from dc_pipeline.stages.curation import LabelAudit

    lake = DataLake(root=EnvVar("DC_DATA_DIR"),
                    contracts_dir=EnvVar("DC_CONTRACTS_DIR") if os.getenv("DC_CONTRACTS_DIR") else str(PACKAGED_CONTRACTS))
    audit = LabelAudit(ground_truth_path=EnvVar("DC_LABEL_GROUND_TRUTH")) if os.getenv("DC_LABEL_GROUND_TRUTH") \
        else LabelAudit()
    return {"lake": lake, "warehouse": DuckDBResource(database=EnvVar("DC_WAREHOUSE")), "label_audit": audit}


def resources_for(data_dir: str | Path, contracts_dir: str | Path | None = None) -> dict:
    """Resources rooted at an explicit folder (tests, scripts)."""
    from dc_pipeline.stages.curation import LabelAudit

    data_dir = Path(data_dir)
    truth = data_dir / "demo" / "label_flips.csv"
    return {
        "lake": DataLake(root=str(data_dir), contracts_dir=str(contracts_dir or PACKAGED_CONTRACTS)),
        "warehouse": DuckDBResource(database=str(data_dir / "warehouse.duckdb")),
        "label_audit": LabelAudit(ground_truth_path=str(truth) if truth.exists() else None),
    }
