"""Monitoring stage: per landing batch, a drift report against the champion's training data; the overview."""

from datetime import UTC
from typing import Literal

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from dc_pipeline.catalog import (
    CHAMPION,
    IMAGE_STATS,
    IMAGES,
    MONITORING,
    OVERVIEW,
    T,
    accelerator_tags,
    batches_of,
    drift_key,
    scores_key,
    warehouse_pool,
)
from dc_pipeline.defs.metadata import markdown_table, number, plain, tidy_markdown
from dc_pipeline.defs.resources import DataLake, Warehouse

BATCH_SUMMARY = T.BATCH_SUMMARY
DRIFT_HISTORY = T.DRIFT_HISTORY
DRIFT_VERDICTS = T.DRIFT_VERDICTS
MIN_SOURCE_REFERENCE = 100  # reference images of the batch's own source needed to compare within the source


class DriftConfig(Config):
    reference: Literal["previous", "champion"] = Field(
        default="previous",
        description="The model whose training data a batch is compared with when its report is made again: "
        "`previous`, the model its existing report was judged against (its verdict stays comparable after a "
        "retrain, which may have trained on this very batch); `champion`, today's champion. A batch judged for "
        "the first time is always compared with the champion.",
    )


def build_drift(source: str) -> list:
    partitions = batches_of(source)

    @asset(
        key=drift_key(source),
        partitions_def=partitions,
        deps=[IMAGES, IMAGE_STATS, CHAMPION],
        group_name=MONITORING,
        kinds={"pytorch", "duckdb"},
        pool=warehouse_pool(own_rows=True),
        op_tags=accelerator_tags(),
        description=(
            f"Drift report of a `{source}` batch against the champion's training split (its `{source}` "
            "images when there are at least 100, since sources differ in resolution): schema against "
            "the contract and the previous batch; per image statistic a KS test (Holm-corrected), "
            "Wasserstein distance and PSI; label and source mix; MMD with a permutation p-value on "
            "the champion's embeddings (subsampled); the champion's confidence and class mix against "
            "the test split, and its error where the batch has labels. Every value goes to "
            "monitoring.drift_history with the verdict (none / warn / drift) and its thresholds; an "
            "HTML report is written under data/reports/. A report made again for the same batch keeps the model "
            "it was judged against (config `reference`)."
        ),
    )
    def drift_report(context: AssetExecutionContext, config: DriftConfig, lake: DataLake, warehouse: Warehouse):
        return run_drift_report(context, source, context.partition_key, lake, warehouse, config.reference)

    return [drift_report]


def build_overview(image_sources: list[str]):
    """The overview asset, downstream of every image source's scores and drift reports (what it summarises)."""
    return asset(
        key=OVERVIEW,
        group_name=MONITORING,
        kinds={"duckdb"},
        pool=warehouse_pool(),
        deps=[k for s in image_sources for k in (scores_key(s), drift_key(s))],
        description=(
            "Business and model figures over time, one row per scored batch: automation rate, review-queue "
            "size, error where labels exist, and the batch's drift verdict."
        ),
    )(overview)


def overview(warehouse: Warehouse) -> MaterializeResult:
    from dc_pipeline.core.plots import captioned_image
    from dc_pipeline.warehouse.io import table_exists

    with warehouse.get_connection() as conn:
        if not table_exists(conn, BATCH_SUMMARY):
            return MaterializeResult(
                metadata={
                    "summary": "no batch has been scored yet",
                    "batches": 0,
                    "note": "no batch has been scored yet",
                }
            )
        verdicts = (
            f"LEFT JOIN {DRIFT_VERDICTS} v USING (source, batch_id)"
            if table_exists(conn, DRIFT_VERDICTS)
            else "LEFT JOIN (SELECT NULL AS source, NULL AS batch_id, NULL AS verdict) v USING (source, batch_id)"
        )
        table = conn.execute(f"SELECT s.*, v.verdict FROM {BATCH_SUMMARY} s {verdicts} ORDER BY s.scored_at").df()
    metadata = {"summary": overview_summary(table)}
    if len(table):
        metadata["plot: automation rate and review queue per batch"] = MetadataValue.md(
            captioned_image(
                overview_png(table),
                "Automation rate (line, left axis; points coloured by source, crossed where drift was found) and "
                "review-queue size (bars, right axis) per scored batch, oldest first; # is the table's row.",
                "automation rate and review queue per scored batch",
            )
        )
    metadata.update(
        {
            "batches": int(len(table)),
            "latest_automation_rate": float(table["automation_rate"].iloc[-1]) if len(table) else 0.0,
            "total_review_queue": int(table["review_queue"].sum()),
        }
    )
    metadata["table"] = MetadataValue.md(markdown_table(overview_table(table), empty="_no batch scored yet_"))
    return MaterializeResult(metadata=metadata)


def overview_summary(table) -> str:
    """The latest batch's automation rate and drift verdict, and the totals."""
    from dc_pipeline.defs.metadata import percent

    if not len(table):
        return "no batch has been scored yet"
    last = table.iloc[-1]
    verdict = last["verdict"] if isinstance(last["verdict"], str) else "not reported"
    drifted = int((table["verdict"] == "drift").sum())
    return (
        f"latest batch {last['source']}/{last['batch_id']}: automation rate {percent(last['automation_rate'])}, "
        f"{int(last['review_queue'])} to review, drift verdict {verdict}; {len(table)} batches scored, "
        f"{int(table['review_queue'].sum())} images sent to review, {drifted} with drift"
    )


def overview_table(table):
    """The overview rows for reading: numbered like the plot's x axis, figures rounded, times to the second."""
    import pandas as pd

    shown = table.drop(columns=[c for c in ("model_version",) if c in table.columns]).round(4)
    if "scored_at" in shown.columns:
        shown["scored_at"] = pd.to_datetime(shown["scored_at"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    shown.insert(0, "#", range(1, len(shown) + 1))
    return shown


SOURCE_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def overview_png(table) -> bytes:
    """Automation rate (left axis) and review queue (right axis) per scored batch, numbered oldest first, with
    one legend for both axes: the line, the bars, a colour per source and a mark for each drift verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from dc_pipeline.core.plots import figure_png

    x = np.arange(1, len(table) + 1)
    rate = table["automation_rate"].astype(float).to_numpy()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    ax2 = ax.twinx()
    ax.set_zorder(ax2.get_zorder() + 1)  # the line and points over the bars
    ax.patch.set_visible(False)
    ax2.bar(x, table["review_queue"], width=0.7, color="0.85", label="review queue (right axis)")
    ax.plot(x, rate, color="0.2", linewidth=1.2, label="automation rate (left axis)")
    for k, source in enumerate(sorted(table["source"].astype(str).unique())):
        mask = (table["source"].astype(str) == source).to_numpy()
        ax.scatter(
            x[mask], rate[mask], s=30, zorder=3, color=SOURCE_COLOURS[k % len(SOURCE_COLOURS)], label=f"source {source}"
        )
    verdict = table["verdict"].astype("string").fillna("").to_numpy() if "verdict" in table.columns else []
    for name, colour in (("warn", "tab:orange"), ("drift", "tab:red")):
        mask = np.asarray(verdict) == name
        if mask.any():
            ax.scatter(x[mask], rate[mask], s=110, marker="x", zorder=4, color=colour, label=f"drift verdict: {name}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("automation rate")
    ax2.set_ylabel("review queue (images)")
    ax.set_xlabel("scored batch, oldest first (# in the table)")
    ax.set_xlim(0.4, len(x) + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = ax2.get_legend_handles_labels()
    ax.legend(
        handles + more_handles,
        labels + more_labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=min(4, len(labels) + len(more_labels)),
        fontsize=8,
        frameon=False,
    )
    return figure_png(fig)


def batch_label_indices(labels, classes: list[int]) -> list | None:
    """A batch's labels as output indices, None for an unlabelled image; None when no image is labelled
    (the label-free parts of the report still run: statistics, embeddings, predictions)."""
    import pandas as pd

    present = pd.notna(labels)
    if not present.any():
        return None
    lookup = {c: i for i, c in enumerate(classes)}
    return [lookup[int(v)] if ok else None for v, ok in zip(labels, present)]


def previous_reference_model(conn, lake: DataLake, source: str, batch_id: str, champion: str, log):
    """The model a batch's existing report was judged against, loaded (weights verified); None when the batch has
    no report yet, that model is the ``champion``, or it can no longer be loaded (then the champion is used, and
    the log says why)."""
    from dc_pipeline.core.ml.inference import build_loaded
    from dc_pipeline.core.ml.registry import Registry, RegistryError

    row = conn.execute(
        f"SELECT model_version FROM {DRIFT_VERDICTS} WHERE source = ? AND batch_id = ?", [source, batch_id]
    ).fetchall()
    if not row or row[0][0] in (None, champion):
        return None
    try:
        return build_loaded(*Registry(conn, lake.artifacts).load_weights(row[0][0]))
    except (RegistryError, OSError) as exc:
        log.warning(f"the model {row[0][0]} this batch was last judged against cannot be loaded ({exc}): "
                    "comparing it with the champion's training data instead")  # fmt: skip
        return None


def run_drift_report(
    context, source: str, batch_id: str, lake: DataLake, warehouse: Warehouse, reference_model: str = "previous"
):
    """Read the batch and its reference model's training data (the champion, or the model an earlier report of
    this batch used), call the drift core, store and render the report."""
    import json
    from datetime import datetime

    import pandas as pd

    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.data.features import image_statistics
    from dc_pipeline.core.ml.inference import class_index
    from dc_pipeline.core.monitoring.drift import drift_plots, drift_report
    from dc_pipeline.core.plots import captioned_image
    from dc_pipeline.warehouse.io import replace_rows
    from dc_pipeline.warehouse.queries import accepted_batch, canonical_batch, load_alias_model

    with warehouse.get_connection() as conn:
        champion = load_alias_model(conn, lake.artifacts)
        if champion is None:
            context.log.warning("no champion yet: there is no training data to compare this batch with")
            return MaterializeResult(
                metadata={
                    "summary": "not evaluated: no champion model yet",
                    "verdict": "not evaluated",
                    "reason": "no champion model yet",
                }
            )
        previous = None
        if reference_model == "previous":
            previous = previous_reference_model(conn, lake, source, batch_id, champion.version_id, context.log)
        kept, model = previous is not None, previous or champion  # the reference model
        rows = accepted_batch(conn, source, batch_id)
        x = canonical_batch(rows, lake, model.input_size)
        schema = conn.execute(
            "SELECT status, messages, changed_from_previous, schema_hash FROM raw.schema_history "
            "WHERE source = ? AND batch_id = ? ORDER BY observed_at DESC LIMIT 1",
            [source, batch_id],
        ).fetchone()
    if rows.empty:
        return MaterializeResult(
            metadata={
                "summary": "not evaluated: no accepted images in this batch",
                "verdict": "not evaluated",
                "reason": "no accepted images in this batch",
            }
        )
    version = open_version(lake.datasets, model.record["dataset_hash"])
    (x_ref, y_ref), (x_test, y_test) = version.split("train"), version.split("test")
    index = version.index()
    ref_sources = index[index.split == "train"].sort_values("position")["source"].to_numpy()
    # Sources deliver at different resolutions, which shows in sharpness and edge statistics: compare a
    # batch with the reference images of its own source when there are enough of them.
    same = ref_sources == source
    reference = f"training split of {model.record['dataset_hash'][:12]}"
    if same.sum() >= MIN_SOURCE_REFERENCE:
        x_ref, y_ref, ref_sources = x_ref[same], y_ref[same], ref_sources[same]
        reference += f", source {source} ({int(same.sum())} images)"
    else:
        reference += f", all sources ({len(y_ref)} images; {int(same.sum())} from {source})"
    if kept:
        reference += f"; model {model.version_id}, kept from this batch's existing report (reference: previous)"
    classes = model.classes
    ref_stats, cur_stats = image_statistics(x_ref), image_statistics(x)
    test_probs, cur_probs = model.predict_canonical(x_test), model.predict_canonical(x)
    report = drift_report(
        ref_stats,
        cur_stats,
        ref_emb=model.embed_canonical(x_ref),
        cur_emb=model.embed_canonical(x),
        ref_probs=test_probs,
        cur_probs=cur_probs,
        ref_labels=class_index(y_ref, classes),
        cur_labels=batch_label_indices(rows["label"], classes),
        ref_sources=ref_sources.tolist(),
        cur_sources=rows["source"].tolist(),
        test_labels=class_index(y_test, classes),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    history = pd.DataFrame(report.rows())
    schema_rows = pd.DataFrame(
        [
            {
                "section": "schema",
                "test": "contract",
                "feature": "",
                "statistic": "status",
                "value": None,
                "crossed": schema is not None and schema[0] != "ok",
                "detail": schema[1] if schema else None,
            },
            {
                "section": "schema",
                "test": "previous_batch",
                "feature": "",
                "statistic": "schema_changed",
                "value": float(bool(schema and schema[2])),
                "crossed": bool(schema and schema[2]),
                "detail": schema[3] if schema else None,
            },
        ]
    )
    history = pd.concat([history, schema_rows], ignore_index=True)
    history.insert(0, "batch_id", batch_id)
    history.insert(0, "source", source)
    history["reference_dataset"] = model.record["dataset_hash"]
    history["model_version"] = model.version_id
    history["reported_at"] = now
    for col in history.columns:  # fixed column types, whatever this batch's values happen to be
        if col in ("value", "p_value", "p_adjusted", "threshold"):
            history[col] = pd.to_numeric(history[col], errors="coerce").astype("float64")
        elif col == "crossed":
            history[col] = history[col].astype("boolean")
        elif col != "reported_at":
            history[col] = history[col].astype("string")
    verdict_row = pd.DataFrame(
        [
            {
                "source": source,
                "batch_id": batch_id,
                "verdict": report.verdict,
                "reference": reference,
                "reasons": json.dumps(report.reasons),
                "thresholds": json.dumps(report.thresholds),
                "reference_dataset": model.record["dataset_hash"],
                "model_version": model.version_id,
                "images": int(len(rows)),
                "reported_at": now,
            }
        ]
    )
    with warehouse.get_connection() as conn:
        replace_rows(conn, DRIFT_HISTORY, history, {"source": source, "batch_id": batch_id})
        replace_rows(conn, DRIFT_VERDICTS, verdict_row, {"source": source, "batch_id": batch_id})
    plots = drift_plots(ref_stats, cur_stats, test_probs.max(axis=1), cur_probs.max(axis=1), report.features)
    lake.reports.mkdir(parents=True, exist_ok=True)
    html_path = lake.reports / f"drift_{source}_{batch_id}.html"
    html_path.write_text(report.html(plots))
    (context.log.warning if report.verdict != "none" else context.log.info)(
        f"{source}/{batch_id}: drift verdict {report.verdict}: {'; '.join(report.reasons) or 'no test crossed'}"
    )
    captions = {
        "features": (
            "plot: most drifted image features",
            "The image statistics that moved most (Wasserstein distance over the reference's spread): "
            "reference against this batch.",
            "histograms of the most drifted image statistics, reference against batch",
        ),
        "confidence": (
            "plot: champion confidence",
            "The champion's top-class confidence: test split against this batch.",
            "histograms of the champion's top-class confidence, test split against batch",
        ),
    }
    return MaterializeResult(
        metadata={
            "summary": drift_summary(report, len(rows)),
            "verdict": report.verdict,
            "reasons": MetadataValue.md("\n".join(f"- {r}" for r in report.reasons) or "_none_"),
            **{
                captions[name][0] if name in captions else f"plot: {name}": MetadataValue.md(
                    captioned_image(png, *(captions[name][1:] if name in captions else (name,)))
                )
                for name, png in plots.items()
            },
            "html_report": MetadataValue.path(lake.relative(html_path)),
            "images": int(len(rows)),
            "reference": reference,
            "model_version": model.version_id,
            "thresholds": MetadataValue.json(plain(report.thresholds)),
            "report": MetadataValue.md(tidy_markdown(report.markdown())),
        }
    )


def drift_summary(report, images: int) -> str:
    """The verdict, the most drifted image feature and the first reason, in one line."""
    parts = [f"verdict {report.verdict} on {images} images"]
    features = report.features
    if features is not None and len(features) and "wasserstein_std" in features.columns:
        ranked = features["wasserstein_std"].astype(float).dropna().sort_values(ascending=False)
        if len(ranked):
            name = ranked.index[0]
            psi = features.loc[name, "psi"] if "psi" in features.columns else None
            parts.append(
                f"most drifted feature {name} (W/std {number(ranked.iloc[0], '.2f')}, PSI {number(psi, '.2f')})"
            )
    if report.reasons:
        first = report.reasons[0]
        parts.append(first if len(first) <= 140 else first[:139] + "…")
    return "; ".join(parts)
