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

from dc_pipeline.catalog import DATASET_VERSION, DUCKDB_POOL, FEATURES, IMAGE_STATS, IMAGES, T
from dc_pipeline.defs.metadata import counts_markdown, table_metadata
from dc_pipeline.defs.resources import DataLake, Warehouse
from dc_pipeline.warehouse.queries import PUBLISHED as CURRENT
from dc_pipeline.warehouse.queries import published_dataset_hash

# A dataset version is written (staged), audited by the blocking check feature_expectations, then published
# (it becomes current) only if the audit passed: write-audit-publish.
STAGED, PUBLISHED, REJECTED, SUPERSEDED = "staged", "published", "rejected", "superseded"

# Splits are drawn by hash, so their shares scatter binomially around the targets. A share more than
# MAX_Z standard errors from its target (overall, or within one class) means the split is broken.
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
            kinds={"duckdb", "numpy"},
            deps=[IMAGES],
            description=(
                "The canonical model input (grayscale, fixed size, float in [0, 1]) with a split per "
                "image from its content hash, stored as immutable shards named by the dataset hash. "
                "`features.dataset_versions` records every version and `features.dataset_members` its images; "
                "`features.dataset_index` lists the images with their splits. A new version is staged: "
                "the blocking check feature_expectations publishes it (makes it current) only if it passes."
            ),
        ),
        AssetSpec(
            IMAGE_STATS,
            group_name=FEATURES,
            kinds={"duckdb", "pandas"},
            deps=[IMAGES],
            description=(
                "Per-image statistics for monitoring and slicing: mean intensity, contrast, ink "
                "fraction, edge energy, sharpness, centre of mass, bounding box, with source and batch."
            ),
        ),
    ],
    pool=DUCKDB_POOL,
)
def features(context: AssetExecutionContext, config: FeaturesConfig, lake: DataLake, warehouse: Warehouse):
    from dc_pipeline.core.data.cleaning import DECISION_COLUMNS, latest_decisions
    from dc_pipeline.core.data.features import (
        DatasetVersion,
        canonical_array,
        dataset_hash,
        image_statistics,
        split_of,
        stratification_table,
    )
    from dc_pipeline.core.provenance import code_version
    from dc_pipeline.warehouse.io import append_rows, replace_rows, table_exists

    with warehouse.get_connection() as conn:
        images = conn.execute(
            "SELECT image_id, sha256, label, source, batch_id, device_id FROM clean.images ORDER BY sha256"
        ).df()
        decisions = (
            conn.execute("SELECT * FROM clean.review_decisions").df()
            if table_exists(conn, "clean.review_decisions")
            else pd.DataFrame()
        )
    if images.empty:
        raise ValueError("clean.images is empty: nothing to build a dataset from")
    # The curated dataset applies the latest reviewer decision per image; raw and clean rows stay as delivered.
    applied = latest_decisions(decisions) if len(decisions) else pd.DataFrame(columns=DECISION_COLUMNS)
    applied = applied[applied["sha256"].isin(images["sha256"])]
    curation = images.merge(applied, on="sha256", how="inner", suffixes=("", "_review"))
    relabel = dict(
        zip(
            applied.loc[applied.decision == "relabel", "sha256"],
            applied.loc[applied.decision == "relabel", "new_label"],
        )
    )
    images = images[~images["sha256"].isin(applied.loc[applied.decision == "exclude", "sha256"])].copy()
    images["label"] = [int(relabel.get(s, lab)) for s, lab in zip(images["sha256"], images["label"])]
    store = lake.object_store()
    images["split"] = [split_of(s, config.split_salt, config.val_share, config.test_share) for s in images["sha256"]]
    x = canonical_array([store.get(s) for s in images["sha256"]], config.image_size)
    version_hash = dataset_hash(list(images["sha256"]), list(images["label"]), list(images["split"]))
    version = DatasetVersion(lake.datasets, version_hash)
    created = not version.exists()
    version.write(images[["sha256", "image_id", "label", "split", "source", "batch_id"]], x)

    stats = image_statistics(x)
    stats.insert(0, "sha256", images["sha256"].to_numpy())
    for col in ("image_id", "label", "split", "source", "batch_id", "device_id"):
        stats[col] = images[col].to_numpy()
    counts = images.groupby("split").size().reindex(["train", "val", "test"], fill_value=0)
    per_class = images.groupby(["split", "label"]).size().unstack(fill_value=0)
    now = datetime.now(UTC).replace(tzinfo=None)
    record = pd.DataFrame(
        [
            {
                "dataset_hash": version_hash,
                "created_at": now,
                "image_size": config.image_size,
                "split_salt": config.split_salt,
                "val_share": config.val_share,
                "test_share": config.test_share,
                "n_images": int(len(images)),
                "n_train": int(counts["train"]),
                "n_val": int(counts["val"]),
                "n_test": int(counts["test"]),
                "class_counts": json.dumps(
                    {s: {str(k): int(v) for k, v in row.items()} for s, row in per_class.iterrows()}
                ),
                "upstream_batches": json.dumps(sorted(f"{a}/{b}" for a, b in set(zip(images.source, images.batch_id)))),
                "path": lake.relative(version.folder),
                "code_version": str(code_version()["label"]),
                "is_current": False,
                "relabelled": int((curation["decision"] == "relabel").sum()),
                "excluded": int((curation["decision"] == "exclude").sum()),
                "status": STAGED,
            }
        ]
    )
    lineage = pd.DataFrame(
        {
            "dataset_hash": version_hash,
            "sha256": curation["sha256"],
            "image_id": curation["image_id"],
            "delivered_label": curation["label"].astype(int),
            "decision": curation["decision"].astype("string"),
            "new_label": curation["new_label"].astype("Int64"),
            "reviewer": curation["reviewer"].astype("string"),
            "reason": curation["reason"].astype("string"),
            "decided_at": curation["decided_at"],
            "review_source": curation["source_review"].astype("string"),
            "review_batch": curation["batch_id_review"].astype("string"),
            "review_row": curation["row_number"].astype("Int64"),
        }
    )
    key = {"dataset_hash": version_hash}
    with warehouse.get_connection() as conn:  # one transaction: the version is staged whole or not at all
        published = published_dataset_hash(conn) == version_hash
        if not published:  # the published version stays published; any other is staged for its audit
            conn.execute(f"DELETE FROM {T.DATASET_VERSIONS} WHERE dataset_hash = ?", [version_hash])
            append_rows(conn, T.DATASET_VERSIONS, record)
        if not conn.execute(
            f"SELECT count(*) FROM {T.DATASET_MEMBERS} WHERE dataset_hash = ?", [version_hash]
        ).fetchall()[0][0]:
            append_rows(
                conn, T.DATASET_MEMBERS, pd.DataFrame({"dataset_hash": version_hash, "sha256": images["sha256"]})
            )
        replace_rows(conn, T.DATASET_INDEX, version.index().assign(dataset_hash=version_hash), key)
        replace_rows(conn, T.CURATION_LINEAGE, lineage, key)
        replace_rows(conn, T.IMAGE_STATS, stats.assign(dataset_hash=version_hash), key)
    context.log.info(f"dataset version {version_hash[:12]}: {dict(counts)} ({'new' if created else 'unchanged'})")
    yield MaterializeResult(
        asset_key=DATASET_VERSION,
        metadata={
            "dataset_hash": version_hash,
            "new_version": created,
            "status": PUBLISHED if published else STAGED,
            "path": MetadataValue.path(lake.relative(version.folder)),
            "review_decisions_applied": MetadataValue.json(
                {k: int(v) for k, v in curation["decision"].value_counts().items()}
            ),
            "dagster/row_count": int(len(images)),
            "split_counts": counts_markdown(counts, "split"),
            "class_share_per_split": MetadataValue.md(stratification_table(images).round(3).to_markdown()),
            "image_shape": f"{config.image_size}x{config.image_size}, 1 channel, float32 in [0, 1]",
        },
    )
    yield MaterializeResult(asset_key=IMAGE_STATS, metadata=table_metadata(stats.round(4)))


@asset_check(
    asset=DATASET_VERSION,
    name="feature_expectations",
    blocking=True,
    pool=DUCKDB_POOL,
    description=(
        "Blocking, and the gate of publication: Great Expectations on the dataset version just written "
        "(staged): every pixel in [0, 1] and no NaN "
        "(per-image min, max and NaN count), no image in two splits, split shares within "
        f"{MAX_Z:g} binomial standard errors of their targets, overall and within each class "
        "(stratification), and every class present in every split. A model trained on a broken "
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
        summaries = audit(lake, meta)
        names = ("pixels", "split_sizes", "stratification", "classes_per_split")
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
        metadata["report"] = MetadataValue.md("\n\n".join(s.markdown() for s in summaries))
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
    keep = f"SELECT dataset_hash FROM {T.DATASET_VERSIONS} WHERE is_current OR status = '{STAGED}'"
    for table in (T.DATASET_INDEX, T.IMAGE_STATS, T.CURATION_LINEAGE):
        conn.execute(f"DELETE FROM {table} WHERE dataset_hash IS NULL OR dataset_hash NOT IN ({keep})")
    return outcome


def audit(lake: DataLake, meta: dict) -> list:
    """The expectations of one dataset version, as GX validation summaries."""
    import numpy as np

    from dc_pipeline.core.data.expectations import Expectation as E
    from dc_pipeline.core.data.expectations import validate
    from dc_pipeline.core.data.features import SPLITS, DatasetVersion, stratification_table

    version = DatasetVersion(lake.datasets, meta["dataset_hash"])
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
    targets = {
        "train": 1 - meta["val_share"] - meta["test_share"],
        "val": meta["val_share"],
        "test": meta["test_share"],
    }

    def z(share: float, target: float, n: int) -> float:
        return abs(share - target) / float(np.sqrt(target * (1 - target) / max(n, 1)))

    shares = index["split"].value_counts(normalize=True)
    split_frame = pd.DataFrame(
        {"split": list(targets), "z": [z(shares.get(s, 0.0), t, len(index)) for s, t in targets.items()]}
    )
    strat, per_class = stratification_table(index), index["label"].value_counts()
    strat_dev = pd.DataFrame(
        {
            "label": strat.index.astype(str),
            "z": [max(z(strat.loc[c, s], targets[s], int(per_class[c])) for s in SPLITS) for c in strat.index],
        }
    )
    classes = lake.contracts().project.classes
    present = index.groupby("split")["label"].nunique().reindex(list(SPLITS), fill_value=0)
    summaries = [
        validate(
            pixels,
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
    ]
    return summaries
