"""Label-error detection by confident learning (Northcutt, Jiang & Chuang, JAIR 2021), with cleanlab.

1. :func:`out_of_fold_probabilities`: predicted class probabilities for every example from a model
   that never saw it (stratified k-fold cross-validation of a logistic regression).
2. cleanlab (``count.compute_confident_joint``, ``filter.find_label_issues``, ``rank``): per-class
   thresholds ``t_j`` (mean predicted probability of class j over the examples labelled j), the
   calibrated confident joint ``C[i, j]`` (how many labelled i are estimated to truly be j), and
   prune-by-noise-rate: among those labelled i, the ``C[i, j]`` with the largest margin ``p_j - p_i``.
3. :func:`rank_label_issues` ranks them for review (self-confidence, lower = more suspicious).

Labels are integer class ids 0..K-1. cleanlab is imported inside the functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "METHODS",
    "confident_joint",
    "confident_thresholds",
    "find_label_issues",
    "label_quality_scores",
    "out_of_fold_probabilities",
    "rank_label_issues",
]

METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning")


def _check(labels: np.ndarray | list[int], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be [N] and [N, K]")
    if not np.issubdtype(labels.dtype, np.integer) or not ((labels >= 0) & (labels < probs.shape[1])).all():
        raise ValueError(f"labels must be integer class ids in 0..{probs.shape[1] - 1}")
    return labels.astype(np.int64), probs


# ---------------------------------------------------------------------------------------------
# 1. Out-of-fold predicted probabilities


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray | list[int],
    n_classes: int,
    k: int = 5,
    seed: int = 0,
    model: str = "logreg",
    pca_components: int = 40,
    C: float = 0.1,
) -> np.ndarray:
    """``[N, K]`` probabilities, each row from a model trained on the other folds (stratified k-fold).

    ``model="logreg"``: standardized flattened features, multinomial logistic regression (L2, ``C``).
    ``model="pca_logreg"``: PCA-whitened to ``pca_components`` dims first (faster on wide inputs).
    Deterministic for a seed. BLAS threads are limited to one while fitting: on a small shared
    machine, threaded BLAS makes these tiny fits slower by orders of magnitude.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels).astype(np.int64)
    if model not in ("logreg", "pca_logreg"):
        raise ValueError(f"model must be 'logreg' or 'pca_logreg', not {model!r}")
    counts = np.bincount(y, minlength=n_classes)
    k = int(min(k, counts[counts > 0].min()))
    if k < 2:
        raise ValueError("every present class needs at least 2 examples for cross-validation")
    probs = np.zeros((len(y), n_classes))
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):
        for train, test in folds.split(x, y):
            steps: list = [StandardScaler()]
            if model == "pca_logreg":
                steps.append(
                    PCA(n_components=min(pca_components, x.shape[1], len(train) - 1), whiten=True, random_state=seed)
                )
            clf = make_pipeline(*steps, LogisticRegression(C=C, max_iter=1000))
            clf.fit(x[train], y[train])
            probs[np.ix_(test, clf.classes_)] = clf.predict_proba(x[test])  # a class absent in training gets 0
    return probs


# ---------------------------------------------------------------------------------------------
# 2. Confident learning (cleanlab)


def confident_thresholds(labels: np.ndarray | list[int], probs: np.ndarray) -> np.ndarray:
    """``t_j``: the mean predicted probability of class j over the examples labelled j."""
    from cleanlab.count import get_confident_thresholds

    labels, probs = _check(labels, probs)
    return get_confident_thresholds(labels, probs)


def confident_joint(labels: np.ndarray | list[int], probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """The confident joint ``C[given, true]``; calibrated, row i sums to the number labelled i."""
    from cleanlab.count import compute_confident_joint

    labels, probs = _check(labels, probs)
    return compute_confident_joint(labels, probs, calibrate=calibrate)


def find_label_issues(
    labels: np.ndarray | list[int], probs: np.ndarray, method: str = "prune_by_noise_rate"
) -> np.ndarray:
    """Boolean mask of likely label errors (cleanlab's ``filter.find_label_issues``, ``filter_by=method``)."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    labels, probs = _check(labels, probs)
    return np.asarray(cleanlab_find(labels, probs, filter_by=method, n_jobs=1), dtype=bool)


def label_quality_scores(
    labels: np.ndarray | list[int], probs: np.ndarray, method: str = "self_confidence"
) -> np.ndarray:
    """Per example, in [0, 1], lower = more likely mislabelled (``self_confidence`` or ``normalized_margin``)."""
    from cleanlab.rank import get_label_quality_scores

    if method not in ("self_confidence", "normalized_margin"):
        raise ValueError(f"method must be 'self_confidence' or 'normalized_margin', not {method!r}")
    labels, probs = _check(labels, probs)
    return np.asarray(get_label_quality_scores(labels, probs, method=method))


def rank_label_issues(
    labels: np.ndarray | list[int],
    probs: np.ndarray,
    method: str = "prune_by_noise_rate",
    score: str = "self_confidence",
) -> pd.DataFrame:
    """One row per example (index, given_label, suggested_label, score, is_issue): flagged issues
    first, each group by ascending score (most suspicious first), ties by index."""
    labels, probs = _check(labels, probs)
    frame = pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "given_label": labels,
            "suggested_label": probs.argmax(axis=1),
            "score": label_quality_scores(labels, probs, score),
            "is_issue": find_label_issues(labels, probs, method),
        }
    )
    return frame.sort_values(["is_issue", "score", "index"], ascending=[False, True, True], kind="stable").reset_index(
        drop=True
    )
