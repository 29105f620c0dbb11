"""Features stage: deterministic splits, the canonical model input as a versioned dataset, image statistics."""

import json
from datetime import UTC, datetime

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    asset_check,
    multi_asset,
)
from pydantic import Field

from dc_pipeline.catalog import DATASET_VERSION, DECISIONS, FEATURES, IMAGE_STATS, IMAGES, T, warehouse_pool
from dc_pipeline.core.data.incremental_features import PUBLISHED, REJECTED, STAGED, SUPERSEDED
from dc_pipeline.defs.metadata import counts_markdown, markdown_table, plain, table_metadata, tidy_markdown
from dc_pipeline.defs.resources import DataLake, Warehouse
from dc_pipeline.warehouse.queries import PUBLISHED as CURRENT
from dc_pipeline.warehouse.queries import published_dataset_hash

# A dataset version is written (staged), audited by the blocking check feature_expectations, then published
# (it becomes current) only if the audit passed: write-audit-publish (statuses STAGED, PUBLISHED, REJECTED,
# SUPERSEDED).

# Splits are drawn by hash, so their shares scatter binomially around the targets. A share more than
# MAX_Z standard errors from its target (overall, or within one class) means the split is broken. A
# near-duplicate group is drawn once, so the errors are widened by the design effect (members per draw).
MAX_Z = 4.0


class FeaturesConfig(Config):
    image_size: int = Field(default=28, description="Side of the square grayscale model input, in pixels.")
    split_salt: str = Field(
        default="dc-pipeline-splits-v1",
        description="Salt of the split hash. Changing it reshuffles every split: don't, "
        "unless you mean to start a new test set.",
    )
    val_share: float = Field(default=0.15, description="Share of images in the validation split.")
    test_share: float = Field(default=0.15, description="Share of images in the test split.")


@multi_asset(
    specs=[
        AssetSpec(
            DATASET_VERSION,
            group_name=FEATURES,
            kinds={"duckdb", "lance"},
            deps=[IMAGES, DECISIONS],
            description=(
                "The canonical model input (grayscale, fixed size, float in [0, 1]) with a split per image from "
                "its content hash, as versions named by their content hash in a Lance store per image size "
                "(`datasets/lance-<size>/`): pixels stored once per image, each version a tagged version of its "
                "members. A run takes in only the images cleaning changed since the head version "
                "(`features.head`, its images in `features.members`); `features.dataset_versions` records every "
                "version and `features.dataset_changes` what it changed. A new version is staged: the blocking "
                "check feature_expectations publishes it (makes it current) only if it passes."
            ),
        ),
        AssetSpec(
            IMAGE_STATS,
            group_name=FEATURES,
            kinds={"duckdb", "pandas"},
            deps=[IMAGES],
            description=(
                "Per-image statistics for monitoring and slicing: mean intensity, contrast, ink fraction, edge "
                "energy, sharpness, centre of mass, bounding box, with source and batch; computed once per image "
                "and image size, when its pixels are first stored."
            ),
        ),
    ],
    pool=warehouse_pool(),
)
def features(context: AssetExecutionContext, config: FeaturesConfig, lake: DataLake, warehouse: Warehouse):
    from dc_pipeline.core.data.incremental_features import SplitSettings, write_features
    from dc_pipeline.core.provenance import code_version

    settings = SplitSettings(config.image_size, config.split_salt, config.val_share, config.test_share)
    run = write_features(
        warehouse.get_connection,
        lake.object_store(),
        lake.datasets,
        settings,
        str(code_version()["label"]),
        lake.relative,
        log=context.log.info,
    )
    if run.rebuild_reason:
        context.log.info(f"membership rebuilt from all of clean.images: {run.rebuild_reason}")
    change = (
        f"+{run.added} -{run.removed} relabelled {run.relabelled}" if run.wrote_store else "no change the dataset sees"
    )
    splits = ", ".join(f"{s} {int(n)}" for s, n in run.split_counts.items())
    context.log.info(f"dataset version {run.dataset_hash[:12]} ({run.status}): {change}; {splits}")
    counts = pd.Series({str(s): int(n) for s, n in run.split_counts.items()})
    status = run.status or STAGED
    status_text = "staged: published if its audit passes" if status == STAGED else status
    yield MaterializeResult(
        asset_key=DATASET_VERSION,
        metadata={
            "summary": f"{'new' if run.new_version else 'unchanged'} version {run.dataset_hash[:12]} "
            f"({status_text}): {int(run.n_images)} images ({splits}); {change}",
            "dataset_hash": run.dataset_hash,
            "new_version": run.new_version,
            "status": status,
            "parent_hash": run.parent_hash or "",
            "rebuilt": run.rebuild_reason or "no: the changes since the head only",
            "images_looked_at": run.touched,
            "added": run.added,
            "removed": run.removed,
            "relabelled": run.relabelled,
            "labelled_by_labellers": int(run.decisions.get("label", 0)),
            "pixels_written": run.pixels_written,
            "images_fingerprinted": run.fingerprinted,
            "clean_seq": run.clean_seq,
            "path": MetadataValue.path(run.store),
            "review_decisions_applied": MetadataValue.json(plain(run.decisions)),
            "dagster/row_count": run.n_images,
            "split_counts": counts_markdown(counts, "split"),
            "class_share_per_split": MetadataValue.md(
                markdown_table(class_shares(run.class_counts).round(3), index=True) if run.class_counts else "_none_"
            ),
            "image_shape": f"{config.image_size}x{config.image_size}, 1 channel, float32 in [0, 1]",
        },
    )
    yield MaterializeResult(
        asset_key=IMAGE_STATS,
        metadata={
            "summary": f"statistics of {len(run.stats)} newly stored images at {config.image_size}x{config.image_size}"
            if len(run.stats)
            else "no new image this run: the statistics stay as they were",
            **table_metadata(run.stats.round(4)),
            "images_added": int(len(run.stats)),
        },
    )


def class_counts_table(class_counts: dict) -> pd.DataFrame:
    """Images per class (rows) and split (columns) from a version's recorded class counts."""
    from dc_pipeline.core.data.features import SPLITS

    table = pd.DataFrame(class_counts).fillna(0).astype("int64")
    table = table.reindex(columns=list(SPLITS), fill_value=0)
    table.index = table.index.astype("int64")
    return table.sort_index().rename_axis("label")


def class_shares(class_counts: dict) -> pd.DataFrame:
    """Share of each class's images in each split (rows: label; columns: splits)."""
    table = class_counts_table(class_counts)
    return table.div(table.sum(axis=1).replace(0, 1), axis=0)


@asset_check(
    asset=DATASET_VERSION,
    name="feature_expectations",
    blocking=True,
    pool=warehouse_pool(),
    description=(
        "Blocking, and the gate of publication: Great Expectations on the dataset version just written "
        "(staged): every pixel in [0, 1] and no NaN (per-image min, max and NaN count, recorded when the "
        "pixels were stored) for each image the version added or relabelled (and any unaudited ancestor did; "
        "every image of a version built whole), none of them twice in the version (an image keeps one "
        "row, so one split), split shares within "
        f"{MAX_Z:g} binomial standard errors of their targets (a near-duplicate group is one draw: the errors "
        "widen by the design effect), overall and within each class "
        "(stratification), every class present in every split, and no near-duplicate pair (a re-encoded, "
        "resized or slightly altered copy) with its two images in different splits: a picture in train and "
        "test makes the test error a lie. A model trained on a broken "
        "dataset version is wasted compute and a misleading evaluation. Only a pass publishes the version "
        "(it becomes the current one that training and load_split read); a failure, or an error while "
        "auditing, rejects it with the reasons in features.dataset_versions.audit and the published "
        "version stays current."
    ),
)
def feature_expectations(context: AssetCheckExecutionContext, lake: DataLake, warehouse: Warehouse) -> AssetCheckResult:
    with warehouse.get_connection() as conn:
        meta = version_to_audit(conn, staged_in_run(context))
        try:
            pixels, error = audit_pixels(lake, conn, meta), None
            leaks = version_leaks(lake, conn, meta, pixels)
            units = split_units(lake, conn, meta)
        except Exception as exc:  # reported below, as a failed audit
            pixels, leaks, units, error = None, None, None, exc
    try:
        if error is not None:
            raise error
        summaries = audit(lake, meta, pixels, leaks, units)
        names = ("pixels", "split_sizes", "stratification", "classes_per_split", "near_duplicate_splits")
        passed = all(s.success for s in summaries)
        failures = [
            {
                "check": n,
                "expectation": o.expectation,
                "column": o.column,
                "unexpected": o.unexpected_count,
                "examples": o.failing_ids[:5],
            }
            for n, s in zip(names, summaries)
            for o in s.failed()
        ]
        metadata: dict = {}
        for name, s in zip(names, summaries):
            metadata.update(s.metadata(prefix=f"{name}."))
        metadata["report"] = MetadataValue.md(tidy_markdown("\n\n".join(s.markdown() for s in summaries)))
        metadata["split_units"] = units
        metadata["design_effect"] = round(design_effect(meta, units), 3)
    except Exception as exc:  # fail closed: a version that cannot be audited is not published
        passed, failures = False, [{"check": "audit", "error": f"{type(exc).__name__}: {exc}"}]
        metadata = {"error": MetadataValue.text(failures[0]["error"])}
    with warehouse.get_connection() as conn:
        outcome = publish_or_reject(conn, meta["dataset_hash"], passed, failures)
    context.log.info(f"dataset version {meta['dataset_hash'][:12]}: {outcome}")
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=outcome,
        metadata={"dataset_hash": meta["dataset_hash"], "publication": outcome, **metadata},
    )


def staged_in_run(context: AssetCheckExecutionContext) -> str | None:
    """The dataset version this run's features step wrote (None when the check runs on its own)."""
    from dagster import DagsterEventType

    for entry in reversed(
        context.instance.all_logs(context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    ):
        materialization = entry.asset_materialization
        if (
            materialization
            and materialization.asset_key == DATASET_VERSION
            and "dataset_hash" in materialization.metadata
        ):
            return str(materialization.metadata["dataset_hash"].value)
    return None


def version_to_audit(conn, dataset_hash: str | None) -> dict:
    """The row of ``dataset_hash``; without one, the newest staged version, else the published one."""
    if dataset_hash is None:
        staged = conn.execute(
            f"SELECT dataset_hash FROM {T.DATASET_VERSIONS} WHERE status = ? ORDER BY created_at DESC LIMIT 1",
            [STAGED],
        ).fetchall()
        dataset_hash = staged[0][0] if staged else published_dataset_hash(conn)
    row = conn.execute(f"SELECT * FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [dataset_hash]).df()
    if row.empty:
        raise ValueError("no dataset version to audit: materialize features/dataset_version first")
    return row.iloc[0].to_dict()


def publish_or_reject(conn, dataset_hash: str, passed: bool, failures: list[dict]) -> str:
    """Write-audit-publish, in one transaction: a version that passed becomes the published one (unless a
    version staged after it was published meanwhile); one that failed is rejected and the published one
    stays. The per-version tables keep the published version's rows and those of versions still staged."""
    now = datetime.now(UTC).replace(tzinfo=None)
    record = json.dumps({"passed": passed, "failures": failures}, default=str)
    status, staged_at = conn.execute(
        f"SELECT status, created_at FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [dataset_hash]
    ).fetchall()[0]
    current = published_dataset_hash(conn)
    if current == dataset_hash:
        conn.execute(f"UPDATE {T.DATASET_VERSIONS} SET audit = ? WHERE dataset_hash = ?", [record, dataset_hash])
        return "published (already)" if passed else "published earlier, fails its audit now: see the report"
    if not passed:
        conn.execute(
            f"UPDATE {T.DATASET_VERSIONS} SET status = ?, audit = ? WHERE dataset_hash = ?",
            [REJECTED, record, dataset_hash],
        )
        outcome = f"rejected; the published version stays {current[:12] if current else 'none'}"
    else:
        newer = conn.execute(
            f"SELECT count(*) FROM {T.DATASET_VERSIONS} WHERE {CURRENT} AND created_at > ?", [staged_at]
        ).fetchall()[0][0]
        if newer:
            conn.execute(
                f"UPDATE {T.DATASET_VERSIONS} SET status = ?, audit = ? WHERE dataset_hash = ?",
                [SUPERSEDED, record, dataset_hash],
            )
            outcome = f"passed, not published: a newer version ({current[:12]}) is published"
        else:
            conn.execute(f"UPDATE {T.DATASET_VERSIONS} SET is_current = false WHERE is_current")
            conn.execute(
                f"UPDATE {T.DATASET_VERSIONS} SET status = ?, is_current = true, published_at = ?, audit = ? "
                "WHERE dataset_hash = ?",
                [PUBLISHED, now, record, dataset_hash],
            )
            conn.execute(  # older staged versions can never be published now
                f"UPDATE {T.DATASET_VERSIONS} SET status = ? WHERE status = ? AND created_at < ?",
                [SUPERSEDED, STAGED, staged_at],
            )
            outcome = f"published (was {status}); it replaces {current[:12] if current else 'none'}"
    # Versions of releases before 0.3 kept per-version rows; those of versions no longer in use go. Image
    # statistics written per image (dataset_hash NULL) stay.
    keep = f"SELECT dataset_hash FROM {T.DATASET_VERSIONS} WHERE is_current OR status = '{STAGED}'"
    for table in (T.DATASET_INDEX, T.IMAGE_STATS, T.CURATION_LINEAGE):
        conn.execute(f"DELETE FROM {table} WHERE dataset_hash IS NOT NULL AND dataset_hash NOT IN ({keep})")
    return outcome


def audit_pixels(lake: DataLake, conn, meta: dict) -> pd.DataFrame:
    """Per-image pixel figures (sha256, split, min, max, nan_count) of what the audit of ``meta`` covers: for a
    Lance version, the images it (and any unaudited ancestor) added or relabelled, with their figures recorded
    when their pixels were stored, one row per member occurrence; for an npy version of a release before 0.3,
    every image, computed from its shards."""
    import numpy as np

    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.data.features import SPLITS
    from dc_pipeline.core.data.incremental_features import audit_rows

    if meta.get("format") == "lance":
        return audit_rows(conn, lake.datasets, meta)
    version = open_version(lake.datasets, meta["dataset_hash"])
    index = version.index()
    per_image = []
    for split in SPLITS:
        x, _ = version.split(split, mmap=True)
        flat = np.asarray(x).reshape(len(x), -1)
        per_image.append(
            pd.DataFrame(
                {
                    "split": split,
                    "min": flat.min(axis=1, initial=0.0),
                    "max": flat.max(axis=1, initial=0.0),
                    "nan_count": np.isnan(flat).sum(axis=1),
                }
            )
        )
    pixels = pd.concat(per_image, ignore_index=True)
    pixels["sha256"] = index["sha256"].to_numpy()
    return pixels


def version_leaks(lake: DataLake, conn, meta: dict, pixels: pd.DataFrame) -> pd.DataFrame:
    """Near-duplicate pairs touching the audited images whose two images sit in different splits of the
    version (the split guard makes this empty; a leak means the guard was bypassed or broken)."""
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.data.incremental_cleaning import select_in
    from dc_pipeline.core.data.incremental_features import read_head
    from dc_pipeline.core.data.incremental_issues import straddling_pairs

    head = read_head(conn)
    if head is not None and head["dataset_hash"] == meta["dataset_hash"]:

        def split_of(shas: set[str]) -> dict[str, str]:
            rows = select_in(conn, f"SELECT sha256, split FROM {T.HEAD_MEMBERS} WHERE TRUE", "sha256", shas)
            return dict(zip(rows["sha256"], rows["split"]))

    else:
        index = open_version(lake.datasets, meta["dataset_hash"]).index()

        def split_of(shas: set[str]) -> dict[str, str]:
            rows = index[index["sha256"].isin(shas)]
            return dict(zip(rows["sha256"], rows["split"]))

    return straddling_pairs(conn, pixels[["sha256", "split"]], split_of)


def split_units(lake: DataLake, conn, meta: dict) -> int:
    """How many independent split draws the version's members are: a near-duplicate group is one (its split
    comes from its anchor), every other image one. A SQL aggregate for the head version."""
    from dc_pipeline.core.data.dataset_store import open_version
    from dc_pipeline.core.data.incremental_cleaning import select_in
    from dc_pipeline.core.data.incremental_features import read_head

    head = read_head(conn)
    if head is not None and head["dataset_hash"] == meta["dataset_hash"]:
        return int(
            conn.execute(
                f"SELECT count(DISTINCT coalesce(g.anchor, m.sha256)) FROM {T.HEAD_MEMBERS} m "
                f"LEFT JOIN {T.NEAR_DUPLICATE_GROUPS} g USING (sha256)"
            ).fetchall()[0][0]
        )
    shas = open_version(lake.datasets, meta["dataset_hash"]).index()["sha256"]
    groups = select_in(conn, f"SELECT sha256, anchor FROM {T.NEAR_DUPLICATE_GROUPS} WHERE TRUE", "sha256", shas)
    anchor = dict(zip(groups["sha256"], groups["anchor"]))
    return len({anchor.get(s, s) for s in shas})


def design_effect(meta: dict, units: int | None) -> float:
    """Members per split draw (at least 1): split shares scatter over draws, not images, so their standard
    error grows by its square root."""
    members = int(meta.get("n_images") or 0)
    return max(members / units, 1.0) if units else 1.0


def audit(
    lake: DataLake, meta: dict, pixels: pd.DataFrame, leaks: pd.DataFrame | None = None, units: int | None = None
) -> list:
    """The expectations of one dataset version, as GX validation summaries: the pixel figures of ``pixels``,
    split shares, stratification and classes per split from the version's class counts (O(classes)), with
    the binomial standard errors widened by the design effect of near-duplicate groups (``units``: split
    draws), and no near-duplicate pair across splits (``leaks``)."""
    import numpy as np

    from dc_pipeline.core.data.expectations import Expectation as E
    from dc_pipeline.core.data.expectations import validate
    from dc_pipeline.core.data.features import SPLITS

    counts = class_counts_table(json.loads(meta["class_counts"]) if meta.get("class_counts") else {})
    targets = {
        "train": 1 - meta["val_share"] - meta["test_share"],
        "val": meta["val_share"],
        "test": meta["test_share"],
    }

    deff = design_effect(meta, units)

    def z(share: float, target: float, n: int) -> float:
        return abs(share - target) / float(np.sqrt(deff * target * (1 - target) / max(n, 1)))

    total = int(counts.to_numpy().sum())
    per_split = counts.sum(axis=0)
    split_frame = pd.DataFrame(
        {"split": list(targets), "z": [z(per_split.get(s, 0) / max(total, 1), t, total) for s, t in targets.items()]}
    )
    strat, per_class = (
        class_shares(json.loads(meta["class_counts"]) if meta.get("class_counts") else {}),
        counts.sum(axis=1),
    )
    strat_dev = pd.DataFrame(
        {
            "label": strat.index.astype(str),
            "z": [max(z(strat.loc[c, s], targets[s], int(per_class[c])) for s in SPLITS) for c in strat.index],
        }
    )
    classes = lake.contracts().project.classes
    present = (counts > 0).sum(axis=0).reindex(list(SPLITS), fill_value=0)
    summaries = [
        validate(
            pixels[["sha256", "split", "min", "max", "nan_count"]],
            [
                E("ExpectColumnValuesToBeBetween", column="min", min_value=0.0, max_value=1.0),
                E("ExpectColumnValuesToBeBetween", column="max", min_value=0.0, max_value=1.0),
                E("ExpectColumnValuesToBeInSet", column="nan_count", value_set=[0]),
                E("ExpectColumnValuesToBeUnique", column="sha256"),
            ],
            id_column="sha256",
            name="pixels",
        ),
        validate(
            split_frame,
            [E("ExpectColumnValuesToBeBetween", column="z", min_value=0, max_value=MAX_Z)],
            id_column="split",
            name="split_sizes",
        ),
        validate(
            strat_dev,
            [E("ExpectColumnValuesToBeBetween", column="z", min_value=0, max_value=MAX_Z)],
            id_column="label",
            name="stratification",
        ),
        validate(
            pd.DataFrame({"split": present.index, "classes": present.to_numpy()}),
            [E("ExpectColumnValuesToBeBetween", column="classes", min_value=len(classes), max_value=len(classes))],
            id_column="split",
            name="classes_per_split",
        ),
        validate(
            pd.DataFrame(
                {
                    "pair": (leaks["sha256_a"].str[:12] + "~" + leaks["sha256_b"].str[:12]).tolist()
                    if leaks is not None and len(leaks)
                    else ["(none)"],
                    "straddles": [True] * len(leaks) if leaks is not None and len(leaks) else [False],
                }
            ),
            [E("ExpectColumnValuesToBeInSet", column="straddles", value_set=[False])],
            id_column="pair",
            name="near_duplicate_splits",
        ),
    ]
    return summaries
