"""Two-sample tests of a landing batch against a reference: numpy/scipy only, one function per test.

Each function returns statistics and p-values; none applies a threshold (that is ``policy``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

__all__ = [
    "PSI_BINS",
    "PSI_EPS",
    "distribution_drift",
    "error_drift",
    "feature_statistics",
    "finite",
    "holm",
    "ks_test",
    "mmd_test",
    "prediction_drift",
    "psi",
    "wasserstein_std",
]

PSI_BINS = 10
PSI_EPS = 1e-4


def finite(values: Any) -> np.ndarray:
    """The values as a flat float64 array, NaN and infinities dropped."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def _py(value: Any) -> Any:
    """numpy scalars to plain Python."""
    return value.item() if isinstance(value, np.generic) else value


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


def ks_test(ref: Any, cur: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: ``(statistic, p_value)``; ``(0.0, 1.0)`` if a sample is empty."""
    if not (len(ref) and len(cur)):
        return 0.0, 1.0
    ks = stats.ks_2samp(ref, cur)
    return float(ks.statistic), float(ks.pvalue)


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein-1 distance (area between the two empirical CDFs)."""
    a, b = np.sort(a), np.sort(b)
    values = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, values[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, values[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(values)))


def wasserstein_std(ref: Any, cur: Any) -> float:
    """Wasserstein-1 distance in units of the reference std (a constant reference divides by 1)."""
    ref, cur = finite(ref), finite(cur)
    sd = float(ref.std())
    return _wasserstein(ref, cur) / (sd if sd > 1e-12 else 1.0)


def psi(ref: np.ndarray, cur: np.ndarray, bins: int = PSI_BINS, eps: float = PSI_EPS) -> float:
    """Population stability index on ``bins`` reference-quantile bins (ties merge bins).

    Shares are smoothed as ``(share + eps) / (1 + n_bins * eps)`` so empty bins stay finite.
    """
    ref, cur = finite(ref), finite(cur)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    n_bins = len(edges) + 1
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=n_bins) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=n_bins) / len(cur)
    r, c = (r + eps) / (1 + n_bins * eps), (c + eps) / (1 + n_bins * eps)
    return float(np.sum((c - r) * np.log(c / r)))


def feature_statistics(ref: pd.DataFrame, cur: pd.DataFrame, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Per feature: KS, its Holm-adjusted p-value (over the features), Wasserstein/ref std and PSI.

    Index: the feature names (default: the columns both frames have). Columns: ``ks_statistic, p_value,
    p_adjusted, wasserstein_std, psi, ref_mean, cur_mean, n_ref, n_cur``. Non-finite values are dropped;
    a feature empty on either side gets ``p_value = 1``.
    """
    columns = list(columns) if columns is not None else [c for c in ref.columns if c in cur.columns]
    rows = []
    for col in columns:
        r, c = finite(ref[col]), finite(cur[col])
        if len(r) == 0 or len(c) == 0:
            rows.append(
                {
                    "feature": col,
                    "ks_statistic": np.nan,
                    "p_value": 1.0,
                    "wasserstein_std": np.nan,
                    "psi": np.nan,
                    "ref_mean": np.nan,
                    "cur_mean": np.nan,
                    "n_ref": len(r),
                    "n_cur": len(c),
                }
            )
            continue
        ks_statistic, p_value = ks_test(r, c)
        rows.append(
            {
                "feature": col,
                "ks_statistic": ks_statistic,
                "p_value": p_value,
                "wasserstein_std": wasserstein_std(r, c),
                "psi": psi(r, c),
                "ref_mean": float(r.mean()),
                "cur_mean": float(c.mean()),
                "n_ref": len(r),
                "n_cur": len(c),
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "feature",
            "ks_statistic",
            "p_value",
            "wasserstein_std",
            "psi",
            "ref_mean",
            "cur_mean",
            "n_ref",
            "n_cur",
        ],
    ).set_index("feature")
    table.insert(2, "p_adjusted", holm(table["p_value"].tolist()))
    return table


def distribution_drift(
    ref_values: Iterable[Any], cur_values: Iterable[Any], categories: Sequence[Any] | None = None
) -> dict[str, Any]:
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
        "categories": cats,
        "ref_counts": [int(v) for v in rc],
        "cur_counts": [int(v) for v in cc],
        "ref_share": [float(v) for v in ref_share],
        "cur_share": [float(v) for v in cur_share],
        "n_ref": n_ref,
        "n_cur": n_cur,
        "chi2": chi2,
        "dof": dof,
        "p_value": p,
        "js_distance": js,
        "new_categories": [c for c, r, k in zip(cats, rc, cc) if r == 0 and k > 0],
    }


def _pairwise_sq(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def mmd_test(
    ref_emb: np.ndarray,
    cur_emb: np.ndarray,
    max_ref: int = 1000,
    max_cur: int = 500,
    n_permutations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
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
    out = {
        "mmd2": 0.0,
        "p_value": 1.0,
        "n_ref_used": m,
        "n_cur_used": n,
        "bandwidth": float("nan"),
        "n_permutations": int(n_permutations),
    }
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
    ks_stat, ks_p = ks_test(rconf, cconf)
    classes = distribution_drift(rp.argmax(axis=1), cp.argmax(axis=1), categories=range(rp.shape[1]))
    return {
        "confidence_ks": ks_stat,
        "confidence_p_value": ks_p,
        "mean_confidence_ref": float(rconf.mean()) if len(rconf) else float("nan"),
        "mean_confidence_cur": float(cconf.mean()) if len(cconf) else float("nan"),
        "classes": classes,
        "p_value": min(holm([ks_p, classes["p_value"]])),
    }


def error_drift(test_error: float, n_test: int, batch_error: float, n_batch: int) -> dict[str, Any]:
    """Batch error vs test error: increase and one-sided Fisher exact p-value (batch worse)."""
    e_t, e_b = int(round(test_error * n_test)), int(round(batch_error * n_batch))
    p = 1.0
    if n_test > 0 and n_batch > 0:
        p = float(stats.fisher_exact([[e_b, n_batch - e_b], [e_t, n_test - e_t]], alternative="greater").pvalue)
    return {
        "test_error": float(test_error),
        "batch_error": float(batch_error),
        "n_test": int(n_test),
        "n_batch": int(n_batch),
        "increase": float(batch_error - test_error),
        "p_value": p,
    }
