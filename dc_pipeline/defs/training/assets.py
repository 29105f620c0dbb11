"""Training stage: the baseline and the AugMix model, each registered with its lineage."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from dc_pipeline.catalog import (
    AUGMENTED_SAMPLES,
    AUGMIX_MODEL,
    BASELINE_MODEL,
    DATASET_VERSION,
    TRAINING,
    T,
    accelerator_tags,
    warehouse_pool,
)
from dc_pipeline.defs.resources import DataLake, Warehouse
from dc_pipeline.warehouse.queries import current_dataset_version as current_version

CURRENT_MODELS = T.CURRENT_MODELS


class TrainingConfig(Config):
    epochs: int = Field(default=30, description="Training epochs.")
    lr: float = Field(default=0.05, description="Peak learning rate of the cosine schedule (SGD, Nesterov).")
    batch_size: int = Field(default=64, description="Images per step.")
    momentum: float = Field(default=0.9, description="SGD momentum.")
    weight_decay: float = Field(default=5e-4, description="L2 weight decay.")
    width: int = Field(default=16, description="Channels of the first conv block (doubles per block).")
    depth: int = Field(default=2, description="Conv blocks (each halves the resolution).")
    seed: int = Field(default=0, description="Seed of initialisation, data order and augmentation.")
    jsd_weight: float = Field(default=12.0, description="Weight of the Jensen-Shannon consistency term (AugMix).")
    augmix_severity: float = Field(default=3.0, description="AugMix severity.")
    augmix_width: int = Field(default=3, description="AugMix chains.")
    augmix_depth: int = Field(default=-1, description="AugMix ops per chain; -1 draws 1 to 3.")
    augmix_alpha: float = Field(default=1.0, description="AugMix Dirichlet/Beta parameter.")
    threads: int = Field(default=2, description="CPU threads (fixed, so results are bit-identical).")
    device: str = Field(
        default="auto",
        description="auto: CUDA when the worker running the step has it (the accelerator queue's), else the CPU; "
        "cpu or cuda to insist. The registry records the device used: the same seed on the same device gives "
        "the same weights.",
    )


def train_config(config: TrainingConfig, n_classes: int):
    from dc_pipeline.core.ml.training import TrainConfig

    return TrainConfig(n_classes=n_classes, **config.model_dump())


def training_curve_png(history: list[dict]) -> bytes:
    """Training loss (left axis) and validation error in % (right axis) per epoch; the legend sits below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from dc_pipeline.core.plots import figure_png

    fig, ax = plt.subplots(figsize=(6, 3))
    epochs = [h["epoch"] for h in history]
    lines = ax.plot(epochs, [h["loss"] for h in history], color="tab:blue", marker=".", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if any(h["val_error"] is not None for h in history):
        ax2 = ax.twinx()
        val = [float("nan") if h["val_error"] is None else 100 * h["val_error"] for h in history]
        lines += ax2.plot(epochs, val, color="tab:red", marker=".", label="validation error (%)")
        ax2.set_ylabel("validation error (%)", color="tab:red")
        ax2.set_ylim(bottom=0)
    fig.tight_layout()
    fig.legend(
        lines, [ln.get_label() for ln in lines], loc="upper center", bbox_to_anchor=(0.5, 0.03), ncol=2, frameon=False
    )
    return figure_png(fig)


def build_model_asset(kind: str):
    key = BASELINE_MODEL if kind == "baseline" else AUGMIX_MODEL
    deps = [DATASET_VERSION] + ([AUGMENTED_SAMPLES] if kind == "augmix" else [])
    description = {
        "baseline": "A small CNN trained with plain cross-entropy on the current dataset version: the reference.",
        "augmix": (
            "The same CNN trained with AugMix and the Jensen-Shannon consistency loss (cross-entropy on the "
            "clean logits + weight x JSD over clean and two AugMix views), as in Hendrycks et al. 2020. "
            "Runs only when the augmentation passed its label check."
        ),
    }[kind]

    @asset(
        key=key,
        deps=deps,
        group_name=TRAINING,
        kinds={"pytorch", "duckdb"},
        pool=warehouse_pool(own_rows=True),
        op_tags=accelerator_tags(),
        description=description,
    )
    def model(context: AssetExecutionContext, config: TrainingConfig, lake: DataLake, warehouse: Warehouse):
        import pandas as pd

        from dc_pipeline.core.data.dataset_store import open_version
        from dc_pipeline.core.ml.inference import class_index
        from dc_pipeline.core.ml.registry import Registry
        from dc_pipeline.core.ml.training import train
        from dc_pipeline.core.plots import markdown_image
        from dc_pipeline.core.provenance import code_version
        from dc_pipeline.warehouse.io import replace_rows

        classes = list(lake.contracts().project.classes)
        with warehouse.get_connection() as conn:
            meta = current_version(conn)
        version = open_version(lake.datasets, meta["dataset_hash"])
        train_split, val_split = version.reader("train"), version.reader("val")  # minibatches taken by index

        cfg = train_config(config, len(classes))
        result = train(
            train_split,
            class_index(train_split.labels, classes),
            val_split,
            class_index(val_split.labels, classes),
            cfg,
            mode=kind,
            log=context.log.info,  # start line, "epoch k/n: ..., images/s, elapsed, time left", end line
            name=key.path[-1],
        )
        code = code_version()
        spec = {**result.model_kwargs, "classes": classes, "preprocessing": "grayscale, bilinear resize, /255"}
        with warehouse.get_connection() as conn:
            registry = Registry(conn, lake.artifacts).ensure()
            version_id, created = registry.register(
                kind,
                result.state_dict,
                dataset_hash=meta["dataset_hash"],
                code=code,
                config=result.config.to_dict(),
                seed=cfg.seed,
                model_spec=spec,
                run_id=context.run_id,
            )
            replace_rows(
                conn,
                CURRENT_MODELS,
                pd.DataFrame(
                    [
                        {
                            "kind": kind,
                            "version_id": version_id,
                            "dataset_hash": meta["dataset_hash"],
                            "dagster_run_id": context.run_id,
                        }
                    ]
                ),
                {"kind": kind},
            )
        history = pd.DataFrame(result.history)
        seconds = float(history["seconds"].sum())
        return MaterializeResult(
            metadata={
                "version_id": version_id,
                "new_version": created,
                "weights_sha256": result.weights_sha256,
                "dataset_hash": meta["dataset_hash"],
                "code_version": str(code["label"]),
                "final_val_error": float(history["val_error"].iloc[-1]),
                "seconds_per_epoch": round(seconds / len(history), 3),
                "train_seconds": round(result.seconds, 1),
                "images_per_second": round(result.images_per_second, 1),
                "config": MetadataValue.json(cfg.to_dict()),
                "epochs": MetadataValue.md(history.round(4).to_markdown(index=False)),
                "training_curve": MetadataValue.md(
                    markdown_image(training_curve_png(result.history), "training curve")
                ),
            }
        )

    return model


baseline_model = build_model_asset("baseline")
augmix_model = build_model_asset("augmix")
