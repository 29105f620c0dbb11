"""Label-error detection by confident learning (Northcutt, Jiang & Chuang, JAIR 2021).

Steps, as in the paper and in cleanlab's ``filter.find_label_issues``:

1. :func:`out_of_fold_probabilities`: predicted class probabilities for every example from a model
   that never saw it (stratified k-fold cross-validation).
2. :func:`confident_joint`: per-class thresholds ``t_j`` (the mean predicted probability of class j
   over the examples labelled j); an example labelled i counts towards ``C[i, j]`` when ``p_j >= t_j``
   (the largest such ``p_j`` when several pass). Calibrated so row i sums to the number labelled i.
3. :func:`find_label_issues`: the calibrated off-diagonal ``C[i, j]`` is how many examples labelled i
   are estimated to truly be j; prune-by-noise-rate flags, among those labelled i, the ``C[i, j]`` with
   the largest margin ``p_j - p_i``.
4. :func:`label_quality_scores` and :func:`rank_label_issues` rank them for review.

Only numpy (plus scikit-learn for the cross-validated model). Labels are integer class ids 0..K-1.
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
_EPS = 1e-6  # tolerance when comparing a probability with a threshold (as cleanlab)


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


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray | list[int], n_classes: int, k: int = 5,
                              seed: int = 0, model: str = "logreg", pca_components: int = 40,
                              C: float = 0.1) -> np.ndarray:
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
                steps.append(PCA(n_components=min(pca_components, x.shape[1], len(train) - 1), whiten=True,
                                 random_state=seed))
            clf = make_pipeline(*steps, LogisticRegression(C=C, max_iter=1000))
            clf.fit(x[train], y[train])
            probs[np.ix_(test, clf.classes_)] = clf.predict_proba(x[test])  # a class absent in training gets 0
    return probs


# ---------------------------------------------------------------------------------------------
# 2. The confident joint


def confident_thresholds(labels: np.ndarray | list[int], probs: np.ndarray) -> np.ndarray:
    """``t_j``: mean predicted probability of class j over the examples labelled j (inf if none)."""
    labels, probs = _check(labels, probs)
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def _confident_guesses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per example, the class it confidently belongs to, or -1: among the classes whose probability
    reaches their threshold, the most probable one."""
    above = probs >= confident_thresholds(labels, probs) - _EPS
    guess = np.where(above, probs, -np.inf).argmax(axis=1)
    return np.where(above.any(axis=1), guess, -1)


def _round_preserving_row_sums(x: np.ndarray) -> np.ndarray:
    """Round each row to integers keeping its (rounded) sum: largest remainders get the extra units."""
    out = np.floor(x).astype(np.int64)
    short = np.rint(x.sum(axis=1)).astype(np.int64) - out.sum(axis=1)
    order = np.argsort(-(x - out), axis=1, kind="stable")
    for i, s in enumerate(short):
        out[i, order[i, :s]] += 1
    return out


def confident_joint(labels: np.ndarray | list[int], probs: np.ndarray, n_classes: int | None = None,
                    calibrate: bool = True) -> np.ndarray:
    """``[K, K]`` counts: ``C[i, j]`` examples labelled i that confidently belong to j.

    Examples confident in no class are not counted. As in cleanlab, the diagonal is at least 1 so
    every row can be calibrated. Calibrated (the default), row i is rescaled to the number of
    examples labelled i and rounded to integers keeping that total; uncalibrated, the raw counts.
    """
    labels, probs = _check(labels, probs)
    k = n_classes or probs.shape[1]
    if k != probs.shape[1]:
        raise ValueError(f"n_classes={k} but probs has {probs.shape[1]} columns")
    guess = _confident_guesses(labels, probs)
    counted = guess >= 0
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    if not calibrate:
        return joint
    counts = np.bincount(labels, minlength=k)
    return _round_preserving_row_sums(joint / joint.sum(axis=1, keepdims=True) * counts[:, None])


# ---------------------------------------------------------------------------------------------
# 3. Finding the issues


def _prune_by_noise_rate(labels: np.ndarray, probs: np.ndarray, prune: np.ndarray) -> np.ndarray:
    flagged = np.zeros(len(labels), dtype=bool)
    k = probs.shape[1]
    for i in range(k):
        members = np.flatnonzero(labels == i)
        for j in range(k):
            if j == i or prune[i, j] <= 0:
                continue
            margin = probs[members, j] - probs[members, i]
            flagged[members[np.argsort(-margin, kind="stable")[: prune[i, j]]]] = True
    return flagged


def _prune_by_class(labels: np.ndarray, probs: np.ndarray, prune: np.ndarray) -> np.ndarray:
    flagged = np.zeros(len(labels), dtype=bool)
    for i in range(probs.shape[1]):
        members = np.flatnonzero(labels == i)
        n_off = int(prune[i].sum() - prune[i, i])
        flagged[members[np.argsort(probs[members, i], kind="stable")[:n_off]]] = True
    return flagged


def _keep_at_least(joint: np.ndarray, labels: np.ndarray, min_examples_per_class: int) -> np.ndarray:
    """Shrink row i's off-diagonal (proportionally) so at least ``min_examples_per_class`` of those
    labelled i stay unflagged."""
    prune = joint.copy()
    counts = np.bincount(labels, minlength=len(joint))
    for i in range(len(joint)):
        off = prune[i].sum() - prune[i, i]
        allowed = max(counts[i] - min_examples_per_class, 0)
        if off > allowed:
            row = np.delete(prune[i], i) * (allowed / off)
            prune[i, np.arange(len(joint)) != i] = np.floor(row).astype(np.int64)
            prune[i, i] = counts[i] - (prune[i].sum() - prune[i, i])
    return prune


def find_label_issues(labels: np.ndarray | list[int], probs: np.ndarray, method: str = "prune_by_noise_rate",
                      min_examples_per_class: int = 1) -> np.ndarray:
    """Boolean mask of likely label errors.

    ``prune_by_noise_rate``: for each off-diagonal (given i, true j) of the calibrated confident joint,
    the ``C[i, j]`` examples labelled i with the largest ``p_j - p_i``.
    ``prune_by_class``: for each given class i, the ``sum_{j != i} C[i, j]`` examples labelled i with
    the lowest ``p_i``.
    ``both``: flagged by both of the above (cleanlab's ``filter_by="both"``).
    ``confident_learning``: the examples counted off the diagonal of the confident joint (C_confusion).
    As in cleanlab, an example whose most probable class is its given label is never flagged.
    """
    labels, probs = _check(labels, probs)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if method == "confident_learning":
        guess = _confident_guesses(labels, probs)
        flagged = (guess >= 0) & (guess != labels)
    else:
        prune = _keep_at_least(confident_joint(labels, probs), labels, min_examples_per_class)
        if method == "prune_by_noise_rate":
            flagged = _prune_by_noise_rate(labels, probs, prune)
        elif method == "prune_by_class":
            flagged = _prune_by_class(labels, probs, prune)
        else:
            flagged = _prune_by_noise_rate(labels, probs, prune) & _prune_by_class(labels, probs, prune)
    nudged = probs.copy()
    nudged[np.arange(len(labels)), labels] += _EPS  # a tie goes to the given label
    return flagged & (nudged.argmax(axis=1) != labels)


# ---------------------------------------------------------------------------------------------
# 4. Ranking


def label_quality_scores(labels: np.ndarray | list[int], probs: np.ndarray,
                         method: str = "self_confidence") -> np.ndarray:
    """Per example, in [0, 1], lower = more likely mislabelled.

    ``self_confidence``: ``p_given``. ``normalized_margin``: ``(p_given - max_{j != given} p_j + 1) / 2``.
    """
    labels, probs = _check(labels, probs)
    given = probs[np.arange(len(labels)), labels]
    if method == "self_confidence":
        return given
    if method == "normalized_margin":
        others = probs.copy()
        others[np.arange(len(labels)), labels] = -np.inf
        return (given - others.max(axis=1) + 1.0) / 2.0
    raise ValueError(f"method must be 'self_confidence' or 'normalized_margin', not {method!r}")


def rank_label_issues(labels: np.ndarray | list[int], probs: np.ndarray, method: str = "prune_by_noise_rate",
                      score: str = "self_confidence") -> pd.DataFrame:
    """One row per example (index, given_label, suggested_label, score, is_issue): flagged issues
    first, each group by ascending score (most suspicious first), ties by index."""
    labels, probs = _check(labels, probs)
    frame = pd.DataFrame({
        "index": np.arange(len(labels)),
        "given_label": labels,
        "suggested_label": probs.argmax(axis=1),
        "score": label_quality_scores(labels, probs, score),
        "is_issue": find_label_issues(labels, probs, method),
    })
    return frame.sort_values(["is_issue", "score", "index"], ascending=[False, True, True],
                             kind="stable").reset_index(drop=True)
