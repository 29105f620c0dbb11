"""Near-duplicates, quality issues and outliers on real images (scikit-learn digits at 16 x 16)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from dc_pipeline.core.curation import data_issues as di
from dc_pipeline.core.data.features import canonical_array
from dc_pipeline.demo.landing import load_digits_uint8, png_bytes

S = di.FINGERPRINT_SIZE


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_uint8()
    pngs = [png_bytes(p) for p in images]
    x = canonical_array(pngs, S)
    fp = di.fingerprints(x)
    fp.insert(0, "sha256", [hashlib.sha256(b).hexdigest() for b in pngs])
    return images, labels, x, fp


def _with_sha(fp: pd.DataFrame, prefix: str) -> pd.DataFrame:
    fp = fp.copy()
    fp.insert(0, "sha256", [f"{prefix}{i:05d}" for i in range(len(fp))])
    return fp


def _encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


def test_fingerprints_columns_bands_and_a_constant_image(digits):
    *_, fp = digits
    for col in ["dhash", *di.BAND_COLUMNS]:
        assert fp[col].dtype == np.int64
    for col in ["brightness", "contrast", "sharpness", "entropy", *di.REFERENCE_FIGURES]:
        assert fp[col].dtype == np.float64
    assert all(len(t) == S * S for t in fp["thumb"])
    u = fp["dhash"].to_numpy().view(np.uint64)
    recomposed = sum(fp[f"band{k}"].to_numpy().astype(np.uint64) << np.uint64(16 * k) for k in range(4))
    assert (recomposed == u).all() and (fp[di.BAND_COLUMNS].to_numpy() >= 0).all()
    assert fp["dhash"].nunique() > 0.9 * len(fp)

    flat = di.fingerprints(np.full((2, S, S), 0.5, np.float32))
    assert (flat["dhash"] == 0).all() and (flat["contrast"] == 0).all() and (flat["entropy"] == 0).all()
    ramp = np.tile(np.linspace(0, 1, S, dtype=np.float32), (S, 1))[None]
    assert di.fingerprints(ramp)["dhash"].iloc[0] == -1  # every bit set: the sign bit survives as int64

    empty = _with_sha(di.fingerprints(np.zeros((0, S, S), np.float32)), "")
    assert empty.empty and di.near_duplicate_pairs(empty, fp).empty and di.components(empty.iloc[:0, :0]) == {}


def test_near_copies_are_found(digits):
    images, _, x, _ = digits
    rng = np.random.default_rng(3)
    idx = rng.choice(len(x), 80, replace=False)
    u8 = np.rint(x[idx] * 255).astype(np.uint8)
    big = [np.asarray(Image.fromarray(images[i]).resize((32, 32), Image.Resampling.BILINEAR)) for i in idx]
    originals = {"": x[idx], "crop": canonical_array([png_bytes(b) for b in big], S)}
    copies = {
        "jpeg": canonical_array([_encode(np.stack([p] * 3, -1), "JPEG", quality=90) for p in u8], S),
        "noise": np.clip(x[idx] + rng.integers(-2, 3, x[idx].shape) / 255, 0, 1),
        "brighter": np.clip(x[idx] + 0.03, 0, 1),
        "darker": np.clip(x[idx] - 0.03, 0, 1),
        "crop": canonical_array([png_bytes(b[1:]) for b in big], S),  # one row of a 32 x 32 source cropped
    }
    for kind, copy in copies.items():
        original = _with_sha(di.fingerprints(originals.get(kind, originals[""])), "a")
        pairs = di.near_duplicate_pairs(_with_sha(di.fingerprints(copy.astype(np.float32)), "b"), original)
        found = set(zip(pairs["sha256_a"], pairs["sha256_b"]))
        share = np.mean([(f"a{i:05d}", f"b{i:05d}") in found for i in range(len(idx))])
        assert share >= (0.9 if kind == "crop" else 0.97), (kind, share)
        assert (pairs["hamming"] <= 3).all() and (pairs["distance"] <= 0.03).all()


def test_different_digits_are_rarely_paired_and_groups_stay_small(digits):
    _, labels, _, fp = digits
    pairs = di.near_duplicate_pairs(fp, fp.iloc[:0])
    assert len(pairs) <= 20  # of 1.6 million pairs among the 1797 digits
    assert max(pd.Series(di.components(pairs)).value_counts(), default=0) <= 4
    rng = np.random.default_rng(5)
    i, j = rng.integers(0, len(fp), (2, 2000))
    i, j = i[i != j], j[i != j]
    sha = fp["sha256"].to_numpy()
    found = set(zip(pairs["sha256_a"], pairs["sha256_b"]))
    sampled = np.mean([(min(a, b), max(a, b)) in found for a, b in zip(sha[i], sha[j])])
    assert sampled <= 0.005
    index = {s: k for k, s in enumerate(sha)}
    assert (labels[pairs["sha256_a"].map(index)] == labels[pairs["sha256_b"].map(index)]).mean() >= 0.8


def test_band_lookup_finds_every_pair_brute_force_does(digits):
    *_, fp = digits
    pairs = di.near_duplicate_pairs(fp, fp.iloc[:0], max_hamming=3, max_distance=1.0)
    h = fp["dhash"].to_numpy()
    hd = np.bitwise_count((h[:, None] ^ h[None, :]).view(np.uint64))
    a, b = np.nonzero(np.triu(hd <= 3, k=1))
    sha = fp["sha256"].to_numpy()
    brute = {(min(p, q), max(p, q)) for p, q in zip(sha[a], sha[b])}
    assert set(zip(pairs["sha256_a"], pairs["sha256_b"])) == brute and len(brute) > 100
    bands = fp.set_index("sha256")[di.BAND_COLUMNS]
    shared = (bands.loc[pairs["sha256_a"]].to_numpy() == bands.loc[pairs["sha256_b"]].to_numpy()).any(axis=1)
    assert shared.all()
    keys = di.band_keys(fp.iloc[:5])
    assert set(keys) == set(di.BAND_COLUMNS) and all(fp["band0"].iloc[k] in keys["band0"] for k in range(5))
    with pytest.raises(ValueError, match="max_hamming"):
        di.near_duplicate_pairs(fp, fp, max_hamming=4)


def test_pairs_among_new_count_candidates_alone_do_not(digits):
    _, _, x, _ = digits
    base = x[:3]
    fp = _with_sha(di.fingerprints(np.concatenate([base, base, base]).astype(np.float32)), "")
    fp["sha256"] = ["n0", "n1", "n2", "m0", "m1", "m2", "c0", "c1", "c2"]
    new, candidates = fp.iloc[:6], pd.concat([fp.iloc[6:], fp.iloc[:1]])  # n0 also among candidates
    pairs = di.near_duplicate_pairs(new, candidates)
    expected = {("c0", "m0"), ("c0", "n0"), ("m0", "n0"), ("c1", "m1"), ("c1", "n1"), ("m1", "n1")}
    expected |= {("c2", "m2"), ("c2", "n2"), ("m2", "n2")}
    assert set(zip(pairs["sha256_a"], pairs["sha256_b"])) == expected and len(pairs) == len(expected)
    assert (pairs["distance"] == 0).all() and (pairs["hamming"] == 0).all()
    assert di.near_duplicate_pairs(fp.iloc[6:], fp.iloc[:0]).empty  # c0..c2 are different digits


def _arrive(fp: pd.DataFrame, order: np.ndarray, batch: int, full_map: bool) -> dict[str, str]:
    """Batches in ``order``: pairs against what is stored, anchors updated incrementally."""
    anchor: dict[str, str] = {}
    arrival: dict[str, int] = {}
    seen = fp.iloc[:0]
    for start in range(0, len(order), batch):
        new = fp.iloc[order[start : start + batch]]
        arrival.update(dict.fromkeys(new["sha256"], start))
        pairs = di.near_duplicate_pairs(new, seen, max_distance=0.05)
        if full_map:
            changed = di.near_duplicate_anchors(pairs, dict(anchor), arrival=arrival)
        else:
            involved = set(pairs["sha256_a"]) | set(pairs["sha256_b"])
            known = {s: anchor[s] for s in involved if s in anchor}
            changed = di.near_duplicate_anchors(
                pairs, known, lambda anchors: {s: a for s, a in anchor.items() if a in anchors}, arrival
            )
        assert all(anchor.get(s) != a for s, a in changed.items())
        for sha, a in changed.items():  # an image already grouped never moves to a younger anchor
            if sha in anchor:
                assert arrival[a] <= arrival[anchor[sha]]
        anchor.update(changed)
        seen = pd.concat([seen, new])
    return anchor


def _partition(anchor: dict[str, str]) -> set[frozenset]:
    groups: dict[str, set] = {}
    for sha, a in anchor.items():
        groups.setdefault(a, set()).add(sha)
    return {frozenset(g) for g in groups.values()}


def test_incremental_groups_equal_components_in_any_order(digits):
    *_, fp = digits
    fp = fp.iloc[:900]
    oracle = di.components(di.near_duplicate_pairs(fp, fp.iloc[:0], max_distance=0.05))
    assert max(pd.Series(oracle).value_counts()) >= 5  # merges happen
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(fp))
        anchors = _arrive(fp, order, batch=97, full_map=seed == 0)
        assert _partition(anchors) == _partition(oracle)
        first = {s: i for i, s in enumerate(fp["sha256"].to_numpy()[order])}
        for group in _partition(anchors):  # each anchor arrived in the first batch that had one of its group
            a = anchors[next(iter(group))]
            assert first[a] // 97 == min(first[s] for s in group) // 97


def test_a_bridging_pair_moves_the_younger_group():
    groups = {"b": "b", "d": "b", "c": "c", "e": "c", "f": "c"}
    arrival = {"c": 1, "e": 1, "f": 2, "b": 3, "d": 3, "a": 5, "z": 4, "g": 6}
    bridge = pd.DataFrame({"sha256_a": ["d"], "sha256_b": ["e"], "hamming": [1], "distance": [0.01]})
    calls = []

    def members_of(anchors):
        calls.append(set(anchors))
        return {s: a for s, a in groups.items() if a in anchors}

    changed = di.near_duplicate_anchors(bridge, {"d": "b", "e": "c"}, members_of, arrival)
    assert changed == {"b": "c", "d": "c"} and calls == [{"b", "c"}]  # c's group is older: b's group moves
    joined = pd.DataFrame({"sha256_a": ["a", "f"], "sha256_b": ["z", "g"], "hamming": 0, "distance": 0.0})
    # a new pair of ungrouped images takes the earlier one; a new copy of a grouped image joins its group
    assert di.near_duplicate_anchors(joined, groups, arrival=arrival) == {"a": "z", "z": "z", "g": "c"}
    assert di.near_duplicate_anchors(joined.iloc[:0], groups) == {}


def test_quality_issues_on_altered_digits(digits):
    _, _, x, fp = digits
    reference = di.robust_reference(fp)
    ordinary = di.quality_issues(fp, reference)
    assert ordinary["sha256"].nunique() / len(fp) < 0.02
    assert list(ordinary.columns) == ["sha256", "issue", "score", "detail"]

    rng = np.random.default_rng(11)
    picks = x[rng.choice(len(x), 20, replace=False)]
    altered = {
        "dark": picks * 0.3,
        "light": 0.5 + 0.5 * picks,
        "blurry": gaussian_filter(picks, sigma=(0, 1.5, 1.5)),
        "low_information": 0.3 + rng.integers(-1, 2, picks.shape) / 255,
        "outlier": rng.random(picks.shape),
    }
    for issue, images in altered.items():
        figures = _with_sha(di.fingerprints(np.clip(images, 0, 1).astype(np.float32)), issue)
        found = di.quality_issues(figures, reference)
        hit = found[found["issue"] == issue]
        assert set(hit["sha256"]) == set(figures["sha256"]), (issue, found["issue"].value_counts().to_dict())
        assert (hit["score"] > 0).all() and hit["detail"].str.len().gt(10).all()


def test_odd_size_against_the_source_typical_size(digits):
    *_, fp = digits
    figures = fp.iloc[:4]
    sha = figures["sha256"].tolist()
    sizes = pd.DataFrame(
        {
            "sha256": sha,
            "source": ["scanner", "scanner", "scanner", "phone"],
            "width": [40, 8, 40, 64],
            "height": [40, 9, 8, 48],
        }
    )
    typical = {"scanner": (8.0, 8.0), "phone": (640.0, 480.0)}
    found = di.quality_issues(figures, di.robust_reference(fp), sizes, typical)
    odd = found[found["issue"] == "odd_size"].set_index("sha256")
    assert set(odd.index) == {sha[0], sha[2], sha[3]}  # 25x the area; 5x the aspect; 1/100 of the area
    assert odd.loc[sha[3], "score"] > odd.loc[sha[0], "score"] > 0 and "640x480" in odd.loc[sha[3], "detail"]


def test_issue_preview_png(digits):
    _, _, x, _ = digits
    png = di.issue_preview_png(x[:20], [f"image {i}" for i in range(20)])
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 100
