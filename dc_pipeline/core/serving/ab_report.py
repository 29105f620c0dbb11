"""Each A/B arm's figures on the predictions whose images have a label by now, with bootstrap intervals.

The business figure is the automation rate (the share of answers routed ``auto_accept``) together with the
error among those auto-accepted answers (the accepted error the threshold was chosen to bound), next to the
overall error. Requests are the resampled unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dc_pipeline.core.ml.bootstrap import Interval

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
        estimates = _figures(wrong, accepted)
        (draws,) = resampled_figures([(wrong, accepted)], resamples, seed)
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


# -- live evidence for the promotion gate ---------------------------------------------------------------
@dataclass(frozen=True)
class LiveComparison:
    """The challenger against the champion on the service's labelled predictions: each figure's difference
    (challenger minus champion) with a bootstrap interval, and how it was drawn."""

    challenger: str
    champion: str
    design: str  # "paired": the same requests scored by both (shadow); "independent": each its own requests
    n_challenger: int
    n_champion: int
    difference: dict[str, Interval]
    challenger_figures: dict[str, float]
    champion_figures: dict[str, float]

    @property
    def sample(self) -> str:
        """What the comparison rests on, for verdicts: design and labelled predictions per model."""
        return f"{self.design}, {self.n_challenger} and {self.n_champion} labelled predictions"

    def as_dict(self) -> dict:
        return {
            "design": self.design,
            "n_challenger": self.n_challenger,
            "n_champion": self.n_champion,
            "challenger": self.challenger_figures,
            "champion": self.champion_figures,
            "difference": {k: v.as_dict() for k, v in self.difference.items()},
        }


def _figures(wrong: np.ndarray, accepted: np.ndarray) -> dict[str, np.ndarray]:
    """Error, automation rate and error among auto-accepted, over the last axis (``[N]`` or ``[R, N]``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "error": wrong.mean(axis=-1),
            "automation_rate": accepted.mean(axis=-1),
            "accepted_error": (wrong * accepted).sum(axis=-1) / accepted.sum(axis=-1),
        }


def resampled_figures(
    outcomes: list[tuple[np.ndarray, np.ndarray]], resamples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Each ``(wrong, accepted)`` pair's figures on the same ``resamples`` bootstrap draws of its rows (the
    pairs have the same rows: a paired resample).

    Every figure depends on the rows only through how many fall in each cell of (wrong, accepted) per model,
    so a resample's cell counts are drawn directly: a multinomial over the cells with the observed shares is
    exactly the distribution of the counts when rows are drawn with replacement. The cost is the number of
    cells per resample, whatever the number of rows."""
    if resamples < 1:
        raise ValueError("at least one bootstrap resample is needed")
    n, models = len(outcomes[0][0]), len(outcomes)
    code = np.zeros(n, np.int64)
    for k, (wrong, accepted) in enumerate(outcomes):
        code += (2 * wrong.astype(np.int64) + accepted.astype(np.int64)) * 4**k
    cells = np.bincount(code, minlength=4**models)
    counts = np.random.default_rng(seed).multinomial(n, cells / n, size=resamples)  # [resamples, cells]
    figures = []
    for k in range(models):
        state = (np.arange(cells.size) // 4**k) % 4  # this model's cell: 2 x wrong + accepted
        wrong, accepted = counts[:, state >= 2].sum(axis=1), counts[:, state % 2 == 1].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            figures.append(
                {
                    "error": wrong / n,
                    "automation_rate": accepted / n,
                    "accepted_error": counts[:, state == 3].sum(axis=1) / accepted,
                }
            )
    return figures


def live_comparison(
    scored: pd.DataFrame,
    challenger: str,
    champion: str,
    min_labelled: int = 100,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> LiveComparison | None:
    """``scored``: the service's predictions whose images have a label (``request_id``, ``model_version``,
    ``predicted_class``, ``routing``, ``label``), answered or shadow. None when either model has fewer than
    ``min_labelled`` of them. When at least ``min_labelled`` requests were scored by both (shadow mode), the
    comparison is paired on those requests; otherwise (a split) each model's requests are resampled apart."""
    min_labelled = max(min_labelled, 1)
    rows = scored.drop_duplicates(["request_id", "model_version"])
    mine, theirs = (rows[rows.model_version == v].set_index("request_id") for v in (challenger, champion))
    if min(len(mine), len(theirs)) < min_labelled:
        return None

    def outcome(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        wrong = (frame["predicted_class"].to_numpy() != frame["label"].to_numpy()).astype(float)
        return wrong, (frame["routing"].to_numpy() == "auto_accept").astype(float)

    shared = mine.index.intersection(theirs.index)
    paired = len(shared) >= min_labelled
    if paired:
        mine, theirs = mine.loc[shared], theirs.loc[shared]
    a, b = outcome(mine), outcome(theirs)
    est_a, est_b = _figures(*a), _figures(*b)
    if paired:
        draws_a, draws_b = resampled_figures([a, b], resamples, seed)
    else:
        (draws_a,), (draws_b,) = resampled_figures([a], resamples, seed), resampled_figures([b], resamples, seed + 1)
    difference = {
        k: _interval(float(est_a[k] - est_b[k]), draws_a[k] - draws_b[k], level)
        for k in ("error", "automation_rate", "accepted_error")
    }
    return LiveComparison(
        challenger,
        champion,
        "paired" if paired else "independent",
        len(mine),
        len(theirs),
        difference,
        {k: float(v) for k, v in est_a.items()},
        {k: float(v) for k, v in est_b.items()},
    )


def evidence_milestone(labelled: int, minimum: int) -> int | None:
    """The largest of ``minimum``, 2 x ``minimum``, 4 x ``minimum``, ... that ``labelled`` predictions reach
    (None below ``minimum``): the points at which the evidence is worth judging again, each once."""
    if minimum < 1:
        raise ValueError("the minimum number of labelled predictions must be at least 1")
    if labelled < minimum:
        return None
    milestone = minimum
    while milestone * 2 <= labelled:
        milestone *= 2
    return milestone
