"""The drift verdict: thresholds, the rules that turn the tests of ``statistics`` into none / warn /
drift with reasons, and the report that holds both.

The reference is the training split of the champion model's dataset version (and, for predictions,
the champion's outputs on the test split). Each part of a report is a *family* of tests:

* ``features``   -- per image statistic (``features.STAT_COLUMNS``): two-sample KS (p-value),
  Wasserstein distance / reference std (effect size) and PSI (10 reference-quantile bins). The KS
  p-values are Holm-Bonferroni corrected over the features (``p_adjusted``). A feature is
  ``drifted`` when ``p_adjusted < alpha`` AND (``wasserstein_std > wasserstein_std_drift`` OR
  ``psi > psi_drift``). Family p-value: the smallest ``p_adjusted``.
* ``embeddings`` -- unbiased MMD^2 (RBF kernel, median-heuristic bandwidth) on the champion's
  penultimate-layer embeddings, permutation p-value, reference and batch subsampled (bounded cost).
* ``labels``     -- chi-square test of homogeneity + Jensen-Shannon distance (only if both have labels).
* ``sources``    -- same tests on the source mix. Reported always, but by default only a source
  *absent from the reference* enters the verdict (a landing batch usually comes from one source,
  so its mix always differs from the pooled reference); ``source_mix_warns=True`` adds the test.
* ``predictions`` -- KS on top-class confidence and chi-square/JS on the predicted-class mix
  (batch vs the champion on the test split); family p-value: Holm over the two.
* ``error``      -- labelled batch only: batch error vs test error, one-sided Fisher exact test;
  it counts only when the increase also exceeds ``error_increase_warn`` (else its p is taken as 1).

Verdict rule (``verdict``):

1. The family p-values are Holm-Bonferroni corrected across the families present; a family
   *rejects* when its adjusted p-value is below ``alpha``.
2. ``drift`` when the ``features`` family rejects and either
   (a) the MMD test rejects at ``mmd_alpha`` (its raw permutation p-value) and at least one
       feature is ``drifted``, or
   (b) at least two ``drifted`` features have ``psi > psi_drift``.
3. otherwise ``warn`` when any family rejects, or the batch brings a source (or label) absent
   from the reference;
4. otherwise ``none``.

False alarms: Holm controls the family-wise error under any dependence between tests, and every
``drift``/``warn`` trigger except a new category needs a family rejection, so a fresh sample from the
reference distribution gets a verdict other than ``none`` with probability at most about ``alpha`` (1 %;
"about" because the chi-square and asymptotic KS p-values are approximations, and a category rare in
the reference can be absent from it by chance). On digits (800 reference vs 200 batch images) 1 of 160
fresh batches got ``warn`` and none ``drift``.
Effect-size thresholds (Wasserstein, PSI, JS) never trigger on their own: PSI and JS are biased upwards
in small samples (no change at all gives PSI about (bins - 1)(1/n_ref + 1/n_cur), about 0.06 for 200 vs
800, and a label JS distance around 0.1 for 10 classes), so they only grade effects whose test already
rejected; ``psi_warn`` and ``js_warn`` are recorded as crossed/not crossed in ``rows()``. The MMD
permutation p-value cannot go below ``1 / (n_permutations + 1)``, so ``drift_report`` uses 1,000
permutations for the embeddings family to stay below ``alpha / n_families``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dc_pipeline.core.monitoring.drift.render import report_html, report_markdown
from dc_pipeline.core.monitoring.drift.statistics import (
    distribution_drift,
    error_drift,
    feature_statistics,
    holm,
    mmd_test,
    prediction_drift,
)

__all__ = ["DriftReport", "DriftThresholds", "drift_report", "feature_drift", "verdict"]


@dataclass(frozen=True)
class DriftThresholds:
    """Decision thresholds (see the module docstring for how they combine)."""

    alpha: float = 0.01  # on Holm-corrected p-values
    psi_warn: float = 0.1  # recorded only (PSI's small-sample bias, see module docstring)
    psi_drift: float = 0.25
    wasserstein_std_drift: float = 0.5
    js_warn: float = 0.1  # recorded only (JS's small-sample bias)
    mmd_alpha: float = 0.01  # raw MMD permutation p-value, drift rule (a)
    error_increase_warn: float = 0.05  # absolute increase of the batch error over the test error
    source_mix_warns: bool = False  # whether the source-mix chi-square joins the verdict families

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_drift(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    columns: Iterable[str] | None = None,
    thresholds: DriftThresholds | None = None,
) -> pd.DataFrame:
    """``feature_statistics`` plus ``drifted``: ``p_adjusted < alpha`` and (``wasserstein_std >
    wasserstein_std_drift`` or ``psi > psi_drift``)."""
    t = thresholds or DriftThresholds()
    table = feature_statistics(ref, cur, columns)
    large = (table["wasserstein_std"] > t.wasserstein_std_drift) | (table["psi"] > t.psi_drift)
    table["drifted"] = ((table["p_adjusted"] < t.alpha) & large).astype(bool)
    return table


# --------------------------------------------------------------------------- verdict


def _families(parts: dict[str, Any], t: DriftThresholds) -> dict[str, dict[str, Any]]:
    fam: dict[str, float] = {}
    features = parts.get("features")
    if features is not None and len(features):
        fam["features"] = float(features["p_adjusted"].min())
    if parts.get("embeddings") is not None:
        fam["embeddings"] = float(parts["embeddings"]["p_value"])
    if parts.get("labels") is not None:
        fam["labels"] = float(parts["labels"]["p_value"])
    if parts.get("sources") is not None and t.source_mix_warns:
        fam["sources"] = float(parts["sources"]["p_value"])
    if parts.get("predictions") is not None:
        fam["predictions"] = float(parts["predictions"]["p_value"])
    if parts.get("error") is not None:
        e = parts["error"]
        fam["error"] = float(e["p_value"]) if e["increase"] > t.error_increase_warn else 1.0
    adjusted = holm(list(fam.values()))
    return {k: {"p_value": p, "p_adjusted": a, "rejected": a < t.alpha} for (k, p), a in zip(fam.items(), adjusted)}


def verdict(parts: dict[str, Any], thresholds: DriftThresholds | None = None) -> tuple[str, list[str]]:
    """``("none" | "warn" | "drift", reasons)`` from report parts (rule: module docstring).

    ``parts`` keys (any may be missing/None): ``features`` (``feature_drift`` table), ``embeddings``
    (``mmd_test``), ``labels`` / ``sources`` (``distribution_drift``), ``predictions``
    (``prediction_drift``), ``error`` (``error_drift``).
    """
    t = thresholds or DriftThresholds()
    fam = _families(parts, t)
    reasons: list[str] = []
    features, mmd = parts.get("features"), parts.get("embeddings")
    level = "none"

    if fam.get("features", {}).get("rejected"):
        drifted = features[features["drifted"]]
        desc = ", ".join(
            f"{name} (W/std {r.wasserstein_std:.2f}, PSI {r.psi:.2f}, p_adj {r.p_adjusted:.1e})"
            for name, r in drifted.sort_values("wasserstein_std", ascending=False).iterrows()
        )
        mmd_rejects = mmd is not None and mmd["p_value"] < t.mmd_alpha
        high_psi = int((drifted["psi"] > t.psi_drift).sum())
        if len(drifted) and mmd_rejects:
            level = "drift"
            reasons.append(
                f"drift: MMD on embeddings rejects (p {mmd['p_value']:.3g} < {t.mmd_alpha}) and "
                f"{len(drifted)} image feature(s) drifted: {desc}"
            )
        elif high_psi >= 2:
            level = "drift"
            reasons.append(f"drift: {high_psi} drifted image features with PSI > {t.psi_drift}: {desc}")
    for name, f in fam.items():
        if not f["rejected"]:
            continue
        if level == "none":
            level = "warn"
        reasons.append(_family_reason(name, f, parts, t))
    for part, what in (("sources", "source"), ("labels", "label")):
        new = (parts.get(part) or {}).get("new_categories") or []
        if new:
            level = "warn" if level == "none" else level
            reasons.append(f"{what}(s) absent from the reference: {', '.join(map(str, new))}")
    return level, reasons


def _family_reason(name: str, f: dict[str, Any], parts: dict[str, Any], t: DriftThresholds) -> str:
    head = f"{name}: p {f['p_value']:.3g} (Holm over families {f['p_adjusted']:.3g}) < {t.alpha}"
    if name == "features":
        tab = parts["features"]
        sig = tab[tab["p_adjusted"] < t.alpha].index.tolist()
        return f"{head}; significant: {', '.join(sig)}"
    if name == "embeddings":
        return f"{head}; MMD^2 {parts['embeddings']['mmd2']:.4g}"
    if name in ("labels", "sources"):
        return f"{head}; JS distance {parts[name]['js_distance']:.3f} (js_warn {t.js_warn})"
    if name == "predictions":
        p = parts["predictions"]
        return (
            f"{head}; mean confidence {p['mean_confidence_ref']:.3f} -> {p['mean_confidence_cur']:.3f}, "
            f"predicted-class JS {p['classes']['js_distance']:.3f}"
        )
    e = parts["error"]
    return f"{head}; error {e['test_error']:.3f} (test) -> {e['batch_error']:.3f} (batch)"


# --------------------------------------------------------------------------- the report


def _row(
    section: str,
    test: str,
    feature: str,
    statistic: str,
    value: Any,
    p_value: float | None = None,
    threshold: float | None = None,
    crossed: bool = False,
    p_adjusted: float | None = None,
) -> dict:
    v = float(value) if value is not None else float("nan")
    return {
        "section": section,
        "test": test,
        "feature": str(feature),
        "statistic": statistic,
        "value": v,
        "p_value": None if p_value is None else float(p_value),
        "p_adjusted": None if p_adjusted is None else float(p_adjusted),
        "threshold": None if threshold is None else float(threshold),
        "crossed": bool(crossed),
    }


@dataclass
class DriftReport:
    """Everything one drift check computed; ``rows()`` for a history table, ``markdown()``/``html()``."""

    features: pd.DataFrame
    embeddings: dict[str, Any] | None
    labels: dict[str, Any] | None
    sources: dict[str, Any] | None
    predictions: dict[str, Any] | None
    error: dict[str, Any] | None
    families: dict[str, dict[str, Any]]
    verdict: str
    reasons: list[str]
    thresholds: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "embeddings": self.embeddings,
            "labels": self.labels,
            "sources": self.sources,
            "predictions": self.predictions,
            "error": self.error,
        }

    def rows(self) -> list[dict[str, Any]]:
        """Long format, one row per value, crossed or not: section, test, feature, statistic, value,
        p_value, p_adjusted, threshold, crossed."""
        t = DriftThresholds(**self.thresholds)
        out: list[dict] = []
        for name, r in self.features.iterrows():
            out += [
                _row(
                    "features",
                    "ks",
                    name,
                    "ks_statistic",
                    r.ks_statistic,
                    r.p_value,
                    t.alpha,
                    r.p_adjusted < t.alpha,
                    r.p_adjusted,
                ),
                _row(
                    "features",
                    "wasserstein",
                    name,
                    "wasserstein_std",
                    r.wasserstein_std,
                    threshold=t.wasserstein_std_drift,
                    crossed=r.wasserstein_std > t.wasserstein_std_drift,
                ),
                _row("features", "psi", name, "psi_warn", r.psi, threshold=t.psi_warn, crossed=r.psi > t.psi_warn),
                _row("features", "psi", name, "psi_drift", r.psi, threshold=t.psi_drift, crossed=r.psi > t.psi_drift),
                _row("features", "summary", name, "ref_mean", r.ref_mean),
                _row("features", "summary", name, "cur_mean", r.cur_mean),
                _row("features", "summary", name, "drifted", float(r.drifted), crossed=bool(r.drifted)),
            ]
        if self.embeddings is not None:
            e = self.embeddings
            out += [
                _row("embeddings", "mmd", "", "mmd2", e["mmd2"], e["p_value"], t.mmd_alpha, e["p_value"] < t.mmd_alpha)
            ]
            out += [
                _row("embeddings", "mmd", "", k, e[k])
                for k in ("bandwidth", "n_ref_used", "n_cur_used", "n_permutations")
            ]
        for section in ("labels", "sources"):
            d = getattr(self, section)
            if d is not None:
                out += _distribution_rows(section, "", d, t)
        if self.predictions is not None:
            p = self.predictions
            out += [
                _row(
                    "predictions",
                    "ks",
                    "confidence",
                    "ks_statistic",
                    p["confidence_ks"],
                    p["confidence_p_value"],
                    t.alpha,
                    p["confidence_p_value"] < t.alpha,
                ),
                _row("predictions", "summary", "confidence", "mean_confidence_ref", p["mean_confidence_ref"]),
                _row("predictions", "summary", "confidence", "mean_confidence_cur", p["mean_confidence_cur"]),
            ] + _distribution_rows("predictions", "predicted_class:", p["classes"], t)
        if self.error is not None:
            e = self.error
            out += [
                _row(
                    "error",
                    "fisher",
                    "",
                    "increase",
                    e["increase"],
                    e["p_value"],
                    t.error_increase_warn,
                    e["increase"] > t.error_increase_warn,
                ),
                _row("error", "summary", "", "test_error", e["test_error"]),
                _row("error", "summary", "", "batch_error", e["batch_error"]),
            ]
        for name, f in self.families.items():
            out.append(
                _row(
                    "verdict",
                    "family",
                    name,
                    "family_p_value",
                    f["p_value"],
                    f["p_value"],
                    t.alpha,
                    f["rejected"],
                    f["p_adjusted"],
                )
            )
        level = {"none": 0, "warn": 1, "drift": 2}[self.verdict]
        out.append(_row("verdict", "verdict", self.verdict, "level", level, crossed=level > 0))
        return out

    def markdown(self) -> str:
        """A readable report."""
        return report_markdown(self)

    def html(self, plots: dict[str, bytes] | None = None) -> str:
        """A standalone HTML page: verdict, reasons, tables and the given PNGs inlined as base64."""
        return report_html(self, plots)


def _distribution_rows(section: str, prefix: str, d: dict[str, Any], t: DriftThresholds) -> list[dict]:
    out = [
        _row(section, "chi2", f"{prefix}all", "chi2", d["chi2"], d["p_value"], t.alpha, d["p_value"] < t.alpha),
        _row(
            section,
            "js",
            f"{prefix}all",
            "js_distance",
            d["js_distance"],
            threshold=t.js_warn,
            crossed=d["js_distance"] > t.js_warn,
        ),
    ]
    for c, rs, cs in zip(d["categories"], d["ref_share"], d["cur_share"]):
        out += [
            _row(section, "share", f"{prefix}{c}", "ref_share", rs),
            _row(section, "share", f"{prefix}{c}", "cur_share", cs, crossed=c in d["new_categories"]),
        ]
    return out


def drift_report(
    ref_stats: pd.DataFrame,
    cur_stats: pd.DataFrame,
    ref_emb: np.ndarray | None = None,
    cur_emb: np.ndarray | None = None,
    ref_probs: np.ndarray | None = None,
    cur_probs: np.ndarray | None = None,
    ref_labels: Sequence[int] | None = None,
    cur_labels: Sequence[int] | None = None,
    ref_sources: Sequence[str] | None = None,
    cur_sources: Sequence[str] | None = None,
    test_labels: Sequence[int] | None = None,
    test_error: float | None = None,
    thresholds: DriftThresholds | None = None,
    columns: Sequence[str] | None = None,
    max_ref: int = 1000,
    max_cur: int = 500,
    mmd_permutations: int = 1000,
    seed: int = 0,
) -> DriftReport:
    """Run every test the inputs allow and the verdict.

    ``ref_*``: the reference (training split stats, embeddings, labels, sources); ``ref_probs`` and
    ``test_labels``/``test_error``: the champion on the test split; ``cur_*``: the batch. Missing inputs
    skip their part (``cur_labels`` may be None or hold None for unlabelled images). The error part needs
    ``cur_labels``, ``cur_probs`` and the test error (``test_error``, or computed from ``test_labels`` and
    ``ref_probs``); the test size for its Fisher test is ``len(ref_probs)`` (else ``len(test_labels)``).
    """
    from dc_pipeline.core.data.features import STAT_COLUMNS

    t = thresholds or DriftThresholds()
    if columns is None:
        columns = [c for c in STAT_COLUMNS if c in ref_stats.columns and c in cur_stats.columns]
    parts: dict[str, Any] = {"features": feature_drift(ref_stats, cur_stats, columns, t)}
    parts["embeddings"] = (
        mmd_test(ref_emb, cur_emb, max_ref, max_cur, mmd_permutations, seed)
        if ref_emb is not None and cur_emb is not None
        else None
    )
    labels = distribution_drift(ref_labels, cur_labels) if ref_labels is not None and cur_labels is not None else None
    parts["labels"] = labels if labels is not None and labels["n_cur"] > 0 else None  # unlabelled batch: skip
    parts["sources"] = (
        distribution_drift(ref_sources, cur_sources) if ref_sources is not None and cur_sources is not None else None
    )
    parts["predictions"] = (
        prediction_drift(ref_probs, cur_probs) if ref_probs is not None and cur_probs is not None else None
    )
    parts["error"] = None
    if cur_labels is not None and cur_probs is not None:
        y = pd.to_numeric(pd.Series(list(cur_labels), dtype=object), errors="coerce").to_numpy(np.float64)
        labelled = np.isfinite(y)  # unlabelled entries (None/NaN) are left out
        if test_error is None and test_labels is not None and ref_probs is not None:
            test_error = float(np.mean(np.asarray(ref_probs).argmax(axis=1) != np.asarray(test_labels)))
        if test_error is not None and labelled.any():
            n_test = len(ref_probs) if ref_probs is not None else (len(test_labels) if test_labels is not None else 0)
            predicted = np.asarray(cur_probs).argmax(axis=1)[labelled]
            batch_error = float(np.mean(predicted != y[labelled]))
            parts["error"] = error_drift(test_error, n_test, batch_error, int(labelled.sum()))
    level, reasons = verdict(parts, t)
    return DriftReport(**parts, families=_families(parts, t), verdict=level, reasons=reasons, thresholds=t.as_dict())
