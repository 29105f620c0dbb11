"""The ``dc-pipeline`` command: demo data, headless materialization, the UI, reproduction, migrations.

Each subcommand is a thin call into ``dc_pipeline.ops`` (or the demo package) with the settings of
``dc_pipeline.settings`` (exported variables over ``.env``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from dc_pipeline.settings import Settings, apply_env_file, load_settings, redact_url


def cmd_demo_data(args, s: Settings) -> int:
    from dc_pipeline.demo.batches import write_demo_batch
    from dc_pipeline.demo.landing import PRODUCTION_SOURCE, write_demo_landing

    landing = s.data_dir / "landing"
    if landing.is_dir() and any(landing.iterdir()) and not args.force:
        print(f"{landing} already has batches; leaving it as it is (use --force to add the demo batches)")
        return 0
    counts = write_demo_landing(landing, seed=args.seed)
    print(f"wrote the demo landing zone under {landing}; injected faults: {counts}")
    # The model's real-world inputs arrive unlabelled: one batch of them, scored, monitored and queued for labelling.
    path = write_demo_batch(landing, PRODUCTION_SOURCE, 200, "none", args.seed, "batch-0001", demo_seed=args.seed)
    print(f"wrote {path}: 200 unlabelled images (the `{PRODUCTION_SOURCE}` source)")
    return 0


def cmd_materialize(args, s: Settings) -> int:
    from dagster import DagsterInstance

    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.resources import build_resources
    from dc_pipeline.ops.materialize import materialize_all

    resources = build_resources(s)
    ok = materialize_all(build_definitions(resources), DagsterInstance.get(), resources["lake"])
    return 0 if ok else 1


def cmd_demo_batch(args, s: Settings) -> int:
    from dc_pipeline.demo.batches import write_demo_batch
    from dc_pipeline.demo.landing import PRODUCTION_SOURCE

    if args.unlabelled and args.source not in (None, PRODUCTION_SOURCE):
        print(f"--unlabelled delivers to the `{PRODUCTION_SOURCE}` source; leave --source out", file=sys.stderr)
        return 2
    if not args.unlabelled and args.source is None:
        print("name a --source, or deliver unlabelled production traffic with --unlabelled", file=sys.stderr)
        return 2
    source = PRODUCTION_SOURCE if args.unlabelled else args.source
    path = write_demo_batch(s.data_dir / "landing", source, args.n, args.drift, args.seed, args.batch_id)
    what = "unlabelled images" if source == PRODUCTION_SOURCE else "images"
    print(f"wrote {path} ({args.n} {what}, drift {args.drift}); the landing sensor picks it up")
    return 0


def cmd_simulate_labelling(args, s: Settings) -> int:
    from dc_pipeline.ops.review import simulate_labelling

    path, counts = simulate_labelling(s.data_dir, args.top, args.batch_id, s.warehouse_read_location)
    if path is None:
        print(f"nothing to answer: {counts}")
        return 0
    print(f"wrote {path}: {counts}; the landing sensor ingests it as a `reviews` batch")
    return 0


def cmd_simulate_review(args, s: Settings) -> int:
    from dc_pipeline.ops.review import simulate_review

    reviews = s.data_dir / "landing" / "reviews"
    if args.unless_reviewed and reviews.is_dir() and any(reviews.iterdir()):
        print(f"{reviews} already has a batch; leaving the review queue as it is")
        return 0
    path, counts = simulate_review(
        s.data_dir, args.top, args.batch_id, s.label_ground_truth_path, s.warehouse_read_location
    )
    print(f"wrote {path}: {counts}; the landing sensor ingests it as a `reviews` batch")
    return 0


def cmd_reproduce(args, s: Settings) -> int:
    from dc_pipeline.ops.reproduce import reproduce

    return reproduce(args.version, s.data_dir, s.warehouse_read_location)


def cmd_migrate(args, s: Settings) -> int:
    """Pending migrations, then the raw table of every contract's source: on a shared warehouse that is done
    once here, before workers start, so two first batches of a source never race to create its table."""
    from dc_pipeline.core.data.contracts import load_contracts
    from dc_pipeline.warehouse.connect import connect
    from dc_pipeline.warehouse.migrations import ALERTS, WAREHOUSE, ensure_table
    from dc_pipeline.warehouse.tables import raw_table_spec

    for path, migrations in ((s.warehouse_location, WAREHOUSE), (s.alerts_path, ALERTS)):
        with connect(path, s.data_dir, migrations=migrations) as conn:
            if migrations is WAREHOUSE:
                for source, contract in sorted(load_contracts(s.contracts_dir).sources.items()):
                    ensure_table(conn, raw_table_spec(source, contract.kind))
            rows = conn.execute(
                "SELECT number, name, applied_at FROM meta.schema_migrations ORDER BY number"
            ).fetchall()
        print(f"{path}: " + "; ".join(f"{n} {name} ({at:%Y-%m-%d %H:%M})" for n, name, at in rows))
    return 0


SECRET_SETTINGS = ("serve_tokens",)


def cmd_settings(args, s: Settings) -> int:
    """The resolved settings, without secrets: tokens hidden, passwords in URLs masked."""
    for name in Settings.model_fields:
        value = getattr(s, name)
        shown = "" if value is None else "(set, not shown)" if name in SECRET_SETTINGS else redact_url(str(value))
        print(f"DC_{name.upper()}={shown}")
    print(f"# warehouse: {redact_url(s.warehouse_location)}")
    if s.warehouse_read_location != s.warehouse_location:
        print(f"# warehouse (readers): {redact_url(s.warehouse_read_location)}")
    return 0


def cmd_serve(args, s: Settings) -> int:
    from dc_pipeline.serving.app import serve

    serve(s, host=args.host, port=args.port)
    return 0


def cmd_ui(args, s: Settings) -> int:
    """``dagster dev`` with the resolved settings exported, started from the Dagster home: Dagster's CLI loads
    a ``.env`` in its working directory over exported variables, and there is none there."""
    import subprocess

    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(s, name)
        if value is not None:
            env[f"DC_{name.upper()}"] = str(value)
    home = Path(env.get("DAGSTER_HOME") or s.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    env["DAGSTER_HOME"] = str(home)
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "dev",
        "-m",
        "dc_pipeline.definitions",
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    viewer = None
    if args.viewer_port:  # the viewers' UI: the same instance and code, nothing can be launched or changed
        viewer_cmd = [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "--read-only",
            "-m",
            "dc_pipeline.definitions",
        ]
        viewer = subprocess.Popen([*viewer_cmd, "-h", args.host, "-p", str(args.viewer_port)], cwd=home, env=env)
    try:
        return subprocess.call(cmd, cwd=home, env=env)
    finally:
        if viewer is not None:
            viewer.terminate()
            viewer.wait(timeout=30)


def cluster_from(args, s: Settings):
    from dc_pipeline.ops.cluster import LocalCluster

    return LocalCluster(
        folder=Path(args.dir),
        data_dir=Path(args.data_dir) if args.data_dir else s.data_dir,
        pg_port=args.pg_port,
        redis_port=args.redis_port,
        s3_port=args.s3_port,
        ui_port=args.ui_port,
        viewer_port=args.viewer_port,
        accelerator_queue=s.accelerator_queue,
    )


def cmd_cluster(args, s: Settings) -> int:
    cluster = cluster_from(args, s)
    if args.action == "up":
        cluster.up()
        print(
            f"cluster up: UI http://127.0.0.1:{cluster.ui_port}, viewers' (read-only) UI "
            f"http://127.0.0.1:{cluster.viewer_port}, logs {cluster.logs}; its variables: {cluster.env_file}"
        )
    elif args.action == "down":
        print("stopped: " + ", ".join(cluster.down()))
    else:
        for name, alive in cluster.running().items():
            print(f"{name}: {'running' if alive else 'stopped'}")
    return 0


def _image_sources(s: Settings) -> list[str]:
    from dc_pipeline.core.data.contracts import source_kinds

    return sorted(name for name, kind in source_kinds(s.contracts_dir).items() if kind == "images")


def build_parser(s: Settings) -> argparse.ArgumentParser:
    from dc_pipeline.demo.batches import DRIFT_KINDS

    parser = argparse.ArgumentParser(prog="dc-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo-data",
        help="write the demo landing zone (three labelled sources, one unlabelled production batch) if it is empty",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--force", action="store_true", help="write even if the landing zone has batches")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("materialize", help="ingest every complete batch and refresh everything downstream (no UI)")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("demo-batch", help="write one new complete demo batch (from held-out digits) with a drift")
    p.add_argument("--source", choices=_image_sources(s))
    p.add_argument(
        "--unlabelled",
        action="store_true",
        help="deliver unlabelled production traffic (the `production` source); the true digits are kept aside "
        "for simulate-labelling",
    )
    p.add_argument("--n", type=int, default=200, help="images in the batch")
    p.add_argument("--drift", default="none", choices=DRIFT_KINDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-id", help="default: derived from the time and the seed")
    p.set_defaults(func=cmd_demo_batch)

    p = sub.add_parser(
        "simulate-review",
        help="answer the review queue from the demo's ground truth, as a "
        "reviewer would, and deliver the decisions as a reviews batch",
    )
    p.add_argument("--top", type=int, default=0, help="review only the top N of the queue (default: all)")
    p.add_argument("--batch-id", help="default: derived from the time")
    p.add_argument("--unless-reviewed", action="store_true", help="do nothing if a reviews batch has already landed")
    p.set_defaults(func=cmd_simulate_review)

    p = sub.add_parser(
        "simulate-labelling",
        help="answer the labelling queue (images active learning picked) from the demo's withheld digits, as a "
        "labeller would, and deliver the labels as a reviews batch",
    )
    p.add_argument("--top", type=int, default=0, help="label only the top N open items (default: all)")
    p.add_argument("--batch-id", help="default: derived from the time")
    p.set_defaults(func=cmd_simulate_labelling)

    p = sub.add_parser("reproduce", help="retrain a registered model version and compare the weights' sha256")
    p.add_argument("version", help="a version id, or champion / challenger")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("migrate", help="apply pending warehouse migrations now and list the applied ones")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "cluster",
        help="start, stop or list the local cluster on 127.0.0.1 (PostgreSQL, Redis, an S3 API server, two Celery "
        "workers, the daemon and the webserver)",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--dir",
        default=str(Path(tempfile.gettempdir()) / "dc-pipeline-cluster"),
        help="the cluster's state: databases, logs, pids",
    )
    p.add_argument("--data-dir", help="the cluster's data folder (landing zone, reports); default: DC_DATA_DIR")
    p.add_argument("--pg-port", type=int, default=5433)
    p.add_argument("--redis-port", type=int, default=6380)
    p.add_argument("--s3-port", type=int, default=9100)
    p.add_argument("--ui-port", type=int, default=3001)
    p.add_argument("--viewer-port", type=int, default=3002, help="the viewers' UI (dagster-webserver --read-only)")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("settings", help="print the resolved settings (exported variables over .env)")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("serve", help="the scoring service: HTTP predictions from the champion (and an A/B arm)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ui", help="serve the Dagster UI and daemon (sensors, schedules) with these settings")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--viewer-port", type=int, default=None, help="also serve a read-only UI for viewers on this port")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_env_file()  # GX_ANALYTICS_ENABLED and the like; exported variables win
    settings = load_settings()  # read once per command, from this process's environment
    args = build_parser(settings).parse_args(argv)
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
