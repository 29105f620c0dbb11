"""Active learning: which unlabelled images to send for labelling within a budget (pure numpy/pandas).

We implement it ourselves rather than adding scikit-activeml, because we already have the champion's
probabilities and embeddings for the pool, while its query strategies refit a classifier on every query.

* :func:`uncertainty` -- how unsure the champion is about each image (margin or normalised entropy).
* :func:`slice_members` -- which flagged slice of the slice analysis (``slices.flag_slices``) each pool
  image falls in.
* :func:`select_for_labelling` -- the picks: uncertain, diverse, with a share aimed at the flagged slices
  (rule in its docstring).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from dc_pipeline.core.curation.slices import MISSING, _category_name

UNCERTAINTY_KINDS = ("margin", "entropy")
PICK_COLUMNS = ["sha256", "rank", "reason", "slice", "uncertainty", "predicted_label", "confidence"]
# the pool is unlabelled: the slice analysis's "label" dimension is matched on the champion's prediction
POOL_COLUMN_OF = {"label": "predicted_label"}
# exact bucket edges, used instead of the printed ones when the flagged rows carry them
BUCKET_EDGES = ("bucket_low", "bucket_high")
_BUCKET = re.compile(r"^q(?P<index>\d+) \[(?P<low>[^,\]\)]+), (?P<high>[^,\]\)]+)(?P<close>[\)\]])$")


def uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """Per image, how unsure the model is, in [0, 1] (higher = more unsure).

    ``probs`` is ``[N, n_classes]`` (rows are renormalised to sum to 1). ``"margin"``: ``1 - (p1 - p2)``
    with ``p1 >= p2`` the two largest probabilities; ``"entropy"``: the entropy divided by
    ``log(n_classes)``. With a single class both are 0.
    """
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"kind must be one of {UNCERTAINTY_KINDS}, got {kind!r}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, n_classes], got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite")
    n, k = p.shape
    if n == 0 or k < 2:
        return np.zeros(n)
    p = np.clip(p, 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / k)
    if kind == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        out = 1.0 - (top2[:, 1] - top2[:, 0])
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p), 0.0)
        out = -terms.sum(axis=1) / math.log(k)
    return np.clip(out, 0.0, 1.0)


def slice_display_name(dimension: str, slice_name: str) -> str:
    """How a flagged slice is named in the picks: ``"<dimension>: <slice>"`` (``"contrast: q1 [0.1, 0.2)"``)."""
    return f"{dimension}: {slice_name}"


def parse_bucket(name: str) -> tuple[int, float, float, bool]:
    """``(index, low, high, high_closed)`` of a bucket name written by ``slices.quantile_buckets``.

    ``"q3 [0.12, 0.2)"`` -> ``(3, 0.12, 0.2, False)``; the last bucket, ``"q8 [0.31, 0.9]"``, is closed.
    The edges are as printed: ``slices`` rounds them to the fewest significant digits (>= 2) that keep
    them distinct, so they are the true quantiles only up to that rounding.
    """
    m = _BUCKET.match(str(name).strip())
    if m is None:
        raise ValueError(f"not a quantile bucket name: {name!r}")
    return int(m["index"]), float(m["low"]), float(m["high"]), m["close"] == "]"


def _bucket_mask(x: np.ndarray, name: str, low: float = math.nan, high: float = math.nan) -> np.ndarray:
    index, printed_low, printed_high, closed = parse_bucket(name)
    low = low if np.isfinite(low) else printed_low
    high = high if np.isfinite(high) else printed_high
    # the outer buckets are open-ended: a pool image beyond the analysed range belongs to the extreme bucket
    above = np.ones(len(x), dtype=bool) if index == 1 else x >= low
    below = np.ones(len(x), dtype=bool) if closed else x < high
    return np.isfinite(x) & above & below


def _member_mask(pool: pd.DataFrame, row: dict) -> np.ndarray:
    dimension, kind, name = str(row["dimension"]), str(row["kind"]), str(row["slice"])
    column = POOL_COLUMN_OF.get(dimension, dimension)
    if column not in pool.columns:
        return np.zeros(len(pool), dtype=bool)
    values = pool[column]
    if kind == "bucket":
        x = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        if name == MISSING:
            return ~np.isfinite(x)
        low, high = (pd.to_numeric(pd.Series([row.get(c)]), errors="coerce").iloc[0] for c in BUCKET_EDGES)
        return _bucket_mask(x, name, float(low), float(high))
    if kind != "category":
        raise ValueError(f"slice kind must be 'category' or 'bucket', got {kind!r}")
    return np.array([_category_name(v) == name for v in values.tolist()], dtype=bool)


def slice_members(pool: pd.DataFrame, flagged: pd.DataFrame) -> pd.Series:
    """Per pool row, the name of the first flagged slice it falls in (:func:`slice_display_name`), or None.

    ``flagged`` holds slice-analysis rows (``dimension``, ``kind``, ``slice``; rows with ``flagged``
    False are ignored when that column is there), taken in their order. A category slice matches the
    pool column of the same name (``"(missing)"`` matches nulls); the ``"label"`` dimension matches the
    pool's ``predicted_label``, since the pool has no labels. A bucket slice (``"q3 [0.12, 0.2)"``)
    matches the values of the numeric column ``dimension`` in its interval; the first bucket has no
    lower end and the last no upper end, so pool images beyond the analysed range join the extreme
    bucket. The interval is the printed one, whose edges are rounded (see :func:`parse_bucket`), unless
    the rows carry the exact edges in ``bucket_low`` / ``bucket_high``. Dimensions the pool lacks match
    nothing.
    """
    out = pd.Series([None] * len(pool), index=pool.index, dtype=object)
    if flagged is None or flagged.empty or pool.empty:
        return out
    for col in ("dimension", "kind", "slice"):
        if col not in flagged.columns:
            raise ValueError(f"flagged slices need a {col!r} column")
    rows = flagged[flagged["flagged"].astype(bool)] if "flagged" in flagged.columns else flagged
    free = np.ones(len(pool), dtype=bool)
    names = out.to_numpy(copy=True)
    for row in rows.to_dict("records"):
        hit = _member_mask(pool, row) & free
        names[hit] = slice_display_name(str(row["dimension"]), str(row["slice"]))
        free &= ~hit
    return pd.Series(names, index=pool.index, dtype=object)


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norm > 0, norm, 1.0)


def farthest_first(points: np.ndarray, k: int, chosen: np.ndarray | None = None, start: int | None = 0) -> list[int]:
    """Greedy k-center: ``k`` row indices of ``points``, each the farthest (Euclidean) from everything
    picked so far and from the rows of ``chosen``; the first is ``start`` (None: the farthest from
    ``chosen``). Ties go to the lower index, so callers order ``points`` by preference."""
    m = len(points)
    k = min(int(k), m)
    if k <= 0:
        return []
    nearest = np.full(m, np.inf)
    if chosen is not None and len(chosen):
        for c in chosen:
            nearest = np.minimum(nearest, ((points - c) ** 2).sum(axis=1))
    picks: list[int] = []
    taken = np.zeros(m, dtype=bool)
    nxt = int(start) if start is not None else int(np.argmax(nearest))
    while True:
        picks.append(nxt)
        taken[nxt] = True
        if len(picks) == k:
            return picks
        nearest = np.minimum(nearest, ((points - points[nxt]) ** 2).sum(axis=1))
        nxt = int(np.argmax(np.where(taken, -1.0, nearest)))


def _empty_picks() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sha256": pd.Series(dtype=object),
            "rank": pd.Series(dtype="int64"),
            "reason": pd.Series(dtype=object),
            "slice": pd.Series(dtype=object),
            "uncertainty": pd.Series(dtype="float64"),
            "predicted_label": pd.Series(dtype=object),
            "confidence": pd.Series(dtype="float64"),
        }
    )


def select_for_labelling(
    pool: pd.DataFrame,
    probs: np.ndarray,
    embeddings: np.ndarray,
    budget: int,
    *,
    kind: str = "margin",
    slice_share: float = 0.2,
    flagged: pd.DataFrame | None = None,
    candidate_factor: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """The unlabelled images to send for labelling, best first: one row per pick with ``sha256``,
    ``rank`` (1, 2, ...), ``reason`` (``"slice"`` or ``"uncertainty"``), ``slice`` (the flagged slice the
    image is in, or None), ``uncertainty``, ``predicted_label`` and ``confidence`` (the champion's).

    ``pool`` has one row per unlabelled image (``sha256`` plus the slice columns), ``probs`` and
    ``embeddings`` are the champion's probabilities and embeddings for those rows, in the same order.

    Rule:

    1. Uncertainty per image (:func:`uncertainty`, ``kind`` "margin" or "entropy"); exact ties are
       ordered by a random permutation drawn from ``seed``, so the same inputs and seed give the same
       picks. An image listed twice (same ``sha256``) counts once.
    2. Slice share: up to ``round(slice_share * budget)`` picks among the images in the flagged slices
       (``flagged``, rows of ``slices.flag_slices``; see :func:`slice_members`): the
       ``candidate_factor`` times as many most uncertain of them, then diverse ones among those.
    3. The rest of the budget: the ``candidate_factor * remaining`` most uncertain images not yet
       picked, then diverse ones among those.
    4. Diverse means greedy k-center (farthest-first) on the L2-normalised embeddings: the first pick
       of a step is its most uncertain candidate, each next one the candidate farthest from every pick
       so far (earlier steps' included); distance ties go to the more uncertain. So a batch is not
       spent on near-copies of one hard image.

    A budget at least the pool's size returns every image, ranked. An empty pool or a budget of 0
    gives an empty frame with the columns.
    """
    if candidate_factor < 1:
        raise ValueError("candidate_factor must be >= 1")
    if not 0.0 <= slice_share <= 1.0:
        raise ValueError("slice_share must lie in [0, 1]")
    if "sha256" not in pool.columns:
        raise ValueError("the pool needs a 'sha256' column")
    n = len(pool)
    p = np.asarray(probs, dtype=np.float64)
    e = np.asarray(embeddings, dtype=np.float64)
    if n == 0 or int(budget) <= 0:
        return _empty_picks()
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probs must be [{n}, n_classes], got shape {p.shape}")
    if e.ndim != 2 or e.shape[0] != n:
        raise ValueError(f"embeddings must be [{n}, dim], got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("embeddings must be finite")

    unsure = uncertainty(p, kind)
    confidence = p.max(axis=1)
    if "predicted_label" in pool.columns:
        predicted = pool["predicted_label"].to_numpy(dtype=object)
        scored = pool
    else:
        predicted = p.argmax(axis=1).astype(np.int64)
        scored = pool.assign(predicted_label=predicted)
    members = (
        slice_members(scored, flagged).to_numpy(dtype=object)
        if flagged is not None and slice_share > 0
        else np.full(n, None, dtype=object)
    )

    # preference order: most uncertain first, exact ties by a seeded permutation; one row per sha256
    tie = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tie, -unsure))
    first = ~pool["sha256"].iloc[order].duplicated().to_numpy()
    order = order[first]
    budget = min(int(budget), len(order))
    points = _normalised(e)

    picks: list[int] = []
    reasons: list[str] = []
    in_slice = order[np.array([m is not None for m in members[order]], dtype=bool)]
    n_slice = min(int(math.floor(slice_share * budget + 0.5)), len(in_slice))
    steps = [("slice", in_slice, n_slice), ("uncertainty", order, budget - n_slice)]
    for reason, preferred, k in steps:
        if k <= 0:
            continue
        picked = np.zeros(n, dtype=bool)
        picked[picks] = True
        candidates = preferred[~picked[preferred]][: candidate_factor * k]
        chosen = points[picks] if picks else None
        local = farthest_first(points[candidates], k, chosen=chosen, start=0)
        picks += [int(candidates[i]) for i in local]
        reasons += [reason] * len(local)

    if not picks:
        return _empty_picks()
    idx = np.array(picks)
    return pd.DataFrame(
        {
            "sha256": pool["sha256"].to_numpy(dtype=object)[idx],
            "rank": np.arange(1, len(idx) + 1, dtype=np.int64),
            "reason": np.array(reasons, dtype=object),
            "slice": members[idx],
            "uncertainty": unsure[idx],
            "predicted_label": predicted[idx],
            "confidence": confidence[idx],
        }
    )[PICK_COLUMNS]
