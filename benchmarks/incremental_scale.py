"""Cost of one landing batch as history grows: a 200-image batch on top of 1,000, 10,000 and 100,000 images.

Run from the repository root: ``.venv/bin/python benchmarks/incremental_scale.py`` (``--quick`` for a smoke run
over 1,000 and 5,000 images). Everything runs through the real pipeline: synthetic ``field_app`` landing batches
(CSV manifest, 8x8 grayscale PNG files, ``_SUCCESS`` last, written by the demo's own writer) built from
scikit-learn's bundled digits with per-image jitter (a random shift of up to one pixel and integer noise, drawn
again until the PNG's sha256 is new, so every image is unique; labels are the digits' true labels), ingested by
the job ``ingest_field_app`` on a persistent Dagster instance, with the asset selection raw + the data groups
(cleaning and features, with their asset checks). Scoring and drift are left out: with no champion they only
log that there is nothing to score or compare.

Every batch runs in a fresh subprocess (this script with ``--child``), which imports the pipeline and the
libraries its steps import lazily (Great Expectations, Lance, ...) and opens the warehouse once (creating and
migrating it when empty) before the clock starts, so the time is the job's ``execute_in_process`` wall time, not
import or migration time. Measured per run, inside the subprocess:

- seconds: wall time of ``execute_in_process``, and each step's duration from Dagster's step events;
- bytes written: ``write_bytes - cancelled_write_bytes`` of ``/proc/self/io`` (what the process sent to the
  storage layer, all threads, Dagster's own run storage included) and ``wchar`` (bytes passed to write
  calls), as deltas over the run; beside them the growth of the data folder's apparent size (the benchmark's
  landing zone excluded; the Dagster instance lives outside it);
- peak RSS: the high-water mark ``VmHWM`` is reset (``/proc/self/clear_refs``) just before the run and read
  after it; the table shows the peak and its increase over the RSS at the start of the run;
- where the bytes go: one more 200-image batch per level runs under ``strace -f -y`` (untimed; skipped with
  ``--no-trace`` or without strace), and the bytes passed to write calls are summed per destination: the
  warehouse file, the Dagster instance, the dataset store, the image store, the rest.

The levels are reached with bulk batches (at most ``--bulk`` images each), then ``--repeats`` 200-image batches are
measured one after the other (default 3; the table shows per-figure medians). Beside them, the full rebuild (the
repair operation) runs on a copy of the data folder (warehouse copied, image store and dataset store hard-linked,
landing zone left out) in its own subprocess: the rebuild hook, then a run of the data groups that brings the
features up to date. Bulk throughput: ``--repeats`` batches of each ``--bulk-sizes`` (5,000 and 20,000), each on an
empty warehouse in its own data folder (medians); the difference of the two sizes gives the per-image marginal cost
and the fixed per-run overhead. The tables are printed and written to ``benchmarks/results/incremental_scale.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "incremental_scale.md"
SOURCE = "field_app"
MEASURED = 200
LEVELS = (1_000, 10_000, 100_000)
QUICK_LEVELS = (1_000, 5_000)
BULK_SIZES = (5_000, 20_000)
QUICK_BULK_SIZES = (1_000, 5_000)
BULK_MAX = 20_000
TARGET_GROWTH = 1.5  # time and bytes of the 200-image batch, highest level / lowest level
TARGET_THROUGHPUT = 5_000  # images/s for the 5,000-image batch on an empty warehouse
# Imported in the subprocess before the clock starts: modules the pipeline's steps import inside their bodies.
WARM_IMPORTS = (
    "great_expectations",
    "lance",
    "pyarrow.parquet",
    "PIL.Image",
    "PIL.PngImagePlugin",
    "scipy.ndimage",
    "dc_pipeline.core.data.cleaning",
    "dc_pipeline.core.data.incremental_cleaning",
    "dc_pipeline.core.data.incremental_features",
    "dc_pipeline.core.data.features",
    "dc_pipeline.core.data.expectations",
    "dc_pipeline.core.data.ingestion",
)
# The repair operation: the first hook that exists and whose required parameters are known is called, with keyword
# arguments picked by name from ``rebuild_arguments`` (resources, lake, warehouse, connect, contracts, store, sources,
# review_sources, instance, defs, data_dir, run_id, log); else the rebuild is reported as skipped.
REBUILD_HOOKS = (
    ("dc_pipeline.ops.rebuild", "rebuild_clean"),
    ("dc_pipeline.core.data.incremental_cleaning", "rebuild"),
)
MB = 1e6


# ---------------------------------------------------------------------------------------------------------------
# Synthetic landing batches
# ---------------------------------------------------------------------------------------------------------------


class Landing:
    """Writes complete ``field_app`` batches of jittered digits; every image (sha256) and record id is new."""

    def __init__(self, landing: Path, seed: int = 0):
        import numpy as np

        from dc_pipeline.demo.landing import load_digits_uint8

        self.np = np
        self.landing = landing
        self.images, self.labels = load_digits_uint8()
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()
        self.next_record = 1
        self.n_batches = 0
        self.end = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    def jitter(self, pixels):
        """Shift by up to one pixel (zero fill) and add integer noise in [-12, 12]."""
        np = self.np
        dy, dx = (int(v) for v in self.rng.integers(-1, 2, 2))
        out = np.zeros_like(pixels, dtype=np.int16)
        h, w = pixels.shape
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = pixels[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        out += self.rng.integers(-12, 13, out.shape, dtype=np.int16)
        return out.clip(0, 255).astype(np.uint8)

    def write(self, n: int, kind: str) -> str:
        """Write one batch of ``n`` images; returns its batch id."""
        from dc_pipeline.demo.landing import Digit, to_source_record, write_field_app

        self.n_batches += 1
        batch_id = f"b{self.n_batches:04d}-{kind}-{n}"
        records = []
        for idx in self.rng.integers(0, len(self.labels), n):
            while True:
                digit = Digit(int(idx), self.jitter(self.images[idx]), int(self.labels[idx]))
                captured = self.end - dt.timedelta(seconds=int(self.rng.integers(0, 30 * 86400)))
                rec = to_source_record(SOURCE, self.next_record, digit, captured, self.rng)
                sha = hashlib.sha256(rec["_image"]).hexdigest()
                if sha not in self.seen:
                    break
            self.seen.add(sha)
            self.next_record += 1
            records.append(rec)
        write_field_app(self.landing / SOURCE / batch_id, records)
        return batch_id


# ---------------------------------------------------------------------------------------------------------------
# Measurements inside a subprocess
# ---------------------------------------------------------------------------------------------------------------


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh.read().splitlines() if line)}


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1)) * 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Probe:
    """Seconds, bytes written and peak RSS between ``start()`` and ``stop()``."""

    def start(self) -> Probe:
        self.peak_reset = reset_peak()
        self.rss0 = proc_status("VmRSS")
        self.io0 = proc_io()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict:
        seconds = time.perf_counter() - self.t0
        io1 = proc_io()
        d = {k: io1[k] - self.io0[k] for k in io1}
        peak = proc_status("VmHWM")
        return {
            "seconds": seconds,
            "write_bytes": d["write_bytes"] - d["cancelled_write_bytes"],
            "wchar": d["wchar"],
            "read_bytes": d["read_bytes"],
            "rss_start": self.rss0,
            "peak_rss": peak,
            "peak_rss_increase": peak - self.rss0,
            "peak_reset": self.peak_reset,
        }


def warm_imports() -> list[str]:
    done = []
    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
            done.append(name)
        except ImportError:
            pass
    return done


def run_summary(result) -> dict:
    """Success, step durations, check verdicts and scalar metadata of a Dagster run result."""
    steps: dict[str, float] = {}
    failed = []
    for e in result.all_events:
        if e.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            duration = getattr(e.event_specific_data, "duration_ms", None) or 0.0  # a failure carries none
            steps[e.step_key] = steps.get(e.step_key, 0.0) + duration / 1000
            if e.event_type_value == "STEP_FAILURE":
                failed.append(e.step_key)
    checks = {e.check_name: bool(e.passed) for e in result.get_asset_check_evaluations()}
    metadata = {}
    for e in result.get_asset_materialization_events():
        key = e.asset_key.to_user_string()
        md = e.materialization.metadata or {}
        metadata[key] = {
            k: v.value
            for k, v in md.items()
            if isinstance(getattr(v, "value", None), (int, float, bool))
            or (isinstance(getattr(v, "value", None), str) and len(v.value) < 200)
        }
    return {
        "success": bool(result.success),
        "steps": steps,
        "failed_steps": failed,
        "checks": checks,
        "metadata": metadata,
    }


def child_setup(spec: dict):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from dagster import AssetSelection, DagsterInstance

    from dc_pipeline.catalog import DATA_GROUPS, batches_of, ingest_job_name, raw_key
    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.resources import resources_for

    resources = resources_for(spec["data"])
    defs = build_definitions(resources)
    graph = defs.resolve_asset_graph()
    data_keys = sorted(AssetSelection.groups(*DATA_GROUPS).resolve(graph))
    job = defs.resolve_job_def(ingest_job_name(SOURCE))
    if spec.get("home"):
        Path(spec["home"]).mkdir(parents=True, exist_ok=True)
        instance = DagsterInstance.local_temp(tempdir=spec["home"])
    else:
        instance = DagsterInstance.ephemeral()
    partitions = batches_of(SOURCE).name
    if spec["batch_id"] not in instance.get_dynamic_partitions(partitions):
        instance.add_dynamic_partitions(partitions, [spec["batch_id"]])
    return resources, defs, job, instance, raw_key(SOURCE), data_keys


def child_ingest(spec: dict) -> dict:
    """One batch through raw, cleaning and features (and their checks)."""
    resources, _, job, instance, raw, data_keys = child_setup(spec)
    warmed = warm_imports()
    with resources["warehouse"].get_connection():  # an empty warehouse is created and migrated before the clock
        pass
    probe = Probe().start()
    result = job.execute_in_process(
        partition_key=spec["batch_id"], instance=instance, asset_selection=[raw, *data_keys], raise_on_error=False
    )
    return {**probe.stop(), **run_summary(result), "warm_imports": warmed}


def rebuild_arguments(resources: dict, defs, instance, run_id: str) -> dict:
    """What a rebuild hook may ask for, by parameter name."""
    from dc_pipeline.core.data.contracts import source_kinds

    lake, warehouse = resources["lake"], resources["warehouse"]
    kinds = source_kinds(Path(lake.contracts_dir))
    return {
        "resources": resources,
        "lake": lake,
        "warehouse": warehouse,
        "connect": warehouse.get_connection,
        "contracts": lake.contracts(),
        "store": lake.object_store(),
        "sources": sorted(s for s, k in kinds.items() if k == "images"),
        "review_sources": sorted(s for s, k in kinds.items() if k == "reviews"),
        "instance": instance,
        "defs": defs,
        "definitions": defs,
        "data_dir": lake.root,
        "run_id": run_id,
        "log": lambda _msg: None,
    }


def find_rebuild_hook(available: dict):
    """(name, function, arguments) of the first hook in REBUILD_HOOKS that exists and whose required
    parameters are all available, else (None, None, why not)."""
    tried = []
    for module, name in REBUILD_HOOKS:
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError:
            fn = None
        if not callable(fn):
            tried.append(f"{module}.{name}: absent")
            continue
        params = inspect.signature(fn).parameters
        missing = [
            p
            for p, spec in params.items()
            if p not in available
            and spec.default is inspect.Parameter.empty
            and spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD)
        ]
        if missing:
            tried.append(f"{module}.{name}: needs {missing}")
            continue
        return f"{module}.{name}", fn, {k: v for k, v in available.items() if k in params}
    return None, None, "; ".join(tried)


def child_rebuild(spec: dict) -> dict:
    """The repair operation on a copy of the data folder, then the data groups to bring features up to date."""
    resources, defs, job, instance, _, data_keys = child_setup(spec)
    warmed = warm_imports()
    available = rebuild_arguments(resources, defs, instance, f"bench-rebuild-{uuid.uuid4().hex[:8]}")
    name, fn, arguments = find_rebuild_hook(available)
    if fn is None:
        return {"skipped": f"no rebuild hook ({arguments})"}
    probe = Probe().start()
    fn(**arguments)
    rebuild = probe.stop()
    probe = Probe().start()
    result = job.execute_in_process(
        partition_key=spec["batch_id"], instance=instance, asset_selection=data_keys, raise_on_error=False
    )
    catch_up = {**probe.stop(), **run_summary(result)}
    return {"hook": name, "rebuild": rebuild, "catch_up": catch_up, "warm_imports": warmed}


def child_main(spec: dict) -> None:
    out = child_ingest(spec) if spec["action"] == "ingest" else child_rebuild(spec)
    print("@@RESULT@@" + json.dumps(out, default=str), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The parent: folders, subprocesses, tables
# ---------------------------------------------------------------------------------------------------------------


def folder_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    """Apparent size of the files under ``path`` (top-level entries named in ``skip`` left out)."""
    total = 0
    stack = [path]
    top = True
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        for e in entries:
            if top and e.name in skip:
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            elif e.is_file(follow_symlinks=False):
                total += e.stat(follow_symlinks=False).st_size
        top = False
    return total


TRACED_CALLS = "write,pwrite64,pwritev,pwritev2,writev"
_TRACE_LINE = re.compile(r"^\d+\s+(\w+)\(\d+<([^>]*)>.*=\s+(\d+)$")


def write_categories(trace: Path, data: Path, home: Path | None) -> dict[str, int]:
    """Bytes passed to write calls per destination, from an strace log (``-y`` names each descriptor's file)."""
    out = {"warehouse": 0, "dagster_home": 0, "datasets": 0, "objects": 0, "other": 0}
    prefixes = [
        (str(data / "warehouse.duckdb"), "warehouse"),
        (str(data / "datasets") + "/", "datasets"),
        (str(data / "objects") + "/", "objects"),
    ]
    if home:
        prefixes.append((str(home) + "/", "dagster_home"))
    with open(trace, errors="replace") as fh:
        for line in fh:
            m = _TRACE_LINE.match(line.strip())
            if not m:
                continue
            path, n = m.group(2), int(m.group(3))
            out[next((c for p, c in prefixes if path.startswith(p)), "other")] += n
    return out


def run_child(spec: dict, log: Path, trace: Path | None = None) -> dict:
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    if trace is not None:
        command = ["strace", "-f", "-qq", "-s", "0", "-y", "-e", f"trace={TRACED_CALLS}", "-o", str(trace), *command]
    with open(log, "a") as err:
        err.write(f"\n===== {json.dumps(spec)}\n")
        err.flush()
        proc = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            env=env,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"child {spec['action']} {spec.get('batch_id')} exited {proc.returncode}:\n{tail}")
    out = json.loads(lines[-1][len("@@RESULT@@") :])
    out["process_seconds"] = time.perf_counter() - t0
    with open(log.with_suffix(".jsonl"), "a") as fh:
        fh.write(json.dumps({"spec": spec, "result": out}, default=str) + "\n")
    return out


def median_run(runs: list[dict]) -> dict:
    """Per-figure medians of several runs (numbers, and numbers inside the steps and growth dicts); a check
    counts as passed only if it passed in every run."""
    import statistics

    out = dict(runs[-1])
    for key, value in runs[0].items():
        if key == "images" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in runs)
        elif key in ("steps", "growth"):
            names = {k for r in runs for k in r[key]}
            out[key] = {k: statistics.median(r[key].get(k, 0.0) for r in runs) for k in names}
    out["checks"] = {c: all(r["checks"].get(c, False) for r in runs) for c in {c for r in runs for c in r["checks"]}}
    out["runs"] = len(runs)
    return out


def folder_parts(data: Path, home: Path | None) -> dict[str, int]:
    """Apparent sizes: the warehouse file (with its WAL), the image store, the dataset store, the rest of the data
    folder (landing zone excluded), and the Dagster instance's folder."""
    warehouse = sum(p.stat().st_size for p in data.glob("warehouse.duckdb*") if p.is_file())
    objects, datasets = folder_bytes(data / "objects"), folder_bytes(data / "datasets")
    rest = folder_bytes(data, skip=("landing", "objects", "datasets")) - warehouse
    return {
        "warehouse": warehouse,
        "objects": objects,
        "datasets": datasets,
        "other": rest,
        "dagster_home": folder_bytes(home) if home else 0,
    }


def ingest(data: Path, home: Path | None, batch_id: str, log: Path, n: int, trace: bool = False) -> dict:
    before = folder_parts(data, home)
    trace_file = data.parent / f"strace-{batch_id}.txt" if trace else None
    out = run_child(
        {"action": "ingest", "data": str(data), "home": str(home) if home else None, "batch_id": batch_id},
        log,
        trace_file,
    )
    if trace_file is not None:
        out["written_to"] = write_categories(trace_file, data, home)
        trace_file.unlink()
    after = folder_parts(data, home)
    out["growth"] = {k: after[k] - before[k] for k in after}
    out["folder_growth"] = sum(v for k, v in out["growth"].items() if k != "dagster_home")
    out["images"] = n
    out["images_per_s"] = n / out["seconds"]
    if not out["success"]:
        raise RuntimeError(f"{batch_id}: the run failed (steps {out['failed_steps']}); see {log}")
    bad = [c for c, ok in out["checks"].items() if not ok and c != "class_balance"]
    if bad:
        print(f"  warning: {batch_id}: checks failed: {bad}", flush=True)
    return out


def copy_for_rebuild(data: Path, dest: Path) -> None:
    """Warehouse and small files copied; image and dataset stores hard-linked (their files are never rewritten)."""
    dest.mkdir(parents=True)
    for entry in data.iterdir():
        if entry.name == "landing":
            continue
        if entry.name in ("objects", "datasets") and entry.is_dir():
            shutil.copytree(entry, dest / entry.name, copy_function=os.link, symlinks=True)
        elif entry.is_dir():
            shutil.copytree(entry, dest / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, dest / entry.name)


def rebuild(data: Path, root: Path, batch_id: str, log: Path) -> dict:
    copy = root / "rebuild-copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy_for_rebuild(data, copy)
    try:
        before = folder_bytes(copy)
        out = run_child({"action": "rebuild", "data": str(copy), "home": None, "batch_id": batch_id}, log)
        out["folder_growth"] = folder_bytes(copy) - before
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return out


def step_groups(steps: dict[str, float]) -> dict[str, float]:
    """Step seconds summed per stage: raw, clean, features (asset checks counted with their stage)."""
    out = {"raw": 0.0, "clean": 0.0, "features": 0.0, "other": 0.0}
    for key, s in steps.items():
        k = key.lower()
        stage = next((g for g in ("raw", "clean", "features") if k.startswith(g) or f"{g}__" in k), None)
        if stage is None:
            stage = "features" if ("feature" in k or "dataset" in k) else "clean" if "clean" in k else "other"
        out[stage] += s
    return out


def fmt_mb(b: float) -> str:
    return f"{b / MB:,.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def levels_table(rows: list[dict]) -> list[str]:
    head = (
        "| ingested before | batch s | raw / clean / features s | write_bytes MB | wchar MB | data folder +MB "
        "| peak RSS MB (+ over start) | rebuild s (hook + catch-up) | rebuild write_bytes MB | rebuild peak RSS MB |"
    )
    lines = [head, "|---:" * 10 + "|"]
    for r in rows:
        m, rb = r["measured"], r.get("rebuild") or {}
        g = step_groups(m["steps"])
        if "rebuild" in rb:
            a, c = rb["rebuild"], rb["catch_up"]
            rebuild_s = f"{a['seconds'] + c['seconds']:.2f} ({a['seconds']:.2f} + {c['seconds']:.2f})"
            rebuild_w = fmt_mb(a["write_bytes"] + c["write_bytes"])
            rebuild_rss = fmt_mb(max(a["peak_rss"], c["peak_rss"]))
        else:
            rebuild_s, rebuild_w, rebuild_rss = rb.get("skipped", "not run"), "", ""
        lines.append(
            f"| {r['level']:,} | {m['seconds']:.2f} | {g['raw']:.2f} / {g['clean']:.2f} / {g['features']:.2f} "
            f"| {fmt_mb(m['write_bytes'])} | {fmt_mb(m['wchar'])} | {fmt_mb(m['folder_growth'])} "
            f"| {fmt_mb(m['peak_rss'])} (+{fmt_mb(m['peak_rss_increase'])}) "
            f"| {rebuild_s} | {rebuild_w} | {rebuild_rss} |"
        )
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        a, b = hi["measured"], lo["measured"]
        ga, gb = step_groups(a["steps"]), step_groups(b["steps"])

        def rebuild_total(r, key):
            rb = r.get("rebuild") or {}
            return rb["rebuild"][key] + rb["catch_up"][key] if "rebuild" in rb else 0

        lines.append(
            f"| **{hi['level']:,} / {lo['level']:,}** | **{ratio(a['seconds'], b['seconds'])}** "
            f"| {ratio(ga['raw'], gb['raw'])} / {ratio(ga['clean'], gb['clean'])} / "
            f"{ratio(ga['features'], gb['features'])} | **{ratio(a['write_bytes'], b['write_bytes'])}** "
            f"| {ratio(a['wchar'], b['wchar'])} | {ratio(a['folder_growth'], b['folder_growth'])} "
            f"| {ratio(a['peak_rss'], b['peak_rss'])} ({ratio(a['peak_rss_increase'], b['peak_rss_increase'])}) "
            f"| {ratio(rebuild_total(hi, 'seconds'), rebuild_total(lo, 'seconds'))} "
            f"| {ratio(rebuild_total(hi, 'write_bytes'), rebuild_total(lo, 'write_bytes'))} | |"
        )
    return lines


def steps_table(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r["measured"]["steps"]})
    lines = ["| ingested before | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---:" * (len(keys) + 1) + "|"]
    for r in rows:
        s = r["measured"]["steps"]
        lines.append(f"| {r['level']:,} | " + " | ".join(f"{s[k]:.2f}" if k in s else "" for k in keys) + " |")
    return lines


def bulk_table(bulk: list[dict]) -> list[str]:
    lines = [
        "| batch images (empty warehouse) | batch s | images/s | raw / clean / features s | process s (with imports) "
        "| write_bytes MB | data folder +MB | peak RSS MB (+ over start) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in bulk:
        g = step_groups(b["steps"])
        lines.append(
            f"| {b['images']:,} | {b['seconds']:.2f} | {b['images_per_s']:,.0f} "
            f"| {g['raw']:.2f} / {g['clean']:.2f} / {g['features']:.2f} | {b['process_seconds']:.2f} "
            f"| {fmt_mb(b['write_bytes'])} | {fmt_mb(b['folder_growth'])} "
            f"| {fmt_mb(b['peak_rss'])} (+{fmt_mb(b['peak_rss_increase'])}) |"
        )
    return lines


def marginal(bulk: list[dict]) -> str:
    if len(bulk) < 2:
        return "(one bulk size only: no marginal cost)"
    ordered = sorted(bulk, key=lambda r: r["images"])
    a, b = ordered[0], ordered[-1]
    per_image = (b["seconds"] - a["seconds"]) / (b["images"] - a["images"])
    fixed = a["seconds"] - per_image * a["images"]
    rate = 1 / per_image if per_image > 0 else float("inf")
    return (
        f"marginal cost {per_image * 1e6:,.0f} us/image ({rate:,.0f} images/s once the run's fixed cost is paid), "
        f"fixed per-run overhead {fixed:.2f} s (from the {a['images']:,} and {b['images']:,} batches)"
    )


def bytes_table(rows: list[dict]) -> list[str]:
    parts = ("warehouse", "dagster_home", "datasets", "objects", "other")
    lines = [
        "| ingested before | write_bytes MB (timed runs) | written to: warehouse file / Dagster instance / datasets / "
        "objects / other MB (traced run) | growth: warehouse file / datasets / Dagster instance MB |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, g, w = r["measured"], r["measured"]["growth"], (r.get("traced") or {}).get("written_to")
        written = " / ".join(fmt_mb(w[p]) for p in parts) if w else "not traced"
        lines.append(
            f"| {r['level']:,} | {fmt_mb(m['write_bytes'])} | {written} "
            f"| {fmt_mb(g['warehouse'])} / {fmt_mb(g['datasets'])} / {fmt_mb(g['dagster_home'])} |"
        )
    traced = [r for r in rows if (r.get("traced") or {}).get("written_to")]
    if len(traced) >= 2:
        lo, hi = traced[0]["traced"]["written_to"], traced[-1]["traced"]["written_to"]
        lines.append(
            f"| **{traced[-1]['level']:,} / {traced[0]['level']:,}** | "
            f"| {' / '.join(ratio(hi[p], lo[p]) for p in parts)} | |"
        )
    return lines


def fill_table(fills: list[dict]) -> list[str]:
    lines = [
        "| ingested before | batch images | batch s | images/s | write_bytes MB | checks that failed |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for f in fills:
        failed = ", ".join(c for c, ok in f["checks"].items() if not ok) or "none"
        lines.append(
            f"| {f['before']:,} | {f['images']:,} | {f['seconds']:.2f} | {f['images_per_s']:,.0f} "
            f"| {fmt_mb(f['write_bytes'])} | {failed} |"
        )
    return lines


def git_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "dc_pipeline"], cwd=REPO, capture_output=True, text=True
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--levels", default=",".join(map(str, LEVELS)), help="ingested images before each measured batch"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: levels {QUICK_LEVELS}, bulk {QUICK_BULK_SIZES}"
    )
    parser.add_argument("--bulk-sizes", default=None, help=f"bulk throughput batches (default {BULK_SIZES})")
    parser.add_argument("--bulk", type=int, default=BULK_MAX, help="largest batch used to fill a level")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="measured batches per level and runs per bulk size (default 3, quick 1)",
    )
    parser.add_argument(
        "--no-trace", action="store_true", help="skip the extra batch per level traced with strace (bytes per file)"
    )
    parser.add_argument("--no-rebuild", action="store_true", help="skip the full rebuild beside each level")
    parser.add_argument("--no-throughput", action="store_true", help="skip the bulk throughput runs")
    parser.add_argument("--workdir", default=None, help="where the data folders go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", default=str(RESULTS), help="results markdown ('' to write nothing)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    levels = sorted(QUICK_LEVELS if args.quick else {int(v) for v in args.levels.split(",") if v.strip()})
    if args.bulk_sizes:
        bulk_sizes = sorted(int(v) for v in args.bulk_sizes.split(","))
    else:
        bulk_sizes = list(QUICK_BULK_SIZES if args.quick else BULK_SIZES)
    repeats = args.repeats or (1 if args.quick else 3)
    trace = not args.no_trace and shutil.which("strace") is not None
    root = Path(args.workdir or tempfile.mkdtemp(prefix="dc_incremental_scale_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "runs.log"
    print(f"work folder {root} (subprocess logs: {log})", flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    bulk: list[dict] = []
    if not args.no_throughput:
        for n in bulk_sizes:
            runs = []
            for i in range(repeats):
                data, home = root / f"bulk-{n}-{i}", root / f"home-bulk-{n}-{i}"
                batch = Landing(data / "landing", seed=n + i).write(n, "bulk")
                runs.append(ingest(data, home, batch, log, n))
                print(
                    f"bulk {n:,} on an empty warehouse: {runs[-1]['seconds']:.2f} s, "
                    f"{runs[-1]['images_per_s']:,.0f} images/s",
                    flush=True,
                )
                shutil.rmtree(data, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)
            bulk.append(median_run(runs))

    data, home = root / "levels", root / "home-levels"
    landing = Landing(data / "landing", seed=1)
    total = 0
    fills: list[dict] = []
    rows: list[dict] = []
    for level in levels:
        while total < level:
            n = min(args.bulk, level - total)
            out = ingest(data, home, landing.write(n, "fill"), log, n)
            fills.append({**out, "before": total})
            total += n
            print(f"fill +{n:,} -> {total:,}: {out['seconds']:.2f} s ({out['images_per_s']:,.0f} images/s)", flush=True)
        row = {"level": total}
        runs = []
        for _ in range(repeats):
            batch = landing.write(MEASURED, "measured")
            runs.append(ingest(data, home, batch, log, MEASURED))
            print(
                f"measured {MEASURED} on top of {total:,}: {runs[-1]['seconds']:.2f} s, "
                f"write_bytes {fmt_mb(runs[-1]['write_bytes'])} MB, peak RSS {fmt_mb(runs[-1]['peak_rss'])} MB",
                flush=True,
            )
            total += MEASURED
        row["measured"] = median_run(runs)
        if trace:
            row["traced"] = ingest(data, home, landing.write(MEASURED, "traced"), log, MEASURED, trace=True)
            w = row["traced"]["written_to"]
            print(
                f"traced {MEASURED} on top of {total:,}: written to the warehouse file {fmt_mb(w['warehouse'])} MB, "
                f"the Dagster instance {fmt_mb(w['dagster_home'])} MB",
                flush=True,
            )
            total += MEASURED
        if not args.no_rebuild:
            row["rebuild"] = rebuild(data, root, batch, log)
            rb = row["rebuild"]
            if "rebuild" in rb:
                print(
                    f"rebuild at {total:,} ({rb['hook']}): {rb['rebuild']['seconds']:.2f} s + catch-up "
                    f"{rb['catch_up']['seconds']:.2f} s",
                    flush=True,
                )
            else:
                print(f"rebuild: {rb['skipped']}", flush=True)
        rows.append(row)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    checks = sorted({f"{c} ({'pass' if ok else 'FAIL'})" for r in rows for c, ok in r["measured"]["checks"].items()})
    hooks = sorted({r["rebuild"].get("hook", r["rebuild"].get("skipped", "")) for r in rows if r.get("rebuild")})
    import numpy as np

    growth = []
    if len(rows) >= 2:
        a, b = rows[-1]["measured"], rows[0]["measured"]
        for what, key in (("time", "seconds"), ("write_bytes", "write_bytes")):
            x = a[key] / b[key] if b[key] else float("inf")
            growth.append(f"{what} {x:.2f}x ({'met' if x < TARGET_GROWTH else 'missed'})")
    at_5k = next((b for b in bulk if b["images"] == 5_000), None)
    text = [
        "# Incremental scale: one landing batch as history grows",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; code {git_version()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}; "
        f"CPU: {platform.processor() or platform.machine()}, "
        f"os.cpu_count() = {os.cpu_count()}; load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}",
        f"- command: `{' '.join(['benchmarks/incremental_scale.py', *sys.argv[1:]])}`"
        + (" (quick smoke run, not the benchmark's levels)" if args.quick else ""),
        f"- job `ingest_{SOURCE}`, selection raw + clean + features groups with their checks (scoring and drift left "
        "out: no champion); synthetic 8x8 `field_app` batches of jittered digits, every image unique",
        "- every run in a fresh subprocess, imports warmed before the clock; seconds = `execute_in_process` wall "
        "time; write_bytes / wchar = `/proc/self/io` deltas of that process (Dagster's run storage included); data "
        "folder = growth of its apparent size (landing zone excluded); peak RSS = `VmHWM` after a reset just before "
        "the run (+ = over the RSS at its start)",
        f"- levels {', '.join(f'{v:,}' for v in levels)} reached with batches of at most {args.bulk:,} images; "
        f"measured batch {MEASURED} images, {repeats} per level (medians; each adds to the history), {repeats} "
        f"run(s) per bulk size (medians); whole benchmark {elapsed / 60:.1f} min",
        f"- full rebuild: on a copy of the data folder; hook: {', '.join(hooks) or 'not run'}; then the clean + "
        "features groups run once to bring the dataset version up to date (catch-up)",
        f"- checks evaluated in the measured runs: {', '.join(checks) or 'none'}",
    ]
    if growth:
        text.append(
            f"- target: the 200-image batch grows less than {TARGET_GROWTH}x from lowest to highest level: "
            + "; ".join(growth)
        )
    if at_5k:
        ok = at_5k["images_per_s"] >= TARGET_THROUGHPUT
        text.append(
            f"- target at least {TARGET_THROUGHPUT:,} images/s for 5,000 images on an empty warehouse: "
            f"{at_5k['images_per_s']:,.0f} ({'met' if ok else 'missed'})"
        )
    text += ["", f"## {MEASURED}-image batch on top of the level", "", *levels_table(rows), ""]
    text += ["Step seconds of the measured batch (Dagster step events):", "", *steps_table(rows), ""]
    text += [
        "Where a 200-image batch's bytes went: bytes passed to write calls per file, from one more batch per level "
        "run under `strace -f -y` (not timed; it adds to the history), and the growth of apparent sizes over the "
        "timed runs (medians):",
        "",
        *bytes_table(rows),
        "",
    ]
    if bulk:
        text += ["## Bulk throughput", "", *bulk_table(bulk), "", f"- {marginal(bulk)}", ""]
    text += ["## Batches that filled the levels", "", *fill_table(fills), ""]
    out = "\n".join(text)
    print("\n" + out)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
        print(f"written to {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
