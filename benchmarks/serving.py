"""Scoring service latency and throughput, with dynamic batching against the same service without it.

Run from the repository root: ``python benchmarks/serving.py``. It registers a model of the demo's
architecture (SmallCNN, width 32, depth 2, 28x28 inputs; random weights cost what trained ones do) in a
temporary data folder, starts ``dc-pipeline serve`` twice as a separate process (``DC_SERVE_MAX_BATCH=64``
with a 2 ms wait, then ``DC_SERVE_MAX_BATCH=1``), and sends single 28x28 PNG digits from 1, 8 and 64
concurrent clients (threads with keep-alive connections, in this process) for a fixed time each. Client
and server share this machine's cores, as they would on one host. Writes
``benchmarks/results/serving.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dc_pipeline.core.ml.registry import Registry  # noqa: E402
from dc_pipeline.core.ml.training import build_model  # noqa: E402
from dc_pipeline.ops.loopback import free_port  # noqa: E402
from dc_pipeline.warehouse.connect import connect  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serving.md"
TOKEN = "bench-" + "x" * 24
SPEC = {"in_channels": 1, "n_classes": 10, "width": 32, "depth": 2, "input_size": 28, "classes": list(range(10))}


def register_champion(data: Path) -> str:
    torch.manual_seed(0)
    network = build_model({k: SPEC[k] for k in ("in_channels", "n_classes", "width", "depth", "input_size")})
    with connect(data / "warehouse.duckdb", data) as conn:
        registry = Registry(conn, data / "artifacts")
        version, _ = registry.register(
            "augmix", network.state_dict(), dataset_hash="d" * 64, code={"label": "bench"}, config={}, seed=0,
            model_spec=SPEC, run_id=None,
        )  # fmt: skip
        registry.set_metrics(version, {"automation_threshold": 0.9})
        registry.set_alias("champion", version, "benchmark")
    return version


def images() -> list[bytes]:
    out = []
    for im in load_digits().images[:200]:
        small = Image.fromarray(np.round(im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Server:
    def __init__(self, data: Path, max_batch: int) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "DC_DATA_DIR": str(data),
            "DC_SERVE_TOKENS": f"bench={TOKEN}",
            "DC_SERVE_MAX_BATCH": str(max_batch),
            "DC_SERVE_MAX_WAIT_MS": "2",
        }
        exe = Path(sys.executable).parent / "dc-pipeline"
        self.process = subprocess.Popen(
            [str(exe), "serve", "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the service did not become ready: {self.process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(port: int, clients: int, seconds: float, bodies: list[bytes]) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}
        i = k
        mine = []
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            conn.request("POST", "/v1/predict", bodies[i % len(bodies)], headers)
            response = conn.getresponse()
            json.loads(response.read())
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors[0] += 1
            i += clients
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": len(ms),
        "errors": errors[0],
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "throughput": len(ms) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load time per (mode, clients)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    bodies = images()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        register_champion(data)
        for label, max_batch in (("dynamic batching (64, 2 ms)", 64), ("no batching", 1)):
            server = Server(data, max_batch)
            try:
                load(server.port, 8, 1.0, bodies)  # warm-up
                for clients in (1, 8, 64):
                    r = load(server.port, clients, args.seconds, bodies)
                    rows.append((label, clients, r))
                    print(f"{label:28s} {clients:3d} clients: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                          f"{r['throughput']:.0f} req/s, {r['errors']} errors", flush=True)  # fmt: skip
            finally:
                server.stop()
    table = "\n".join(
        [
            "| service | clients | requests | p50 ms | p99 ms | requests/s | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {label} | {c} | {r['requests']:,} | {r['p50']:.1f} | {r['p99']:.1f} | {r['throughput']:,.0f} | "
                f"{r['errors']} |"
                for label, c, r in rows
            ),
        ]
    )
    print(table)
    if args.no_write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# Scoring service",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; os.cpu_count() = {os.cpu_count()}, "
        f"load average before: {os.getloadavg()[0]:.2f}",
        f"- single 28x28 PNG digits, SmallCNN width 32 depth 2; {args.seconds:g} s per row; clients are threads with "
        "keep-alive connections in the benchmark's process, the service a separate `dc-pipeline serve` process on "
        "the same cores",
        "",
    ]
    RESULTS.write_text("\n".join(header) + "\n" + table + "\n")


if __name__ == "__main__":
    main()
