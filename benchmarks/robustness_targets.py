"""Baseline vs AugMix on the demo data: the issue's targets, measured over several seeds.

Builds the demo dataset version with the real pipeline (ingestion, cleaning, features) in a
temporary folder, or reads the current version of ``--data-dir``; then trains both models with the
pipeline's default training config for each seed, evaluates them on the clean and corrupted test
split exactly as the `model_evaluation` asset does, and prints a markdown table.

    .venv/bin/python benchmarks/robustness_targets.py --seeds 0 1 2 [--out benchmarks/results/robustness_targets.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def build_demo(data: Path) -> None:
    from dagster import DagsterInstance

    from dc_pipeline.catalog import (
        DATASET_VERSION,
        DECISIONS,
        IMAGE_STATS,
        IMAGES,
        LINEAGE,
        QUARANTINE,
        batches_of,
        contract_sources,
        ingest_job_name,
    )
    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.resources import resources_for
    from dc_pipeline.demo.landing import write_demo_landing

    write_demo_landing(data / "landing")
    sources = contract_sources()
    defs = build_definitions(resources_for(data))
    instance = DagsterInstance.ephemeral()
    for source in sources:
        if not (data / "landing" / source).is_dir():
            continue  # e.g. no reviews delivered yet
        batches = sorted(p.name for p in (data / "landing" / source).iterdir())
        instance.add_dynamic_partitions(batches_of(source).name, batches)
        for batch in batches:
            defs.resolve_job_def(ingest_job_name(source)).execute_in_process(partition_key=batch, instance=instance)
    defs.resolve_job_def("refresh_downstream").execute_in_process(
        instance=instance, asset_selection=[IMAGES, QUARANTINE, LINEAGE, DECISIONS, DATASET_VERSION, IMAGE_STATS]
    )


def step_times(x, y, cfg, steps: int = 40) -> dict[str, float]:
    """Milliseconds per training step: baseline, AugMix+JSD, and JSD on three clean copies (no augmentation)."""
    import torch
    import torch.nn.functional as F

    from dc_pipeline.core.ml.augmix import AugMix, augmix_views
    from dc_pipeline.core.ml.networks import SmallCNN
    from dc_pipeline.core.ml.training import jsd_objective

    torch.set_num_threads(cfg.threads)
    model = SmallCNN(width=cfg.width, depth=cfg.depth)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    xb = torch.from_numpy(x[: cfg.batch_size])[:, None].contiguous()
    yb = torch.from_numpy(y[: cfg.batch_size]).long()
    augmix, g = AugMix(), torch.Generator().manual_seed(0)

    def run(loss_fn) -> None:
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    kinds = {
        "baseline": lambda: F.cross_entropy(model(xb), yb),
        "augmix": lambda: jsd_objective(model, *augmix_views(xb, augmix, g), yb, 12.0)[0],
        "three clean copies": lambda: jsd_objective(model, xb, xb, xb, yb, 12.0)[0],
    }
    out = {}
    for name, fn in kinds.items():
        for _ in range(5):
            run(fn)
        start = time.perf_counter()
        for _ in range(steps):
            run(fn)
        out[name] = (time.perf_counter() - start) / steps * 1000
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, help="a materialized data folder (default: build the demo)")
    parser.add_argument("--epochs", type=int, help="override the default training config's epochs")
    parser.add_argument("--width", type=int, help="override the default training config's width")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "robustness_targets.md")
    args = parser.parse_args()

    import numpy as np

    from dc_pipeline.api import load_split
    from dc_pipeline.core.data.features import DatasetVersion
    from dc_pipeline.core.ml.corruptions import CORRUPTIONS, SEVERITIES, corrupt
    from dc_pipeline.core.ml.evaluation import evaluate
    from dc_pipeline.core.ml.training import train
    from dc_pipeline.defs.training.assets import TrainingConfig, train_config

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        args.data_dir = Path(tmp.name)
        build_demo(args.data_dir)
    (x, y), (xv, yv), (xt, yt) = (load_split(s, data_dir=args.data_dir) for s in ("train", "val", "test"))
    import duckdb

    with duckdb.connect(str(args.data_dir / "warehouse.duckdb"), read_only=True) as conn:
        dataset_hash = conn.execute("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").fetchone()[0]
    index = DatasetVersion(args.data_dir / "datasets", dataset_hash).index()
    sources = index[index.split == "test"].sort_values("position")["source"].to_numpy()
    corrupted = {
        (n, s): np.rint(corrupt(xt, n, s, seed=i * 10 + s) * 255).astype(np.uint8) / np.float32(255)
        for i, n in enumerate(sorted(CORRUPTIONS))
        for s in SEVERITIES
    }
    overrides = {k: v for k, v in (("epochs", args.epochs), ("width", args.width)) if v is not None}
    cfg = train_config(TrainingConfig(**overrides), 10)
    rows = []
    for seed in args.seeds:
        cfg.seed = seed
        result = {}
        for mode in ("baseline", "augmix"):
            start = time.perf_counter()
            trained = train(x, y, xv, yv, cfg, mode=mode)
            model = trained.model()
            from dc_pipeline.core.ml.training import predict_proba

            ev = evaluate(lambda a, m=model: predict_proba(m, a), (xt, yt), (xv, yv), corrupted, sources, 10)
            epoch = statistics.median(h["seconds"] for h in trained.history)
            result[mode] = {**ev.summary, "epoch_seconds": epoch, "total_seconds": time.perf_counter() - start}
        b, a = result["baseline"], result["augmix"]
        rows.append(
            {
                "seed": seed,
                "baseline clean err": b["clean_error"],
                "augmix clean err": a["clean_error"],
                "baseline mCE": b["mce"],
                "augmix mCE": a["mce"],
                "mCE ratio": a["mce"] / b["mce"],
                "mCE ratio, unseen corruptions": a["mce_unseen_by_augmix"] / b["mce_unseen_by_augmix"],
                "baseline RMS cal (corr.)": b["rms_calibration_corrupted"],
                "augmix RMS cal (corr.)": a["rms_calibration_corrupted"],
                "RMS cal ratio": a["rms_calibration_corrupted"] / b["rms_calibration_corrupted"],
                "baseline automation (corr.)": b["automation_rate_corrupted"],
                "augmix automation (corr.)": a["automation_rate_corrupted"],
                "augmix accepted err (corr.)": a["accepted_error_corrupted"],
                "epoch time ratio": a["epoch_seconds"] / b["epoch_seconds"],
            }
        )
        print(rows[-1], file=sys.stderr)
    import pandas as pd

    table = pd.DataFrame(rows)
    mean = table.drop(columns="seed").mean().to_frame().T.assign(seed="mean")
    table = pd.concat([table, mean], ignore_index=True)
    text = table.to_markdown(index=False, floatfmt=".3f")
    header = (
        f"# Baseline vs AugMix on the demo data\n\n- date: {datetime.now(UTC).isoformat(timespec='seconds')}"
        f"\n- dataset {dataset_hash[:12]}: train {len(y)}, val {len(yv)}, test {len(yt)} "
        f"(x {len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities)\n- default training config: "
        f"{cfg.to_dict()} (seed varies)\n- load average before/after: see the console; 2 CPU threads\n\n"
    )
    steps = step_times(x, y, cfg)
    step_text = (
        f"\n\nPer training step (ms, batch {cfg.batch_size}): "
        + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
        + f"; AugMix/baseline {steps['augmix'] / steps['baseline']:.2f}x, of which augmentation "
        f"{(steps['augmix'] - steps['three clean copies']) / steps['augmix']:.0%} of the AugMix step."
    )
    print(text + step_text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + text + step_text + "\n")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
