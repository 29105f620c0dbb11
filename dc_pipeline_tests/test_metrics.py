"""Tests for the evaluation metrics on small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dc_pipeline.core.ml.metrics import (
    NO_AUTOMATION_THRESHOLD,
    automation_rate,
    choose_threshold,
    confidence_and_correct,
    confusion_matrix,
    error_rate,
    expected_calibration_error,
    mean_corruption_error,
    relative_corruption_error,
    reliability_diagram_data,
    rms_calibration_error,
    slice_errors,
)

# six samples: two near 0.9 (both right), two at 0.55 (one right), two at 0.25 (one right)
CONF = np.array([0.95, 0.85, 0.55, 0.55, 0.25, 0.25])
CORRECT = np.array([1, 1, 1, 0, 0, 1], dtype=bool)


def test_error_rate_and_confidence() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 2, 1, 1])
    assert error_rate(probs, labels) == pytest.approx(0.5)
    assert isinstance(error_rate(probs, labels), float)
    conf, correct = confidence_and_correct(probs, labels)
    np.testing.assert_allclose(conf, [0.7, 0.6, 0.5, 0.6])
    np.testing.assert_array_equal(correct, [True, True, False, False])


def test_ece_hand_computed() -> None:
    # 5 bins (lo, hi]: (0.8,1]: conf 0.9, acc 1.0, gap 0.10; (0.4,0.6]: conf 0.55, acc 0.5, gap 0.05;
    # (0.2,0.4]: conf 0.25, acc 0.5, gap 0.25. Each bin holds 2/6: ECE = (0.10+0.05+0.25)/3 = 0.1333...
    ece = expected_calibration_error(CONF, CORRECT, n_bins=5)
    assert isinstance(ece, float)
    assert ece == pytest.approx(0.4 / 3)


def test_rms_calibration_error_hand_computed() -> None:
    # Sorted by confidence: [0.25, 0.25 | 0.55, 0.55 | 0.85, 0.95], correct [0, 1 | 1, 0 | 1, 1].
    # bin_size=2 -> three bins; (conf - acc) = -0.25, 0.05, -0.10
    # cerr = 2/6 * (0.0625 + 0.0025 + 0.01) = 0.025 -> sqrt = 0.158114
    assert rms_calibration_error(CONF, CORRECT, bin_size=2) == pytest.approx(math.sqrt(0.025))
    # reference loop leaves out the last bin: 2/6 * (0.0625 + 0.0025) = 0.021667 -> 0.147196
    assert rms_calibration_error(CONF, CORRECT, bin_size=2, drop_last_bin=True) == pytest.approx(math.sqrt(0.065 / 3))
    # bin_size=4: 6 // 4 = 1 bin, widened to all six samples: conf 3.4/6, acc 4/6 -> |diff| = 0.1
    assert rms_calibration_error(CONF, CORRECT, bin_size=4) == pytest.approx(0.1)
    assert rms_calibration_error(CONF, CORRECT, bin_size=4, drop_last_bin=True) == 0.0
    # fewer samples than bin_size: one bin
    assert rms_calibration_error(CONF, CORRECT, bin_size=100) == pytest.approx(0.1)


def test_rms_calibration_error_binning_with_remainder() -> None:
    """350 samples, bins of 100: [0,100), [100,200), [200,350) -- the last bin takes the remainder."""
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 350)
    correct = rng.random(350) < 0.7
    order = np.argsort(conf)
    c, k = conf[order], correct[order].astype(float)
    parts = [(0, 100), (100, 200), (200, 350)]
    terms = [(hi - lo) / 350 * (c[lo:hi].mean() - k[lo:hi].mean()) ** 2 for lo, hi in parts]
    assert rms_calibration_error(conf, correct) == pytest.approx(math.sqrt(sum(terms)))
    assert rms_calibration_error(conf, correct, drop_last_bin=True) == pytest.approx(math.sqrt(sum(terms[:2])))


def test_perfect_calibration_gives_about_zero() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.random(conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.01
    # bins of 100 have a sampling-noise floor of about 0.045; large bins show the true value
    assert rms_calibration_error(conf, correct, bin_size=10_000) < 0.01
    assert rms_calibration_error(conf, correct) < 0.06
    # an overconfident model is clearly worse
    assert rms_calibration_error(np.minimum(conf + 0.2, 1.0), correct) > 0.15


def test_reliability_diagram_data() -> None:
    data = reliability_diagram_data(CONF, CORRECT, n_bins=5)
    np.testing.assert_allclose(data.centers, [0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_array_equal(data.counts, [0, 2, 2, 0, 2])
    np.testing.assert_allclose(data.accuracy[[1, 2, 4]], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(data.confidence[[1, 2, 4]], [0.25, 0.55, 0.9])
    assert np.isnan(data.accuracy[0]) and np.isnan(data.confidence[3])
    # edges: 0 goes to the first bin, 1 to the last, an exact edge to the bin below it
    edge = reliability_diagram_data(np.array([0.0, 0.5, 1.0]), np.array([1, 1, 1]), n_bins=2)
    np.testing.assert_array_equal(edge.counts, [2, 1])


def test_choose_threshold_and_automation_rate() -> None:
    conf = np.array([0.99, 0.98, 0.95, 0.9, 0.9, 0.8, 0.7])
    correct = np.array([1, 1, 1, 1, 0, 1, 0], dtype=bool)
    # accepted sets by threshold: 0.95 -> 3 right (err 0); 0.9 -> the tie adds a right and a wrong
    # (1/5 = 0.2); 0.8 -> 1/6 = 0.167; 0.7 -> 2/7 = 0.286
    assert choose_threshold(conf, correct, max_error=0.0) == 0.95
    assert choose_threshold(conf, correct, max_error=0.17) == 0.8  # 0.9 fails, 0.8 passes: lowest wins
    assert choose_threshold(conf, correct, max_error=0.2) == 0.8
    assert choose_threshold(conf, correct, max_error=0.3) == 0.7
    rate, err = automation_rate(conf, correct, 0.8)
    assert rate == pytest.approx(6 / 7) and err == pytest.approx(1 / 6)
    assert automation_rate(conf, correct, 0.95) == (pytest.approx(3 / 7), 0.0)


def test_no_qualifying_threshold_accepts_nothing() -> None:
    conf = np.array([1.0, 0.9, 0.8])
    correct = np.array([False, True, True])
    t = choose_threshold(conf, correct, max_error=0.01)
    assert t == NO_AUTOMATION_THRESHOLD and t > 1.0
    assert automation_rate(conf, correct, t) == (0.0, 0.0)
    assert choose_threshold(np.array([]), np.array([])) == NO_AUTOMATION_THRESHOLD


def test_confusion_matrix() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert cm.sum() == 6
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_mean_and_relative_corruption_error() -> None:
    model = {("blur", 1): 0.1, ("blur", 2): 0.3, ("noise", 1): 0.5, ("noise", 2): 0.7}
    base = {("blur", 1): 0.4, ("blur", 2): 0.4, ("noise", 1): 0.6, ("noise", 2): 0.6}
    # model: blur 0.2, noise 0.6 -> mCE 0.4; baseline: 0.4 and 0.6 -> 0.5
    assert mean_corruption_error(model) == pytest.approx(0.4)
    assert mean_corruption_error(base) == pytest.approx(0.5)
    rel = relative_corruption_error(model, base)
    assert rel.ratio == pytest.approx(0.8)
    assert rel.per_corruption == {"blur": pytest.approx(0.5), "noise": pytest.approx(1.0)}
    assert rel.normalized_mce == pytest.approx(0.75)
    with pytest.raises(ValueError):
        relative_corruption_error(model, {("blur", 1): 0.4})


def test_slice_errors() -> None:
    df = pd.DataFrame({"source": ["a", "a", "b", "b", "b", "c"], "correct": [1, 0, 1, 1, 1, 0]})
    out = slice_errors(df, "source")
    assert list(out.columns) == ["source", "count", "error"]
    assert out["source"].tolist() == ["a", "b", "c"]
    assert out["count"].tolist() == [2, 3, 1]
    np.testing.assert_allclose(out["error"], [0.5, 0.0, 1.0])
