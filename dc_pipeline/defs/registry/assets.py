"""Registry stage: the champion alias, moved only to a challenger that passed the promotion gate."""

import posixpath

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from dc_pipeline.catalog import CHAMPION, MODEL_EVALUATION, REGISTRY, warehouse_pool
from dc_pipeline.defs.metadata import markdown_table, number, percent, plain
from dc_pipeline.defs.resources import DataLake, Warehouse


@asset(
    key=CHAMPION,
    deps=[MODEL_EVALUATION],
    group_name=REGISTRY,
    kinds={"duckdb"},
    pool=warehouse_pool(),
    description=(
        "The champion alias: moved to the challenger when the promotion gate passed, kept when the gate "
        "refused it (the reason is shown); every move is recorded in registry.alias_history with the gate's verdict."
    ),
)
def champion(context: AssetExecutionContext, lake: DataLake, warehouse: Warehouse) -> MaterializeResult:
    from dc_pipeline.core.ml.registry import Registry

    with warehouse.get_connection() as conn:
        registry = Registry(conn, lake.artifacts).ensure()
        challenger = registry.alias("challenger")
        verdict = conn.execute(
            "SELECT passed, verdict FROM registry.gate_decisions WHERE challenger = ? ORDER BY decided_at DESC LIMIT 1",
            [challenger],
        ).fetchone()
        if verdict is None:
            raise ValueError(f"challenger {challenger} has no gate decision; the champion stays")
        if verdict[0]:
            moved = registry.set_alias("champion", challenger, verdict[1], context.run_id)
        elif registry.alias("champion") is None:
            raise ValueError(f"the first model {challenger} was refused: {verdict[1]}")
        else:
            moved = False
            context.log.info(f"champion unchanged: {verdict[1]}")
        record = registry.get("champion")
        history = conn.execute("SELECT * FROM registry.alias_history ORDER BY moved_at DESC LIMIT 10").df()
    metrics = record["metrics"] or {}
    figures = ", ".join(
        f"{label} {fmt(metrics[key])}"
        for key, label, fmt in (
            ("clean_error", "clean error", percent),
            ("mce", "mCE", number),
            ("rms_calibration_corrupted", "RMS calibration (corrupted)", number),
        )
        if metrics.get(key) is not None
    )
    weights = record["weights_path"]
    state = "newly promoted" if moved else "unchanged" if verdict[0] else f"unchanged: challenger {challenger} refused"
    return MaterializeResult(
        metadata={
            "summary": f"champion {record['version_id']} ({record['kind']}, {state})"
            + (f": {figures}" if figures else ""),
            "champion": record["version_id"],
            "moved": moved,
            "reason": verdict[1],
            "weights": MetadataValue.path(weights),
            "model_card": MetadataValue.path(posixpath.join(posixpath.dirname(weights), "model.json")),
            "metrics": MetadataValue.json(plain(metrics)),
            "alias_history": MetadataValue.md(markdown_table(history)),
        }
    )
