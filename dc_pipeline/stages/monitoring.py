"""Monitoring stage: per landing batch, the champion's scores and a drift report against its training data."""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from dc_pipeline.resources import DataLake
from dc_pipeline.stages.cleaning import IMAGES
from dc_pipeline.stages.features import IMAGE_STATS
from dc_pipeline.stages.ingestion import DUCKDB_POOL, batches_of

PREDICTIONS = "scoring.predictions"
BATCH_SUMMARY = "scoring.batch_summary"
DRIFT_HISTORY = "monitoring.drift_history"
DRIFT_VERDICTS = "monitoring.drift_verdicts"
MIN_SOURCE_REFERENCE = 100  # reference images of the batch's own source needed to compare within the source


def scores_key(source: str) -> AssetKey:
    return AssetKey(["scoring", source])


def drift_key(source: str) -> AssetKey:
    return AssetKey(["monitoring", f"drift_{source}"])


def load_champion(conn, lake: DataLake):
    """The champion as a LoadedModel (weights verified), or None before the first promotion."""
    from dc_pipeline.core.modeling import build_loaded
    from dc_pipeline.core.registry import Registry

    registry = Registry(conn, lake.artifacts).ensure()
    if registry.alias("champion") is None:
        return None
    return build_loaded(*registry.load_weights("champion"))


def batch_images(conn, lake: DataLake, source: str, batch_id: str, size: int):
    """The batch's accepted images (rows of clean.images) and their canonical arrays."""
    from dc_pipeline.core.features import canonical_array

    rows = conn.execute("SELECT * FROM clean.images WHERE source = ? AND batch_id = ? ORDER BY image_id",
                        [source, batch_id]).df()
    store = lake.object_store()
    return rows, canonical_array([store.get(s) for s in rows["sha256"]], size)


def build_monitoring(source: str) -> list:
    partitions = batches_of(source)

    @asset(
        key=scores_key(source), partitions_def=partitions, deps=[IMAGES], group_name="monitoring",
        kinds={"pytorch", "duckdb"}, pool=DUCKDB_POOL,
        description=(f"The champion's predictions for the accepted images of a `{source}` batch: top class, "
                     "confidence, model version and routing (auto-accept at or above the automation threshold "
                     "chosen in evaluation, otherwise human review). `scoring.batch_summary` tracks the "
                     "automation rate and review-queue size per batch next to the model figures."),
    )
    def batch_scores(context: AssetExecutionContext, lake: DataLake, warehouse: DuckDBResource):
        import pandas as pd

        from dc_pipeline.core.scoring import batch_summary, score
        from dc_pipeline.core.warehouse import replace_rows

        batch_id = context.partition_key
        with warehouse.get_connection() as conn:
            champion = load_champion(conn, lake)
            if champion is None:
                context.log.warning("no champion yet: nothing scores this batch")
                return MaterializeResult(metadata={"scored": 0, "reason": "no champion model yet"})
            rows, x = batch_images(conn, lake, source, batch_id, champion.input_size)
        if rows.empty:
            return MaterializeResult(metadata={"scored": 0, "reason": "no accepted images in this batch"})
        threshold = float(champion.record["metrics"]["automation_threshold"])
        scores = score(rows, champion.predict_canonical(x), champion.classes, champion.version_id, threshold)
        summary = batch_summary(scores)
        with warehouse.get_connection() as conn:
            replace_rows(conn, PREDICTIONS, scores, {"source": source, "batch_id": batch_id})
            replace_rows(conn, BATCH_SUMMARY, pd.DataFrame([summary]), {"source": source, "batch_id": batch_id})
        return MaterializeResult(metadata={
            "scored": int(len(scores)), "model_version": champion.version_id, "threshold": threshold,
            "automation_rate": summary["automation_rate"], "review_queue": summary["review_queue"],
            "error_on_labelled": summary["error"] if summary["error"] is not None else "no labels",
            "preview": MetadataValue.md(scores.drop(columns=["probabilities"]).head(8).to_markdown(index=False)),
        })

    @asset(
        key=drift_key(source), partitions_def=partitions, deps=[IMAGES, IMAGE_STATS], group_name="monitoring",
        kinds={"pytorch", "duckdb"}, pool=DUCKDB_POOL,
        description=(f"Drift report of a `{source}` batch against the champion's training split (its `{source}` "
                     "images when there are at least 100, since sources differ in resolution): schema against "
                     "the contract and the previous batch; per image statistic a KS test (Holm-corrected), "
                     "Wasserstein distance and PSI; label and source mix; MMD with a permutation p-value on "
                     "the champion's embeddings (subsampled); the champion's confidence and class mix against "
                     "the test split, and its error where the batch has labels. Every value goes to "
                     "monitoring.drift_history with the verdict (none / warn / drift) and its thresholds; an "
                     "HTML report is written under data/reports/."),
    )
    def drift_report(context: AssetExecutionContext, lake: DataLake, warehouse: DuckDBResource):
        return run_drift_report(context, source, context.partition_key, lake, warehouse)

    return [batch_scores, drift_report]


OVERVIEW = AssetKey(["monitoring", "overview"])


@asset(
    key=OVERVIEW, group_name="monitoring", kinds={"duckdb"}, pool=DUCKDB_POOL,
    description=("Business and model figures over time, one row per scored batch: automation rate, review-queue "
                 "size, error where labels exist, and the batch's drift verdict."),
)
def overview(warehouse: DuckDBResource) -> MaterializeResult:
    from dc_pipeline.core.previews import markdown_image
    from dc_pipeline.core.warehouse import table_exists

    with warehouse.get_connection() as conn:
        if not table_exists(conn, BATCH_SUMMARY):
            return MaterializeResult(metadata={"batches": 0, "note": "no batch has been scored yet"})
        verdicts = (f"LEFT JOIN {DRIFT_VERDICTS} v USING (source, batch_id)" if table_exists(conn, DRIFT_VERDICTS)
                    else "LEFT JOIN (SELECT NULL AS source, NULL AS batch_id, NULL AS verdict) v USING (source, batch_id)")
        table = conn.execute(f"SELECT s.*, v.verdict FROM {BATCH_SUMMARY} s {verdicts} ORDER BY s.scored_at").df()
    return MaterializeResult(metadata={
        "batches": int(len(table)),
        "latest_automation_rate": float(table["automation_rate"].iloc[-1]) if len(table) else 0.0,
        "total_review_queue": int(table["review_queue"].sum()),
        "table": MetadataValue.md(table.round(4).to_markdown(index=False)),
        "plot": MetadataValue.md(markdown_image(overview_png(table))) if len(table) else "",
    })


def overview_png(table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dc_pipeline.core.previews import figure_png

    fig, ax = plt.subplots(figsize=(7, 3))
    labels = [f"{s}/{b}" for s, b in zip(table["source"], table["batch_id"])]
    ax.plot(labels, table["automation_rate"], marker="o", label="automation rate")
    ax.set_ylim(0, 1)
    ax.set_ylabel("automation rate")
    ax2 = ax.twinx()
    ax2.bar(labels, table["review_queue"], alpha=0.3, color="tab:orange", label="review queue")
    ax2.set_ylabel("review queue (images)")
    ax.tick_params(axis="x", rotation=60)
    return figure_png(fig)


def run_drift_report(context, source: str, batch_id: str, lake: DataLake, warehouse: DuckDBResource):
    """Read the batch and the champion's reference, call the drift core, store and render the report."""
    import json
    from datetime import datetime, timezone

    import numpy as np
    import pandas as pd

    from dc_pipeline.core.drift import drift_plots, drift_report
    from dc_pipeline.core.features import DatasetVersion, image_statistics
    from dc_pipeline.core.modeling import class_index
    from dc_pipeline.core.previews import markdown_image
    from dc_pipeline.core.warehouse import replace_rows

    with warehouse.get_connection() as conn:
        champion = load_champion(conn, lake)
        if champion is None:
            context.log.warning("no champion yet: there is no training data to compare this batch with")
            return MaterializeResult(metadata={"verdict": "not evaluated", "reason": "no champion model yet"})
        rows, x = batch_images(conn, lake, source, batch_id, champion.input_size)
        schema = conn.execute("SELECT status, messages, changed_from_previous, schema_hash FROM raw.schema_history "
                              "WHERE source = ? AND batch_id = ? ORDER BY observed_at DESC LIMIT 1",
                              [source, batch_id]).fetchone()
    if rows.empty:
        return MaterializeResult(metadata={"verdict": "not evaluated", "reason": "no accepted images in this batch"})
    version = DatasetVersion(lake.datasets, champion.record["dataset_hash"])
    (x_ref, y_ref), (x_test, y_test) = version.split("train"), version.split("test")
    index = version.index()
    ref_sources = index[index.split == "train"].sort_values("position")["source"].to_numpy()
    # Sources deliver at different resolutions, which shows in sharpness and edge statistics: compare a
    # batch with the reference images of its own source when there are enough of them.
    same = ref_sources == source
    reference = f"training split of {champion.record['dataset_hash'][:12]}"
    if same.sum() >= MIN_SOURCE_REFERENCE:
        x_ref, y_ref, ref_sources = x_ref[same], y_ref[same], ref_sources[same]
        reference += f", source {source} ({int(same.sum())} images)"
    else:
        reference += f", all sources ({len(y_ref)} images; {int(same.sum())} from {source})"
    classes = champion.classes
    ref_stats, cur_stats = image_statistics(x_ref), image_statistics(x)
    test_probs, cur_probs = champion.predict_canonical(x_test), champion.predict_canonical(x)
    report = drift_report(
        ref_stats, cur_stats,
        ref_emb=champion.embed_canonical(x_ref), cur_emb=champion.embed_canonical(x),
        ref_probs=test_probs, cur_probs=cur_probs,
        ref_labels=class_index(y_ref, classes), cur_labels=class_index(rows["label"], classes),
        ref_sources=ref_sources.tolist(), cur_sources=rows["source"].tolist(),
        test_labels=class_index(y_test, classes),
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    history = pd.DataFrame(report.rows())
    schema_rows = pd.DataFrame([
        {"section": "schema", "test": "contract", "feature": "", "statistic": "status", "value": None,
         "crossed": schema is not None and schema[0] != "ok", "detail": schema[1] if schema else None},
        {"section": "schema", "test": "previous_batch", "feature": "", "statistic": "schema_changed",
         "value": float(bool(schema and schema[2])), "crossed": bool(schema and schema[2]),
         "detail": schema[3] if schema else None},
    ])
    history = pd.concat([history, schema_rows], ignore_index=True)
    history.insert(0, "batch_id", batch_id)
    history.insert(0, "source", source)
    history["reference_dataset"] = champion.record["dataset_hash"]
    history["model_version"] = champion.version_id
    history["reported_at"] = now
    for col in history.columns:  # fixed column types, whatever this batch's values happen to be
        if col in ("value", "p_value", "p_adjusted", "threshold"):
            history[col] = pd.to_numeric(history[col], errors="coerce").astype("float64")
        elif col == "crossed":
            history[col] = history[col].astype("boolean")
        elif col != "reported_at":
            history[col] = history[col].astype("string")
    verdict_row = pd.DataFrame([{"source": source, "batch_id": batch_id, "verdict": report.verdict,
                                 "reference": reference,
                                 "reasons": json.dumps(report.reasons), "thresholds": json.dumps(report.thresholds),
                                 "reference_dataset": champion.record["dataset_hash"],
                                 "model_version": champion.version_id, "images": int(len(rows)),
                                 "reported_at": now}])
    with warehouse.get_connection() as conn:
        replace_rows(conn, DRIFT_HISTORY, history, {"source": source, "batch_id": batch_id})
        replace_rows(conn, DRIFT_VERDICTS, verdict_row, {"source": source, "batch_id": batch_id})
    plots = drift_plots(ref_stats, cur_stats, test_probs.max(axis=1), cur_probs.max(axis=1), report.features)
    lake.reports.mkdir(parents=True, exist_ok=True)
    html_path = lake.reports / f"drift_{source}_{batch_id}.html"
    html_path.write_text(report.html(plots))
    (context.log.warning if report.verdict != "none" else context.log.info)(
        f"{source}/{batch_id}: drift verdict {report.verdict}: {'; '.join(report.reasons) or 'no test crossed'}")
    return MaterializeResult(metadata={
        "verdict": report.verdict, "reasons": MetadataValue.md("\n".join(f"- {r}" for r in report.reasons) or "_none_"),
        "images": int(len(rows)), "reference": reference,
        "model_version": champion.version_id, "html_report": MetadataValue.path(str(html_path)),
        "thresholds": MetadataValue.json(report.thresholds),
        "report": MetadataValue.md(report.markdown() + "\n\n" + "\n\n".join(
            markdown_image(png, name) for name, png in plots.items())),
    })
