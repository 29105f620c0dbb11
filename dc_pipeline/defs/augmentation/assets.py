"""Augmentation stage: AugMix views of a training sample, for quality control, and their label check."""

import json

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from dc_pipeline.catalog import AUGMENTATION, AUGMENTED_SAMPLES, DATASET_VERSION, accelerator_tags, warehouse_pool
from dc_pipeline.defs.resources import DataLake, Warehouse
from dc_pipeline.warehouse.queries import current_dataset_version as current_version

# The quick classifier must keep at least this fraction of its clean validation accuracy on augmented samples.
MIN_ACCURACY_RATIO = 0.8


class AugMixConfig(Config):
    severity: int = Field(default=3, description="AugMix severity: op magnitudes are drawn from U(0.1, severity).")
    width: int = Field(default=3, description="Number of augmentation chains mixed together.")
    depth: int = Field(default=-1, description="Ops per chain; -1 draws 1 to 3 per chain.")
    alpha: float = Field(default=1.0, description="Dirichlet and Beta parameter of the mixing weights.")
    all_ops: bool = Field(
        default=False,
        description="Also use color, contrast, brightness and sharpness "
        "(the paper leaves them out: they overlap the test corruptions).",
    )


class AugmentedSamplesConfig(AugMixConfig):
    n_samples: int = Field(default=256, description="Training images sampled for quality control.")
    views: int = Field(default=2, description="AugMix views per sampled image.")
    seed: int = Field(default=0, description="Seed of the sample and of the augmentation generator.")


@asset(
    key=AUGMENTED_SAMPLES,
    deps=[DATASET_VERSION],
    group_name=AUGMENTATION,
    kinds={"pytorch", "numpy"},
    pool=warehouse_pool(own_rows=True),
    op_tags=accelerator_tags(),
    description=(
        "AugMix views of a sample of the current training split, for quality control: a preview grid "
        "(original, then its augmented views) and the augmentation config in the metadata."
    ),
)
def augmented_samples(
    context: AssetExecutionContext, config: AugmentedSamplesConfig, lake: DataLake, warehouse: Warehouse
):
    import time

    import numpy as np
    import torch

    from dc_pipeline.augmix import AugMix
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.plots import captioned_image, image_grid_png

    with warehouse.get_connection() as conn:
        meta = current_version(conn)
    train_split = open_version(lake.datasets, meta["dataset_hash"]).reader("train")
    y = train_split.labels
    rng = np.random.default_rng(config.seed)
    # At most half the split: the label check fits its classifier on the training images not sampled.
    pick = np.sort(rng.choice(len(y), size=min(config.n_samples, len(y) // 2), replace=False))
    sampled = train_split.take(pick)
    originals = torch.from_numpy(sampled)[:, None]
    augmix = AugMix(
        severity=config.severity, width=config.width, depth=config.depth, alpha=config.alpha, all_ops=config.all_ops
    )
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    views = torch.stack([augmix(originals, generator=generator) for _ in range(config.views)], dim=1)[:, :, 0]
    seconds = time.perf_counter() - start
    aug_config = {k: getattr(config, k) for k in ("severity", "width", "depth", "alpha", "all_ops", "views", "seed")}
    out = lake.root_path("augmented") / f"{meta['dataset_hash'][:16]}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, positions=pick, labels=y[pick], originals=sampled, views=views.numpy(), config=json.dumps(aug_config)
    )
    shown = min(len(pick), 12)
    preview = image_grid_png(
        [[sampled[k], *views[k].numpy()] for k in range(shown)],
        col_titles=["original", *(f"AugMix view {v + 1}" for v in range(config.views))],
        row_titles=[f"label {y[pick[k]]}" for k in range(shown)],
    )
    rate = len(pick) * config.views / max(seconds, 1e-9)
    context.log.info(f"{len(pick) * config.views} AugMix views in {seconds:.2f}s")
    depth = "1 to 3" if config.depth < 0 else str(config.depth)
    return MaterializeResult(
        metadata={
            "summary": f"{len(pick)} training images x {config.views} AugMix views (severity {config.severity}, "
            f"width {config.width}, depth {depth}, alpha {config.alpha:g}), {rate:.0f} images/s",
            "preview: AugMix views": MetadataValue.md(
                captioned_image(
                    preview,
                    f"Each row: a sampled training image (original, with its label), then its {config.views} "
                    "AugMix views.",
                    f"sampled training images and their {config.views} AugMix views",
                )
            ),
            "dataset_hash": meta["dataset_hash"],
            "path": MetadataValue.path(lake.relative(out)),
            "samples": int(len(pick)),
            "views_per_sample": config.views,
            "augmentation_config": MetadataValue.json(aug_config),
            "images_per_second": round(rate, 1),
        }
    )


@asset_check(
    asset=AUGMENTED_SAMPLES,
    name="label_preservation",
    blocking=True,
    pool=warehouse_pool(own_rows=True),
    description=(
        "Blocking. Augmented samples must still look like their label: a logistic regression trained on "
        "the clean training features must keep at least "
        f"{MIN_ACCURACY_RATIO:.0%} of its clean validation accuracy on the augmented views. Catches an "
        "augmentation config that destroys the label before a model is trained on it."
    ),
)
def label_preservation(lake: DataLake, warehouse: Warehouse) -> AssetCheckResult:
    import numpy as np

    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.ml.quality import label_preservation_score

    with warehouse.get_connection() as conn:
        meta = current_version(conn)
    version = open_version(lake.datasets, meta["dataset_hash"])

    samples = np.load(lake.root_path("augmented") / f"{meta['dataset_hash'][:16]}.npz")
    score = label_preservation_score(
        version.split("train"), version.split("val"), samples["views"], samples["labels"], sampled=samples["positions"]
    )
    passed = score["augmented_accuracy"] >= MIN_ACCURACY_RATIO * score["clean_val_accuracy"]
    return AssetCheckResult(
        passed=bool(passed),
        severity=AssetCheckSeverity.ERROR,
        metadata={
            **score,
            "required_ratio": MIN_ACCURACY_RATIO,
            "ratio": round(score["augmented_accuracy"] / max(score["clean_val_accuracy"], 1e-9), 4),
        },
    )
