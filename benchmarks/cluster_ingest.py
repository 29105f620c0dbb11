"""One batch's ingestion in the embedded mode next to the cluster mode, on this machine, in one run.

Each mode gets a fresh data folder with the demo landing zone, ingested by the real landing sensor through
the daemon; then one new 200-image `field_app` batch lands and is timed from its landing (the manifest
written) to its ingestion run's success, and as the run's own duration. Embedded: SQLite instance, DuckDB
file, steps as processes next to the run. Cluster: ``dc_pipeline.ops.cluster.LocalCluster`` (PostgreSQL
instance and warehouse, Redis, two Celery workers, moto S3). Run with the cluster environment (both modes use
its DuckDB 1.5.5, so only the mode differs):

    make cluster-install && .venv-cluster/bin/python benchmarks/cluster_ingest.py [--out benchmarks/results/cluster_ingest.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def wait_for_runs(home: Path, count: int, since: float, timeout: float = 1200.0) -> list:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= since]
            if len(records) >= count and all(r.dagster_run.status.value in FINISHED for r in records):
                bad = [r.dagster_run.job_name for r in records if r.dagster_run.status.value != "SUCCESS"]
                if bad:
                    raise RuntimeError(f"runs failed: {bad}")
                return records
            time.sleep(1)
    raise TimeoutError(f"{count} runs did not finish in {timeout:g} s")


def time_one_batch(home: Path, data: Path) -> dict:
    """Ingest the demo, then time one new batch."""
    from dc_pipeline.catalog import contract_sources
    from dc_pipeline.demo.batches import write_demo_batch
    from dc_pipeline.demo.landing import write_demo_landing

    since = time.time()
    write_demo_landing(data / "landing", seed=7)
    batches = [b for s in contract_sources() for b in (data / "landing" / s).glob("*") if b.is_dir()]
    t0 = time.monotonic()
    wait_for_runs(home, len(batches), since)
    demo_s = time.monotonic() - t0
    since = time.time()
    t0 = time.monotonic()
    write_demo_batch(data / "landing", "field_app", 200, "none", 21, "timed-batch")
    (record,) = wait_for_runs(home, 1, since)
    landed_to_done = time.monotonic() - t0
    run_s = (record.end_time or 0) - (record.start_time or 0)
    return {"demo_s": demo_s, "landed_to_done_s": landed_to_done, "run_s": run_s, "demo_batches": len(batches)}


def embedded(folder: Path) -> dict:
    home, data = folder / "dagster_home", folder / "data"
    home.mkdir(parents=True)
    # The project's embedded instance settings, with runs one at a time: the DuckDB file serialises their
    # warehouse steps anyway, and five runs polling for one pool slot, each step a fresh process importing
    # the code location, took over 11 minutes for the demo here (two cores).
    import yaml

    settings = yaml.safe_load((ROOT / "data" / "dagster_home" / "dagster.yaml").read_text())
    settings["concurrency"]["runs"] = {"max_concurrent_runs": 1}
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    env = {**os.environ, "DAGSTER_HOME": str(home), "DC_DATA_DIR": str(data), "GX_ANALYTICS_ENABLED": "false"}
    for key in ("DC_WAREHOUSE_URL", "DC_OBJECT_STORE_URL", "DC_CELERY_BROKER_URL", "DC_WAREHOUSE"):
        env.pop(key, None)
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "dc_pipeline.definitions"],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    saved = dict(os.environ)
    try:
        os.environ.update({"DAGSTER_HOME": str(home), "DC_DATA_DIR": str(data)})
        return time_one_batch(home, data)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        os.killpg(daemon.pid, 15)
        daemon.wait(timeout=60)


def cluster(folder: Path) -> dict:
    from dc_pipeline.ops.cluster import LocalCluster
    from dc_pipeline.settings import get_settings

    c = LocalCluster.on_free_ports(folder)
    saved = dict(os.environ)
    try:
        c.up()
        os.environ.update(c.env())
        get_settings.cache_clear()
        return time_one_batch(c.dagster_home, c.data_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        c.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster_ingest.md")
    args = parser.parse_args()
    results = {}
    for name, run in (("embedded", embedded), ("cluster", cluster)):
        folder = Path(tempfile.mkdtemp(prefix=f"dc-bench-{name}-"))
        folder.chmod(0o755)  # the cluster's PostgreSQL runs as the postgres user
        try:
            results[name] = run(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(name, results[name], flush=True)
    e, c = results["embedded"], results["cluster"]
    lines = [
        "# One batch's ingestion: embedded mode next to cluster mode",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"one run (`{Path(__file__).name}`). Both modes through the daemon and the landing sensor, on this machine.",
        "",
        "| | embedded (SQLite, DuckDB file, local steps) | cluster (PostgreSQL, Celery x2, S3) | cluster / embedded |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("demo_s", f"the demo landing zone ({e['demo_batches']} batches) ingested, s (embedded: one run at a time)"),
        ("landed_to_done_s", "one 200-image batch, landed to ingested, s"),
        ("run_s", "that batch's ingestion run, start to end, s"),
    ):
        lines.append(f"| {label} | {e[key]:.1f} | {c[key]:.1f} | {c[key] / e[key]:.2f}x |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
