"""Scoring stage: per landing batch, the champion's predictions and routing for the accepted images."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from dc_pipeline.catalog import CHAMPION, IMAGES, SCORING, T, accelerator_tags, batches_of, scores_key, warehouse_pool
from dc_pipeline.defs.metadata import markdown_table, percent
from dc_pipeline.defs.resources import DataLake, Warehouse

PREDICTIONS = T.PREDICTIONS
BATCH_SUMMARY = T.BATCH_SUMMARY


def build_scoring(source: str) -> list:
    partitions = batches_of(source)

    @asset(
        key=scores_key(source),
        partitions_def=partitions,
        deps=[IMAGES, CHAMPION],
        group_name=SCORING,
        kinds={"pytorch", "duckdb"},
        pool=warehouse_pool(own_rows=True),
        op_tags=accelerator_tags(),
        description=(
            f"The champion's predictions for the accepted images of a `{source}` batch: top class, "
            "confidence, model version and routing (auto-accept at or above the automation threshold "
            "chosen in evaluation, otherwise human review). `scoring.batch_summary` tracks the "
            "automation rate and review-queue size per batch next to the model figures."
        ),
    )
    def batch_scores(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse):
        import pandas as pd

        from dc_pipeline.core.monitoring.scoring import batch_summary, score
        from dc_pipeline.warehouse.io import replace_rows
        from dc_pipeline.warehouse.queries import accepted_batch, canonical_batch, load_alias_model

        batch_id = context.partition_key
        with warehouse.get_connection() as conn:
            champion = load_alias_model(conn, lake.artifacts)
            if champion is None:
                context.log.warning("no champion yet: nothing scores this batch")
                return MaterializeResult(
                    metadata={
                        "summary": "nothing scored: no champion model yet",
                        "scored": 0,
                        "reason": "no champion model yet",
                    }
                )
            rows = accepted_batch(conn, source, batch_id)
        x = canonical_batch(rows, lake, champion.input_size)
        if rows.empty:
            return MaterializeResult(
                metadata={
                    "summary": "nothing scored: no accepted images in this batch",
                    "scored": 0,
                    "reason": "no accepted images in this batch",
                }
            )
        threshold = float(champion.record["metrics"]["automation_threshold"])
        scores = score(rows, champion.predict_canonical(x), champion.classes, champion.version_id, threshold)
        summary = batch_summary(scores)
        with warehouse.get_connection() as conn:
            replace_rows(conn, PREDICTIONS, scores, {"source": source, "batch_id": batch_id})
            replace_rows(conn, BATCH_SUMMARY, pd.DataFrame([summary]), {"source": source, "batch_id": batch_id})
        error = summary["error"]
        return MaterializeResult(
            metadata={
                "summary": f"{len(scores)} images scored: automation rate {percent(summary['automation_rate'])}, "
                f"{int(summary['review_queue'])} to human review, "
                + (
                    f"error {percent(error)} on {int(summary['labelled'])} labelled"
                    if error is not None
                    else "no labels to measure the error"
                ),
                "scored": int(len(scores)),
                "model_version": champion.version_id,
                "threshold": threshold,
                "automation_rate": summary["automation_rate"],
                "review_queue": summary["review_queue"],
                "error_on_labelled": error if error is not None else "no labels",
                "preview": MetadataValue.md(
                    markdown_table(scores.drop(columns=["probabilities"], errors="ignore").head(8).round(4))
                ),
            }
        )

    return [batch_scores]
