"""Slice analysis: constructed evaluations with known bad slices; exact flags and suggestions."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dc_pipeline.core.curation.slices import (
    MISSING,
    flag_slices,
    holm,
    quantile_buckets,
    slice_table,
    slices_markdown,
    wilson_interval,
)
from dc_pipeline.core.data.features import STAT_COLUMNS


def _stats(rng, n):
    """Image statistics independent of everything else."""
    return {c: rng.normal(size=n) for c in STAT_COLUMNS}


def _set_errors(correct, idx, k, rng):
    """Make exactly ``k`` of the rows ``idx`` wrong."""
    correct[rng.choice(idx, size=k, replace=False)] = False


def _confidence(rng, correct, wrong_conf=(0.3, 0.7)):
    conf = rng.uniform(0.6, 1.0, size=len(correct))
    conf[~correct] = rng.uniform(*wrong_conf, size=int((~correct).sum()))
    return conf


def _flagged(table):
    f = table[table["flagged"]]
    return {(d, s): g for d, s, g in zip(f["dimension"], f["slice"], f["suggestion"])}


@pytest.fixture(scope="module")
def devices_df():
    """2,000 rows: source A (60 %) with 6 % error holds the small device d_bad (100 rows, 40 % error);
    source B at 3.5 %; overall exactly 5 %. Eight healthy devices, 200 rows without a device id,
    and a tiny device (6 rows, 2 wrong) that is worse but not significantly so."""
    rng = np.random.default_rng(0)
    n = 2000
    source = np.array(["A"] * 1200 + ["B"] * 800, dtype=object)
    device = np.empty(n, dtype=object)
    device[:100] = "d_bad"  # in source A
    device[100:106] = "d_tiny"  # in source A
    rest = np.arange(106, n)
    device[rest] = [f"d{i % 8}" for i in range(len(rest))]
    missing = rng.choice(rest, size=200, replace=False)
    device[missing[:100]] = None
    device[missing[100:]] = np.nan
    labels = np.arange(n) % 10
    correct = np.ones(n, dtype=bool)
    bad = np.arange(100)
    # 40 errors in d_bad spread evenly over the classes (4 per class)
    correct[[i for c in range(10) for i in bad[labels[bad] == c][:4]]] = False
    correct[[100, 101]] = False  # d_tiny: 2 of 6 wrong
    a_rest = np.arange(106, 1200)
    _set_errors(correct, a_rest, 72 - 42, rng)  # source A: 72 / 1200 = 6 %
    _set_errors(correct, np.arange(1200, n), 28, rng)  # source B: 28 / 800 = 3.5 %
    df = pd.DataFrame(
        {
            "correct": correct,
            "confidence": _confidence(rng, correct),
            "label": labels,
            "source": source,
            "device_id": device,
            **_stats(rng, n),
        }
    )
    assert (~df["correct"]).sum() == 100
    return df


def test_only_the_small_bad_device_is_flagged(devices_df):
    table = slice_table(devices_df)
    overall = float((~devices_df["correct"]).mean())
    assert overall == pytest.approx(0.05)
    assert table.attrs["overall_error"] == pytest.approx(overall)
    flagged = flag_slices(table, overall)

    assert _flagged(flagged) == {("device_id", "d_bad"): "collect more data"}

    by = flagged.set_index(["dimension", "slice"])
    # the large source is a bit worse but neither small nor clearly worse
    assert by.loc[("source", "A"), "error"] == pytest.approx(0.06)
    assert by.loc[("source", "A"), "share"] == pytest.approx(0.6)
    assert not by.loc[("source", "A"), "flagged"]
    assert by.loc[("source", "A"), "suggestion"] == ""
    # the tiny device is small and 6.7x worse, but 2/6 is not significant after Holm
    tiny = by.loc[("device_id", "d_tiny")]
    assert tiny["count"] == 6 and tiny["error"] >= 1.5 * overall
    assert tiny["p_value"] < 0.05 and tiny["p_adjusted"] >= 0.05
    assert not tiny["flagged"]
    bad = by.loc[("device_id", "d_bad")]
    assert (bad["count"], bad["errors"], bad["share"]) == (100, 40, 0.05)
    assert bad["error"] == pytest.approx(0.4)
    assert bad["p_adjusted"] < 1e-10
    # with the default quartiles, no bucket is small, so none can be flagged
    assert (flagged.loc[flagged["kind"] == "bucket", "share"] > 0.15).all()
    # the rule really depends on the thresholds: a laxer ratio/Holm would flag more, a stricter less
    assert not flag_slices(table, overall, min_ratio=9.0)["flagged"].any()
    assert not flag_slices(table, overall, max_share=0.04)["flagged"].any()


def test_missing_device_ids_become_missing_slice(devices_df):
    table = slice_table(devices_df)
    dev = table[table["dimension"] == "device_id"].set_index("slice")
    assert dev.loc[MISSING, "count"] == 200
    assert dev.index[-1] == MISSING  # listed last
    assert "None" not in dev.index and "nan" not in dev.index
    assert set(dev.index) == {"d_bad", "d_tiny", MISSING} | {f"d{i}" for i in range(8)}


def test_partitions_and_wilson(devices_df):
    n = len(devices_df)
    table = slice_table(devices_df)
    dims = table.groupby("dimension")
    assert set(dims.groups) == {"source", "device_id", "label", *STAT_COLUMNS}
    for dim, g in dims:
        assert g["count"].sum() == n, dim
        assert g["errors"].sum() == 100, dim
        assert g["share"].sum() == pytest.approx(1.0)
        assert g["slice"].is_unique
    for dim in STAT_COLUMNS:
        g = table[table["dimension"] == dim]
        assert list(g["slice"].str[:3]) == ["q1 ", "q2 ", "q3 ", "q4 "]
        assert g["slice"].iloc[-1].endswith("]") and g["slice"].iloc[0].endswith(")")
        assert (g["count"] - 500).abs().max() <= 1
    # Wilson interval contains the error and matches scipy's
    assert ((table["error_ci_low"] <= table["error"]) & (table["error"] <= table["error_ci_high"])).all()
    for errors, count, low, high in table[["errors", "count", "error_ci_low", "error_ci_high"]].itertuples(index=False):
        ci = stats.binomtest(int(errors), int(count)).proportion_ci(method="wilson")
        assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(40, 100) == pytest.approx((0.30940, 0.49800), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    # p-values: one-sided binomial test against the overall error
    row = table[(table["dimension"] == "device_id") & (table["slice"] == "d_bad")].iloc[0]
    assert row["p_value"] == pytest.approx(stats.binomtest(40, 100, 0.05, alternative="greater").pvalue)


def test_buckets_with_duplicate_edges_and_nulls():
    # point mass at 0 (60 %): quartile edges 0, 0, 0, x, y collapse to 3 edges -> 2 buckets
    x = pd.Series([0.0] * 60 + list(np.linspace(0.1, 1.0, 38)) + [np.nan, None], dtype=float)
    b = quantile_buckets(x, 4)
    counts = b.value_counts()
    assert counts.sum() == len(x)
    assert counts[MISSING] == 2
    labels = sorted(set(b) - {MISSING})
    assert len(labels) == 2 and labels[0].startswith("q1 [0, ") and labels[1].startswith("q2 [")
    assert counts[labels[0]] == 60 + int((np.linspace(0.1, 1.0, 38) < float(labels[0].split(", ")[1][:-1])).sum())
    assert labels[1].endswith(", 1]")
    # a constant column is one closed bucket
    assert set(quantile_buckets(pd.Series([2.5] * 7), 4)) == {"q1 [2.5, 2.5]"}
    # close edges keep distinct labels
    close = quantile_buckets(pd.Series(np.linspace(0.1201, 0.1209, 100)), 4)
    assert close.nunique() == 4


def test_confidently_wrong_class_gets_review_labels():
    rng = np.random.default_rng(1)
    n = 2000
    labels = np.arange(n) % 10 + 0  # 200 per class
    correct = np.ones(n, dtype=bool)
    for c in range(10):
        _set_errors(correct, np.flatnonzero(labels == c), 6, rng)  # 3 % baseline
    c7, c3 = np.flatnonzero(labels == 7), np.flatnonzero(labels == 3)
    correct[c7[:60]] = False  # class 7: 30 % wrong, confidently
    correct[c3[:60]] = False  # class 3: 30 % wrong, unsure
    conf = _confidence(rng, correct)
    conf[c7[~correct[c7]]] = rng.uniform(0.9, 0.99, size=int((~correct[c7]).sum()))
    df = pd.DataFrame(
        {"correct": correct, "confidence": conf, "label": labels, "source": "A", "device_id": "d0", **_stats(rng, n)}
    )
    table = slice_table(df)
    overall = float((~df["correct"]).mean())
    out = flag_slices(table, overall)
    assert _flagged(out) == {("label", "7"): "review labels", ("label", "3"): "collect more data"}
    by = out.set_index(["dimension", "slice"])
    assert by.loc[("label", "7"), "wrong_confidence"] >= 0.8
    assert by.loc[("label", "3"), "wrong_confidence"] < 0.8
    # a higher confidence bar turns the class-7 suggestion into "collect more data"
    assert _flagged(flag_slices(table, overall, confident=0.995))[("label", "7")] == "collect more data"


def test_bad_low_contrast_bucket_gets_augment():
    rng = np.random.default_rng(2)
    n = 2000
    st = _stats(rng, n)
    st["contrast"] = rng.uniform(0.0, 1.0, size=n)
    low = np.flatnonzero(st["contrast"] < np.quantile(st["contrast"], 1 / 8))
    high = np.setdiff1d(np.arange(n), low)
    correct = np.ones(n, dtype=bool)
    _set_errors(correct, low, int(0.35 * len(low)), rng)
    _set_errors(correct, high, int(0.03 * len(high)), rng)
    df = pd.DataFrame(
        {
            "correct": correct,
            "confidence": _confidence(rng, correct),
            "label": np.arange(n) % 10,
            "source": np.where(np.arange(n) % 2 == 0, "A", "B"),
            "device_id": "d0",
            **st,
        }
    )
    overall = float((~df["correct"]).mean())
    # quartiles (share 0.25) are never "small": nothing flagged with the defaults
    assert not flag_slices(slice_table(df), overall)["flagged"].any()
    # octiles: the lowest contrast bucket (250 rows, 35 % error) is flagged
    table = slice_table(df, n_buckets=8)
    out = flag_slices(table, overall)
    flagged = _flagged(out)
    assert len(flagged) == 1
    (((dim, name), suggestion),) = flagged.items()
    assert dim == "contrast" and name.startswith("q1 [") and suggestion == "augment"
    row = out[(out["dimension"] == "contrast") & (out["slice"] == name)].iloc[0]
    assert row["count"] == len(low) and row["kind"] == "bucket"
    # the same bucket with too few rows to learn from gets "collect more data" instead
    assert _flagged(flag_slices(table, overall, collect_below=300))[(dim, name)] == "collect more data"

    md = slices_markdown(out)
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert table_lines[0].startswith("| dimension | slice |")
    assert table_lines[1].startswith("| contrast | q1 [") and "augment" in table_lines[1]
    assert len(table_lines) == 1 + 30
    assert f"{len(out) - 30} more slices not shown" in md


def test_holm_and_recomputed_p_values(devices_df):
    assert holm([0.01, 0.04, 0.03, float("nan")]) == pytest.approx([0.04, 0.09, 0.09, 1.0])
    table = slice_table(devices_df)
    # another reference error: p-values are recomputed against it
    out = flag_slices(table, 0.3)
    row = out[(out["dimension"] == "device_id") & (out["slice"] == "d_bad")].iloc[0]
    assert row["p_value"] == pytest.approx(stats.binomtest(40, 100, 0.3, alternative="greater").pvalue)
    assert not out["flagged"].any()
    # overall_error=None uses the table's own
    assert _flagged(flag_slices(table, None)) == {("device_id", "d_bad"): "collect more data"}
    assert slices_markdown(table.iloc[:0]) == "_No slices._\n"
