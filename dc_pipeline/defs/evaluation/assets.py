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
    PREDICTION_LOG,
    T,
    accelerator_tags,
    warehouse_pool,
)
from dc_pipeline.defs.metadata import markdown_table, number, percent, tidy_markdown
from dc_pipeline.defs.resources import CHALLENGER_REFUSED, Alerts, DataLake, Warehouse
from dc_pipeline.warehouse.queries import current_dataset_version as current_version

CURRENT_MODELS = T.CURRENT_MODELS
CANDIDATE_KIND = "augmix"  # the kind of model that competes for champion; the baseline is the reference


class EvaluationConfig(Config):
    bootstrap_resamples: int = Field(
        default=1000, description="Bootstrap resamples of the evaluation images behind every interval."
    )
    confidence_level: float = Field(default=0.95, description="Confidence level of the intervals.")
    bootstrap_seed: int = Field(default=0, description="Seed of the bootstrap resampling.")


def stored_outcomes(conn, version_id: str, dataset_hash: str):
    """A model's per-image results on a dataset version's evaluation images, as ``model_evaluation`` stored them."""
    from dc_pipeline.core.ml.bootstrap import Outcomes

    frame = conn.execute(
        f"SELECT corruption, severity, confidence, correct, automation FROM {T.EVALUATION_OUTCOMES} "
        "WHERE version_id = ? AND dataset_hash = ?",
        [version_id, dataset_hash],
    ).df()
    threshold = conn.execute(
        f"SELECT value FROM {T.EVALUATION_METRICS} WHERE version_id = ? AND dataset_hash = ? "
        "AND metric = 'automation_threshold' AND corruption IS NULL",
        [version_id, dataset_hash],
    ).fetchone()
    if frame.empty or threshold is None:
        raise ValueError(
            f"{version_id} has no per-image evaluation on dataset {dataset_hash[:12]}: materialize "
            "evaluation/model_evaluation first"
        )
    return Outcomes.from_frame(frame, float("nan") if threshold[0] is None else threshold[0])  # NaN is stored as null


class CorruptionConfig(Config):
    seed: int = Field(default=0, description="Seed of the random parts of the corruptions.")


def corrupted_path(lake: DataLake, dataset_hash: str):
    """Where the corrupted evaluation images of a dataset version are kept: ``corrupted/<dataset hash>.npz``."""
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
        "The evaluation images (the test split, then the validation split: no model trains on either) under "
        "every corruption of the robustness benchmark (noise, blur, weather-like, digital and geometric "
        "families) at 5 severities, in the spirit of MNIST-C and CIFAR-10-C."
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
    version = open_version(lake.datasets, meta["dataset_hash"])
    (xt, _), (xv, _) = version.split("test"), version.split("val")
    x = np.concatenate([xt, xv])
    arrays = {}
    for i, name in enumerate(sorted(CORRUPTIONS)):
        for severity in SEVERITIES:
            out = corrupt(x, name, severity, seed=config.seed * 1000 + i * 10 + severity)
            arrays[f"{name}__{severity}"] = np.rint(out * 255).astype(np.uint8)  # 8-bit, like the source images
    path = corrupted_path(lake, meta["dataset_hash"])
    np.savez_compressed(path, seed=config.seed, test_images=len(xt), val_images=len(xv), **arrays)
    names = sorted(CORRUPTIONS)
    preview = image_grid_png(
        [[x[k % len(x)]] + [arrays[f"{n}__{s}"][k % len(x)] / 255.0 for s in SEVERITIES] for k, n in enumerate(names)],
        col_titles=["clean", *(f"severity {s}" for s in SEVERITIES)],
        row_titles=[n.replace("_", " ") for n in names],
        cell_inches=0.8,
    )
    return MaterializeResult(
        metadata={
            "summary": f"{len(x)} evaluation images ({len(xt)} test, {len(xv)} validation) x {len(CORRUPTIONS)} "
            f"corruptions x {len(SEVERITIES)} severities (dataset version {meta['dataset_hash'][:12]})",
            "preview: corruptions by severity": MetadataValue.md(
                captioned_image(
                    preview,
                    "Each row: a clean evaluation image (left), then one corruption at severities 1 to 5.",
                    "evaluation images under each corruption at severities 1 to 5",
                )
            ),
            "dataset_hash": meta["dataset_hash"],
            "path": MetadataValue.path(lake.relative(path)),
            "evaluation_images": int(len(x)),
            "test_images": int(len(xt)),
            "validation_images": int(len(xv)),
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
def model_evaluation(context: AssetExecutionContext, config: EvaluationConfig, lake: DataLake, warehouse: Warehouse):
    import numpy as np
    import pandas as pd

    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.ml.bootstrap import compare
    from dc_pipeline.core.ml.evaluation import error_by_corruption_png, evaluate, reliability_png
    from dc_pipeline.core.ml.inference import build_loaded, class_index
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
            # The gate must compare like with like: the champion is re-evaluated on today's evaluation images.
            models["champion"] = build_loaded(*registry.load_weights(champion_id))
    version = open_version(lake.datasets, meta["dataset_hash"])
    classes = list(lake.contracts().project.classes)
    (xt, yt), (xv, yv) = version.split("test"), version.split("val")
    index = version.index()
    sources = [index[index.split == s].sort_values("position")["source"].to_numpy() for s in ("test", "val")]
    # Every labelled image no model trained on: the test split, then the validation split. The automation
    # threshold is chosen on the validation split, so the automation rate is measured on the test split only.
    x_eval, y_eval = np.concatenate([xt, xv]), class_index(np.concatenate([yt, yv]), classes)
    on_test = np.arange(len(x_eval)) < len(xt)
    corrupted = load_corrupted(corrupted_path(lake, meta["dataset_hash"]))
    if any(len(v) != len(x_eval) for v in corrupted.values()):
        raise ValueError(
            f"the corrupted evaluation images do not match dataset version {meta['dataset_hash'][:12]}'s "
            f"{len(xt)} test and {len(xv)} validation images: materialize evaluation/corrupted_test_set again"
        )
    evaluations = {
        kind: evaluate(
            model.predict_canonical,
            (x_eval, y_eval),
            (xv, class_index(yv, classes)),
            corrupted,
            np.concatenate(sources),
            len(classes),
            automation_images=on_test,
        )
        for kind, model in sorted(models.items())
    }
    boot = {"resamples": config.bootstrap_resamples, "level": config.confidence_level, "seed": config.bootstrap_seed}
    # Paired comparisons; every model's own intervals come out of them (the same resamples of the same images).
    vs_baseline = compare(evaluations[CANDIDATE_KIND].outcomes, evaluations["baseline"].outcomes, **boot)
    rel = vs_baseline.relative_mce
    bounds = {CANDIDATE_KIND: vs_baseline.a, "baseline": vs_baseline.b}
    vs_champion = None
    if "champion" in evaluations:
        vs_champion = compare(evaluations[CANDIDATE_KIND].outcomes, evaluations["champion"].outcomes, **boot)
        bounds["champion"] = vs_champion.b
    rows, outcome_frames = [], []
    with warehouse.get_connection() as conn:
        registry = Registry(conn, lake.artifacts)
        for kind, ev in evaluations.items():
            vid = models[kind].version_id
            summary = {**ev.summary, **({"relative_mce_vs_baseline": rel.estimate} if kind == CANDIDATE_KIND else {})}
            kind_bounds = {**bounds[kind], **({"relative_mce_vs_baseline": rel} if kind == CANDIDATE_KIND else {})}
            if kind != "champion":  # the registry keeps a model's figures on the data it was trained for
                registry.set_metrics(
                    vid,
                    {
                        **summary,
                        "dataset_hash": meta["dataset_hash"],
                        "intervals": {k: [v.low, v.high] for k, v in kind_bounds.items()},
                        "confidence_level": config.confidence_level,
                    },
                )
            common = {"version_id": vid, "kind": kind, "dataset_hash": meta["dataset_hash"]}
            rows += [
                {
                    **common,
                    "metric": k,
                    "corruption": None,
                    "severity": None,
                    "value": float(v),
                    "low": kind_bounds[k].low if k in kind_bounds else None,
                    "high": kind_bounds[k].high if k in kind_bounds else None,
                    "level": config.confidence_level if k in kind_bounds else None,
                }
                for k, v in summary.items()
            ]
            rows += [
                {**common, "metric": "error", "corruption": n, "severity": s, "value": e}
                for (n, s), e in ev.corruption_errors.items()
            ]
            outcome_frames.append(ev.outcomes.to_frame().assign(version_id=vid, dataset_hash=meta["dataset_hash"]))
        frame = pd.DataFrame(rows).astype({"corruption": "string", "severity": "Int64"})
        frame = frame.astype(dict.fromkeys(("low", "high", "level"), "float64"))
        outcomes = pd.concat(outcome_frames, ignore_index=True)
        for vid in frame.version_id.unique():
            where = {"version_id": vid, "dataset_hash": meta["dataset_hash"]}
            replace_rows(conn, T.EVALUATION_METRICS, frame[frame.version_id == vid], where)
            replace_rows(conn, T.EVALUATION_OUTCOMES, outcomes[outcomes.version_id == vid], where)
        registry.set_alias(
            "challenger", models[CANDIDATE_KIND].version_id, "newest AugMix model, evaluated", context.run_id
        )
    summary = pd.DataFrame(
        {
            k: {
                m: bounds[k][m].text() if m in bounds[k] else f"{int(v):,}" if m.startswith("n_") else f"{v:.4f}"
                for m, v in ev.summary.items()
            }
            for k, ev in evaluations.items()
        }
    )
    slices = pd.concat({k: ev.per_source.set_index("source")["error"] for k, ev in evaluations.items()}, axis=1)
    per_class = pd.concat({k: ev.per_class.set_index("label")["error"] for k, ev in evaluations.items()}, axis=1)
    confusion = pd.DataFrame(evaluations[CANDIDATE_KIND].confusion, index=classes, columns=classes)
    return MaterializeResult(
        metadata={
            "summary": evaluation_summary(bounds, rel, vs_champion),
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
                    "Reliability: accuracy against confidence on clean and corrupted evaluation images, per model "
                    "(the diagonal is perfect calibration).",
                    "reliability diagrams on clean and corrupted evaluation images, per model",
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
            "augmix_relative_mce": float(rel.estimate),
            "augmix_relative_mce_interval": f"[{rel.low:.3f}, {rel.high:.3f}]",
            "evaluation_images": int(len(x_eval)),
            "test_images": int(len(xt)),
            "validation_images": int(len(xv)),
            "confidence_level": config.confidence_level,
            **{
                f"{CANDIDATE_KIND}_{m}_interval_width": float(bounds[CANDIDATE_KIND][m].width)
                for m in ("clean_error", "mce", "rms_calibration_corrupted", "automation_rate_corrupted")
            },
            "metrics_by_model": MetadataValue.md(
                f"Estimate on all {len(x_eval)} evaluation images ({len(xt)} test, {len(xv)} validation; the "
                f"automation rate on the test images only) [{config.confidence_level:.0%} bootstrap interval over "
                f"those images, {config.bootstrap_resamples} resamples].\n\n" + markdown_table(summary, index=True)
            ),
            **(
                {
                    "augmix_vs_champion": MetadataValue.md(
                        "Paired: both models on the same resamples of the same evaluation images; the difference is "
                        "AugMix minus champion (negative is better for errors and calibration).\n\n"
                        + markdown_table(vs_champion.table((CANDIDATE_KIND, "champion")), index=True)
                    )
                }
                if vs_champion
                else {}
            ),
            "augmix_vs_baseline": MetadataValue.md(
                "Paired: both models on the same resamples of the same evaluation images.\n\n"
                + markdown_table(vs_baseline.table((CANDIDATE_KIND, "baseline")), index=True)
            ),
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


def evaluation_summary(bounds: dict, relative_mce=None, vs_champion=None) -> str:
    """One line: the AugMix model's headline figures (with intervals) against the baseline's, and the paired
    mCE difference to the champion."""
    a, b = bounds.get(CANDIDATE_KIND, {}), bounds.get("baseline", {})

    def iv(figures: dict, key: str, as_percent: bool = False) -> str:
        if key not in figures:
            return "–"
        v = figures[key]
        if as_percent:
            return f"{percent(v.estimate)} [{percent(v.low)}, {percent(v.high)}]"
        return f"{number(v.estimate)} [{number(v.low)}, {number(v.high)}]"

    parts = [
        f"AugMix clean error {iv(a, 'clean_error', True)} vs baseline {iv(b, 'clean_error', True)}",
        f"mCE {iv(a, 'mce')} vs {iv(b, 'mce')}"
        + (
            f" (relative {number(relative_mce.estimate, '.2f')} [{number(relative_mce.low, '.2f')}, "
            f"{number(relative_mce.high, '.2f')}])"
            if relative_mce is not None
            else ""
        ),
        f"RMS calibration (corrupted) {iv(a, 'rms_calibration_corrupted')} vs {iv(b, 'rms_calibration_corrupted')}",
    ]
    if vs_champion is not None:
        parts.append(f"mCE minus champion's {vs_champion.difference['mce'].text(signed=True)}")
    level = next(iter(a.values())).level if a else 0.95
    return ", ".join(parts) + f" ({level:.0%} intervals)"


def live_summary(live, policy) -> str:
    """What the gate read from the scoring service, in one line."""
    if not (policy.use_live_evidence or policy.require_live_evidence):
        return "not used (use_live_evidence is off)"
    if live is None:
        return (
            f"not enough yet: each model needs {policy.live_min_labelled} labelled predictions in serving.predictions"
        )
    return f"{live.sample}; challenger - champion: " + ", ".join(
        f"{k.replace('_', ' ')} {v.text(signed=True)}" for k, v in live.difference.items()
    )


class PromotionPolicy(Config):
    mce_relative_margin: float = Field(
        default=0.0,
        description="The challenger must beat the champion's mCE beyond noise: the whole paired interval of "
        "challenger minus champion mCE must lie below minus this share of the champion's mCE (0: just below zero).",
    )
    max_clean_error_increase: float = Field(
        default=0.0,
        description="Refused when the paired interval of challenger minus champion clean error lies wholly above "
        "this (0: when the challenger is worse beyond noise).",
    )
    calibration_tolerance: float = Field(
        default=0.0,
        description="Refused when the paired interval of challenger minus champion RMS calibration error on "
        "corrupted data lies wholly above this (0: when the challenger is worse beyond noise).",
    )
    first_max_clean_error: float = Field(default=0.10, description="Bound on the first model's clean error.")
    first_max_mce: float = Field(default=0.40, description="Bound on the first model's mCE.")
    first_max_rms_calibration: float = Field(
        default=0.25, description="Bound on the first model's RMS calibration error on corrupted data."
    )
    confidence_level: float = Field(default=0.95, description="Confidence level of the paired intervals.")
    bootstrap_resamples: int = Field(default=2000, description="Bootstrap resamples of the evaluation images.")
    bootstrap_seed: int = Field(default=0, description="Seed of the bootstrap resampling.")
    use_live_evidence: bool = Field(
        default=True,
        description="Also read the scoring service's evidence: the two models' predictions whose images have a "
        "label by now (A/B split or shadow). It can only hold a challenger back, never push one through.",
    )
    require_live_evidence: bool = Field(
        default=False,
        description="A staged roll-out: a challenger that passes offline is held (the champion stays) until the "
        "scoring service has scored both on enough labelled images; judge_challenger then decides with that "
        "evidence.",
    )
    live_min_labelled: int = Field(
        default=100, ge=1, description="Labelled predictions each model needs before the live evidence counts."
    )
    live_error_tolerance: float = Field(
        default=0.0,
        description="Refused when the interval of challenger minus champion live error (overall, or among "
        "auto-accepted answers) lies wholly above this.",
    )
    live_automation_tolerance: float = Field(
        default=0.0,
        description="Refused when the interval of challenger minus champion live automation rate lies wholly "
        "below minus this.",
    )


@asset_check(
    asset=MODEL_EVALUATION,
    name="promotion_gate",
    blocking=True,
    additional_deps=[PREDICTION_LOG],
    pool=warehouse_pool(),
    description=(
        "Blocking. Decides on evidence: the challenger and the champion are compared on the same, current test "
        "images (the champion is re-evaluated on them) by a paired bootstrap over those images. The challenger "
        "becomes champion only if it is better on mCE beyond noise (the 95% interval of challenger minus "
        "champion mCE lies wholly below zero) and not worse beyond noise on clean error and on RMS calibration "
        "error on corrupted data (neither difference's interval lies wholly above zero); margins and the level "
        "are in the launchpad. When the scoring service has scored both models on at least 100 labelled images "
        "each (A/B split or shadow, from serving.predictions), that evidence can hold the challenger back: it is "
        "refused if its live error, error among auto-accepted answers or automation rate is worse beyond noise "
        "(judge_challenger judges the challenger again once that evidence exists). The first model ever is "
        "promoted if it is within absolute bounds (clean error "
        "<= 10%, mCE <= 40%, RMS calibration error <= 0.25). The verdict, the mCE difference with its interval "
        "and every figure of both models with intervals go to registry.gate_decisions. A refused challenger is "
        "an outcome, not a failure: the check warns, the champion stays, the run succeeds and an alert of kind "
        "challenger_refused goes to the alerts table and webhook. A refused first model fails the run (there is "
        "nothing to serve)."
    ),
)
def promotion_gate(
    context, config: PromotionPolicy, lake: DataLake, warehouse: Warehouse, alerts: Alerts
) -> AssetCheckResult:
    from dc_pipeline.core.ml.bootstrap import compare, intervals
    from dc_pipeline.core.ml.registry import GatePolicy, Registry, promotion_decision
    from dc_pipeline.core.serving.ab_report import live_comparison
    from dc_pipeline.warehouse.queries import labelled_predictions

    policy = GatePolicy(**config.model_dump())
    boot = {"resamples": policy.bootstrap_resamples, "level": policy.confidence_level, "seed": policy.bootstrap_seed}
    with warehouse.get_connection() as conn:
        registry = Registry(conn, lake.artifacts).ensure()
        dataset_hash = current_version(conn)["dataset_hash"]
        challenger = registry.get("challenger")["version_id"]
        champion = registry.alias("champion")
        mine = stored_outcomes(conn, challenger, dataset_hash)
        live = None
        if champion is None:
            evidence = intervals(mine, **boot)
        elif champion == challenger:
            evidence = {}
        else:
            evidence = compare(mine, stored_outcomes(conn, champion, dataset_hash), **boot)
            if policy.use_live_evidence or policy.require_live_evidence:
                scored = labelled_predictions(conn, (challenger, champion))
                live = live_comparison(scored, challenger, champion, policy.live_min_labelled, **boot)
        decision = promotion_decision(challenger, champion, evidence, policy, live)
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
    evidence_table = (
        {
            "evidence": MetadataValue.md(
                f"Challenger and champion on the same {evidence.n} evaluation images, paired bootstrap "
                f"({evidence.resamples} resamples, {policy.confidence_level:.0%} intervals). The gate reads the "
                "difference column: mCE must lie wholly below zero, clean error and RMS calibration (corrupted) "
                "must not lie wholly above zero.\n\n"
                + markdown_table(evidence.table(("challenger", "champion")), index=True)
            ),
            "mce_difference": float(decision.mce_difference.estimate),
            "mce_difference_interval": f"[{decision.mce_difference.low:+.4f}, {decision.mce_difference.high:+.4f}]",
            "live_evidence": live_summary(live, policy),
        }
        if decision.mce_difference is not None
        else {}
    )
    return AssetCheckResult(
        passed=decision.passed,
        severity=AssetCheckSeverity.WARN if outcome else AssetCheckSeverity.ERROR,
        metadata={
            "summary": decision.verdict,
            "challenger": decision.challenger,
            "champion": decision.champion or "none yet",
            "verdict": decision.verdict,
            **evidence_table,
            "inputs": MetadataValue.json(json.loads(json.dumps(decision.inputs, default=float))),
        },
    )
