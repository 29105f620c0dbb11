"""Improve the data, not the model: the same model code and config, before and after the reviews.

Runs the real pipeline on the demo in a temporary folder: ingestion, cleaning, features, the label-
issue review queue; a simulated reviewer answers the queue from the demo's ground truth
(`dc-pipeline simulate-review`), the decisions come back as a `reviews` batch, and a curated dataset
version follows. Then, for each seed, the AugMix model with the pipeline's default training config is
trained on the dataset before and after the reviews (each choosing its automation threshold on its own
validation split), and both are evaluated on the same curated test split (the best labels we have) and
its corruptions. Prints and writes a markdown table.

    .venv/bin/python benchmarks/data_vs_model.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_vs_model.md")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from dagster import DagsterInstance
    from robustness_targets import build_demo

    from dc_pipeline.api import load_split
    from dc_pipeline.catalog import (
        DATASET_VERSION,
        DECISIONS,
        IMAGE_STATS,
        IMAGES,
        LABEL_ISSUES,
        LINEAGE,
        QUARANTINE,
        batches_of,
    )
    from dc_pipeline.core.data.features import DatasetVersion
    from dc_pipeline.core.ml.corruptions import CORRUPTIONS, SEVERITIES, corrupt
    from dc_pipeline.core.ml.evaluation import evaluate
    from dc_pipeline.core.ml.training import predict_proba, train
    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.resources import resources_for
    from dc_pipeline.defs.training.assets import TrainingConfig, train_config
    from dc_pipeline.ops.review import simulate_review

    tmp = tempfile.TemporaryDirectory()
    data = Path(tmp.name)
    build_demo(data)
    defs = build_definitions(resources_for(data))
    instance = DagsterInstance.ephemeral()
    data_assets = [IMAGES, QUARANTINE, LINEAGE, DECISIONS, DATASET_VERSION, IMAGE_STATS]
    defs.resolve_job_def("refresh_downstream").execute_in_process(instance=instance, asset_selection=[LABEL_ISSUES])
    before = {s: load_split(s, data_dir=data) for s in ("train", "val")}
    folder, counts = simulate_review(data, batch_id="review-0001")
    instance.add_dynamic_partitions(batches_of("reviews").name, ["review-0001"])
    defs.resolve_job_def("ingest_reviews").execute_in_process(partition_key="review-0001", instance=instance)
    defs.resolve_job_def("refresh_downstream").execute_in_process(instance=instance, asset_selection=data_assets)
    after = {s: load_split(s, data_dir=data) for s in ("train", "val", "test")}
    import duckdb

    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:
        versions = conn.execute(
            "SELECT dataset_hash, is_current, relabelled FROM features.dataset_versions ORDER BY created_at"
        ).df()
    current = versions[versions.is_current].iloc[0]
    index = DatasetVersion(data / "datasets", current.dataset_hash).index()
    sources = index[index.split == "test"].sort_values("position")["source"].to_numpy()
    xt, yt = after["test"]
    corrupted = {
        (n, s): np.rint(corrupt(xt, n, s, seed=i * 10 + s) * 255).astype(np.uint8) / np.float32(255)
        for i, n in enumerate(sorted(CORRUPTIONS))
        for s in SEVERITIES
    }
    rows = []
    for seed in args.seeds:
        cfg = train_config(TrainingConfig(seed=seed), 10)
        for name, dataset in (("before reviews", before), ("after reviews", after)):
            # Each pipeline trains on its own training split and picks its automation threshold on its own
            # validation split (noisy before, curated after); both are judged on the curated test split.
            (x, y), (xv, yv) = dataset["train"], dataset["val"]
            model = train(x, y, xv, yv, cfg, mode="augmix").model()
            ev = evaluate(lambda a, m=model: predict_proba(m, a), (xt, yt), (xv, yv), corrupted, sources, 10)
            rows.append(
                {
                    "seed": seed,
                    "training data": name,
                    "clean error": ev.summary["clean_error"],
                    "mCE": ev.summary["mce"],
                    "automation (clean)": ev.summary["automation_rate_clean"],
                    "accepted error (clean)": ev.summary["accepted_error_clean"],
                    "automation (corrupted)": ev.summary["automation_rate_corrupted"],
                }
            )
            print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    mean = table.groupby("training data", sort=False).mean(numeric_only=True).drop(columns="seed").reset_index()
    text = (
        table.to_markdown(index=False, floatfmt=".3f")
        + "\n\nMean over seeds:\n\n"
        + mean.to_markdown(index=False, floatfmt=".3f")
    )
    header = (
        f"# Improve the data, not the model\n\n- date: {datetime.now(UTC).isoformat(timespec='seconds')}"
        f"\n- reviews: {counts} (simulated reviewer answering the whole review queue from the ground truth)"
        f"\n- dataset before {versions.dataset_hash.iloc[0][:12]}, after {current.dataset_hash[:12]} "
        f"({int(current.relabelled)} labels corrected)\n- model: AugMix, default training config, frozen; "
        f"evaluated on the curated test split ({len(yt)} images) and its {len(corrupted)} corruptions\n\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + text + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
