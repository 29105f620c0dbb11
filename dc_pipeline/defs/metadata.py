"""Materialization metadata every stage shares: row counts, a preview of the first rows, the schema."""

from __future__ import annotations

import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

from dc_pipeline.core.data.expectations import plain


def table_metadata(df: pd.DataFrame, preview_rows: int = 8, drop: tuple[str, ...] = ("raw_record",)) -> dict:
    shown = df.drop(columns=[c for c in drop if c in df.columns]).head(preview_rows)
    return {
        "dagster/row_count": int(len(df)),
        "preview": MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_no rows_"),
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name=str(c), type=str(t)) for c, t in df.dtypes.items()]
        ),
    }


def counts_markdown(counts: pd.Series | dict, key: str, value: str = "count") -> MetadataValue:
    items = counts.items() if hasattr(counts, "items") else counts
    rows = [f"| {k} | {plain(v)} |" for k, v in items]
    return MetadataValue.md("\n".join([f"| {key} | {value} |", "|---|---|", *rows]) if rows else "_none_")
