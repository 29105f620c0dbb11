"""Slice analysis: where does the model fail, and what to do about it (pure pandas/scipy; no Dagster).

Input: one row per evaluated image with ``correct`` (bool), ``confidence`` (top-class probability),
``label`` (class id), slice columns such as ``source`` / ``device_id`` (nulls allowed) and the image
statistics of ``features.STAT_COLUMNS``.

* :func:`slice_table` -- one row per slice. A slice is a value of a categorical column (nulls become
  ``"(missing)"``) or a quantile bucket of a numeric column (``"q1 [0.12, 0.2)"``; the last bucket is
  closed, ``"q4 [0.31, 0.9]"``; the edges are the column's quantiles in ``df``, duplicate edges are
  merged, so a column with a point mass gives fewer buckets; nulls again become ``"(missing)"``).
  Per slice: ``count``, ``share``, ``errors``, ``error``, its Wilson 95 % interval, ``mean_confidence``,
  ``wrong_confidence`` (mean confidence of the wrong predictions, NaN when there are none) and
  ``p_value``: one-sided exact binomial test of H0 "slice error <= overall error of ``df``".
* :func:`flag_slices` -- the decision rule below; adds ``p_adjusted``, ``flagged``, ``suggestion``.
* :func:`slices_markdown` -- a Markdown report, flagged slices first.

Flag rule (:func:`flag_slices`). A slice is ``flagged`` when it is **small** and **clearly worse**:

* small:          ``share <= max_share`` and ``count >= min_count``;
* clearly worse:  ``error >= min_ratio * overall_error`` and ``error - overall_error >= 0.02`` and
  ``p_adjusted < alpha``, where ``p_adjusted`` is the Holm-Bonferroni adjustment of ``p_value`` over
  every slice of the table (all dimensions together, so the family-wise false-flag rate is <= alpha).

Large slices are never flagged: a slice with a big share that is worse shows up in the overall metric
already, and slightly-worse large slices (6 % vs 5 %) are what every split looks like. With the
default ``max_share=0.15`` the quartile buckets of ``n_buckets=4`` (share 0.25) cannot be flagged; use
``n_buckets >= 7`` to look at image-statistic buckets.

Suggestion for a flagged slice (first match wins; ``""`` when not flagged):

1. ``"review labels"``   -- a class slice (``dimension == "label"``) whose wrong predictions are mostly
   confident (``wrong_confidence >= confident``, 0.8): the model insists on another class, which
   points at label noise rather than at a lack of data;
2. ``"collect more data"`` -- any other categorical slice (source, device, a class with unconfident
   errors), and any flagged slice with ``count < collect_below`` (30): too few examples to learn from;
3. ``"augment"``         -- an image-statistic bucket (``kind == "bucket"``) with enough examples: the
   images exist but are under-represented in that region (low contrast, off-centre, ...), so
   augmentation towards it is the cheap fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from dc_pipeline.core.data.features import STAT_COLUMNS

MISSING = "(missing)"
CATEGORICAL = ("source", "device_id", "label")
Z95 = 1.959963984540054

TABLE_COLUMNS = [
    "dimension",
    "kind",
    "slice",
    "count",
    "share",
    "errors",
    "error",
    "error_ci_low",
    "error_ci_high",
    "mean_confidence",
    "wrong_confidence",
    "p_value",
    "bucket_low",
    "bucket_high",
]


def wilson_interval(errors: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``errors / n`` (``(nan, nan)`` when ``n == 0``)."""
    if n <= 0:
        return math.nan, math.nan
    p = errors / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if errors <= 0 else max(0.0, centre - half)
    high = 1.0 if errors >= n else min(1.0, centre + half)
    return low, high


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the given order (NaN counts as 1)."""
    p = np.array([1.0 if (v is None or not np.isfinite(v)) else float(v) for v in p_values])
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def _binom_p(errors: int, n: int, overall_error: float) -> float:
    if n <= 0:
        return math.nan
    p0 = min(1.0, max(0.0, float(overall_error)))
    return float(stats.binomtest(int(errors), int(n), p0, alternative="greater").pvalue)


def _category_name(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _format_edges(edges: np.ndarray) -> list[str]:
    """Shortest ``g`` formatting (>= 2 significant digits) that keeps distinct edges distinct."""
    for digits in range(2, 18):
        text = [f"{x:.{digits}g}" for x in edges]
        if len(set(text)) == len(text):
            return text
    return [repr(float(x)) for x in edges]


def quantile_buckets(values: pd.Series, n_buckets: int = 4, edges_out: dict | None = None) -> pd.Series:
    """Bucket label per row (``"q<i> [lo, hi)"``, last bucket closed; nulls -> ``"(missing)"``).

    Edges are the ``n_buckets``-quantiles of the non-null values; equal edges are merged, so the buckets
    partition the rows. The printed edges are rounded; ``edges_out`` receives each label's exact
    ``(low, high)``, which is what membership must be tested against.
    """
    x = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    out = np.full(len(x), MISSING, dtype=object)
    ok = np.isfinite(x)
    if not ok.any():
        return pd.Series(out, index=values.index)
    edges = np.unique(np.quantile(x[ok], np.linspace(0.0, 1.0, max(1, int(n_buckets)) + 1)))
    text = _format_edges(edges)
    if len(edges) == 1:
        labels = [f"q1 [{text[0]}, {text[0]}]"]
        idx = np.zeros(int(ok.sum()), dtype=int)
    else:
        k = len(edges) - 1
        labels = [f"q{i + 1} [{text[i]}, {text[i + 1]}{']' if i == k - 1 else ')'}" for i in range(k)]
        # bucket i holds edges[i] <= x < edges[i+1]; the maximum goes to the last bucket
        idx = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, k - 1)
    out[ok] = np.array(labels, dtype=object)[idx]
    if edges_out is not None:
        bounds = [(edges[0], edges[0])] if len(edges) == 1 else list(zip(edges[:-1], edges[1:]))
        edges_out.update({label: (float(lo), float(hi)) for label, (lo, hi) in zip(labels, bounds)})
    return pd.Series(out, index=values.index)


def _sort_key(name: str):
    """Categories: numbers numerically, then strings, ``(missing)`` last; buckets by their q index."""
    if name == MISSING:
        return (3, 0.0, "")
    if name.startswith("q") and " [" in name and name[1 : name.index(" [")].isdigit():
        return (0, float(name[1 : name.index(" [")]), name)
    try:
        return (1, float(name), name)
    except ValueError:
        return (2, 0.0, name)


def slice_table(
    df: pd.DataFrame,
    categorical: Sequence[str] = CATEGORICAL,
    numeric: Sequence[str] | None = None,
    n_buckets: int = 4,
) -> pd.DataFrame:
    """One row per slice (see the module docstring for the columns).

    ``categorical`` / ``numeric`` columns absent from ``df`` are skipped; ``numeric=None`` means the
    image statistics (``features.STAT_COLUMNS``) present in ``df``. The overall error and row count
    are kept in ``table.attrs["overall_error"]`` / ``table.attrs["n"]``.
    """
    for col in ("correct", "confidence"):
        if col not in df.columns:
            raise ValueError(f"slice_table needs a {col!r} column")
    if numeric is None:
        numeric = [c for c in STAT_COLUMNS if c in df.columns]
    n = len(df)
    wrong = ~df["correct"].astype(bool).to_numpy()
    conf = pd.to_numeric(df["confidence"], errors="coerce").astype(float).to_numpy()
    overall = float(wrong.mean()) if n else math.nan
    base = pd.DataFrame({"_wrong": wrong, "_conf": conf, "_wconf": np.where(wrong, conf, np.nan)})

    rows: list[dict] = []
    dims = [(c, "category") for c in categorical if c in df.columns]
    dims += [(c, "bucket") for c in numeric if c in df.columns and c not in categorical]
    for dim, kind in dims:
        edges: dict[str, tuple[float, float]] = {}
        if kind == "category":
            keys = pd.Series([_category_name(v) for v in df[dim].tolist()], dtype=object)
        else:
            keys = quantile_buckets(df[dim], n_buckets, edges).reset_index(drop=True)
        grouped = base.groupby(keys.to_numpy(), sort=False).agg(
            count=("_wrong", "size"),
            errors=("_wrong", "sum"),
            mean_confidence=("_conf", "mean"),
            wrong_confidence=("_wconf", "mean"),
        )
        for name in sorted(grouped.index, key=_sort_key):
            g = grouped.loc[name]
            count, errors = int(g["count"]), int(g["errors"])
            low, high = wilson_interval(errors, count)
            rows.append(
                {
                    "dimension": dim,
                    "kind": kind,
                    "slice": name,
                    "count": count,
                    "share": count / n,
                    "errors": errors,
                    "error": errors / count,
                    "error_ci_low": low,
                    "error_ci_high": high,
                    "mean_confidence": float(g["mean_confidence"]),
                    "wrong_confidence": float(g["wrong_confidence"]),
                    "p_value": _binom_p(errors, count, overall),
                    "bucket_low": edges.get(name, (math.nan, math.nan))[0],
                    "bucket_high": edges.get(name, (math.nan, math.nan))[1],
                }
            )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table.attrs["overall_error"] = overall
    table.attrs["n"] = n
    return table


def flag_slices(
    table: pd.DataFrame,
    overall_error: float | None = None,
    max_share: float = 0.15,
    min_count: int = 5,
    min_ratio: float = 1.5,
    alpha: float = 0.05,
    min_diff: float = 0.02,
    confident: float = 0.8,
    collect_below: int = 30,
) -> pd.DataFrame:
    """Add ``p_adjusted`` (Holm over all slices), ``flagged`` and ``suggestion`` (rule in the module doc).

    ``overall_error=None`` takes ``table.attrs["overall_error"]``. When another overall error is given,
    ``p_value`` is recomputed against it (one-sided binomial test), so thresholds and test agree.
    """
    out = table.copy()
    stored = table.attrs.get("overall_error")
    if overall_error is None:
        if stored is None:
            raise ValueError("flag_slices needs overall_error (the table has none in attrs)")
        overall_error = stored
    overall_error = float(overall_error)
    if stored is None or not math.isclose(float(stored), overall_error, rel_tol=0, abs_tol=1e-12):
        out["p_value"] = [_binom_p(e, c, overall_error) for e, c in zip(out["errors"], out["count"])]
    out.attrs["overall_error"] = overall_error

    out["p_adjusted"] = holm(out["p_value"].tolist())
    small = (out["share"] <= max_share) & (out["count"] >= min_count)
    worse = (
        (out["error"] >= min_ratio * overall_error)
        & (out["error"] - overall_error >= min_diff - 1e-12)
        & (out["p_adjusted"] < alpha)
    )
    out["flagged"] = (small & worse).astype(bool)

    kind = out["kind"] if "kind" in out.columns else pd.Series("category", index=out.index)
    suggestions = []
    for flagged, dim, knd, count, wconf in zip(
        out["flagged"], out["dimension"], kind, out["count"], out["wrong_confidence"]
    ):
        if not flagged:
            suggestions.append("")
        elif dim == "label" and np.isfinite(wconf) and wconf >= confident:
            suggestions.append("review labels")
        elif knd != "bucket" or count < collect_below:
            suggestions.append("collect more data")
        else:
            suggestions.append("augment")
    out["suggestion"] = suggestions
    return out


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def slices_markdown(table: pd.DataFrame, top: int = 30) -> str:
    """Markdown table of the slices: flagged first, then by p-value and error; at most ``top`` rows."""
    if table.empty:
        return "_No slices._\n"
    t = table.copy()
    if "flagged" not in t.columns:
        t["flagged"] = False
    if "suggestion" not in t.columns:
        t["suggestion"] = ""
    p_col = "p_adjusted" if "p_adjusted" in t.columns else "p_value"
    t = t.sort_values(["flagged", p_col, "error"], ascending=[False, True, False], kind="stable", na_position="last")
    shown = t.head(top)
    lines = []
    overall = table.attrs.get("overall_error")
    n_flagged = int(t["flagged"].sum())
    if overall is not None and math.isfinite(overall):
        lines.append(f"Overall error {overall:.3f}; {n_flagged} of {len(t)} slices flagged.")
        lines.append("")
    header = [
        "dimension",
        "slice",
        "count",
        "share",
        "error",
        "95% CI",
        "mean conf",
        "wrong conf",
        "p (Holm)" if p_col == "p_adjusted" else "p",
        "flagged",
        "suggestion",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for r in shown.itertuples(index=False):
        cells = [
            str(r.dimension),
            str(r.slice),
            str(int(r.count)),
            _fmt(r.share),
            _fmt(r.error),
            f"[{_fmt(r.error_ci_low)}, {_fmt(r.error_ci_high)}]",
            _fmt(r.mean_confidence),
            _fmt(r.wrong_confidence),
            _fmt_p(getattr(r, p_col)),
            "yes" if r.flagged else "",
            str(r.suggestion),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if len(t) > top:
        lines.append("")
        lines.append(f"... {len(t) - top} more slices not shown.")
    return "\n".join(lines) + "\n"
