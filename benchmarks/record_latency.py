"""Record-to-scored latency: a labelled record sent to the scoring service until its batch is scored.

Run from the repository root: ``python benchmarks/record_latency.py``. In a temporary data folder it runs
``dc-pipeline demo-data`` and ``dc-pipeline materialize`` (a champion, real training), starts ``dc-pipeline
serve`` with ``DC_SERVE_RECORDS_SOURCE=field_app``, sends ``--records`` single digits, and measures:

* record to landed batch: from the first POST until the micro-batch folder is complete in the landing zone
  (the batch closes at ``DC_SERVE_RECORDS_MAX`` records; with fewer, after ``DC_SERVE_RECORDS_SECONDS``);
* landed to scored: the ingest run the landing sensor launches for the batch (raw, checks, cleaning,
  features, the batch's scores and drift report), run here directly the way the sensor's run executes;
* the sensor's own wait, up to its 30 s interval (15 s on average), which comes on top.

Writes ``benchmarks/results/record_latency.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dc_pipeline.ops.loopback import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "record_latency.md"
TOKEN = "bench-" + "r" * 24
SOURCE = "field_app"


def cli(env: dict, *args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "dc-pipeline"), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    digits = load_digits()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        home = data / "dagster_home"
        home.mkdir(parents=True)
        env = {**os.environ, "DC_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
        started = time.perf_counter()
        cli(env, "demo-data")
        cli(env, "materialize")
        setup = time.perf_counter() - started
        port = free_port()
        serve_env = {**env, "DC_SERVE_TOKENS": f"bench={TOKEN}", "DC_SERVE_RECORDS_SOURCE": SOURCE,
                     "DC_SERVE_RECORDS_MAX": str(args.records)}  # fmt: skip
        server = subprocess.Popen([str(Path(sys.executable).parent / "dc-pipeline"), "serve", "--port", str(port)],
                                  env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not become ready")
                time.sleep(0.2)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            first = time.perf_counter()
            batch_id = None
            for i in range(args.records):
                pixels = np.round(digits.images[1000 + i] * 255 / 16).astype(np.uint8)
                pixels[0, 0] = 1 + i  # new images: the demo already delivered these digits (duplicates are dropped)
                im = Image.fromarray(pixels)
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                headers = {"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}
                conn.request("POST", f"/v1/records?label={int(digits.target[1000 + i])}", buf.getvalue(), headers)
                response = conn.getresponse()
                batch_id = json.loads(response.read())["batch_id"]
            folder = data / "landing" / SOURCE / batch_id
            while not (folder / "_SUCCESS").is_file():
                time.sleep(0.005)
            landed = time.perf_counter() - first
        finally:
            server.terminate()
            server.wait(timeout=30)
        from dagster import DagsterInstance

        from dc_pipeline.catalog import batches_of, ingest_job_name
        from dc_pipeline.defs import build_definitions
        from dc_pipeline.defs.resources import resources_for
        from dc_pipeline.ops.materialize import execute_as_location_run

        os.environ.update({"DC_DATA_DIR": str(data), "DAGSTER_HOME": str(home)})
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(batches_of(SOURCE).name, [batch_id])
            defs = build_definitions(resources_for(data))
            t = time.perf_counter()
            result = execute_as_location_run(
                defs.resolve_job_def(ingest_job_name(SOURCE)), instance, partition_key=batch_id
            )
            scored = time.perf_counter() - t
        import duckdb

        with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as db:
            n_scored = db.execute(
                "SELECT count(*) FROM scoring.predictions WHERE source = ? AND batch_id = ?", [SOURCE, batch_id]
            ).fetchall()[0][0]
    rows = [
        ("records sent", f"{args.records} (one micro-batch: DC_SERVE_RECORDS_MAX={args.records})"),
        ("first record to landed batch", f"{landed * 1000:.0f} ms"),
        (
            "landed to scored (the ingest run)",
            f"{scored:.1f} s ({'ok' if result.success else 'FAILED'}, {n_scored} images scored)",
        ),  # fmt: skip
        ("the landing sensor's wait", "0-30 s (its interval), 15 s on average"),
        ("record to scored, expected", f"about {landed + scored + 15:.0f} s (at most {landed + scored + 30:.0f} s)"),
        ("set-up (demo data and first materialize, not part of it)", f"{setup:.0f} s"),
    ]
    table = "\n".join(["| step | measured |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    print(table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Record-to-scored latency\n\n- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; " \
                 f"os.cpu_count() = {os.cpu_count()}\n\n"  # fmt: skip
        RESULTS.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
