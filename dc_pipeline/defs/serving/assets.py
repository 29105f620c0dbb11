"""Serving stage: the scoring service's prediction log in the warehouse, and each A/B arm's figures."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from dc_pipeline.catalog import AB_REPORT, PREDICTION_LOG, SERVING, T, warehouse_pool
from dc_pipeline.defs.metadata import markdown_table
from dc_pipeline.defs.resources import DataLake, Warehouse


@asset(
    key=PREDICTION_LOG,
    group_name=SERVING,
    kinds={"duckdb"},
    pool=warehouse_pool(own_rows=True),
    description=(
        "The scoring service's prediction log (`serving/predictions/*.parquet` in the data folder) in "
        "`serving.predictions`: each new file taken in once, whole, so a run costs what the new files cost; "
        "a file that is not a regular file, too large, unreadable or of other columns is refused with the "
        "reason in `serving.prediction_log_files`."
    ),
)
def prediction_log(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse) -> MaterializeResult:
    import datetime as dt

    import pandas as pd

    from dc_pipeline.core.serving.prediction_log import PREDICTION_SCHEMA, PREDICTIONS_FOLDER, new_log_files
    from dc_pipeline.warehouse.io import append_rows, transaction

    folder = lake.root_path(*PREDICTIONS_FOLDER)
    with warehouse.get_connection() as conn:
        known = {r[0] for r in conn.execute(f"SELECT log_file FROM {T.PREDICTION_LOG_FILES}").fetchall()}
        files, refused = new_log_files(folder, known, lake.relative)
        taken, rows_in = 0, 0
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

        def account(name: str, path, rows: int | None, refusal: str | None) -> None:
            """The file's entry in serving.prediction_log_files (a refusal is also reported)."""
            size = path.lstat().st_size if path is not None else None
            entry = {"log_file": name, "size_bytes": size, "rows_in": rows, "ingested_at": now, "refusal": refusal}
            append_rows(conn, T.PREDICTION_LOG_FILES, pd.DataFrame([entry]))

        for name, reason in refused:
            account(name, None, None, reason)
        for path in files:
            name = lake.relative(path)
            try:
                frame = pd.read_parquet(path)
            except Exception as exc:  # an unreadable file is refused, not fatal
                refused.append((name, f"unreadable: {type(exc).__name__}: {exc}"))
                account(name, path, None, refused[-1][1])
                continue
            if set(frame.columns) != set(PREDICTION_SCHEMA):
                refused.append((name, f"columns {sorted(frame.columns)} are not the prediction log's"))
                account(name, path, len(frame), refused[-1][1])
                continue
            frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True).dt.tz_localize(None)
            frame["log_file"] = name
            with transaction(conn):  # the rows and the file's entry, both or neither
                append_rows(conn, T.SERVED_PREDICTIONS, frame)
                account(name, path, len(frame), None)
            taken += 1
            rows_in += len(frame)
        total = conn.execute(f"SELECT count(*) FROM {T.SERVED_PREDICTIONS}").fetchall()[0][0]
    for name, reason in refused:
        context.log.warning(f"prediction log file {name} refused: {reason}")
    return MaterializeResult(
        metadata={
            "summary": f"{taken} new log files, {rows_in} predictions taken in ({total} in all); {len(refused)} refused",
            "new_files": taken,
            "new_predictions": rows_in,
            "predictions": int(total),
            "refused": MetadataValue.md(markdown_table(pd.DataFrame(refused, columns=["file", "reason"]))),
        }
    )


class ABReportConfig(Config):
    bootstrap_resamples: int = Field(default=2000, ge=100, description="Bootstrap resamples over requests.")
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0, description="Level of the intervals.")
    bootstrap_seed: int = Field(default=0, description="Seed of the resamples.")


@asset(
    key=AB_REPORT,
    deps=[PREDICTION_LOG],
    group_name=SERVING,
    kinds={"duckdb"},
    pool=warehouse_pool(own_rows=True),
    description=(
        "Each A/B arm's figures on the answered predictions whose images have a label by now (joined on the "
        "image's sha256 with the clean images' labels, reviews included): error, automation rate and error among "
        "auto-accepted answers, with bootstrap intervals over requests; appended to `serving.ab_figures`."
    ),
)
def ab_report(context: AssetExecutionContext, config: ABReportConfig, warehouse: Warehouse) -> MaterializeResult:
    import datetime as dt

    from dc_pipeline.core.serving.ab_report import arm_figures
    from dc_pipeline.warehouse.io import append_rows
    from dc_pipeline.warehouse.queries import labelled_predictions

    with warehouse.get_connection() as conn:
        labelled = labelled_predictions(conn, answered_only=True)
        answered = conn.execute(f"SELECT count(*) FROM {T.SERVED_PREDICTIONS} WHERE answered").fetchall()[0][0]
        figures = arm_figures(labelled, config.bootstrap_resamples, config.confidence_level, config.bootstrap_seed)
        figures.insert(0, "reported_at", dt.datetime.now(dt.UTC).replace(tzinfo=None))
        if len(figures):
            append_rows(conn, T.AB_FIGURES, figures)
    shown = (
        figures.assign(
            interval=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in zip(figures.value, figures.low, figures.high)]
        )[["arm", "model_version", "figure", "n", "interval"]]
        if len(figures)
        else figures
    )
    by_arm = labelled.groupby("arm").size().to_dict() if len(labelled) else {}
    summary = (
        f"{len(labelled)} of {answered} answered predictions have a label: "
        + ", ".join(f"{arm} {n}" for arm, n in sorted(by_arm.items()))
        if len(labelled)
        else f"no labels yet for the {answered} answered predictions"
    )
    return MaterializeResult(
        metadata={
            "summary": summary,
            "labelled": len(labelled),
            "answered": int(answered),
            "figures": MetadataValue.md(markdown_table(shown)),
        }
    )
