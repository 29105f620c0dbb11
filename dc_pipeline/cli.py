"""The ``dc-pipeline`` command: demo data, and materializing the pipeline without the UI."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def load_dotenv(path: Path = Path(".env")) -> None:
    """Apply ``.env`` (KEY=VALUE lines) without overriding variables already set, as ``dagster dev`` does."""
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                os.environ.setdefault(key.strip(), value.strip())


def complete_batches(landing: Path, source: str) -> list[str]:
    from dc_pipeline.core.manifests import is_complete

    folder = landing / source
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and is_complete(p)) if folder.is_dir() else []


def materialize_all(defs, instance, landing: Path, sources: list[str], log=print) -> bool:
    """Register every complete landing batch as a partition, ingest each, then refresh downstream.

    Returns True when every run succeeded. A batch that fails its blocking checks fails its own run
    and stays out of clean data; the others go on.
    """
    from dc_pipeline.jobs import ingest_job_name
    from dc_pipeline.stages.ingestion import batches_of

    ok = True
    for source in sources:
        partitions = batches_of(source).name
        known = set(instance.get_dynamic_partitions(partitions))
        batches = complete_batches(landing, source)
        new = [b for b in batches if b not in known]
        if new:
            instance.add_dynamic_partitions(partitions, new)
        for batch in batches:
            result = defs.resolve_job_def(ingest_job_name(source)).execute_in_process(
                partition_key=batch, instance=instance, raise_on_error=False)
            ok &= result.success
            log(f"ingest {source}/{batch}: {'ok' if result.success else 'FAILED (see the run in the UI)'}")
    result = defs.resolve_job_def("refresh_downstream").execute_in_process(instance=instance, raise_on_error=False)
    log(f"refresh_downstream: {'ok' if result.success else 'FAILED (see the run in the UI)'}")
    ok &= result.success
    from dc_pipeline.core.contracts import source_kinds
    from dc_pipeline.resources import PACKAGED_CONTRACTS
    from dc_pipeline.stages.monitoring import drift_key, scores_key

    kinds = source_kinds(os.getenv("DC_CONTRACTS_DIR") or PACKAGED_CONTRACTS)
    for source in [s for s in sources if kinds.get(s) == "images"]:  # score each batch with the new champion
        for batch in complete_batches(landing, source):
            monitored = defs.resolve_job_def(ingest_job_name(source)).execute_in_process(
                partition_key=batch, instance=instance, raise_on_error=False,
                asset_selection=[scores_key(source), drift_key(source)])
            ok &= monitored.success
            log(f"score and drift {source}/{batch}: {'ok' if monitored.success else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dc-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-data", help="write the demo landing zone (three sources) if it is empty")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--force", action="store_true", help="write even if the landing zone has batches")
    sub.add_parser("materialize", help="ingest every complete batch and refresh everything downstream (no UI)")
    batch = sub.add_parser("demo-batch", help="write one new complete demo batch (from held-out digits) with a drift")
    batch.add_argument("--source", required=True, help="field_app, partner_api or legacy_erp")
    batch.add_argument("--n", type=int, default=200, help="images in the batch")
    batch.add_argument("--drift", default="none", help="none, rotate, noise, blur, invert, contrast, label_shift, "
                                                       "schema_rename or schema_type")
    batch.add_argument("--seed", type=int, default=0)
    batch.add_argument("--batch-id", help="default: derived from the time and the seed")
    review = sub.add_parser("simulate-review", help="answer the review queue from the demo's ground truth, as a "
                                                    "reviewer would, and deliver the decisions as a reviews batch")
    review.add_argument("--top", type=int, default=0, help="review only the top N of the queue (default: all)")
    review.add_argument("--batch-id", help="default: derived from the time")
    rep = sub.add_parser("reproduce", help="retrain a registered model version and compare the weights' sha256")
    rep.add_argument("version", help="a version id, or champion / challenger")
    args = parser.parse_args(argv)
    load_dotenv()
    data_dir = Path(os.environ.get("DC_DATA_DIR", "data"))

    if args.command == "demo-data":
        from dc_pipeline.core.demo_data import write_demo_landing

        landing = data_dir / "landing"
        if landing.is_dir() and any(landing.iterdir()) and not args.force:
            print(f"{landing} already has batches; leaving it as it is (use --force to add the demo batches)")
            return 0
        counts = write_demo_landing(landing, seed=args.seed)
        print(f"wrote the demo landing zone under {landing}; injected faults: {counts}")
        return 0

    if args.command == "materialize":
        from dagster import DagsterInstance

        from dc_pipeline.definitions import contract_sources, defs

        instance = DagsterInstance.get()
        ok = materialize_all(defs, instance, data_dir / "landing", contract_sources())
        return 0 if ok else 1
    if args.command == "demo-batch":
        from dc_pipeline.core.demo_batches import write_demo_batch

        path = write_demo_batch(data_dir / "landing", args.source, args.n, args.drift, args.seed, args.batch_id)
        print(f"wrote {path} ({args.n} images, drift {args.drift}); the landing sensor picks it up")
        return 0

    if args.command == "reproduce":
        return reproduce(args.version, data_dir)

    if args.command == "simulate-review":
        path, counts = simulate_review(data_dir, args.top, args.batch_id)
        print(f"wrote {path}: {counts}; the landing sensor ingests it as a `reviews` batch")
        return 0
    return 2


def simulate_review(data_dir: Path, top: int = 0, batch_id: str | None = None,
                    ground_truth: Path | None = None) -> tuple[Path, dict]:
    """A reviewer who knows the truth: relabel the queue's images whose label is wrong, confirm the others."""
    from datetime import datetime, timezone

    import pandas as pd

    from dc_pipeline.api import _connect, _paths
    from dc_pipeline.core.manifests import SUCCESS_MARKER

    data, db = _paths(data_dir, None)
    truth = pd.read_csv(ground_truth or data / "demo" / "label_flips.csv", dtype={"record_id": str})
    with _connect(db) as conn:
        queue = conn.execute("SELECT sha256, given_label FROM curation.review_queue ORDER BY rank").df()
        lineage = conn.execute("SELECT DISTINCT source, record_id, sha256 FROM clean.lineage").df()
    if top:
        queue = queue.head(top)
    true_label = dict(truth.merge(lineage, on=["source", "record_id"])[["sha256", "true_label"]].values.tolist())
    now = datetime.now(timezone.utc)
    rows = []
    for sha, given in zip(queue["sha256"], queue["given_label"]):
        right = true_label.get(sha, given)
        wrong = int(right) != int(given)
        rows.append({"image_sha256": sha, "decision": "relabel" if wrong else "confirm",
                     "new_label": int(right) if wrong else "", "reviewer": "simulated-reviewer",
                     "reason": "the label shows another digit" if wrong else "label checked",
                     "decided_at": now.isoformat(timespec="seconds")})
    batch_id = batch_id or f"review-{now:%Y%m%d%H%M%S}"
    folder = data / "landing" / "reviews" / batch_id
    folder.mkdir(parents=True, exist_ok=False)
    pd.DataFrame(rows, columns=["image_sha256", "decision", "new_label", "reviewer", "reason", "decided_at"]).to_csv(
        folder / "decisions.csv", index=False)
    (folder / SUCCESS_MARKER).write_text(now.isoformat())
    return folder, pd.Series([r["decision"] for r in rows], dtype=object).value_counts().to_dict()


def reproduce(ref: str, data_dir: Path) -> int:
    """Retrain from the recorded dataset hash, config and seed; 0 when the weights' sha256 matches."""
    from dc_pipeline.api import _connect, _paths, load_split
    from dc_pipeline.core.modeling import class_index
    from dc_pipeline.core.provenance import code_version
    from dc_pipeline.core.registry import Registry
    from dc_pipeline.core.training import TrainConfig, train

    data, db = _paths(data_dir, None)
    with _connect(db) as conn:
        record = Registry(conn, data / "artifacts").get(ref)
    classes = record["model_spec"]["classes"]
    splits = {s: load_split(s, data, db, dataset_hash=record["dataset_hash"]) for s in ("train", "val")}
    now = code_version()
    print(f"reproducing {record['version_id']} ({record['kind']}) on dataset {record['dataset_hash'][:12]}, "
          f"seed {record['seed']}; recorded code {record['code_version']}, current code {now['label']}")
    result = train(splits["train"][0], class_index(splits["train"][1], classes),
                   splits["val"][0], class_index(splits["val"][1], classes),
                   TrainConfig(**record["config"]), mode=record["kind"])
    same = result.weights_sha256 == record["weights_sha256"]
    print(f"registered weights sha256 {record['weights_sha256']}\nretrained  weights sha256 {result.weights_sha256}")
    print("MATCH: bit-identical weights" if same else "MISMATCH: the weights differ"
          + ("" if now["label"] == record["code_version"] else " (the code version differs too)"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
