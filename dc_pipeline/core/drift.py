"""Drift statistics for a landing batch against a reference (pure numpy/scipy; no Dagster).

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

import base64
import html as _html
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

__all__ = [
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

PSI_BINS = 10
PSI_EPS = 1e-4


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


# --------------------------------------------------------------------------- small helpers


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN counts as 1)."""
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64), nan=1.0)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    out = np.empty(m)
    out[order] = adj
    return [float(v) for v in out]


def _clean(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def _py(value: Any) -> Any:
    """numpy scalars to plain Python."""
    return value.item() if isinstance(value, np.generic) else value


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein-1 distance (area between the two empirical CDFs)."""
    a, b = np.sort(a), np.sort(b)
    values = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, values[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, values[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(values)))


def psi(ref: np.ndarray, cur: np.ndarray, bins: int = PSI_BINS, eps: float = PSI_EPS) -> float:
    """Population stability index on ``bins`` reference-quantile bins (ties merge bins).

    Shares are smoothed as ``(share + eps) / (1 + n_bins * eps)`` so empty bins stay finite.
    """
    ref, cur = _clean(ref), _clean(cur)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    n_bins = len(edges) + 1
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=n_bins) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=n_bins) / len(cur)
    r, c = (r + eps) / (1 + n_bins * eps), (c + eps) / (1 + n_bins * eps)
    return float(np.sum((c - r) * np.log(c / r)))


# --------------------------------------------------------------------------- the tests


def feature_drift(ref: pd.DataFrame, cur: pd.DataFrame, columns: Iterable[str] | None = None,
                  thresholds: DriftThresholds | None = None) -> pd.DataFrame:
    """Per feature: KS p-value, Holm-adjusted p (over the features), Wasserstein/ref std, PSI, drifted.

    Index: the feature names. Columns: ``ks_statistic, p_value, p_adjusted, wasserstein_std, psi,
    ref_mean, cur_mean, n_ref, n_cur, drifted``. A constant reference feature is normalised by 1
    instead of its zero std.
    """
    t = thresholds or DriftThresholds()
    columns = list(columns) if columns is not None else [c for c in ref.columns if c in cur.columns]
    rows = []
    for col in columns:
        r, c = _clean(ref[col]), _clean(cur[col])
        if len(r) == 0 or len(c) == 0:
            rows.append(dict(feature=col, ks_statistic=np.nan, p_value=1.0, wasserstein_std=np.nan, psi=np.nan,
                             ref_mean=np.nan, cur_mean=np.nan, n_ref=len(r), n_cur=len(c)))
            continue
        ks = stats.ks_2samp(r, c)
        sd = float(r.std())
        rows.append(dict(
            feature=col, ks_statistic=float(ks.statistic), p_value=float(ks.pvalue),
            wasserstein_std=_wasserstein(r, c) / (sd if sd > 1e-12 else 1.0),
            psi=psi(r, c), ref_mean=float(r.mean()), cur_mean=float(c.mean()), n_ref=len(r), n_cur=len(c)))
    table = pd.DataFrame(rows, columns=["feature", "ks_statistic", "p_value", "wasserstein_std", "psi",
                                        "ref_mean", "cur_mean", "n_ref", "n_cur"]).set_index("feature")
    table.insert(2, "p_adjusted", holm(table["p_value"].tolist()))
    large = (table["wasserstein_std"] > t.wasserstein_std_drift) | (table["psi"] > t.psi_drift)
    table["drifted"] = ((table["p_adjusted"] < t.alpha) & large).astype(bool)
    return table


def distribution_drift(ref_values: Iterable[Any], cur_values: Iterable[Any],
                       categories: Sequence[Any] | None = None) -> dict[str, Any]:
    """Chi-square test of homogeneity (2 x K table) and Jensen-Shannon distance (base 2).

    ``categories`` fixes the order (default: every value seen, sorted); categories empty in both samples
    are dropped; values outside ``categories`` and missing values (None/NaN) are ignored. Where chi-square
    is undefined (fewer than two categories left, e.g. a single-category reference and batch, or an empty
    sample) ``chi2 = 0`` and ``p_value = 1.0``. Yates' correction applies when there are two categories
    (scipy's default). ``new_categories``: seen in the batch, not in the reference.
    """
    def counts(values: Iterable[Any]) -> dict[Any, int]:
        if not isinstance(values, (np.ndarray, pd.Series, list, tuple)):
            values = list(values)
        vc = pd.Series(values, dtype=object).value_counts()
        return {_py(k): int(v) for k, v in vc.items()}

    ref_counts, cur_counts = counts(ref_values), counts(cur_values)
    if categories is None:
        categories = sorted(set(ref_counts) | set(cur_counts), key=lambda v: (str(type(v)), v))
    cats = [_py(c) for c in categories]
    rc = np.array([ref_counts.get(c, 0) for c in cats], dtype=np.int64)
    cc = np.array([cur_counts.get(c, 0) for c in cats], dtype=np.int64)
    keep = (rc + cc) > 0
    cats = [c for c, k in zip(cats, keep) if k]
    rc, cc = rc[keep], cc[keep]
    n_ref, n_cur = int(rc.sum()), int(cc.sum())
    chi2, dof, p = 0.0, 0, 1.0
    if len(cats) >= 2 and n_ref > 0 and n_cur > 0:
        res = stats.chi2_contingency(np.stack([rc, cc]))
        chi2, dof, p = float(res.statistic), int(res.dof), float(res.pvalue)
    ref_share = (rc / n_ref) if n_ref else np.zeros(len(cats))
    cur_share = (cc / n_cur) if n_cur else np.zeros(len(cats))
    js = float(jensenshannon(ref_share, cur_share, base=2)) if n_ref and n_cur else float("nan")
    return {
        "categories": cats, "ref_counts": [int(v) for v in rc], "cur_counts": [int(v) for v in cc],
        "ref_share": [float(v) for v in ref_share], "cur_share": [float(v) for v in cur_share],
        "n_ref": n_ref, "n_cur": n_cur, "chi2": chi2, "dof": dof, "p_value": p,
        "js_distance": js,
        "new_categories": [c for c, r, k in zip(cats, rc, cc) if r == 0 and k > 0],
    }


def _pairwise_sq(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def mmd_test(ref_emb: np.ndarray, cur_emb: np.ndarray, max_ref: int = 1000, max_cur: int = 500,
             n_permutations: int = 200, seed: int = 0) -> dict[str, Any]:
    """Unbiased MMD^2 with an RBF kernel and a permutation p-value, on seeded subsamples.

    Bandwidth ``sigma``: the median pairwise distance of the pooled subsample (kernel
    ``exp(-d^2 / (2 sigma^2))``). The pooled kernel matrix is computed once; each permutation is a 0/1
    membership vector ``z`` and all of them are evaluated with one matrix product (``Z @ K``).
    p-value: ``(1 + #{perm >= observed}) / (1 + n_permutations)``.
    """
    rng = np.random.default_rng(seed)
    x, y = np.asarray(ref_emb), np.asarray(cur_emb)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if len(x) > max_ref:
        x = x[np.sort(rng.choice(len(x), max_ref, replace=False))]
    if len(y) > max_cur:
        y = y[np.sort(rng.choice(len(y), max_cur, replace=False))]
    m, n = len(x), len(y)
    out = {"mmd2": 0.0, "p_value": 1.0, "n_ref_used": m, "n_cur_used": n, "bandwidth": float("nan"),
           "n_permutations": int(n_permutations)}
    if m < 2 or n < 2:
        return out
    pooled = np.concatenate([x, y]).astype(np.float64)
    d2 = _pairwise_sq(pooled)
    med = float(np.median(d2[np.triu_indices(m + n, 1)]))
    if med <= 0:
        positive = d2[d2 > 0]
        med = float(positive.mean()) if positive.size else 1.0
    kernel = np.exp(d2 * (-0.5 / med))
    np.fill_diagonal(kernel, 0.0)  # unbiased: no i == j terms
    total, row = float(kernel.sum()), kernel.sum(axis=1)

    z = np.zeros((n_permutations + 1, m + n))
    z[0, :m] = 1.0
    if n_permutations:
        z[1:] = rng.permuted(np.broadcast_to(z[0], (n_permutations, m + n)), axis=1)
    s_xx = np.einsum("pi,pi->p", z @ kernel, z)
    s_x = z @ row  # sum over x of all kernel entries in the row
    s_xy = s_x - s_xx
    s_yy = total - 2.0 * s_x + s_xx
    mmd2 = s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2.0 * s_xy / (m * n)
    observed = float(mmd2[0])
    exceed = int(np.sum(mmd2[1:] >= observed - 1e-12 * max(1.0, abs(observed))))
    out.update(mmd2=observed, p_value=(1 + exceed) / (1 + n_permutations), bandwidth=math.sqrt(med))
    return out


def prediction_drift(ref_probs: np.ndarray, cur_probs: np.ndarray) -> dict[str, Any]:
    """KS on the top-class confidence and chi-square/JS on the predicted-class mix.

    ``ref_probs``: the champion on the test split ``[N, K]``; ``cur_probs``: on the batch ``[M, K]``.
    ``p_value``: Holm over the two tests (the family's p-value).
    """
    rp, cp = np.asarray(ref_probs, np.float64), np.asarray(cur_probs, np.float64)
    rconf, cconf = rp.max(axis=1), cp.max(axis=1)
    if len(rconf) and len(cconf):
        ks = stats.ks_2samp(rconf, cconf)
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    else:
        ks_stat, ks_p = 0.0, 1.0
    classes = distribution_drift(rp.argmax(axis=1), cp.argmax(axis=1), categories=range(rp.shape[1]))
    return {
        "confidence_ks": ks_stat, "confidence_p_value": ks_p,
        "mean_confidence_ref": float(rconf.mean()) if len(rconf) else float("nan"),
        "mean_confidence_cur": float(cconf.mean()) if len(cconf) else float("nan"),
        "classes": classes, "p_value": min(holm([ks_p, classes["p_value"]])),
    }


def error_drift(test_error: float, n_test: int, batch_error: float, n_batch: int) -> dict[str, Any]:
    """Batch error vs test error: increase and one-sided Fisher exact p-value (batch worse)."""
    e_t, e_b = int(round(test_error * n_test)), int(round(batch_error * n_batch))
    p = 1.0
    if n_test > 0 and n_batch > 0:
        p = float(stats.fisher_exact([[e_b, n_batch - e_b], [e_t, n_test - e_t]], alternative="greater").pvalue)
    return {"test_error": float(test_error), "batch_error": float(batch_error), "n_test": int(n_test),
            "n_batch": int(n_batch), "increase": float(batch_error - test_error), "p_value": p}


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
    return {k: {"p_value": p, "p_adjusted": a, "rejected": a < t.alpha}
            for (k, p), a in zip(fam.items(), adjusted)}


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
        desc = ", ".join(f"{name} (W/std {r.wasserstein_std:.2f}, PSI {r.psi:.2f}, p_adj {r.p_adjusted:.1e})"
                         for name, r in drifted.sort_values("wasserstein_std", ascending=False).iterrows())
        mmd_rejects = mmd is not None and mmd["p_value"] < t.mmd_alpha
        high_psi = int((drifted["psi"] > t.psi_drift).sum())
        if len(drifted) and mmd_rejects:
            level = "drift"
            reasons.append(f"drift: MMD on embeddings rejects (p {mmd['p_value']:.3g} < {t.mmd_alpha}) and "
                           f"{len(drifted)} image feature(s) drifted: {desc}")
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
        return (f"{head}; mean confidence {p['mean_confidence_ref']:.3f} -> {p['mean_confidence_cur']:.3f}, "
                f"predicted-class JS {p['classes']['js_distance']:.3f}")
    e = parts["error"]
    return f"{head}; error {e['test_error']:.3f} (test) -> {e['batch_error']:.3f} (batch)"


# --------------------------------------------------------------------------- the report


def _row(section: str, test: str, feature: str, statistic: str, value: Any, p_value: float | None = None,
         threshold: float | None = None, crossed: bool = False, p_adjusted: float | None = None) -> dict:
    v = float(value) if value is not None else float("nan")
    return {"section": section, "test": test, "feature": str(feature), "statistic": statistic, "value": v,
            "p_value": None if p_value is None else float(p_value),
            "p_adjusted": None if p_adjusted is None else float(p_adjusted),
            "threshold": None if threshold is None else float(threshold), "crossed": bool(crossed)}


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
        return {"features": self.features, "embeddings": self.embeddings, "labels": self.labels,
                "sources": self.sources, "predictions": self.predictions, "error": self.error}

    def rows(self) -> list[dict[str, Any]]:
        """Long format, one row per value, crossed or not: section, test, feature, statistic, value,
        p_value, p_adjusted, threshold, crossed."""
        t = DriftThresholds(**self.thresholds)
        out: list[dict] = []
        for name, r in self.features.iterrows():
            out += [
                _row("features", "ks", name, "ks_statistic", r.ks_statistic, r.p_value, t.alpha,
                     r.p_adjusted < t.alpha, r.p_adjusted),
                _row("features", "wasserstein", name, "wasserstein_std", r.wasserstein_std,
                     threshold=t.wasserstein_std_drift, crossed=r.wasserstein_std > t.wasserstein_std_drift),
                _row("features", "psi", name, "psi_warn", r.psi, threshold=t.psi_warn, crossed=r.psi > t.psi_warn),
                _row("features", "psi", name, "psi_drift", r.psi, threshold=t.psi_drift, crossed=r.psi > t.psi_drift),
                _row("features", "summary", name, "ref_mean", r.ref_mean),
                _row("features", "summary", name, "cur_mean", r.cur_mean),
                _row("features", "summary", name, "drifted", float(r.drifted), crossed=bool(r.drifted)),
            ]
        if self.embeddings is not None:
            e = self.embeddings
            out += [_row("embeddings", "mmd", "", "mmd2", e["mmd2"], e["p_value"], t.mmd_alpha,
                         e["p_value"] < t.mmd_alpha)]
            out += [_row("embeddings", "mmd", "", k, e[k]) for k in ("bandwidth", "n_ref_used", "n_cur_used",
                                                                     "n_permutations")]
        for section in ("labels", "sources"):
            d = getattr(self, section)
            if d is not None:
                out += _distribution_rows(section, "", d, t)
        if self.predictions is not None:
            p = self.predictions
            out += [
                _row("predictions", "ks", "confidence", "ks_statistic", p["confidence_ks"], p["confidence_p_value"],
                     t.alpha, p["confidence_p_value"] < t.alpha),
                _row("predictions", "summary", "confidence", "mean_confidence_ref", p["mean_confidence_ref"]),
                _row("predictions", "summary", "confidence", "mean_confidence_cur", p["mean_confidence_cur"]),
            ] + _distribution_rows("predictions", "predicted_class:", p["classes"], t)
        if self.error is not None:
            e = self.error
            out += [
                _row("error", "fisher", "", "increase", e["increase"], e["p_value"], t.error_increase_warn,
                     e["increase"] > t.error_increase_warn),
                _row("error", "summary", "", "test_error", e["test_error"]),
                _row("error", "summary", "", "batch_error", e["batch_error"]),
            ]
        for name, f in self.families.items():
            out.append(_row("verdict", "family", name, "family_p_value", f["p_value"], f["p_value"], t.alpha,
                            f["rejected"], f["p_adjusted"]))
        level = {"none": 0, "warn": 1, "drift": 2}[self.verdict]
        out.append(_row("verdict", "verdict", self.verdict, "level", level, crossed=level > 0))
        return out

    def markdown(self) -> str:
        """A readable report."""
        t = self.thresholds
        lines = [f"# Drift report: **{self.verdict}**", ""]
        lines += [f"- {r}" for r in self.reasons] or ["- no test family rejected"]
        lines += ["", "## Image features", "", _md_table(_feature_display(self.features))]
        if self.embeddings is not None:
            e = self.embeddings
            lines += ["", "## Embeddings (MMD)", "",
                      f"MMD^2 = {e['mmd2']:.4g}, permutation p = {e['p_value']:.4g} ({e['n_permutations']} "
                      f"permutations), bandwidth {e['bandwidth']:.3g}, subsample {e['n_ref_used']} ref / "
                      f"{e['n_cur_used']} batch"]
        for title, d in (("Labels", self.labels), ("Sources", self.sources)):
            if d is not None:
                lines += ["", f"## {title}", "", _distribution_summary(d), "", _md_table(_distribution_frame(d))]
        if self.predictions is not None:
            p = self.predictions
            lines += ["", "## Predictions", "",
                      f"confidence KS {p['confidence_ks']:.3f} (p {p['confidence_p_value']:.3g}); mean confidence "
                      f"{p['mean_confidence_ref']:.3f} (test) -> {p['mean_confidence_cur']:.3f} (batch); "
                      f"predicted classes: {_distribution_summary(p['classes'])}"]
        if self.error is not None:
            e = self.error
            lines += ["", "## Error", "", f"test {e['test_error']:.3f} (n={e['n_test']}) -> batch "
                      f"{e['batch_error']:.3f} (n={e['n_batch']}), increase {e['increase']:+.3f}, "
                      f"one-sided Fisher p {e['p_value']:.3g}"]
        fam = pd.DataFrame(self.families).T
        lines += ["", "## Test families (Holm across families)", "", _md_table(fam) if len(fam) else "(none)",
                  "", "## Thresholds", "", ", ".join(f"{k}={v}" for k, v in t.items())]
        return "\n".join(lines) + "\n"

    def html(self, plots: dict[str, bytes] | None = None) -> str:
        """A standalone HTML page: verdict, reasons, tables and the given PNGs inlined as base64."""
        esc = _html.escape
        body = [f"<h1>Drift report: <span class='{esc(self.verdict)}'>{esc(self.verdict)}</span></h1>", "<ul>"]
        body += [f"<li>{esc(r)}</li>" for r in self.reasons] or ["<li>no test family rejected</li>"]
        body += ["</ul>"]
        for name, png in (plots or {}).items():
            body.append(f"<figure><img src=\"data:image/png;base64,{base64.b64encode(png).decode()}\" "
                        f"alt=\"{esc(name)}\"><figcaption>{esc(name)}</figcaption></figure>")
        body += ["<h2>Image features</h2>", _feature_display(self.features).to_html(float_format="%.4g")]
        for title, d in (("Labels", self.labels), ("Sources", self.sources)):
            if d is not None:
                body += [f"<h2>{title}</h2><p>{esc(_distribution_summary(d))}</p>",
                         _distribution_frame(d).to_html(float_format="%.4g")]
        body += ["<h2>All values</h2>", pd.DataFrame(self.rows()).to_html(index=False, float_format="%.4g")]
        style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
                 "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}.drift{color:#b00}"
                 ".warn{color:#b60}.none{color:#080}img{max-width:100%}")
        return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Drift report</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _distribution_rows(section: str, prefix: str, d: dict[str, Any], t: DriftThresholds) -> list[dict]:
    out = [_row(section, "chi2", f"{prefix}all", "chi2", d["chi2"], d["p_value"], t.alpha, d["p_value"] < t.alpha),
           _row(section, "js", f"{prefix}all", "js_distance", d["js_distance"], threshold=t.js_warn,
                crossed=d["js_distance"] > t.js_warn)]
    for c, rs, cs in zip(d["categories"], d["ref_share"], d["cur_share"]):
        out += [_row(section, "share", f"{prefix}{c}", "ref_share", rs),
                _row(section, "share", f"{prefix}{c}", "cur_share", cs,
                     crossed=c in d["new_categories"])]
    return out


def _feature_display(table: pd.DataFrame) -> pd.DataFrame:
    return table[["ks_statistic", "p_value", "p_adjusted", "wasserstein_std", "psi", "ref_mean", "cur_mean",
                  "drifted"]]


def _distribution_frame(d: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"ref_share": d["ref_share"], "cur_share": d["cur_share"], "ref_count": d["ref_counts"],
                         "cur_count": d["cur_counts"]}, index=pd.Index([str(c) for c in d["categories"]]))


def _distribution_summary(d: dict[str, Any]) -> str:
    new = f"; new: {', '.join(map(str, d['new_categories']))}" if d["new_categories"] else ""
    return (f"chi2 {d['chi2']:.2f} (dof {d['dof']}, p {d['p_value']:.3g}), JS distance {d['js_distance']:.3f}, "
            f"n {d['n_ref']} ref / {d['n_cur']} batch{new}")


def _md_table(frame: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v)

    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [fmt(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def drift_report(ref_stats: pd.DataFrame, cur_stats: pd.DataFrame,
                 ref_emb: np.ndarray | None = None, cur_emb: np.ndarray | None = None,
                 ref_probs: np.ndarray | None = None, cur_probs: np.ndarray | None = None,
                 ref_labels: Sequence[int] | None = None, cur_labels: Sequence[int] | None = None,
                 ref_sources: Sequence[str] | None = None, cur_sources: Sequence[str] | None = None,
                 test_labels: Sequence[int] | None = None, test_error: float | None = None,
                 thresholds: DriftThresholds | None = None, columns: Sequence[str] | None = None,
                 max_ref: int = 1000, max_cur: int = 500, mmd_permutations: int = 1000,
                 seed: int = 0) -> DriftReport:
    """Run every test the inputs allow and the verdict.

    ``ref_*``: the reference (training split stats, embeddings, labels, sources); ``ref_probs`` and
    ``test_labels``/``test_error``: the champion on the test split; ``cur_*``: the batch. Missing inputs
    skip their part (``cur_labels`` may be None or hold None for unlabelled images). The error part needs
    ``cur_labels``, ``cur_probs`` and the test error (``test_error``, or computed from ``test_labels`` and
    ``ref_probs``); the test size for its Fisher test is ``len(ref_probs)`` (else ``len(test_labels)``).
    """
    from dc_pipeline.core.features import STAT_COLUMNS

    t = thresholds or DriftThresholds()
    if columns is None:
        columns = [c for c in STAT_COLUMNS if c in ref_stats.columns and c in cur_stats.columns]
    parts: dict[str, Any] = {"features": feature_drift(ref_stats, cur_stats, columns, t)}
    parts["embeddings"] = (mmd_test(ref_emb, cur_emb, max_ref, max_cur, mmd_permutations, seed)
                           if ref_emb is not None and cur_emb is not None else None)
    labels = distribution_drift(ref_labels, cur_labels) if ref_labels is not None and cur_labels is not None else None
    parts["labels"] = labels if labels is not None and labels["n_cur"] > 0 else None  # unlabelled batch: skip
    parts["sources"] = (distribution_drift(ref_sources, cur_sources)
                        if ref_sources is not None and cur_sources is not None else None)
    parts["predictions"] = (prediction_drift(ref_probs, cur_probs)
                            if ref_probs is not None and cur_probs is not None else None)
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
    return DriftReport(**parts, families=_families(parts, t), verdict=level, reasons=reasons,
                       thresholds=t.as_dict())


def drift_plots(ref_stats: pd.DataFrame, cur_stats: pd.DataFrame, ref_conf: np.ndarray | None = None,
                cur_conf: np.ndarray | None = None, table: pd.DataFrame | None = None,
                n_features: int = 4) -> dict[str, bytes]:
    """PNGs: ``features`` (histograms of the ``n_features`` most drifted features by Wasserstein/std, ref vs
    batch) and, given confidences, ``confidence`` (top-class confidence histograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dc_pipeline.core.previews import figure_png

    if table is None:
        from dc_pipeline.core.features import STAT_COLUMNS

        table = feature_drift(ref_stats, cur_stats, [c for c in STAT_COLUMNS if c in cur_stats.columns])
    top = table["wasserstein_std"].fillna(-1).sort_values(ascending=False).index[:n_features].tolist()
    out: dict[str, bytes] = {}
    fig, axes = plt.subplots(1, max(len(top), 1), figsize=(3.2 * max(len(top), 1), 2.8), squeeze=False)
    for ax, col in zip(axes[0], top):
        r, c = _clean(ref_stats[col]), _clean(cur_stats[col])
        lo, hi = float(min(r.min(initial=0), c.min(initial=0))), float(max(r.max(initial=1), c.max(initial=1)))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        ax.hist(r, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(c, bins=bins, density=True, alpha=0.5, label="batch")
        ax.set_title(f"{col}\nW/std {table.loc[col, 'wasserstein_std']:.2f}, PSI {table.loc[col, 'psi']:.2f}",
                     fontsize=9)
    axes[0][0].legend(fontsize=8)
    out["features"] = figure_png(fig)
    if ref_conf is not None and cur_conf is not None:
        fig, ax = plt.subplots(figsize=(4.5, 2.8))
        bins = np.linspace(0, 1, 26)
        ax.hist(_clean(ref_conf), bins=bins, density=True, alpha=0.5, label="test split")
        ax.hist(_clean(cur_conf), bins=bins, density=True, alpha=0.5, label="batch")
        ax.set_xlabel("top-class confidence")
        ax.legend(fontsize=8)
        out["confidence"] = figure_png(fig)
    return out
