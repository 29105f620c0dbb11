"""Active learning selection: real computation on synthetic probabilities/embeddings and real slice tables."""

import numpy as np
import pandas as pd
import pytest

from dc_pipeline.core.curation.active_learning import (
    PICK_COLUMNS,
    parse_bucket,
    select_for_labelling,
    slice_display_name,
    slice_members,
    uncertainty,
)
from dc_pipeline.core.curation.slices import MISSING, _format_edges, flag_slices, quantile_buckets, slice_table
from dc_pipeline.core.data.features import image_statistics


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _pool(n, seed=0, n_classes=10, dim=16):
    """``n`` images with random probabilities (a spread of confidence) and random embeddings."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, n_classes)) * rng.uniform(0.2, 6.0, size=(n, 1))
    pool = pd.DataFrame({"sha256": [f"img{i:05d}" for i in range(n)]})
    return pool, _softmax(logits), rng.normal(size=(n, dim))


def test_uncertainty_margin_and_entropy():
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.6, 0.3, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(uncertainty(probs, "margin"), [0.0, 1.0, 0.7, 1.0])
    ent = uncertainty(probs, "entropy")
    expected = -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(4)
    np.testing.assert_allclose(ent, [0.0, 1.0, expected, np.log(2) / np.log(4)])
    _, p, _ = _pool(500)
    for kind in ("margin", "entropy"):
        u = uncertainty(p, kind)
        assert u.shape == (500,) and u.min() >= 0.0 and u.max() <= 1.0
    with pytest.raises(ValueError):
        uncertainty(probs, "variance")


def test_picks_within_budget_unique_and_ranked():
    pool, p, e = _pool(300)
    picks = select_for_labelling(pool, p, e, 40)
    assert list(picks.columns) == PICK_COLUMNS
    assert len(picks) == 40
    assert picks["sha256"].is_unique
    assert set(picks["sha256"]) <= set(pool["sha256"])
    assert picks["rank"].tolist() == list(range(1, 41))
    assert set(picks["reason"]) == {"uncertainty"}
    row = pool.index[pool["sha256"] == picks["sha256"].iloc[0]][0]
    assert picks["predicted_label"].iloc[0] == p[row].argmax()
    assert picks["confidence"].iloc[0] == pytest.approx(p[row].max())


def test_picks_lean_to_the_most_uncertain():
    pool, p, e = _pool(1000, seed=1)
    u = uncertainty(p)
    budget = 30
    # without room for diversity the picks are exactly the top-k most uncertain, the most uncertain first
    top = select_for_labelling(pool, p, e, budget, candidate_factor=1)
    assert set(top["sha256"]) == set(pool["sha256"].to_numpy()[np.argsort(-u)[:budget]])
    assert top["sha256"].iloc[0] == pool["sha256"].iloc[int(np.argmax(u))]
    # with diversity: all picks among the 5x most uncertain, the first one the most uncertain of all
    picks = select_for_labelling(pool, p, e, budget)
    in_top = set(pool["sha256"].to_numpy()[np.argsort(-u)[: 5 * budget]])
    assert set(picks["sha256"]) <= in_top
    assert picks["uncertainty"].iloc[0] == pytest.approx(u.max())
    assert picks["uncertainty"].mean() > np.quantile(u, 0.85)


def test_a_cluster_of_near_copies_gets_few_picks():
    rng = np.random.default_rng(2)
    n_cluster, n_rest, budget = 50, 450, 20
    centre = rng.normal(size=16)
    emb = np.vstack([centre + 1e-3 * rng.normal(size=(n_cluster, 16)), rng.normal(size=(n_rest, 16))])
    # the cluster is the most uncertain; the rest is less uncertain but still inside the candidate set
    unsure_logits = rng.normal(scale=0.05, size=(n_cluster, 10))
    rest_logits = np.eye(10)[np.arange(n_rest) % 10] * np.linspace(1.0, 8.0, n_rest)[:, None]
    probs = _softmax(np.vstack([unsure_logits, rest_logits]))
    pool = pd.DataFrame({"sha256": [f"c{i}" for i in range(n_cluster)] + [f"r{i}" for i in range(n_rest)]})
    assert uncertainty(probs)[:n_cluster].min() > uncertainty(probs)[n_cluster:].max()

    topk = select_for_labelling(pool, probs, emb, budget, candidate_factor=1)
    assert topk["sha256"].str.startswith("c").sum() == budget  # pure top-k: all from the cluster

    diverse = select_for_labelling(pool, probs, emb, budget)
    from_cluster = diverse["sha256"].str.startswith("c").sum()
    assert 1 <= from_cluster <= 3
    assert diverse["sha256"].iloc[0].startswith("c")  # starts from the most uncertain


def test_slice_share_goes_to_flagged_slices():
    pool, p, e = _pool(400, seed=3)
    pool["source"] = ["rare" if i % 10 == 0 else "common" for i in range(400)]
    # make the rare source confidently predicted, so uncertainty alone would not pick it
    p[::10] = _softmax(np.eye(10)[np.arange(40) % 10] * 12.0)
    flagged = pd.DataFrame({"dimension": ["source"], "kind": ["category"], "slice": ["rare"], "flagged": [True]})
    budget = 20
    picks = select_for_labelling(pool, p, e, budget, slice_share=0.25, flagged=flagged)
    assert len(picks) == budget and picks["sha256"].is_unique
    slice_picks = picks[picks["reason"] == "slice"]
    assert len(slice_picks) == 5
    assert picks["reason"].tolist()[:5] == ["slice"] * 5
    assert set(slice_picks["slice"]) == {slice_display_name("source", "rare")}
    rare = set(pool.loc[pool["source"] == "rare", "sha256"])
    assert set(slice_picks["sha256"]) <= rare
    assert not (set(picks.loc[picks["reason"] == "uncertainty", "sha256"]) & rare)
    # no flagged slices, or a share of 0: uncertainty only
    assert set(select_for_labelling(pool, p, e, budget)["reason"]) == {"uncertainty"}
    none = select_for_labelling(pool, p, e, budget, slice_share=0.0, flagged=flagged)
    assert set(none["reason"]) == {"uncertainty"}
    # an unflagged row does not count; a slice with fewer members than the share gives all of them
    off = flagged.assign(flagged=False)
    assert set(select_for_labelling(pool, p, e, budget, slice_share=0.25, flagged=off)["reason"]) == {"uncertainty"}
    few = pool.assign(source=["rare" if i in (0, 10) else "common" for i in range(400)])
    picks = select_for_labelling(few, p, e, budget, slice_share=0.5, flagged=flagged)
    assert (picks["reason"] == "slice").sum() == 2 and len(picks) == budget


def test_flagged_device_and_class_slices_from_the_slice_analysis():
    """A real slice table: a device with many errors is flagged; pool images from it are found, the label
    dimension is matched on the pool's predicted label."""
    rng = np.random.default_rng(4)
    n = 2000
    device = np.array([f"d{i % 8}" for i in range(n)], dtype=object)
    device[:100] = "d_bad"
    labels = np.arange(n) % 10
    correct = rng.uniform(size=n) > 0.04
    correct[:100] = rng.uniform(size=100) > 0.5
    evaluated = pd.DataFrame(
        {"device_id": device, "label": labels, "correct": correct, "confidence": rng.uniform(0.5, 1, n)}
    )
    table = flag_slices(slice_table(evaluated, numeric=[]))
    assert set(table.loc[table["flagged"], "slice"]) == {"d_bad"}

    pool, p, e = _pool(300, seed=5)
    pool["device_id"] = ["d_bad" if i < 30 else None if i < 40 else "d1" for i in range(300)]
    members = slice_members(pool, table)
    assert (members.iloc[:30] == "device_id: d_bad").all() and members.iloc[30:].isna().all()
    picks = select_for_labelling(pool, p, e, 50, flagged=table[table["flagged"]])
    assert (picks["reason"] == "slice").sum() == 10
    assert picks.loc[picks["reason"] == "slice", "sha256"].isin(pool["sha256"].iloc[:30]).all()

    # category slices by hand: "(missing)" matches nulls, "label" matches predicted_label, first slice wins
    hand = pd.DataFrame(
        {"dimension": ["device_id", "label", "label"], "kind": "category", "slice": [MISSING, "3", "4"]}
    )
    pool["predicted_label"] = np.arange(300) % 5
    got = slice_members(pool, hand)
    is_missing = pool["device_id"].isna()
    assert (got[is_missing] == f"device_id: {MISSING}").all()
    assert (got[~is_missing & (pool["predicted_label"] == 3)] == "label: 3").all()
    assert (got[~is_missing & (pool["predicted_label"] == 4)] == "label: 4").all()
    assert got[~is_missing & (pool["predicted_label"] < 3)].isna().all()


def test_bucket_parsing():
    assert parse_bucket("q3 [0.12, 0.2)") == (3, 0.12, 0.2, False)
    assert parse_bucket("q8 [0.31, 0.9]") == (8, 0.31, 0.9, True)
    assert parse_bucket("q1 [-1.5e-05, 3]") == (1, -1.5e-05, 3.0, True)
    with pytest.raises(ValueError):
        parse_bucket("field_app")


def test_bucket_membership_matches_quantile_buckets_on_exact_edges():
    values = pd.Series(np.arange(101) / 100.0)  # quartile edges 0, 0.25, 0.5, 0.75, 1 print exactly
    buckets = quantile_buckets(values, 4)
    pool = pd.DataFrame({"sha256": [str(i) for i in range(101)], "ink": values})
    for name in buckets.unique():
        got = slice_members(pool, pd.DataFrame({"dimension": ["ink"], "kind": ["bucket"], "slice": [name]}))
        np.testing.assert_array_equal(got.notna().to_numpy(), (buckets == name).to_numpy())


def _digit_statistics(n=600):
    from dc_pipeline.core.data.features import canonical_array
    from dc_pipeline.demo.landing import load_digits_uint8, png_bytes

    pixels, _ = load_digits_uint8()
    return image_statistics(canonical_array([png_bytes(a) for a in pixels[:n]], 28))


def _bucket_table(stats, n_buckets=8):
    rng = np.random.default_rng(6)
    evaluated = stats.assign(correct=rng.uniform(size=len(stats)) > 0.1, confidence=rng.uniform(size=len(stats)))
    table = slice_table(evaluated, categorical=[], n_buckets=n_buckets)
    return table[table["kind"] == "bucket"]


def _edges(values, n_buckets=8):
    """The true quantile edges of ``slices.quantile_buckets`` and how it prints them."""
    x = values.to_numpy(dtype=float)
    true = np.unique(np.quantile(x[np.isfinite(x)], np.linspace(0, 1, n_buckets + 1)))
    return true, np.array([float(t) for t in _format_edges(true)])


def test_bucket_membership_matches_the_slice_table_on_image_statistics():
    """Bucket names from ``slice_table`` on real image statistics (the digits at 28x28): membership agrees with the bucket assignment for every value that does not lie
    between a true quantile edge and its printed rounding."""
    stats = _digit_statistics()
    buckets = _bucket_table(stats)
    assert buckets["dimension"].nunique() >= 5
    pool = stats.assign(sha256=[str(i) for i in range(len(stats))])
    for dim, group in buckets.groupby("dimension", sort=False):
        assigned = quantile_buckets(stats[dim], 8).to_numpy()
        x = stats[dim].to_numpy(dtype=float)
        true, printed = _edges(stats[dim])
        in_gap = np.zeros(len(x), dtype=bool)
        for t, p in zip(true[1:-1], printed[1:-1]):
            in_gap |= (x >= min(t, p)) & (x <= max(t, p)) & (t != p)
        hits = np.zeros(len(x), dtype=int)
        for name in group["slice"]:
            got = slice_members(pool, pd.DataFrame({"dimension": [dim], "kind": ["bucket"], "slice": [name]}))
            member = got.notna().to_numpy()
            assert (got[member] == slice_display_name(dim, name)).all()
            np.testing.assert_array_equal(member[~in_gap], (assigned == name)[~in_gap], err_msg=f"{dim} {name}")
            hits += member
        # the printed intervals (open-ended outside) do not overlap; a row is in none only when its printed
        # bucket is absent from the table (an empty true bucket between two close quantiles of a point mass)
        assert (hits <= 1).all() and (hits[~in_gap] == 1).all(), dim


def test_exact_bucket_edges_give_the_slice_tables_assignment():
    """With the exact edges beside the names (``bucket_low`` / ``bucket_high``) membership is the assignment."""
    stats = _digit_statistics()
    buckets = _bucket_table(stats)
    pool = stats.assign(sha256=[str(i) for i in range(len(stats))])
    for dim, group in buckets.groupby("dimension", sort=False):
        true, _ = _edges(stats[dim])
        index = group["slice"].str.extract(r"^q(\d+) ")[0].astype(int).to_numpy() - 1
        exact = group.assign(bucket_low=true[index], bucket_high=true[np.minimum(index + 1, len(true) - 1)])
        assigned = quantile_buckets(stats[dim], 8).to_numpy()
        for row in exact.to_dict("records"):
            got = slice_members(pool, pd.DataFrame([row]))
            np.testing.assert_array_equal(got.notna().to_numpy(), assigned == row["slice"], err_msg=dim)


def test_outer_buckets_take_pool_values_beyond_the_analysed_range():
    pool = pd.DataFrame({"sha256": list("abcde"), "contrast": [-5.0, 0.1, 0.5, 0.95, 7.0]})
    first = pd.DataFrame({"dimension": ["contrast"], "kind": ["bucket"], "slice": ["q1 [0.2, 0.4)"]})
    last = pd.DataFrame({"dimension": ["contrast"], "kind": ["bucket"], "slice": ["q3 [0.6, 0.9]"]})
    middle = pd.DataFrame({"dimension": ["contrast"], "kind": ["bucket"], "slice": ["q2 [0.4, 0.6)"]})
    assert slice_members(pool, first).notna().tolist() == [True, True, False, False, False]
    assert slice_members(pool, last).notna().tolist() == [False, False, False, True, True]
    assert slice_members(pool, middle).notna().tolist() == [False, False, True, False, False]
    missing = pd.DataFrame({"dimension": ["contrast"], "kind": ["bucket"], "slice": [MISSING]})
    with_null = pd.DataFrame({"sha256": ["a", "b"], "contrast": [0.3, None]})
    assert slice_members(with_null, missing).notna().tolist() == [False, True]


def test_budget_larger_than_pool_and_empty_pool():
    pool, p, e = _pool(12, seed=7)
    picks = select_for_labelling(pool, p, e, 50)
    assert sorted(picks["sha256"]) == sorted(pool["sha256"])
    assert picks["rank"].tolist() == list(range(1, 13))
    empty = select_for_labelling(pool.iloc[:0], p[:0], e[:0], 10)
    assert empty.empty and list(empty.columns) == PICK_COLUMNS
    assert select_for_labelling(pool, p, e, 0).empty


def test_an_image_listed_twice_is_picked_once():
    pool, p, e = _pool(50, seed=8)
    doubled = pd.concat([pool, pool], ignore_index=True)
    picks = select_for_labelling(doubled, np.vstack([p, p]), np.vstack([e, e]), 80)
    assert len(picks) == 50 and picks["sha256"].is_unique


def test_same_seed_same_picks():
    pool, p, e = _pool(500, seed=9)
    pool["source"] = np.where(np.arange(500) % 7 == 0, "rare", "common")
    flagged = pd.DataFrame({"dimension": ["source"], "kind": ["category"], "slice": ["rare"]})
    a = select_for_labelling(pool, p, e, 40, flagged=flagged, seed=3)
    b = select_for_labelling(pool, p, e, 40, flagged=flagged, seed=3)
    pd.testing.assert_frame_equal(a, b)
    # exact ties (every image equally uncertain, identical embeddings) are ordered by the seed
    flat = np.full((500, 10), 0.1)
    same = np.ones((500, 4))
    s0 = select_for_labelling(pool, flat, same, 10, seed=0)["sha256"].tolist()
    assert s0 == select_for_labelling(pool, flat, same, 10, seed=0)["sha256"].tolist()
    assert s0 != select_for_labelling(pool, flat, same, 10, seed=1)["sha256"].tolist()
