"""Great Expectations 1.x validation of a DataFrame, summarised as plain Python values.

``great_expectations`` is imported inside ``validate`` (it takes seconds to import), so callers
import this module freely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Expectation:
    """One expectation by its GX class name, e.g. ``Expectation("ExpectColumnValuesToBeUnique", column="id")``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, **kwargs: Any):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kwargs", kwargs)


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    element_count: int | None
    unexpected_count: int | None
    unexpected_percent: float | None
    observed_value: Any
    failing_ids: list[str]


@dataclass(frozen=True)
class ValidationSummary:
    success: bool
    outcomes: list[ExpectationOutcome]

    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def metadata(self, prefix: str = "") -> dict[str, Any]:
        """Plain-typed figures for Dagster metadata, one entry per expectation."""
        out: dict[str, Any] = {
            f"{prefix}expectations_evaluated": len(self.outcomes),
            f"{prefix}expectations_failed": len(self.failed()),
        }
        for o in self.outcomes:
            key = prefix + o.expectation.removeprefix("expect_") + (f"[{o.column}]" if o.column else "")
            out[key] = {
                k: v
                for k, v in {
                    "success": o.success,
                    "element_count": o.element_count,
                    "unexpected_count": o.unexpected_count,
                    "unexpected_percent": o.unexpected_percent,
                    "observed_value": o.observed_value,
                    "failing_ids": o.failing_ids or None,
                }.items()
                if v is not None
            }
        return out

    def markdown(self) -> str:
        lines = ["| expectation | column | ok | unexpected | % | examples |", "|---|---|---|---|---|---|"]
        for o in self.outcomes:
            pct = "" if o.unexpected_percent is None else f"{o.unexpected_percent:.2f}"
            ex = (
                ", ".join(o.failing_ids[:5])
                if o.failing_ids
                else ("" if o.observed_value is None else f"observed {o.observed_value}")
            )
            lines.append(
                f"| {o.expectation} | {o.column or ''} | {'yes' if o.success else '**no**'} | "
                f"{o.unexpected_count if o.unexpected_count is not None else ''} | {pct} | {ex} |"
            )
        return "\n".join(lines)


def plain(value: Any) -> Any:
    """numpy scalars and containers to plain Python (Dagster metadata refuses numpy numbers)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def validate(
    df: pd.DataFrame,
    expectations: list[Expectation],
    id_column: str | None = None,
    name: str = "validation",
    max_ids: int = 10,
) -> ValidationSummary:
    """Validate ``df`` against ``expectations`` with an ephemeral GX context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = ctx.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df.reset_index(drop=True)})
    suite = gx.ExpectationSuite(name=name)
    for exp in expectations:
        suite.add_expectation(getattr(gx.expectations, exp.name)(**exp.kwargs))
    result_format: dict[str, Any] = {"result_format": "COMPLETE"}
    if id_column:
        result_format["unexpected_index_column_names"] = [id_column]
    res = batch.validate(suite, result_format=result_format)
    outcomes = []
    for r in res.results:
        cfg, result = r.expectation_config, r.result or {}
        ids = []
        for item in (result.get("unexpected_index_list") or [])[:max_ids]:
            ids.append(str(item.get(id_column)) if isinstance(item, dict) and id_column else str(item))
        if not ids and result.get("partial_unexpected_list"):
            ids = [str(v) for v in result["partial_unexpected_list"][:max_ids]]
        observed = plain(result.get("observed_value"))
        outcomes.append(
            ExpectationOutcome(
                expectation=cfg.type,
                column=cfg.kwargs.get("column"),
                success=bool(r.success),
                element_count=plain(result.get("element_count")),
                unexpected_count=plain(result.get("unexpected_count")),
                unexpected_percent=None
                if result.get("unexpected_percent") is None
                else round(float(result["unexpected_percent"]), 4),
                observed_value=observed if isinstance(observed, (int, float, str, bool)) else None,
                failing_ids=ids,
            )
        )
    return ValidationSummary(success=bool(res.success), outcomes=outcomes)
