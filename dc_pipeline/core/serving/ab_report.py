"""Each A/B arm's figures on the predictions whose images have a label by now, with bootstrap intervals.

The business figure is the automation rate (the share of answers routed ``auto_accept``) together with the
error among those auto-accepted answers (the accepted error the threshold was chosen to bound), next to the
overall error. Requests are the resampled unit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dc_pipeline.core.ml.bootstrap import Interval, bootstrap_indices

AB_FIGURES = ("error", "automation_rate", "accepted_error")


def _interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(estimate) or draws.size == 0:
        return Interval(estimate, float("nan"), float("nan"), level)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def arm_figures(labelled: pd.DataFrame, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """``labelled``: answered predictions with ``arm``, ``model_version``, ``predicted_class``, ``routing`` and the
    image's ``label``. One row per arm, model version and figure: ``n`` (labelled answers), ``value``, ``low``,
    ``high``, ``level``."""
    rows = []
    for (arm, version), group in labelled.groupby(["arm", "model_version"], sort=True):
        wrong = (group["predicted_class"].to_numpy() != group["label"].to_numpy()).astype(float)
        accepted = (group["routing"].to_numpy() == "auto_accept").astype(float)
        n = len(group)
        idx = bootstrap_indices(n, resamples, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            accepted_wrong = (wrong * accepted)[idx].sum(axis=1) / accepted[idx].sum(axis=1)
            estimates = {
                "error": wrong.mean(),
                "automation_rate": accepted.mean(),
                "accepted_error": (wrong * accepted).sum() / accepted.sum() if accepted.sum() else float("nan"),
            }
        draws = {
            "error": wrong[idx].mean(axis=1),
            "automation_rate": accepted[idx].mean(axis=1),
            "accepted_error": accepted_wrong,
        }
        for figure in AB_FIGURES:
            interval = _interval(float(estimates[figure]), draws[figure], level)
            rows.append(
                {
                    "arm": arm,
                    "model_version": version,
                    "figure": figure,
                    "n": n,
                    "value": interval.estimate,
                    "low": interval.low,
                    "high": interval.high,
                    "level": level,
                }
            )
    return pd.DataFrame(rows, columns=["arm", "model_version", "figure", "n", "value", "low", "high", "level"])
