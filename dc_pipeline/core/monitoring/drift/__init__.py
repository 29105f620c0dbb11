"""Drift of a landing batch against the champion's reference (no Dagster).

``statistics``: the two-sample tests; ``policy``: thresholds, verdict and ``drift_report``; ``render``: the
report as markdown / HTML; the plots live in ``dc_pipeline.core.plots``.
"""

from __future__ import annotations

from dc_pipeline.core.monitoring.drift import policy, render, statistics
from dc_pipeline.core.monitoring.drift.policy import DriftReport, DriftThresholds, drift_report, feature_drift, verdict
from dc_pipeline.core.monitoring.drift.statistics import (
    distribution_drift,
    error_drift,
    holm,
    mmd_test,
    prediction_drift,
    psi,
)
from dc_pipeline.core.plots import drift_plots

__all__ = [
    "policy",
    "render",
    "statistics",
    "DriftReport",
    "DriftThresholds",
    "distribution_drift",
    "drift_plots",
    "drift_report",
    "error_drift",
    "feature_drift",
    "holm",
    "mmd_test",
    "prediction_drift",
    "psi",
    "verdict",
]
