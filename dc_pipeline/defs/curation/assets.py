"""Curation stage: likely label errors for review, and the champion's weak slices."""

import os

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from dc_pipeline.catalog import (
    CHAMPION,
    CURATION,
    DATASET_VERSION,
    IMAGE_STATS,
    IMAGES,
    LABEL_ISSUES,
    LABELLING_QUEUE,
    SLICE_ANALYSIS,
    T,
    warehouse_pool,
)
from dc_pipeline.defs.metadata import counts_text, markdown_table, tidy_markdown
from dc_pipeline.defs.resources import DataLake, LabelAudit, Warehouse
from dc_pipeline.warehouse.queries import current_dataset_version as current_version
from dc_pipeline.warehouse.queries import load_alias_model

REVIEW_QUEUE = T.REVIEW_QUEUE


def image_stats_of(conn, sha256s, image_size: int, dataset_hash: str):
    """Image statistics (and device) of ``sha256s`` at ``image_size``: the rows written once per image, or for a
    version of a release before 0.3, the rows written for that version."""
    from dc_pipeline.core.data.features import STAT_COLUMNS
    from dc_pipeline.core.data.incremental_cleaning import select_in

    columns = ", ".join(["sha256", *STAT_COLUMNS, "device_id"])
    rows = select_in(
        conn,
        f"SELECT {columns}, dataset_hash IS NULL AS per_image FROM {T.IMAGE_STATS} "
        "WHERE ((dataset_hash IS NULL AND image_size = ?) OR dataset_hash = ?)",
        "sha256",
        sha256s,
        [image_size, dataset_hash],
    )
    rows = rows.sort_values("per_image", ascending=False, kind="stable").drop_duplicates("sha256")
    return rows.drop(columns=["per_image"]).reset_index(drop=True)


def outstanding_errors(ground_truth_path: str, conn, current) -> set[str]:
    """sha256 of images whose label in the current dataset (``current``: its index, sha256 and label) differs
    from the ground truth."""
    import pandas as pd

    truth = pd.read_csv(ground_truth_path, dtype={"record_id": str})
    lineage = conn.execute("SELECT DISTINCT source, record_id, sha256 FROM clean.lineage").df()
    merged = truth.merge(lineage, on=["source", "record_id"]).merge(current[["sha256", "label"]], on="sha256")
    return set(merged.loc[merged["label"] != merged["true_label"], "sha256"])


@asset(
    key=LABEL_ISSUES,
    deps=[DATASET_VERSION],
    group_name=CURATION,
    kinds={"scikitlearn", "duckdb"},
    pool=warehouse_pool(),
    description=(
        "Likely label errors in the current dataset version, by confident learning (Northcutt et al., with "
        "cleanlab) on out-of-fold probabilities from 5-fold cross-validation of a logistic "
        "regression on the canonical pixels, over every split. The flagged images, most suspicious first, "
        "form the review queue (curation.review_queue)."
    ),
)
def label_issues(
    context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse, label_audit: LabelAudit
) -> MaterializeResult:
    import numpy as np
    import pandas as pd

    from dc_pipeline.core.curation.label_issues import out_of_fold_probabilities, rank_label_issues
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.data.features import SPLITS
    from dc_pipeline.core.ml.inference import class_index
    from dc_pipeline.core.plots import captioned_image, image_grid_png
    from dc_pipeline.warehouse.io import replace_table

    classes = list(lake.contracts().project.classes)
    with warehouse.get_connection() as conn:
        meta = current_version(conn)
    version = open_version(lake.datasets, meta["dataset_hash"])
    full = version.index()
    index = pd.concat([full[full.split == s].sort_values("position") for s in SPLITS])  # the order of x
    arrays = {s: version.split(s) for s in SPLITS}
    x = np.concatenate([arrays[s][0] for s in SPLITS])
    y = class_index(np.concatenate([arrays[s][1] for s in SPLITS]), classes)
    probs = out_of_fold_probabilities(x.reshape(len(x), -1), y, len(classes), k=5, seed=0)
    ranked = rank_label_issues(y, probs)
    rows = index.reset_index(drop=True).iloc[ranked["index"].to_numpy()].reset_index(drop=True)
    queue = pd.DataFrame(
        {
            "rank": np.arange(1, len(ranked) + 1),
            "image_id": rows["image_id"],
            "sha256": rows["sha256"],
            "given_label": np.asarray(classes)[ranked["given_label"].to_numpy()],
            "suggested_label": np.asarray(classes)[ranked["suggested_label"].to_numpy()],
            "score": ranked["score"].to_numpy(),
            "is_issue": ranked["is_issue"].to_numpy(),
            "source": rows["source"],
            "batch_id": rows["batch_id"],
            "split": rows["split"],
            "dataset_hash": meta["dataset_hash"],
        }
    )
    queue = queue[queue["is_issue"]].reset_index(drop=True)
    queue["rank"] = np.arange(1, len(queue) + 1)
    with warehouse.get_connection() as conn:
        replace_table(conn, REVIEW_QUEUE, queue)
        audit = label_audit.ground_truth_path
        truth = outstanding_errors(audit, conn, full) if audit and os.path.isfile(audit) else None
    top = queue.head(12)
    flagged_rows = ranked.head(len(queue))  # flagged first: row i is queue row i
    suggested_p = probs[flagged_rows["index"].to_numpy(), flagged_rows["suggested_label"].to_numpy()]
    pos = {(r.split, r.sha256): i for i, r in enumerate(index.itertuples())}
    share = len(queue) / max(len(x), 1)
    metadata = {
        "summary": f"{len(queue)} of {len(x)} images flagged as likely label errors ({share:.1%}) in dataset "
        f"version {meta['dataset_hash'][:12]}",
    }
    if len(top):
        titles = [
            f"#{r.rank} given {r.given_label} (p {r.score:.2f})\nsuggested {r.suggested_label} (p {p:.2f})"
            for r, p in zip(top.itertuples(), suggested_p)
        ]
        images = [x[pos[(r.split, r.sha256)]] for r in top.itertuples()]
        per_row = 4
        metadata["preview: review queue, given and suggested labels"] = MetadataValue.md(
            captioned_image(
                image_grid_png(
                    [images[i : i + per_row] for i in range(0, len(images), per_row)],
                    cell_titles=[titles[i : i + per_row] for i in range(0, len(titles), per_row)],
                    cell_inches=1.5,
                ),
                "Top of the review queue in rank order: each image with its given label and the label the "
                "out-of-fold model suggests, with the model's probability of each (a low p for the given "
                "label is what makes it suspicious).",
                "the most suspicious images with their given and suggested labels",
            )
        )
    metadata.update(
        {
            "dataset_hash": meta["dataset_hash"],
            "images_checked": int(len(x)),
            "flagged": int(len(queue)),
            "flagged_share": round(share, 4),
            "model": "5-fold logistic regression on standardised pixels (out-of-fold), confident learning "
            "prune_by_noise_rate",
        }
    )
    metadata["review_queue_top"] = MetadataValue.md(markdown_table(top.drop(columns=["dataset_hash"]), empty="_empty_"))
    if truth is not None:
        flagged = set(queue["sha256"])
        hits = len(flagged & truth)
        metadata.update(
            {
                "ground_truth_file": MetadataValue.path(audit),
                "known_wrong_labels": len(truth),
                "precision_vs_known": round(hits / max(len(flagged), 1), 4),
                "recall_vs_known": round(hits / max(len(truth), 1), 4),
            }
        )
        metadata["summary"] += (
            f"; {hits} of {len(truth)} known wrong labels found (precision {metadata['precision_vs_known']:.2f}, "
            f"recall {metadata['recall_vs_known']:.2f})"
        )
        context.log.info(f"label issues: {len(flagged)} flagged, {hits} of {len(truth)} known wrong labels found")
    return MaterializeResult(metadata=metadata)


@asset(
    key=SLICE_ANALYSIS,
    deps=[CHAMPION, IMAGE_STATS],
    group_name=CURATION,
    kinds={"pytorch", "duckdb"},
    pool=warehouse_pool(),
    description=(
        "The champion's error, count and confidence per source, device, class and per octile of each image "
        "statistic, on the validation and test splits of the current dataset version; flags slices "
        "that are small and clearly worse than the whole (binomial test, Holm-corrected) with a "
        "suggestion: review labels, collect more data, or augment."
    ),
)
def slice_analysis(lake: DataLake, warehouse: Warehouse) -> MaterializeResult:
    import numpy as np
    import pandas as pd

    from dc_pipeline.core.curation.slices import flag_slices, slice_table, slices_markdown
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.ml.inference import class_index
    from dc_pipeline.warehouse.io import replace_table

    with warehouse.get_connection() as conn:
        champion = load_alias_model(conn, lake.artifacts)
        meta = current_version(conn)
    if champion is None:
        raise ValueError("no champion yet: materialize the evaluation group first")
    version = open_version(lake.datasets, meta["dataset_hash"])
    index = version.index()
    frames = []
    for split in ("val", "test"):
        x, y = version.split(split)
        probs = champion.predict_canonical(x)
        part = index[index.split == split].sort_values("position")[["sha256", "source"]].copy()
        part["correct"] = probs.argmax(axis=1) == class_index(y, champion.classes)
        part["confidence"] = probs.max(axis=1)
        part["label"] = y
        frames.append(part)
    df = pd.concat(frames, ignore_index=True)
    with warehouse.get_connection() as conn:
        stats = image_stats_of(conn, df["sha256"], int(x.shape[-1]), meta["dataset_hash"])
    df = df.merge(stats, on="sha256", how="left")
    table = flag_slices(slice_table(df, n_buckets=8))
    with warehouse.get_connection() as conn:
        replace_table(
            conn, "curation.slices", table.assign(model_version=champion.version_id, dataset_hash=meta["dataset_hash"])
        )
    flagged = table[table["flagged"]]
    overall = float(np.mean(~df["correct"]))
    summary = (
        f"champion error {overall:.1%} on {len(df)} validation and test images; "
        f"{len(flagged)} of {len(table)} slices flagged"
    )
    if len(flagged):
        worst = flagged.sort_values("error", ascending=False).iloc[0]
        summary += (
            f", worst {worst['dimension']}={worst['slice']} "
            f"(error {float(worst['error']):.1%}, {int(worst['count'])} images)"
        )
    return MaterializeResult(
        metadata={
            "summary": summary,
            "model_version": champion.version_id,
            "images": int(len(df)),
            "overall_error": overall,
            "slices": int(len(table)),
            "flagged": int(len(flagged)),
            "flagged_slices": MetadataValue.md(
                markdown_table(flagged[["dimension", "slice", "count", "error", "suggestion"]].round(4))
            ),
            "report": MetadataValue.md(tidy_markdown(slices_markdown(table))),
        }
    )


ANSWERED = "('label', 'relabel', 'exclude')"
"""Decisions that answer a labelling request: a class (label, relabel), or not usable at all (exclude)."""


class LabellingConfig(Config):
    budget: int = Field(
        default=50,
        ge=0,
        description="Labelling capacity: the most images waiting for a label at once. Each run tops the queue "
        "up to it with new picks.",
    )
    uncertainty: str = Field(
        default="margin", description="How the champion's uncertainty is measured: 'margin' or 'entropy'."
    )
    slice_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Share of the picks aimed at the slices the slice analysis flags (most uncertain first).",
    )
    candidate_factor: int = Field(
        default=5,
        ge=1,
        description="Diversity: the picks are spread (farthest-first on the champion's embeddings) over this "
        "many times the picks' number of most uncertain images.",
    )
    max_pool: int = Field(
        default=5000,
        ge=1,
        description="Newest unlabelled, unqueued images considered per run at most (bounds the run's cost).",
    )
    seed: int = Field(default=0, description="Seed for tie-breaking in the selection.")


@asset(
    key=LABELLING_QUEUE,
    deps=[IMAGES, CHAMPION, SLICE_ANALYSIS],
    group_name=CURATION,
    kinds={"pytorch", "duckdb"},
    pool=warehouse_pool(),
    description=(
        "Active learning: which unlabelled images (production traffic) to send for labelling. Tops the "
        "labelling queue (curation.labelling_queue) up to the budget with the images the champion is least "
        "sure of (margin or entropy), spread over its embeddings so the picks are not near-copies, and a share "
        "from the slices the slice analysis flags. Labels come back as `label` decisions through a reviews "
        "source; the next dataset version takes the labelled images in."
    ),
)
def labelling_queue(
    context: AssetExecutionContext, config: LabellingConfig, lake: DataLake, warehouse: Warehouse
) -> MaterializeResult:
    from datetime import UTC, datetime

    import numpy as np
    import pandas as pd

    from dc_pipeline.core.curation.active_learning import select_for_labelling, uncertainty
    from dc_pipeline.core.data.features import image_statistics
    from dc_pipeline.core.plots import captioned_image, image_grid_png
    from dc_pipeline.warehouse.io import append_rows, table_exists
    from dc_pipeline.warehouse.queries import canonical_batch

    if config.uncertainty not in ("margin", "entropy"):
        raise ValueError(f"uncertainty must be 'margin' or 'entropy', not {config.uncertainty!r}")
    queue = T.LABELLING_QUEUE
    unanswered = f"sha256 NOT IN (SELECT sha256 FROM {T.REVIEW_DECISIONS} WHERE decision IN {ANSWERED})"
    with warehouse.get_connection() as conn:
        champion = load_alias_model(conn, lake.artifacts)
        waiting = conn.execute(f"SELECT count(*) FROM {queue} WHERE {unanswered}").fetchall()[0][0]
        unlabelled = conn.execute(
            f"SELECT count(*) FROM {T.CLEAN_IMAGES} WHERE label IS NULL AND {unanswered}"
        ).fetchall()[0][0]
        room = max(config.budget - int(waiting), 0)
        pool = conn.execute(
            f"SELECT sha256, image_id, source, batch_id, device_id FROM {T.CLEAN_IMAGES} WHERE label IS NULL "
            f"AND {unanswered} "
            f"AND sha256 NOT IN (SELECT sha256 FROM {queue}) ORDER BY captured_at DESC, sha256 LIMIT ?",
            [config.max_pool],
        ).df()
        flagged = (
            conn.execute(
                f"SELECT * FROM {T.SLICES} WHERE flagged AND model_version = ?",
                [champion.version_id if champion else ""],
            ).df()
            if table_exists(conn, T.SLICES)
            else pd.DataFrame()
        )
    figures = {"unlabelled": int(unlabelled), "waiting_before": int(waiting), "budget": config.budget}
    if champion is None:
        context.log.warning("no champion yet: nothing can rank the unlabelled images")
        return MaterializeResult(
            metadata={
                "summary": "nothing picked: no champion model yet",
                **figures,
                "picked": 0,
                "reason": "no champion model yet",
            }
        )
    if pool.empty or room == 0:
        reason = "no unlabelled image waits to be considered" if pool.empty else "the queue is at its budget"
        return MaterializeResult(
            metadata={
                "summary": f"nothing picked: {reason} ({int(waiting)} waiting, budget {config.budget})",
                **figures,
                "pool": int(len(pool)),
                "picked": 0,
                "reason": reason,
            }
        )
    x = canonical_batch(pool, lake, champion.input_size)
    probs = champion.predict_canonical(x)
    pool = pd.concat([pool, image_statistics(x)], axis=1)
    pool["predicted_label"] = np.asarray(champion.classes)[probs.argmax(axis=1)]
    picks = select_for_labelling(
        pool,
        probs,
        champion.embed_canonical(x),
        room,
        kind=config.uncertainty,
        slice_share=config.slice_share,
        flagged=flagged if len(flagged) else None,
        candidate_factor=config.candidate_factor,
        seed=config.seed,
    )
    rows = picks.merge(pool[["sha256", "image_id", "source", "batch_id"]], on="sha256", how="left").assign(
        model_version=champion.version_id,
        queued_at=datetime.now(UTC).replace(tzinfo=None),
        run_id=context.run.run_id,
    )
    with warehouse.get_connection() as conn:
        from dc_pipeline.warehouse.tables import BY_NAME

        append_rows(conn, queue, rows[BY_NAME[queue].column_names()])
    position = {s: i for i, s in enumerate(pool["sha256"])}
    top = rows.head(16)
    per_row = 8
    titles = [f"#{r.rank} pred {r.predicted_label}\n(p {float(r.confidence):.2f})" for r in top.itertuples()]
    images = [x[position[s]] for s in top["sha256"]]
    preview = image_grid_png(
        [images[i : i + per_row] for i in range(0, len(images), per_row)],
        cell_titles=[titles[i : i + per_row] for i in range(0, len(titles), per_row)],
    )
    shown = ["rank", "image_id", "reason", "slice", "uncertainty", "predicted_label", "confidence"]
    by_reason = {str(k): int(v) for k, v in rows["reason"].value_counts().items()}
    return MaterializeResult(
        metadata={
            "summary": f"picked {len(rows)} of {len(pool)} unlabelled images for labelling ({counts_text(by_reason)}); "
            f"{int(waiting) + len(rows)} now waiting, budget {config.budget}",
            **figures,
            "pool": int(len(pool)),
            "picked": int(len(rows)),
            "by_reason": MetadataValue.json(by_reason),
            "flagged_slices": int(len(flagged)),
            "model_version": champion.version_id,
            "mean_uncertainty_picked": float(rows["uncertainty"].mean()),
            "mean_uncertainty_pool": float(uncertainty(probs, config.uncertainty).mean()),
            "preview: picked for labelling": MetadataValue.md(
                captioned_image(
                    preview,
                    "The picks in rank order, each with the champion's predicted label and its confidence.",
                    "images picked for labelling, with the champion's predicted label and confidence",
                )
            ),
            "picks": MetadataValue.md(markdown_table(rows[shown].round(4))),
        }
    )
