"""Evaluation stage: the corrupted test set, both models evaluated side by side, the promotion gate."""

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

from dc_pipeline.catalog import (
    AUGMIX_MODEL,
    BASELINE_MODEL,
    CORRUPTED_TEST,
    DATASET_VERSION,
    EVALUATION,
    MODEL_EVALUATION,
    T,
    accelerator_tags,
    warehouse_pool,
)
from dc_pipeline.defs.metadata import markdown_table, number, percent, tidy_markdown
from dc_pipeline.defs.resources import CHALLENGER_REFUSED, Alerts, DataLake, Warehouse
from dc_pipeline.warehouse.queries import current_dataset_version as current_version

CURRENT_MODELS = T.CURRENT_MODELS
CANDIDATE_KIND = "augmix"  # the kind of model that competes for champion; the baseline is the reference


class CorruptionConfig(Config):
    seed: int = Field(default=0, description="Seed of the random parts of the corruptions.")


def corrupted_path(lake: DataLake, dataset_hash: str):
    """Where the corrupted test split of a dataset version is kept: ``corrupted/<dataset hash>.npz``."""
    folder = lake.root_path("corrupted")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{dataset_hash}.npz"


@asset(
    key=CORRUPTED_TEST,
    deps=[DATASET_VERSION],
    group_name=EVALUATION,
    kinds={"numpy"},
    pool=warehouse_pool(own_rows=True),
    op_tags=accelerator_tags(),
    description=(
        "The test split under every corruption of the robustness benchmark (noise, blur, weather-like, "
        "digital and geometric families) at 5 severities, in the spirit of MNIST-C and CIFAR-10-C."
    ),
)
def corrupted_test_set(
    context: AssetExecutionContext, config: CorruptionConfig, lake: DataLake, warehouse: Warehouse
) -> MaterializeResult:
    import numpy as np

    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.ml.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_table_markdown
    from dc_pipeline.core.plots import captioned_image, image_grid_png

    with warehouse.get_connection() as conn:
        meta = current_version(conn)
    x, _ = open_version(lake.datasets, meta["dataset_hash"]).split("test")
    arrays = {}
    for i, name in enumerate(sorted(CORRUPTIONS)):
        for severity in SEVERITIES:
            out = corrupt(x, name, severity, seed=config.seed * 1000 + i * 10 + severity)
            arrays[f"{name}__{severity}"] = np.rint(out * 255).astype(np.uint8)  # 8-bit, like the source images
    path = corrupted_path(lake, meta["dataset_hash"])
    np.savez_compressed(path, seed=config.seed, **arrays)
    names = sorted(CORRUPTIONS)
    preview = image_grid_png(
        [[x[k % len(x)]] + [arrays[f"{n}__{s}"][k % len(x)] / 255.0 for s in SEVERITIES] for k, n in enumerate(names)],
        col_titles=["clean", *(f"severity {s}" for s in SEVERITIES)],
        row_titles=[n.replace("_", " ") for n in names],
        cell_inches=0.8,
    )
    return MaterializeResult(
        metadata={
            "summary": f"{len(x)} test images x {len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities "
            f"(dataset version {meta['dataset_hash'][:12]})",
            "preview: corruptions by severity": MetadataValue.md(
                captioned_image(
                    preview,
                    "Each row: a clean test image (left), then one corruption at severities 1 to 5.",
                    "test images under each corruption at severities 1 to 5",
                )
            ),
            "dataset_hash": meta["dataset_hash"],
            "path": MetadataValue.path(lake.relative(path)),
            "test_images": int(len(x)),
            "corruptions": len(CORRUPTIONS),
            "severities": len(SEVERITIES),
            "catalogue": MetadataValue.md(tidy_markdown(corruption_table_markdown())),
        }
    )


def load_corrupted(path) -> dict:
    import numpy as np

    with np.load(path) as data:
        return {
            (k.split("__")[0], int(k.split("__")[1])): data[k].astype(np.float32) / 255.0
            for k in data.files
            if "__" in k
        }


@asset(
    key=MODEL_EVALUATION,
    deps=[BASELINE_MODEL, AUGMIX_MODEL, CORRUPTED_TEST],
    group_name=EVALUATION,
    kinds={"pytorch", "duckdb"},
    pool=warehouse_pool(),
    op_tags=accelerator_tags(),
    description=(
        "Both newly trained models side by side (and the champion, re-evaluated on the same data): clean error, error per corruption and severity, mean "
        "corruption error (mCE) and the AugMix model's relative mCE, calibration (ECE and RMS calibration "
        "error) on clean and corrupted data, per-class and per-source errors, confusion matrix, and the "
        "automation rate at a confidence threshold chosen on validation data for at most 1% accepted "
        "error. Makes the AugMix model the challenger."
    ),
)
def model_evaluation(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse):
    import pandas as pd

    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.ml.evaluation import error_by_corruption_png, evaluate, reliability_png
    from dc_pipeline.core.ml.inference import build_loaded, class_index
    from dc_pipeline.core.ml.metrics import relative_corruption_error
    from dc_pipeline.core.ml.registry import Registry
    from dc_pipeline.core.plots import captioned_image
    from dc_pipeline.warehouse.io import replace_rows

    with warehouse.get_connection() as conn:
        meta = current_version(conn)
        current = conn.execute(f"SELECT kind, version_id FROM {CURRENT_MODELS}").df()
        registry = Registry(conn, lake.artifacts).ensure()
        models = {row.kind: build_loaded(*registry.load_weights(row.version_id)) for row in current.itertuples()}
        champion_id = registry.alias("champion")
        if champion_id and champion_id not in {m.version_id for m in models.values()}:
            # The gate must compare like with like: the champion is re-evaluated on today's test data.
            models["champion"] = build_loaded(*registry.load_weights(champion_id))
    version = open_version(lake.datasets, meta["dataset_hash"])
    classes = list(lake.contracts().project.classes)
    (xt, yt), (xv, yv) = version.split("test"), version.split("val")
    index = version.index()
    sources = index[index.split == "test"].sort_values("position")["source"].to_numpy()
    corrupted = load_corrupted(corrupted_path(lake, meta["dataset_hash"]))
    evaluations = {
        kind: evaluate(
            model.predict_canonical,
            (xt, class_index(yt, classes)),
            (xv, class_index(yv, classes)),
            corrupted,
            sources,
            len(classes),
        )
        for kind, model in sorted(models.items())
    }
    rel = relative_corruption_error(evaluations["augmix"].corruption_errors, evaluations["baseline"].corruption_errors)
    rows = []
    with warehouse.get_connection() as conn:
        registry = Registry(conn, lake.artifacts)
        for kind, ev in evaluations.items():
            vid = models[kind].version_id
            if kind != "champion":  # the registry keeps a model's figures on the data it was trained for
                extra = {"relative_mce_vs_baseline": rel.ratio} if kind == "augmix" else {}
                registry.set_metrics(vid, {**ev.summary, **extra, "dataset_hash": meta["dataset_hash"]})
            common = {"version_id": vid, "kind": kind, "dataset_hash": meta["dataset_hash"]}
            rows += [
                {**common, "metric": k, "corruption": None, "severity": None, "value": float(v)}
                for k, v in ev.summary.items()
            ]
            rows += [
                {**common, "metric": "error", "corruption": n, "severity": s, "value": e}
                for (n, s), e in ev.corruption_errors.items()
            ]
        frame = pd.DataFrame(rows).astype({"corruption": "string", "severity": "Int64"})
        for vid in frame.version_id.unique():
            replace_rows(
                conn,
                "evaluation.metrics",
                frame[frame.version_id == vid],
                {"version_id": vid, "dataset_hash": meta["dataset_hash"]},
            )
        registry.set_alias(
            "challenger", models[CANDIDATE_KIND].version_id, "newest AugMix model, evaluated", context.run_id
        )
    summary = pd.DataFrame({k: ev.summary for k, ev in evaluations.items()}).round(4)
    slices = pd.concat({k: ev.per_source.set_index("source")["error"] for k, ev in evaluations.items()}, axis=1)
    per_class = pd.concat({k: ev.per_class.set_index("label")["error"] for k, ev in evaluations.items()}, axis=1)
    confusion = pd.DataFrame(evaluations[CANDIDATE_KIND].confusion, index=classes, columns=classes)
    return MaterializeResult(
        metadata={
            "summary": evaluation_summary({k: ev.summary for k, ev in evaluations.items()}, float(rel.ratio)),
            "plot: error by corruption": MetadataValue.md(
                captioned_image(
                    error_by_corruption_png(evaluations),
                    "Error per corruption (mean over severities, left) and per severity (mean over corruptions, "
                    "right), per model.",
                    "error per corruption and per severity, per model",
                )
            ),
            "plot: reliability": MetadataValue.md(
                captioned_image(
                    reliability_png(evaluations),
                    "Reliability: accuracy against confidence on clean and corrupted test data, per model "
                    "(the diagonal is perfect calibration).",
                    "reliability diagrams on clean and corrupted test data, per model",
                )
            ),
            "dataset_hash": meta["dataset_hash"],
            **{f"{k}_version": models[k].version_id for k in models},
            **{f"{k}_weights": MetadataValue.path(models[k].record["weights_path"]) for k in models},
            **{
                f"{k}_{m}": float(evaluations[k].summary[m])
                for k in evaluations
                for m in ("clean_error", "mce", "rms_calibration_corrupted", "automation_rate_corrupted")
            },
            "augmix_relative_mce": float(rel.ratio),
            "metrics_by_model": MetadataValue.md(markdown_table(summary, index=True)),
            "error_per_corruption_and_severity": MetadataValue.md(
                "\n\n".join(
                    f"**{k}**\n\n" + markdown_table(ev.corruption_table().round(3), index=True)
                    for k, ev in evaluations.items()
                )
            ),
            "per_source_error": MetadataValue.md(markdown_table(slices.round(4), index=True)),
            "per_class_error": MetadataValue.md(markdown_table(per_class.round(4), index=True)),
            "confusion_matrix_augmix": MetadataValue.md(
                markdown_table(confusion.rename_axis("true / predicted"), index=True)
            ),
        }
    )


def evaluation_summary(summaries: dict[str, dict], relative_mce: float | None = None) -> str:
    """One line: the AugMix model's headline figures against the baseline's (and the champion's mCE)."""
    a, b = summaries.get("augmix", {}), summaries.get("baseline", {})
    parts = [
        f"AugMix clean error {percent(a.get('clean_error'))} vs baseline {percent(b.get('clean_error'))}",
        f"mCE {number(a.get('mce'))} vs {number(b.get('mce'))}"
        + (f" (relative {number(relative_mce, '.2f')})" if relative_mce is not None else ""),
        f"RMS calibration (corrupted) {number(a.get('rms_calibration_corrupted'))} vs "
        f"{number(b.get('rms_calibration_corrupted'))}",
        f"automation (corrupted) {percent(a.get('automation_rate_corrupted'), 0)} vs "
        f"{percent(b.get('automation_rate_corrupted'), 0)}",
    ]
    if "champion" in summaries:
        parts.append(f"champion mCE {number(summaries['champion'].get('mce'))}")
    return ", ".join(parts)


class PromotionPolicy(Config):
    mce_relative_margin: float = Field(
        default=0.05, description="The challenger's mCE must beat the champion's by this relative margin."
    )
    max_clean_error_increase: float = Field(
        default=0.005, description="Clean error may rise by at most this (0.005 = 0.5 points)."
    )
    calibration_tolerance: float = Field(
        default=0.01,
        description="RMS calibration error on corrupted data may rise by at most this (0.01 = one point): "
        "smaller differences are within what a test split of a few hundred images can tell apart.",
    )
    first_max_clean_error: float = Field(default=0.10, description="Bound on the first model's clean error.")
    first_max_mce: float = Field(default=0.40, description="Bound on the first model's mCE.")
    first_max_rms_calibration: float = Field(
        default=0.25, description="Bound on the first model's RMS calibration error on corrupted data."
    )


@asset_check(
    asset=MODEL_EVALUATION,
    name="promotion_gate",
    blocking=True,
    pool=warehouse_pool(),
    description=(
        "Blocking. The challenger becomes champion only if its mCE beats the champion's by 5% (relative), "
        "its clean error is at most 0.5 points worse, and its RMS calibration error on corrupted data is "
        "at most one point worse, all measured on the same, current test data (the champion is re-evaluated on it). "
        "The first model ever is promoted if it is within absolute bounds (clean error <= 10%, "
        "mCE <= 40%, RMS calibration error <= 0.25). Inputs and verdict go to registry.gate_decisions. "
        "A refused challenger is an outcome, not a failure: the check warns, the champion stays, the run "
        "succeeds and an alert of kind challenger_refused goes to the alerts table and webhook. A refused "
        "first model fails the run (there is nothing to serve)."
    ),
)
def promotion_gate(
    context, config: PromotionPolicy, lake: DataLake, warehouse: Warehouse, alerts: Alerts
) -> AssetCheckResult:
    from dc_pipeline.core.ml.registry import GatePolicy, Registry, promotion_decision

    with warehouse.get_connection() as conn:
        registry = Registry(conn, lake.artifacts).ensure()
        meta = current_version(conn)
        challenger = registry.get("challenger")
        champion_id = registry.alias("champion")

        def figures(version_id: str) -> dict:
            """A model's summary figures on the current dataset version's test data."""
            rows = conn.execute(
                "SELECT metric, value FROM evaluation.metrics WHERE version_id = ? AND "
                "dataset_hash = ? AND corruption IS NULL",
                [version_id, meta["dataset_hash"]],
            ).fetchall()
            if not rows:
                raise ValueError(f"{version_id} has no evaluation on dataset {meta['dataset_hash'][:12]}")
            return dict(rows)

        decision = promotion_decision(
            challenger["version_id"],
            figures(challenger["version_id"]),
            champion_id,
            figures(champion_id) if champion_id else None,
            GatePolicy(**config.model_dump()),
        )
        registry.record_gate(decision, context.run.run_id)
    # A challenger refused next to a champion is an outcome: a warning, the champion stays, the run goes on
    # (and the alert says so). A first model refused leaves nothing to serve: an error that fails the run.
    outcome = not decision.passed and decision.champion is not None
    if outcome:
        context.log.warning(f"challenger {decision.challenger} refused, champion {decision.champion} stays")
        alerts.raise_alert(
            CHALLENGER_REFUSED,
            context.run.run_id,
            context.run.job_name,
            None,
            f"challenger {decision.challenger} refused; champion {decision.champion} stays: {decision.verdict}",
            context.log,
        )
    return AssetCheckResult(
        passed=decision.passed,
        severity=AssetCheckSeverity.WARN if outcome else AssetCheckSeverity.ERROR,
        metadata={
            "challenger": decision.challenger,
            "champion": decision.champion or "none yet",
            "verdict": decision.verdict,
            "inputs": MetadataValue.json(json.loads(json.dumps(decision.inputs, default=float))),
        },
    )
