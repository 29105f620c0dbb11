"""Shared fixtures: a generated landing zone, real DuckDB files and a real Dagster instance per test."""

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

from dc_pipeline.catalog import batches_of, contract_sources, raw_key  # noqa: E402
from dc_pipeline.defs import build_definitions  # noqa: E402
from dc_pipeline.defs.raw.assets import build_ingestion  # noqa: E402
from dc_pipeline.defs.resources import resources_for  # noqa: E402
from dc_pipeline.demo.landing import write_demo_landing  # noqa: E402

SOURCES = contract_sources()


@dataclass
class Pipeline:
    """A pipeline over its own data folder and Dagster instance."""

    data: Path
    instance: DagsterInstance
    resources: dict

    def __post_init__(self):
        self.defs = build_definitions(self.resources)

    @property
    def landing(self) -> Path:
        return self.data / "landing"

    def ingest(self, source: str, batch_id: str, raise_on_error: bool = False):
        """Materialize one raw partition with its checks, as the ingestion job does."""
        name = batches_of(source).name
        if batch_id not in self.instance.get_dynamic_partitions(name):
            self.instance.add_dynamic_partitions(name, [batch_id])
        return materialize(
            build_ingestion(source),
            partition_key=batch_id,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=raise_on_error,
        )

    def refresh(self, raise_on_error: bool = False, run_config: dict | None = None, selection=None):
        """Run ``refresh_downstream`` (all of it, or the asset keys in ``selection``); training is tiny by default."""
        return self.defs.resolve_job_def("refresh_downstream").execute_in_process(
            instance=self.instance,
            raise_on_error=raise_on_error,
            asset_selection=selection,
            run_config=run_config if run_config is not None else tiny_run_config(),
        )

    def refresh_data(self, raise_on_error: bool = False, features: bool = True):
        """Refresh cleaning (and features) only, no training."""
        from dc_pipeline.catalog import DATASET_VERSION, DECISIONS, IMAGE_STATS, IMAGES, LINEAGE, QUARANTINE

        selection = [IMAGES, QUARANTINE, LINEAGE, DECISIONS] + ([DATASET_VERSION, IMAGE_STATS] if features else [])
        return self.refresh(raise_on_error, run_config={}, selection=selection)

    def ingest_all(self):
        for source in SOURCES:
            if not (self.landing / source).is_dir():
                continue
            for batch in sorted(p.name for p in (self.landing / source).iterdir()):
                assert self.ingest(source, batch).success, f"{source}/{batch} failed"

    def sql(self, query: str, params=None) -> pd.DataFrame:
        with duckdb.connect(str(self.data / "warehouse.duckdb"), read_only=True) as conn:
            return conn.execute(query, params or []).df()

    def check_passed(self, result, check_name: str) -> list[bool]:
        return [e.passed for e in result.get_asset_check_evaluations() if e.check_name == check_name]


def tiny_run_config(epochs: int = 6, width: int = 8, seed: int = 0, gate: dict | None = None) -> dict:
    """Small training and fewer bootstrap resamples so the suite stays fast; first-model bounds loosened to
    match (the gate's own logic is tested in test_evidence.py)."""
    train = {"config": {"epochs": epochs, "width": width, "batch_size": 32, "seed": seed}}
    gate = gate or {"first_max_clean_error": 0.6, "first_max_mce": 0.9, "first_max_rms_calibration": 0.6}
    return {
        "ops": {
            "training__baseline_model": train,
            "training__augmix_model": train,
            "evaluation__model_evaluation": {"config": {"bootstrap_resamples": 200}},
            "evaluation__model_evaluation_promotion_gate": {"config": {"bootstrap_resamples": 400, **gate}},
        }
    }


def published_day_zero(data: Path, home: Path, images: int = 400) -> None:
    """A data folder with day 0 ingested and its dataset version published, under a Dagster home with the
    project's ``dagster.yaml`` (run queue and pools, as deployed): enough images of ``field_app`` and
    ``partner_api`` that every dataset version built afterwards holds every class in every split."""
    import shutil

    from dc_pipeline.demo.batches import write_demo_batch

    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parents[1] / "data" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    for source in ("field_app", "partner_api"):
        write_demo_batch(data / "landing", source, images, "none", seed=100, batch_id="day-0")
    with DagsterInstance.from_config(str(home)) as instance:
        day0 = Pipeline(data, instance, resources_for(data))
        for source in ("field_app", "partner_api"):
            assert day0.ingest(source, "day-0").success
        assert day0.refresh_data().success


def make_pipeline(path: Path, demo: bool = True) -> Pipeline:
    if demo:
        write_demo_landing(path / "landing", seed=7)
    return Pipeline(data=path, instance=DagsterInstance.ephemeral(), resources=resources_for(path))


@pytest.fixture
def pipeline(tmp_path) -> Pipeline:
    """A fresh demo landing zone, nothing ingested yet."""
    return make_pipeline(tmp_path)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Pipeline:
    """The whole demo ingested and cleaned once (shared, read-only)."""
    p = make_pipeline(tmp_path_factory.mktemp("demo"))
    p.ingest_all()
    p.refresh_result = p.refresh()
    assert p.refresh_result.success
    return p


__all__ = ["Pipeline", "make_pipeline", "materialize", "raw_key"]
