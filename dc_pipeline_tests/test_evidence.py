"""Intervals on evaluation figures and a promotion gate that decides on them, with constructed predictions."""

import numpy as np
import pandas as pd
import pytest

from dc_pipeline.core.ml import metrics as m
from dc_pipeline.core.ml.bootstrap import (
    FIGURES,
    Outcomes,
    bootstrap_indices,
    compare,
    intervals,
    point_figures,
    resampled_figures,
    seed_spread,
)
from dc_pipeline.core.ml.evaluation import evaluate
from dc_pipeline.core.ml.registry import GatePolicy, promotion_decision
from dc_pipeline.core.serving.ab_report import live_comparison

KEYS = tuple((name, sev) for name in ("fog", "noise", "rotate", "blur") for sev in (1, 2, 3))


def calibrated(n: int, k: int, clean_accuracy: float, corrupted_accuracy: float, seed: int) -> Outcomes:
    """Per-image results drawn from their confidences (so about calibrated): correct with probability p."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(2 * clean_accuracy - 1, 1, n)
    pc = rng.uniform(2 * corrupted_accuracy - 1, 1, (k, n))
    return Outcomes(p, rng.random(n) < p, KEYS, pc, rng.random((k, n)) < pc, threshold=0.9)


@pytest.fixture
def champion():
    return calibrated(400, len(KEYS), 0.95, 0.75, seed=1)


def variant(
    base: Outcomes, seed: int, fix_corrupted=0.0, break_corrupted=0.0, break_clean=0.0, overconfident=False
) -> Outcomes:
    """``base`` with each corrupted error fixed with probability ``fix_corrupted`` and each corrupted (clean)
    success broken with probability ``break_corrupted`` (``break_clean``); confidences move to the new
    probability of being right, so a calibrated base stays calibrated. ``overconfident``: every confidence
    near 1."""
    rng = np.random.default_rng(seed)
    ok_c = base.correct_corrupted.copy()
    ok_c[~ok_c & (rng.random(ok_c.shape) < fix_corrupted)] = True
    ok_c[base.correct_corrupted & (rng.random(ok_c.shape) < break_corrupted)] = False
    conf_c = (base.confidence_corrupted + (1 - base.confidence_corrupted) * fix_corrupted) * (1 - break_corrupted)
    ok = base.correct & ~(rng.random(base.n) < break_clean)
    conf = base.confidence * (1 - break_clean)
    if overconfident:
        conf, conf_c = rng.uniform(0.995, 1.0, conf.shape), rng.uniform(0.995, 1.0, conf_c.shape)
    return Outcomes(conf, ok, KEYS, conf_c, ok_c, base.threshold)


def test_the_full_sample_reproduces_every_figure_of_the_metrics_module(champion):
    p = point_figures(champion)
    conf_c, ok_c = champion.confidence_corrupted.ravel(), champion.correct_corrupted.ravel()
    errors = {k: 1 - ok.mean() for k, ok in zip(KEYS, champion.correct_corrupted)}
    expected = {
        "clean_error": 1 - champion.correct.mean(),
        "mce": m.mean_corruption_error(errors),
        "mce_unseen_by_augmix": m.mean_corruption_error({k: v for k, v in errors.items() if k[0] != "rotate"}),
        "ece_clean": m.expected_calibration_error(champion.confidence, champion.correct),
        "rms_calibration_clean": m.rms_calibration_error(champion.confidence, champion.correct),
        "ece_corrupted": m.expected_calibration_error(conf_c, ok_c),
        "rms_calibration_corrupted": m.rms_calibration_error(conf_c, ok_c),
        "automation_rate_clean": m.automation_rate(champion.confidence, champion.correct, 0.9)[0],
        "automation_rate_corrupted": m.automation_rate(conf_c, ok_c, 0.9)[0],
    }
    assert set(p) == set(FIGURES)
    for k in FIGURES:
        assert p[k] == pytest.approx(expected[k], abs=1e-12), k


def test_every_resample_gives_what_the_metrics_module_gives_on_the_drawn_images(champion):
    """Resamples are computed from image multiplicities, without materialising or sorting each resample."""
    idx = bootstrap_indices(champion.n, 5, seed=11)
    got = resampled_figures(champion, idx)
    for b, drawn in enumerate(idx):
        conf_c = champion.confidence_corrupted[:, drawn].ravel()
        ok_c = champion.correct_corrupted[:, drawn].ravel()
        expected = {
            "clean_error": 1 - champion.correct[drawn].mean(),
            "ece_clean": m.expected_calibration_error(champion.confidence[drawn], champion.correct[drawn]),
            "rms_calibration_clean": m.rms_calibration_error(champion.confidence[drawn], champion.correct[drawn]),
            "ece_corrupted": m.expected_calibration_error(conf_c, ok_c),
            "rms_calibration_corrupted": m.rms_calibration_error(conf_c, ok_c),
            "automation_rate_corrupted": m.automation_rate(conf_c, ok_c, champion.threshold)[0],
            "mce": m.mean_corruption_error(
                {k: 1 - ok[drawn].mean() for k, ok in zip(KEYS, champion.correct_corrupted)}
            ),
        }
        for k, v in expected.items():
            assert got[k][b] == pytest.approx(v, abs=1e-12), (b, k)


def test_evaluate_keeps_per_image_outcomes_that_give_its_summary():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(16, 4))

    def predict(x):
        logits = x.reshape(len(x), -1) @ weights * 3
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    x, xv = rng.random((150, 4, 4)), rng.random((120, 4, 4))
    y, yv = predict(x).argmax(1), predict(xv).argmax(1)
    y[:30], yv[:20] = (y[:30] + 1) % 4, (yv[:20] + 1) % 4  # some errors
    corrupted = {(n, s): np.clip(x + rng.normal(0, 0.2 * s, x.shape), 0, 1) for n in ("fog", "shear") for s in (1, 2)}
    on_test = np.arange(150) < 100  # the automation rate is measured on these only
    ev = evaluate(predict, (x, y), (xv, yv), corrupted, np.array(["a"] * 150), 4, automation_images=on_test)
    assert ev.summary["n_automation"] == 100
    conf = predict(x).max(axis=1)
    assert ev.summary["automation_rate_clean"] == np.mean(conf[:100] >= ev.summary["automation_threshold"])
    p = point_figures(ev.outcomes)
    for k in FIGURES:
        assert p[k] == pytest.approx(ev.summary[k], abs=1e-12), k
    frame = ev.outcomes.to_frame()
    assert len(frame) == 1 + len(corrupted)
    again = Outcomes.from_frame(frame, ev.summary["automation_threshold"])
    assert point_figures(again) == p


def test_intervals_hold_the_estimate_and_narrow_with_more_images(champion):
    small = intervals(champion, resamples=400, seed=3)
    large = intervals(calibrated(1600, len(KEYS), 0.95, 0.75, seed=2), resamples=400, seed=3)
    for k in ("clean_error", "mce", "rms_calibration_corrupted", "automation_rate_corrupted"):
        assert 0.3 < large[k].width / small[k].width < 0.75, (k, large[k].width, small[k].width)  # about 1/2
    for k in ("clean_error", "mce", "automation_rate_corrupted"):
        assert small[k].low <= small[k].estimate <= small[k].high, k
    # A binned calibration error is biased upwards, the more so the fewer distinct images: resamples (which
    # repeat images) lie above the estimate. The gate reads it through paired differences, where it cancels.
    assert small["rms_calibration_corrupted"].low > small["rms_calibration_corrupted"].estimate
    assert intervals(champion, resamples=400, seed=3) == small, "seeded: the same intervals again"


def test_a_paired_comparison_is_narrower_than_the_two_intervals_suggest(champion):
    challenger = variant(champion, 5, fix_corrupted=0.05)
    cmp = compare(challenger, champion, resamples=500)
    unpaired = np.hypot(cmp.a["mce"].width, cmp.b["mce"].width)
    assert cmp.difference["mce"].width < 0.5 * unpaired
    same = compare(champion, champion, resamples=200)
    assert same.difference["mce"].low == same.difference["mce"].high == 0.0
    assert same.relative_mce.estimate == 1.0


def test_gate_promotes_a_clearly_better_challenger(champion):
    better = variant(champion, 7, fix_corrupted=0.4)
    decision = promotion_decision("new", "old", compare(better, champion), GatePolicy())
    assert decision.passed and decision.verdict.startswith("promoted"), decision.verdict
    assert decision.mce_difference.high < 0
    assert decision.inputs["difference"]["mce"]["high"] == decision.mce_difference.high
    assert decision.inputs["champion"]["mce"]["estimate"] == pytest.approx(point_figures(champion)["mce"])


def test_gate_keeps_the_champion_when_the_difference_is_within_noise(champion):
    similar = variant(champion, 9, fix_corrupted=0.06, break_corrupted=0.018)  # fixes and breaks
    cmp = compare(similar, champion)
    assert cmp.difference["mce"].estimate < 0, "better on the point estimate..."
    decision = promotion_decision("new", "old", cmp, GatePolicy())
    assert not decision.passed and "mCE is not better beyond noise" in decision.verdict, "...but not beyond noise"
    # a point-estimate rule with no margin would have promoted it
    assert cmp.a["mce"].estimate < cmp.b["mce"].estimate


@pytest.mark.parametrize(
    ("guard", "change"),
    [
        ("clean error", {"break_clean": 0.12}),
        ("RMS calibration error on corrupted data", {"overconfident": True}),
    ],
)
def test_gate_refuses_a_challenger_worse_on_a_guard_figure(champion, guard, change):
    worse = variant(champion, 9, fix_corrupted=0.4, **change)
    cmp = compare(worse, champion)
    assert cmp.difference["mce"].high < 0, "better on mCE beyond noise"
    decision = promotion_decision("new", "old", cmp, GatePolicy())
    assert not decision.passed and guard in decision.verdict and "mCE" not in decision.verdict, decision.verdict
    tolerant = {"max_clean_error_increase": 1.0, "calibration_tolerance": 1.0}
    assert promotion_decision("new", "old", cmp, GatePolicy(**tolerant)).passed


def test_the_first_model_needs_absolute_bounds_and_a_champion_passes_against_itself(champion):
    assert promotion_decision("m", None, intervals(champion, resamples=100), GatePolicy()).passed
    bad = promotion_decision("m", None, intervals(champion, resamples=100), GatePolicy(first_max_mce=0.1))
    assert not bad.passed and "mCE" in bad.verdict
    assert promotion_decision("m", "m", {}, GatePolicy()).passed


def test_a_comparison_needs_the_same_test_images(champion):
    with pytest.raises(ValueError, match="same evaluation images"):
        compare(calibrated(399, len(KEYS), 0.9, 0.7, seed=4), champion)


def test_seed_spread():
    s = seed_spread({0: 0.57, 1: 0.70, 2: 0.59})
    assert s.n == 3 and s.low == 0.57 and s.high == 0.70 and s.mean == pytest.approx(0.62)
    assert s.sd == pytest.approx(np.std([0.57, 0.70, 0.59], ddof=1))


def test_a_challenger_with_non_finite_predictions_is_refused(champion):
    broken = variant(champion, 3, fix_corrupted=0.4)
    broken.confidence_corrupted[0, :10] = np.nan  # what a diverged network's probabilities give
    for champion_id, evidence in (("old", compare(broken, champion)), (None, intervals(broken, resamples=50))):
        decision = promotion_decision("new", champion_id, evidence, GatePolicy(mce_relative_margin=-10.0))
        assert not decision.passed and "not finite" in decision.verdict, decision.verdict


# -- the scoring service's evidence ------------------------------------------------------------------------
def served(version: str, requests: range, error: float, automation: float, seed: int) -> pd.DataFrame:
    """Labelled predictions of ``version`` on ``requests``: wrong with probability ``error``, auto-accepted with
    probability ``automation`` (wrong answers less often)."""
    rng = np.random.default_rng(seed)
    n = len(requests)
    label = rng.integers(0, 10, n)
    wrong = rng.random(n) < error
    accepted = rng.random(n) < np.where(wrong, automation / 3, automation)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in requests],
            "model_version": version,
            "predicted_class": np.where(wrong, (label + 1) % 10, label),
            "routing": np.where(accepted, "auto_accept", "review"),
            "label": label,
        }
    )


def test_live_evidence_is_paired_in_shadow_mode_and_independent_in_a_split():
    shadow = pd.concat([served("new", range(600), 0.05, 0.8, 1), served("old", range(600), 0.05, 0.8, 2)])
    paired = live_comparison(shadow, "new", "old", min_labelled=100, resamples=500)
    assert paired.design == "paired" and paired.n_challenger == paired.n_champion == 600
    split = pd.concat([served("new", range(300), 0.05, 0.8, 1), served("old", range(300, 600), 0.05, 0.8, 2)])
    independent = live_comparison(split, "new", "old", min_labelled=100, resamples=500)
    assert independent.design == "independent" and independent.n_challenger == 300
    for live in (paired, independent):
        for figure, interval in live.difference.items():
            assert interval.low <= interval.estimate <= interval.high, figure
            expected = live.challenger_figures[figure] - live.champion_figures[figure]
            assert interval.estimate == pytest.approx(expected)
    # the same requests answered alike by both models: a paired difference of exactly zero
    twins = pd.concat([served("new", range(200), 0.05, 0.8, 1), served("old", range(200), 0.05, 0.8, 1)])
    same = live_comparison(twins, "new", "old", min_labelled=100, resamples=200)
    assert all(i.low == i.high == 0.0 for i in same.difference.values())
    assert live_comparison(split, "new", "old", min_labelled=301) is None, "too few labelled predictions"
    assert live_comparison(split, "new", "absent", min_labelled=1) is None


def test_live_evidence_holds_back_a_challenger_that_is_worse_in_service(champion):
    offline = compare(variant(champion, 7, fix_corrupted=0.4), champion)  # better offline beyond noise
    assert promotion_decision("new", "old", offline, GatePolicy()).passed
    worse = pd.concat([served("new", range(400), 0.20, 0.8, 1), served("old", range(400), 0.03, 0.8, 2)])
    live = live_comparison(worse, "new", "old", resamples=500)
    decision = promotion_decision("new", "old", offline, GatePolicy(), live)
    assert not decision.passed and "live error is worse beyond noise" in decision.verdict, decision.verdict
    assert "mCE" not in decision.verdict and decision.inputs["live"]["design"] == "paired"
    assert promotion_decision("new", "old", offline, GatePolicy(use_live_evidence=False), live).passed
    tolerant = GatePolicy(live_error_tolerance=0.5, live_automation_tolerance=0.5)
    assert promotion_decision("new", "old", offline, tolerant, live).passed
    # fewer auto-accepted answers at the same error is worse business
    timid = pd.concat([served("new", range(400), 0.03, 0.4, 1), served("old", range(400), 0.03, 0.8, 2)])
    held = promotion_decision("new", "old", offline, GatePolicy(), live_comparison(timid, "new", "old", resamples=500))
    assert not held.passed and "live automation rate is worse" in held.verdict, held.verdict
    # live evidence never pushes a challenger through that the offline evidence refuses
    better_live = pd.concat([served("new", range(400), 0.01, 0.9, 1), served("old", range(400), 0.2, 0.5, 2)])
    flat = compare(champion, champion, resamples=200)
    live = live_comparison(better_live, "new", "old", resamples=500)
    assert not promotion_decision("new", "old", flat, GatePolicy(), live).passed
    good = promotion_decision("new", "old", offline, GatePolicy(), live)
    assert good.passed and "in the scoring service (paired, 400 and 400" in good.verdict, good.verdict


def test_drawing_cell_counts_is_the_row_bootstrap():
    """The multinomial draw of (wrong, accepted) cell counts gives what resampling rows gives, paired too."""
    from dc_pipeline.core.serving.ab_report import resampled_figures

    a = served("a", range(500), 0.1, 0.7, 1)
    wrong, accepted = (a.predicted_class != a.label).to_numpy(), (a.routing == "auto_accept").to_numpy()
    flip = np.random.default_rng(5).random((2, 500))
    pairs = [(wrong, accepted), (wrong | (flip[0] < 0.05), accepted & (flip[1] < 0.9))]  # b: a, a little worse
    drawn = resampled_figures(pairs, 20_000, seed=3)
    idx = bootstrap_indices(500, 20_000, seed=4)
    for k, (wrong, accepted) in enumerate(pairs):
        rows = {
            "error": wrong[idx].mean(axis=1),
            "automation_rate": accepted[idx].mean(axis=1),
            "accepted_error": (wrong & accepted)[idx].sum(axis=1) / accepted[idx].sum(axis=1),
        }
        for figure, values in rows.items():
            assert np.quantile(drawn[k][figure], [0.025, 0.5, 0.975]) == pytest.approx(
                np.quantile(values, [0.025, 0.5, 0.975]), abs=0.004
            ), figure
    # paired: the difference's spread matches the row bootstrap's, far below what independent draws give
    difference = drawn[0]["error"] - drawn[1]["error"]
    by_rows = pairs[0][0][idx].mean(axis=1) - pairs[1][0][idx].mean(axis=1)
    assert difference.std() == pytest.approx(by_rows.std(), rel=0.05)
    (alone,) = resampled_figures(pairs[1:], 20_000, seed=6)
    assert difference.std() < 0.5 * (drawn[0]["error"] - alone["error"]).std()


def test_a_staged_roll_out_holds_a_challenger_until_the_service_has_judged_it(champion):
    offline = compare(variant(champion, 7, fix_corrupted=0.4), champion)
    staged = GatePolicy(require_live_evidence=True, use_live_evidence=False)  # requiring it implies reading it
    held = promotion_decision("new", "old", offline, staged)
    assert not held.passed and "held for the scoring service's evidence" in held.verdict, held.verdict
    alike = pd.concat([served("new", range(300), 0.05, 0.8, 1), served("old", range(300), 0.05, 0.8, 1)])
    passed = promotion_decision("new", "old", offline, staged, live_comparison(alike, "new", "old", resamples=300))
    assert passed.passed and "in the scoring service (paired, 300 and 300" in passed.verdict, passed.verdict
    worse = pd.concat([served("new", range(300), 0.3, 0.8, 1), served("old", range(300), 0.05, 0.8, 1)])
    vetoed = promotion_decision("new", "old", offline, staged, live_comparison(worse, "new", "old", resamples=300))
    assert not vetoed.passed and "live error is worse" in vetoed.verdict
    # a challenger the offline evidence refuses is refused for that, not held
    flat = promotion_decision("new", "old", compare(champion, champion, resamples=200), staged)
    assert not flat.passed and "mCE is not better" in flat.verdict and "held" not in flat.verdict
