"""Drift statistics on real digits: power on rotated/noisy batches, false alarms on fresh samples,
MMD cost bounds, label shift, Holm correction, the history rows and the HTML page.

Reference: 800 digits (28x28 in [0, 1]); batch: 200 disjoint digits, rotated / noisy / unchanged.
Embeddings: a fixed random projection + ReLU of the flattened images. Predicted probabilities: a
softmax over distances to the reference class means in embedding space (no trained model).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats
from sklearn.datasets import load_digits

from dc_pipeline.core.data.features import STAT_COLUMNS, image_statistics
from dc_pipeline.core.monitoring import drift
from dc_pipeline.core.monitoring.drift import (
    DriftThresholds,
    distribution_drift,
    drift_plots,
    drift_report,
    error_drift,
    feature_drift,
    holm,
    mmd_test,
    prediction_drift,
    verdict,
)

N_REF, N_CUR, N_TEST = 800, 200, 300
SOURCES = np.array(["field_app", "partner_api", "legacy_erp"])


class Digits:
    def __init__(self):
        d = load_digits()
        self.x = ndimage.zoom(d.images / 16.0, (1, 3.5, 3.5), order=1).clip(0, 1).astype(np.float32)
        self.y = d.target.astype(int)
        self.proj = np.random.default_rng(123).normal(size=(28 * 28, 64)) / 28.0
        self.sources = SOURCES[np.random.default_rng(5).integers(0, 3, len(self.y))]

    def embed(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x.reshape(len(x), -1) @ self.proj, 0).astype(np.float32)

    def split(self, seed: int):
        """Disjoint reference / test / batch indices."""
        perm = np.random.default_rng(seed).permutation(len(self.y))
        return perm[:N_REF], perm[N_REF : N_REF + N_TEST], perm[N_REF + N_TEST :]

    def report(self, seed: int, transform=None, batch_filter=None, **kwargs):
        ref, test, rest = self.split(seed)
        cur = rest if batch_filter is None else rest[batch_filter(self.y[rest])]
        cur = cur[:N_CUR]
        xc = self.x[cur] if transform is None else transform(self.x[cur], np.random.default_rng(seed))
        er = self.embed(self.x[ref])
        centroids = np.stack([er[self.y[ref] == k].mean(axis=0) for k in range(10)])
        scale = np.median(((er[:, None] - centroids[None]) ** 2).sum(-1)) / 10

        def probs(e):
            z = -((e[:, None] - centroids[None]) ** 2).sum(-1) / scale
            p = np.exp(z - z.max(axis=1, keepdims=True))
            return p / p.sum(axis=1, keepdims=True)

        ec = self.embed(xc)
        return drift_report(
            image_statistics(self.x[ref]),
            image_statistics(xc),
            er,
            ec,
            ref_probs=probs(self.embed(self.x[test])),
            cur_probs=probs(ec),
            ref_labels=self.y[ref],
            cur_labels=self.y[cur],
            ref_sources=self.sources[ref],
            cur_sources=self.sources[cur],
            test_labels=self.y[test],
            seed=seed,
            **kwargs,
        )


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(30, 45, len(x)) * rng.choice([-1, 1], len(x))
    return np.stack([ndimage.rotate(im, a, reshape=False, order=1) for im, a in zip(x, angles)]).clip(0, 1)


def noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (x + rng.normal(0, 0.3, x.shape)).clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


# --------------------------------------------------------------------------- power and false alarms


@pytest.mark.parametrize("name,transform", [("rotated", rotate), ("noisy", noisy)])
def test_shifted_batches_are_flagged_drift(digits, name, transform):
    reports = [digits.report(seed, transform) for seed in range(5)]
    verdicts = [r.verdict for r in reports]
    assert verdicts.count("drift") >= 4, f"{name}: verdicts over 5 seeds {verdicts}"
    if name == "rotated":
        p = [r.embeddings["p_value"] for r in reports]
        assert all(v < 0.01 for v in p), f"MMD must reject for rotated batches: p-values {p}"
    assert all(r.reasons for r in reports)


def test_same_distribution_batches_rarely_alarm(digits):
    reports = [digits.report(100 + seed) for seed in range(10)]
    counts = {v: sum(r.verdict == v for r in reports) for v in ("none", "warn", "drift")}
    msg = f"verdicts over 10 fresh same-distribution batches: {counts}; reasons: {[r.reasons for r in reports]}"
    assert counts["drift"] <= 1, msg
    assert counts["warn"] + counts["drift"] <= 2, msg


# --------------------------------------------------------------------------- MMD


def _naive_mmd2(x, y, sigma):
    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma**2))

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * k(x, y).mean()
    )


def test_mmd_matches_the_unbiased_estimator_and_detects_a_shift():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(size=(40, 5)) + 0.8
    out = mmd_test(x, y, n_permutations=300)
    assert out["n_ref_used"] == 60 and out["n_cur_used"] == 40
    assert out["mmd2"] == pytest.approx(_naive_mmd2(x, y, out["bandwidth"]), rel=1e-9, abs=1e-12)
    d = np.sqrt(((np.concatenate([x, y])[:, None] - np.concatenate([x, y])[None]) ** 2).sum(-1))
    assert out["bandwidth"] == pytest.approx(np.median(d[np.triu_indices(100, 1)]))
    assert out["p_value"] == pytest.approx(1 / 301)
    same = mmd_test(x, rng.normal(size=(40, 5)), n_permutations=300)
    assert same["p_value"] > 0.01
    assert mmd_test(x, y, n_permutations=300, seed=3) == mmd_test(x, y, n_permutations=300, seed=3)


def test_mmd_cost_is_bounded_by_the_subsample(monkeypatch):
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=(10_000, 64)).astype(np.float32), rng.normal(size=(2_000, 64)).astype(np.float32)
    shapes = []
    real = drift.statistics._pairwise_sq
    monkeypatch.setattr(drift.statistics, "_pairwise_sq", lambda a: shapes.append(a.shape) or real(a))
    out = mmd_test(ref, cur, max_ref=1000, max_cur=500, n_permutations=50)
    assert (out["n_ref_used"], out["n_cur_used"]) == (1000, 500)
    assert shapes == [(1500, 64)]  # one pooled kernel matrix, not one per permutation
    small = mmd_test(ref[:300], cur[:100], n_permutations=10)
    assert (small["n_ref_used"], small["n_cur_used"]) == (300, 100)


# --------------------------------------------------------------------------- categorical tests


def test_label_shift_is_flagged(digits):
    report = digits.report(0, batch_filter=lambda y: y < 5)
    labels = report.labels
    assert labels["p_value"] < 1e-10 and labels["js_distance"] > DriftThresholds().js_warn
    assert report.families["labels"]["rejected"]
    assert report.verdict in ("warn", "drift")
    assert any(r.startswith("labels:") for r in report.reasons), report.reasons
    assert labels["cur_share"][5:] == [0.0] * 5


def test_distribution_drift_edge_cases():
    one_class_batch = distribution_drift([0, 1, 2] * 30, [1] * 20)
    assert one_class_batch["p_value"] < 0.01 and one_class_batch["dof"] == 2
    single_ref = distribution_drift(["a"] * 50, ["a"] * 20)
    assert single_ref["p_value"] == 1.0 and single_ref["chi2"] == 0.0 and single_ref["js_distance"] == 0.0
    new = distribution_drift(["a"] * 50, ["a"] * 10 + ["b"] * 10)
    assert new["new_categories"] == ["b"] and new["p_value"] < 0.01
    dropped = distribution_drift([0, 1] * 10, [0, 1, 1], categories=range(4))
    assert dropped["categories"] == [0, 1]
    empty = distribution_drift([0, 1], [])
    assert empty["p_value"] == 1.0 and empty["n_cur"] == 0
    json.dumps(new)  # plain Python values


def test_prediction_and_error_drift():
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.full(10, 0.1), size=500)
    cur = rng.dirichlet(np.full(10, 1.0), size=200)  # far less confident
    p = prediction_drift(ref, cur)
    assert p["confidence_p_value"] < 1e-6 and p["mean_confidence_cur"] < p["mean_confidence_ref"]
    assert len(p["classes"]["categories"]) == 10
    worse = error_drift(0.05, 300, 0.20, 200)
    assert worse["p_value"] < 1e-4 and worse["increase"] == pytest.approx(0.15)
    assert error_drift(0.05, 300, 0.06, 200)["p_value"] > 0.1


# --------------------------------------------------------------------------- Holm and the verdict rule


def test_holm_adjustment():
    assert holm([0.004, 0.03, 0.02, 0.5]) == pytest.approx([0.016, 0.06, 0.06, 0.5])
    assert holm([]) == []


def test_feature_drift_applies_holm_over_the_features():
    """One feature with raw KS p about 0.004 among nine: significant alone, not after Holm (x9)."""
    q = lambda n: stats.norm.ppf((np.arange(n) + 0.5) / n)  # noqa: E731
    ref = pd.DataFrame({c: q(N_REF) for c in STAT_COLUMNS})
    cur = pd.DataFrame({c: q(N_CUR) for c in STAT_COLUMNS})
    cur["contrast"] += 0.34
    cur["sharpness"] += 0.6
    table = feature_drift(ref, cur, STAT_COLUMNS)
    p = table["p_value"]
    assert p["contrast"] < 0.01 <= table.loc["contrast", "p_adjusted"]
    assert table.loc["sharpness", "p_adjusted"] == pytest.approx(9 * p["sharpness"])
    assert table.loc["contrast", "p_adjusted"] == pytest.approx(8 * p["contrast"])  # step-down
    assert not table.loc["contrast", "drifted"]
    assert table.loc["sharpness", "drifted"]  # W/std 0.6 > 0.5 and significant
    assert table.loc["mean_intensity", "p_adjusted"] == 1.0


def _features(drifted_psi: list[float]) -> pd.DataFrame:
    n = len(STAT_COLUMNS)
    table = pd.DataFrame(
        {
            "ks_statistic": 0.0,
            "p_value": 1.0,
            "p_adjusted": 1.0,
            "wasserstein_std": 0.0,
            "psi": 0.01,
            "ref_mean": 0.0,
            "cur_mean": 0.0,
            "drifted": False,
        },
        index=pd.Index(STAT_COLUMNS, name="feature"),
    )
    for i, value in enumerate(drifted_psi[:n]):
        table.iloc[i, table.columns.get_loc("p_adjusted")] = 1e-8
        table.iloc[i, table.columns.get_loc("psi")] = value
        table.iloc[i, table.columns.get_loc("wasserstein_std")] = 0.8
        table.iloc[i, table.columns.get_loc("drifted")] = True
    return table


def test_verdict_rule():
    quiet_mmd = {"mmd2": 0.0, "p_value": 0.5}
    loud_mmd = {"mmd2": 0.1, "p_value": 0.001}
    assert verdict({"features": _features([]), "embeddings": quiet_mmd}) == ("none", [])
    assert verdict({"features": _features([0.3]), "embeddings": loud_mmd})[0] == "drift"  # rule (a)
    assert verdict({"features": _features([0.3, 0.4]), "embeddings": quiet_mmd})[0] == "drift"  # rule (b)
    assert verdict({"features": _features([0.3]), "embeddings": quiet_mmd})[0] == "warn"
    assert verdict({"features": _features([]), "embeddings": loud_mmd})[0] == "warn"
    # large PSI alone (small batch) never decides: the feature must also be significant
    noisy_psi = _features([])
    noisy_psi["psi"] = 0.4
    assert verdict({"features": noisy_psi, "embeddings": quiet_mmd})[0] == "none"
    worse = error_drift(0.05, 300, 0.2, 200)
    level, reasons = verdict({"features": _features([]), "error": worse})
    assert level == "warn" and reasons[0].startswith("error:")
    slightly_worse = dict(worse, increase=0.04)  # significant but under error_increase_warn
    assert verdict({"features": _features([]), "error": slightly_worse})[0] == "none"
    new_source = distribution_drift(["a"] * 50, ["b"] * 20)
    level, reasons = verdict({"features": _features([]), "sources": new_source})
    assert level == "warn" and "absent from the reference: b" in reasons[0]
    mix = distribution_drift(["a", "b"] * 50, ["a"] * 40)
    assert verdict({"features": _features([]), "sources": mix})[0] == "none"  # one-source batches are normal
    assert verdict({"features": _features([]), "sources": mix}, DriftThresholds(source_mix_warns=True))[0] == "warn"


# --------------------------------------------------------------------------- outputs


def test_rows_store_every_value(digits):
    report = digits.report(7)
    rows = report.rows()
    json.dumps(rows)
    keys = {"section", "test", "feature", "statistic", "value", "p_value", "p_adjusted", "threshold", "crossed"}
    assert all(set(r) == keys for r in rows)
    frame = pd.DataFrame(rows)
    for stat in ("ks_statistic", "wasserstein_std", "psi_warn", "psi_drift", "ref_mean", "cur_mean", "drifted"):
        mask = (frame.section == "features") & (frame.statistic == stat)
        assert frame.loc[mask, "feature"].tolist() == STAT_COLUMNS, stat
    assert (~frame.crossed).any()
    assert set(frame.section) == {"features", "embeddings", "labels", "sources", "predictions", "error", "verdict"}
    per_class = frame[(frame.section == "labels") & (frame.test == "share")]
    assert len(per_class) == 2 * 10
    assert frame.value.notna().all()
    ks = frame[(frame.section == "features") & (frame.test == "ks")]
    assert ks.p_value.notna().all() and ks.p_adjusted.notna().all()
    assert ks.crossed.tolist() == (ks.p_adjusted < report.thresholds["alpha"]).tolist()

    drifted = digits.report(7, noisy).rows()
    assert sum(r["crossed"] for r in drifted) > sum(r["crossed"] for r in rows)
    assert len(drifted) == len(rows)  # same values whether or not they crossed


def test_markdown_html_and_plots(digits):
    report = digits.report(0, rotate)
    ref, _, rest = digits.split(0)
    cur_stats = image_statistics(rotate(digits.x[rest[:N_CUR]], np.random.default_rng(0)))
    plots = drift_plots(
        image_statistics(digits.x[ref]),
        cur_stats,
        np.random.default_rng(0).beta(8, 1, 300),
        np.random.default_rng(1).beta(3, 1, 200),
        table=report.features,
    )
    assert set(plots) == {"features", "confidence"}
    assert all(png.startswith(b"\x89PNG") for png in plots.values())
    page = report.html(plots)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "sharpness" in page and "drift" in page
    md = report.markdown()
    assert md.startswith("# Drift report: **drift**") and "| sharpness |" in md
    assert report.thresholds == DriftThresholds().as_dict()


def test_values_without_a_test_read_n_a_not_nan(digits):
    """A figure that could not be computed (NaN) reads ``n/a`` in the markdown and the page, never ``nan``."""
    report = digits.report(0, rotate)
    report.features.iloc[0, report.features.columns.get_loc("p_value")] = np.nan
    md, page = report.markdown(), report.html()
    assert "nan" not in md.replace("nance", "") and "n/a" in md
    assert ">NaN<" not in page and ">nan<" not in page and ">n/a<" in page
