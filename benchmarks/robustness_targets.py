"""Baseline vs AugMix on the demo data: the targets, measured over several seeds, with intervals.

Builds the demo dataset version with the real pipeline (ingestion, cleaning, features) in a
temporary folder, or reads the current version of ``--data-dir``; then trains both models with the
pipeline's default training config for each seed, evaluates them on the clean and corrupted test
split exactly as the `model_evaluation` asset does, and prints markdown tables: per seed, each figure
and each AugMix/baseline ratio with its paired bootstrap interval over test images; then the ratios of
the seed means, with an interval from the same resamples applied to every seed's models, the spread
over seeds, and a verdict per target that says "met" only when the whole interval is on the right side.

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
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the test images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "robustness_targets.md")
    args = parser.parse_args()

    import numpy as np

    from dc_pipeline.api import load_split
    from dc_pipeline.core.data.dataset_store import open_version
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
    index = open_version(args.data_dir / "datasets", dataset_hash).index()
    sources = np.concatenate(
        [index[index.split == s].sort_values("position")["source"].to_numpy() for s in ("test", "val")]
    )
    # As model_evaluation: every labelled image no model trained on (test, then validation split); the
    # automation rate on the test split only (its threshold is chosen on the validation split).
    xe, ye = np.concatenate([xt, xv]), np.concatenate([yt, yv])
    on_test = np.arange(len(xe)) < len(xt)
    corrupted = {
        (n, s): np.rint(corrupt(xe, n, s, seed=i * 10 + s) * 255).astype(np.uint8) / np.float32(255)
        for i, n in enumerate(sorted(CORRUPTIONS))
        for s in SEVERITIES
    }
    overrides = {k: v for k, v in (("epochs", args.epochs), ("width", args.width)) if v is not None}
    cfg = train_config(TrainingConfig(**overrides), 10)
    from dc_pipeline.core.ml.bootstrap import (
        Interval,
        bootstrap_indices,
        compare,
        ratio_interval,
        resampled_figures,
        seed_spread,
    )
    from dc_pipeline.core.ml.training import predict_proba

    idx = bootstrap_indices(len(ye), args.resamples, 0)  # the same resamples for every seed and model
    level = 0.95
    rows, draws, points, epochs = [], {"baseline": [], "augmix": []}, {"baseline": [], "augmix": []}, []
    for seed in args.seeds:
        cfg.seed = seed
        result, seconds = {}, {}
        for mode in ("baseline", "augmix"):
            trained = train(x, y, xv, yv, cfg, mode=mode)
            model = trained.model()
            result[mode] = evaluate(
                lambda a, m=model: predict_proba(m, a), (xe, ye), (xv, yv), corrupted, sources, 10, on_test
            )
            seconds[mode] = statistics.median(h["seconds"] for h in trained.history)
            draws[mode].append(resampled_figures(result[mode].outcomes, idx))
            points[mode].append(result[mode].summary)
        epochs.append(seconds["augmix"] / seconds["baseline"])
        cmp = compare(result["augmix"].outcomes, result["baseline"].outcomes, args.resamples, level, seed=0)
        rows.append(
            {
                "seed": seed,
                "baseline clean err": cmp.b["clean_error"].text(".3f"),
                "augmix clean err": cmp.a["clean_error"].text(".3f"),
                "clean err difference": cmp.difference["clean_error"].text(".3f", signed=True),
                "baseline mCE": cmp.b["mce"].text(".3f"),
                "augmix mCE": cmp.a["mce"].text(".3f"),
                "mCE ratio": cmp.ratio["mce"].text(".3f"),
                "mCE ratio, unseen corruptions": cmp.ratio["mce_unseen_by_augmix"].text(".3f"),
                "baseline RMS cal (corr.)": cmp.b["rms_calibration_corrupted"].text(".3f"),
                "augmix RMS cal (corr.)": cmp.a["rms_calibration_corrupted"].text(".3f"),
                "RMS cal ratio": cmp.ratio["rms_calibration_corrupted"].text(".3f"),
                "automation (corr.) difference": cmp.difference["automation_rate_corrupted"].text(".3f", signed=True),
                "epoch time ratio": f"{epochs[-1]:.2f}",
            }
        )
        print(rows[-1], file=sys.stderr)
    import pandas as pd

    def seed_mean(mode: str, figure: str) -> tuple[float, np.ndarray]:
        point = float(np.mean([p[figure] for p in points[mode]]))
        return point, np.mean([d[figure] for d in draws[mode]], axis=0)

    def mean_ratio(figure: str):
        (a, da), (b, db) = seed_mean("augmix", figure), seed_mean("baseline", figure)
        return ratio_interval(a, b, da, db, level)

    def mean_difference(figure: str):
        (a, da), (b, db) = seed_mean("augmix", figure), seed_mean("baseline", figure)
        lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
        return Interval(a - b, float(lo), float(hi), level)

    def verdict(interval, target: float, below: bool = True) -> str:
        if (interval.high < target) if below else (interval.low > target):
            return "met"
        if (interval.low > target) if below else (interval.high < target):
            return "missed"
        return "undecided (the interval straddles the target)"

    def per_seed(mode_a: str, mode_b: str, figure: str, ratio: bool) -> str:
        values = [
            a[figure] / b[figure] if ratio else a[figure] - b[figure] for a, b in zip(points[mode_a], points[mode_b])
        ]
        return seed_spread(values).text(".3f")

    clean = mean_difference("clean_error")
    mce, mce_unseen, cal = (
        mean_ratio("mce"),
        mean_ratio("mce_unseen_by_augmix"),
        mean_ratio("rms_calibration_corrupted"),
    )
    auto = mean_difference("automation_rate_corrupted")
    targets = pd.DataFrame(
        [
            (
                "clean error: AugMix - baseline",
                clean.text(".3f", signed=True),
                "<= +0.010",
                verdict(clean, 0.01),
                per_seed("augmix", "baseline", "clean_error", False),
            ),
            (
                "mCE: AugMix / baseline",
                mce.text(".3f"),
                "<= 0.6",
                verdict(mce, 0.6),
                per_seed("augmix", "baseline", "mce", True),
            ),
            (
                "mCE over the corruptions AugMix does not train on",
                mce_unseen.text(".3f"),
                "(reported)",
                "",
                per_seed("augmix", "baseline", "mce_unseen_by_augmix", True),
            ),
            (
                "RMS calibration (corrupted): AugMix / baseline",
                cal.text(".3f"),
                "<= 0.6",
                verdict(cal, 0.6),
                per_seed("augmix", "baseline", "rms_calibration_corrupted", True),
            ),
            (
                "automation rate (corrupted): AugMix - baseline",
                auto.text(".3f", signed=True),
                "> 0",
                verdict(auto, 0.0, below=False),
                per_seed("augmix", "baseline", "automation_rate_corrupted", False),
            ),
            (
                "epoch time: AugMix / baseline",
                f"{np.mean(epochs):.2f}",
                "<= 3.5",
                "met" if np.mean(epochs) <= 3.5 else "missed",
                seed_spread(epochs).text(".2f"),
            ),
        ],
        columns=[
            "figure (seeds " + ", ".join(map(str, args.seeds)) + ")",
            f"seed means [{level:.0%} interval]",
            "target",
            "verdict",
            "spread over seeds",
        ],
    )
    widths = pd.DataFrame(
        {
            mode: {
                f: float(
                    np.mean([np.diff(np.quantile(d[f], [(1 - level) / 2, (1 + level) / 2]))[0] for d in draws[mode]])
                )
                for f in ("clean_error", "mce", "rms_calibration_corrupted", "automation_rate_corrupted")
            }
            for mode in ("baseline", "augmix")
        }
    ).rename_axis("interval width (mean over seeds)")
    text = (
        pd.DataFrame(rows).to_markdown(index=False)
        + "\n\n"
        + targets.to_markdown(index=False)
        + "\n\n"
        + widths.to_markdown(floatfmt=".3f")
    )
    header = (
        f"# Baseline vs AugMix on the demo data\n\n- date: {datetime.now(UTC).isoformat(timespec='seconds')}"
        f"\n- dataset {dataset_hash[:12]}: train {len(y)}, val {len(yv)}, test {len(yt)}; evaluated on test and val, "
        f"{len(ye)} images (x {len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities), the automation rate on "
        "test only\n- default training config: "
        f"{cfg.to_dict()} (seed varies)\n- intervals: {level:.0%}, percentile bootstrap over the evaluation images, "
        f"{args.resamples} resamples, paired (the same resamples for both models and every seed)\n"
        "- load average before/after: see the console; 2 CPU threads\n\n"
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
