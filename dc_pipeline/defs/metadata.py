"""Materialization metadata every stage shares: a one-line summary, tables without ``nan``, row counts, a preview
of the first rows, the schema.

Conventions (what the Dagster UI shows): the first entry of an asset's metadata is ``summary``, one line of text
with its headline figures (shown without a click); a markdown entry holding a picture is named for it
(``plot: ...``, ``preview: ...``) and its image has alt text; a missing value in a table reads ``–``; a file or
folder is path metadata, relative to the data folder.
"""

from __future__ import annotations

import re

import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

from dc_pipeline.core.data.expectations import plain

MISSING = "–"
_MISSING_CELL = re.compile(r"(?<=\|)[ \t]*(?:nan|NaN|None|<NA>|NaT)[ \t]*(?=\|)")


def markdown_table(df: pd.DataFrame, index: bool = False, empty: str = "_none_") -> str:
    """``df`` as a markdown table, a missing value (NaN, None, NA, NaT) shown as ``–``."""
    if df is None or not len(df):
        return empty
    if index:
        df = df.reset_index().rename(columns={"index": ""})
    shown = df.astype(object).where(df.notna(), None)
    return shown.to_markdown(index=False, missingval=MISSING)


def tidy_markdown(text: str) -> str:
    """Markdown built elsewhere with its missing table cells (``nan``, ``None``, ``<NA>``, ``NaT``) shown as ``–``."""
    return "\n".join(
        _MISSING_CELL.sub(f" {MISSING} ", line) if line.lstrip().startswith("|") else line for line in text.split("\n")
    )


def percent(value, digits: int = 1) -> str:
    """A share as a percentage (``–`` when missing)."""
    return MISSING if value is None or pd.isna(value) else f"{100 * float(value):.{digits}f}%"


def number(value, fmt: str = ".3f") -> str:
    return MISSING if value is None or pd.isna(value) else format(float(value), fmt)


def counts_text(counts: pd.Series | dict, limit: int = 4) -> str:
    """``counts`` as ``a 3, b 2, ...`` (the ``limit`` largest first; plain ints)."""
    items = sorted(((str(k), int(v)) for k, v in dict(counts).items()), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return shown + (f", {len(items) - limit} more" if len(items) > limit else "") if items else "none"


def table_metadata(df: pd.DataFrame, preview_rows: int = 8, drop: tuple[str, ...] = ("raw_record",)) -> dict:
    shown = df.drop(columns=[c for c in drop if c in df.columns]).head(preview_rows)
    return {
        "dagster/row_count": int(len(df)),
        "preview": MetadataValue.md(markdown_table(shown, empty="_no rows_")),
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name=str(c), type=str(t)) for c, t in df.dtypes.items()]
        ),
    }


def counts_markdown(counts: pd.Series | dict, key: str, value: str = "count") -> MetadataValue:
    items = counts.items() if hasattr(counts, "items") else counts
    rows = [f"| {k} | {MISSING if v is None or pd.isna(v) else plain(v)} |" for k, v in items]
    return MetadataValue.md("\n".join([f"| {key} | {value} |", "|---|---|", *rows]) if rows else "_none_")
