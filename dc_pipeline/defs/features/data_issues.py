"""Checks on the data issues the features run finds in new images: near-duplicates, quality issues, outliers.

All three warn: they point at images worth a look, not at wrong data. What would be wrong, a near-duplicate
group split across train and test, is part of the blocking audit ``feature_expectations``.
"""

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from dc_pipeline.catalog import DATASET_VERSION, warehouse_pool
from dc_pipeline.defs.metadata import counts_text, markdown_table
from dc_pipeline.defs.resources import Warehouse

QUALITY_WARN_SHARE = 0.05  # share of the newest images with a quality issue above which the check warns
OUTLIER_WARN_SHARE = 0.02
PREVIEW = 16


def _preview(conn, shas: list[str], titles: list[str], caption: str, alt: str) -> str:
    from dc_pipeline.core.curation.data_issues import issue_preview_png
    from dc_pipeline.core.data.incremental_issues import thumbnails
    from dc_pipeline.core.plots import captioned_image

    thumbs = thumbnails(conn, shas)
    kept = [(thumbs[s], t) for s, t in zip(shas, titles) if s in thumbs]
    if not kept:
        return "_nothing to show_"
    import numpy as np

    return captioned_image(issue_preview_png(np.stack([k[0] for k in kept]), [k[1] for k in kept]), caption, alt)


@asset_check(
    asset=DATASET_VERSION,
    name="near_duplicates",
    blocking=False,
    pool=warehouse_pool(),
    description=(
        "Warning only. Near-duplicates among the newest images and against everything stored before: images "
        "with different bytes that show the same picture (re-encoded, resized, slightly noisy or cropped "
        "copies), found by perceptual hash and verified on thumbnails (features.near_duplicates). They are "
        "grouped so that a group never straddles splits (blocking, in feature_expectations); a reviewer may "
        "still want to exclude redundant copies."
    ),
)
def near_duplicates(warehouse: Warehouse) -> AssetCheckResult:
    from dc_pipeline.catalog import T
    from dc_pipeline.core.data.incremental_issues import newest_findings

    with warehouse.get_connection() as conn:
        found = newest_findings(conn)
        pairs = found["near_duplicates"]
        total = conn.execute(f"SELECT count(*) FROM {T.NEAR_DUPLICATES}").fetchall()[0][0]
        groups = conn.execute(
            f"SELECT count(DISTINCT anchor), coalesce(max(n), 0) FROM (SELECT anchor, count(*) AS n FROM "
            f"{T.NEAR_DUPLICATE_GROUPS} GROUP BY anchor)"
        ).fetchall()[0]
        top = pairs.head(PREVIEW // 2)
        shas = [s for a, b in zip(top["sha256_a"], top["sha256_b"]) for s in (a, b)]
        titles = [
            f"{s[:6]} d={d:.3f}" for a, b, d in zip(top["sha256_a"], top["sha256_b"], top["distance"]) for s in (a, b)
        ]
        preview = (
            _preview(
                conn,
                shas,
                titles,
                "Near-duplicate pairs side by side (first sha256 characters, perceptual distance).",
                "near-duplicate pairs side by side",
            )
            if len(top)
            else "_none_"
        )
    return AssetCheckResult(
        passed=pairs.empty,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "summary": f"{len(pairs)} near-duplicate pairs among the {len(found['images'])} newest images; "
            f"{int(total)} pairs in {int(groups[0])} groups in all",
            "newest_images": int(len(found["images"])),
            "pairs_among_newest": int(len(pairs)),
            "pairs_total": int(total),
            "groups_total": int(groups[0]),
            "largest_group": int(groups[1]),
            "preview: near-duplicate pairs": MetadataValue.md(preview),
            "pairs": MetadataValue.md(
                markdown_table(pairs.drop(columns=["found_at"], errors="ignore").head(20).round(4))
            ),
        },
    )


def _issue_check(kind: str, table_key: str, bound: float, warehouse: Warehouse) -> AssetCheckResult:
    from dc_pipeline.core.data.incremental_issues import newest_findings

    with warehouse.get_connection() as conn:
        found = newest_findings(conn)
        rows = found[table_key]
        n = max(len(found["images"]), 1)
        share = rows["sha256"].nunique() / n if len(rows) else 0.0
        top = rows.drop_duplicates("sha256").head(PREVIEW)
        titles = [f"{r.get('issue', kind)} {r['score']:.1f}" for r in top.to_dict("records")]
        label = "quality issues" if kind == "quality" else "outliers"
        preview = (
            _preview(
                conn,
                top["sha256"].tolist(),
                titles,
                f"Newest images with {label} (issue and score over each).",
                f"newest images with {label}",
            )
            if len(top)
            else "_none_"
        )
    counts = rows["issue"].value_counts().to_dict() if "issue" in rows.columns and len(rows) else {}
    n_found = int(rows["sha256"].nunique()) if len(rows) else 0
    return AssetCheckResult(
        passed=share <= bound,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "summary": f"{n_found} of the {len(found['images'])} newest images with {label} ({share:.1%}, warns "
            f"above {bound:.0%})" + (f": {counts_text(counts)}" if counts else ""),
            "newest_images": int(len(found["images"])),
            f"{kind}_images": n_found,
            "share": round(float(share), 4),
            "warn_above": bound,
            **({"per_issue": MetadataValue.json({str(k): int(v) for k, v in counts.items()})} if counts else {}),
            f"preview: {label}": MetadataValue.md(preview),
            "findings": MetadataValue.md(
                markdown_table(rows.drop(columns=["found_at"], errors="ignore").head(20).round(3))
            ),
        },
    )


@asset_check(
    asset=DATASET_VERSION,
    name="image_quality",
    blocking=False,
    pool=warehouse_pool(),
    description=(
        "Warning only, when more than 5% of the newest images have a quality issue: too dark, too light, "
        "blurry, low information (judged against the robust spread of every image seen so far) or an odd size "
        "for their source (features.quality_issues). Such images may still be right; many of them at once "
        "usually mean a sensor or delivery problem."
    ),
)
def image_quality(warehouse: Warehouse) -> AssetCheckResult:
    return _issue_check("quality", "quality", QUALITY_WARN_SHARE, warehouse)


@asset_check(
    asset=DATASET_VERSION,
    name="outliers",
    blocking=False,
    pool=warehouse_pool(),
    description=(
        "Warning only, when more than 2% of the newest images are outliers: far from every other image on their "
        "quality figures taken together (features.outliers). An outlier is a candidate for review or exclusion, "
        "or the first sign of a new kind of input."
    ),
)
def outliers(warehouse: Warehouse) -> AssetCheckResult:
    return _issue_check("outlier", "outliers", OUTLIER_WARN_SHARE, warehouse)
