"""Confident learning (through cleanlab): the confident joint, prune-by-noise-rate and the ranking."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dc_pipeline.core.curation.label_issues import (
    METHODS,
    confident_joint,
    confident_thresholds,
    find_label_issues,
    label_quality_scores,
    out_of_fold_probabilities,
    rank_label_issues,
)

# A hand-computed example: 3 classes, 10 examples.
TINY_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
TINY_PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # 0: confident 0
        [0.70, 0.20, 0.10],  # 1: confident 0
        [0.10, 0.80, 0.10],  # 2: confident 1 (labelled 0)
        [0.50, 0.45, 0.05],  # 3: confident in no class: not counted
        [0.10, 0.80, 0.10],  # 4: confident 1
        [0.60, 0.35, 0.05],  # 5: confident 0 (labelled 1)
        [0.05, 0.65, 0.30],  # 6: confident 1
        [0.10, 0.20, 0.70],  # 7: confident 2
        [0.00, 0.90, 0.10],  # 8: confident 1 (labelled 2)
        [0.56, 0.00, 0.44],  # 9: confident in 0 and 2, 0 is more probable (labelled 2)
    ]
)
# t_0 = (.9+.7+.1+.5)/4 = .55, t_1 = (.8+.35+.65)/3 = .6, t_2 = (.7+.1+.44)/3 = .41333
TINY_RAW = np.array([[2, 1, 0], [1, 2, 0], [1, 1, 1]])
# row 0 scaled to its 4 examples: [2.67, 1.33, 0] -> [3, 1, 0]; rows 1 and 2 already sum to 3
TINY_CALIBRATED = np.array([[3, 1, 0], [1, 2, 0], [1, 1, 1]])


def flip_labels(labels: np.ndarray, n_flips: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), size=n_flips, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, n_classes, size=n_flips)) % n_classes
    truth = np.zeros(len(labels), dtype=bool)
    truth[flipped] = True
    return noisy, truth


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hits = int((flagged & truth).sum())
    return hits / max(int(flagged.sum()), 1), hits / int(truth.sum())


def test_confident_joint_matches_the_hand_computed_matrix():
    assert confident_thresholds(TINY_LABELS, TINY_PROBS) == pytest.approx([0.55, 0.6, 1.24 / 3])
    assert (confident_joint(TINY_LABELS, TINY_PROBS, calibrate=False) == TINY_RAW).all()
    calibrated = confident_joint(TINY_LABELS, TINY_PROBS)
    assert (calibrated == TINY_CALIBRATED).all()
    assert (calibrated.sum(axis=1) == np.bincount(TINY_LABELS)).all()


def test_prune_by_noise_rate_on_the_hand_computed_example():
    # (given 0, true 1): 1 to prune, largest p1 - p0 among those labelled 0 is example 2;
    # (1, 0): example 5; (2, 0): example 9 (p0 - p2 = .12); (2, 1): example 8.
    assert np.flatnonzero(find_label_issues(TINY_LABELS, TINY_PROBS)).tolist() == [2, 5, 8, 9]
    assert np.flatnonzero(find_label_issues(TINY_LABELS, TINY_PROBS, "confident_learning")).tolist() == [2, 5, 8, 9]
    ranked = rank_label_issues(TINY_LABELS, TINY_PROBS)
    assert list(ranked.columns) == ["index", "given_label", "suggested_label", "score", "is_issue"]
    assert ranked["index"].tolist()[:4] == [2, 8, 5, 9]  # self-confidence .1, .1, .35, .44
    assert ranked["is_issue"].tolist() == [True] * 4 + [False] * 6
    assert ranked["suggested_label"].tolist()[:4] == [1, 1, 0, 0]
    assert ranked["score"].iloc[4:].is_monotonic_increasing


def test_quality_scores():
    assert label_quality_scores(TINY_LABELS, TINY_PROBS)[[0, 2]] == pytest.approx([0.9, 0.1])
    margin = label_quality_scores(TINY_LABELS, TINY_PROBS, "normalized_margin")
    assert margin[[0, 2, 3]] == pytest.approx([(0.9 - 0.05 + 1) / 2, (0.1 - 0.8 + 1) / 2, (0.5 - 0.45 + 1) / 2])
    with pytest.raises(ValueError):
        label_quality_scores(TINY_LABELS, TINY_PROBS, "entropy")


def test_inputs_are_checked():
    with pytest.raises(ValueError):
        find_label_issues(TINY_LABELS[:-1], TINY_PROBS)
    with pytest.raises(ValueError):
        find_label_issues(np.where(TINY_LABELS == 2, 3, TINY_LABELS), TINY_PROBS)
    with pytest.raises(ValueError):
        find_label_issues(TINY_LABELS, TINY_PROBS, method="magic")


def test_gaussian_blobs_with_known_flips():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    labels = np.repeat(np.arange(3), 100)
    x = centers[labels] + rng.normal(size=(300, 2))
    noisy, truth = flip_labels(labels, 15, 3, seed=1)
    probs = out_of_fold_probabilities(x, noisy, 3, k=5, seed=0, C=1.0)
    flagged = find_label_issues(noisy, probs)
    precision, recall = precision_recall(flagged, truth)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    ranked = rank_label_issues(noisy, probs)
    top = ranked.head(int(flagged.sum()))
    assert top["is_issue"].all()
    assert (top["suggested_label"] == labels[top["index"]]).mean() >= 0.8, "suggestions recover the true class"


@pytest.fixture(scope="module")
def noisy_digits():
    x, y = load_digits(return_X_y=True)
    noisy, truth = flip_labels(y, int(round(0.03 * len(y))), 10, seed=0)
    return x, y, noisy, truth


def test_real_digits_with_three_percent_flipped(noisy_digits):
    x, y, noisy, truth = noisy_digits
    probs = out_of_fold_probabilities(x, noisy, 10, seed=0)
    assert probs.shape == (len(y), 10) and np.allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == y).mean() > 0.9
    joint = confident_joint(noisy, probs, 10)
    assert (joint.sum(axis=1) == np.bincount(noisy, minlength=10)).all() and joint.sum() == len(y)
    masks = {m: find_label_issues(noisy, probs, m) for m in METHODS}
    precision, recall = precision_recall(masks["prune_by_noise_rate"], truth)
    assert precision >= 0.5 and recall >= 0.6, (precision, recall)  # measured: 0.84 and 0.85
    both = masks["both"]
    assert not (both & ~masks["prune_by_noise_rate"]).any() and not (both & ~masks["prune_by_class"]).any()
    assert precision_recall(both, truth)[0] >= precision - 0.05
    n_off = joint.sum() - np.trace(joint)
    assert abs(int(masks["prune_by_noise_rate"].sum()) - n_off) <= 0.2 * n_off, "about as many as estimated"


def test_out_of_fold_probabilities_are_deterministic_for_a_seed(noisy_digits):
    x, _, noisy, _ = noisy_digits
    x, noisy = x[:600], noisy[:600]
    a = out_of_fold_probabilities(x, noisy, 10, seed=3, model="pca_logreg")
    b = out_of_fold_probabilities(x, noisy, 10, seed=3, model="pca_logreg")
    c = out_of_fold_probabilities(x, noisy, 10, seed=4, model="pca_logreg")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert rank_label_issues(noisy, a).equals(rank_label_issues(noisy, b))
    with pytest.raises(ValueError):
        out_of_fold_probabilities(x, noisy, 10, model="forest")
