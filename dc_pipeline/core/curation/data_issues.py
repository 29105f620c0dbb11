"""Data issues beyond exact duplicates and label errors: near-duplicates, image-quality issues and outliers,
as CleanVision / cleanlab Datalab report them. Images are canonical grayscale ``[N, S, S]`` float32 in [0, 1].

Near-duplicates
    Each image gets a 64-bit difference hash (``dhash``): the image averaged down to 9 x 8 cells, one bit per
    pair of horizontally adjacent cells, set where the right cell is brighter by more than ``HASH_TOLERANCE``
    (so flat regions, a constant image included, give 0 bits, and small noise or a brightness shift flips
    none). Two images are a pair when their hashes differ in at most ``max_hamming`` bits AND their uint8
    thumbnails differ by at most ``max_distance`` (mean absolute difference in [0, 1], after removing the mean
    difference, so a brightness shift is no difference); this check rejects hash collisions that do not look
    alike. Defaults (3 bits, 0.03) find re-encoded, noisy, shifted and slightly cropped copies and pair
    almost no distinct images. Candidates are found through the four 16-bit bands of
    the hash: with at most 3 differing bits, two near-duplicates share at least one band (pigeonhole).
    Groups are the connected components of the pairs; a group's anchor is the image of the group that
    arrived first (the earliest of the previous anchors when groups merge), so an image keeps its split when
    near-copies of it arrive. Splits are assigned by anchor.

Quality and outliers, relative to the dataset's own distribution
    For each figure in ``REFERENCE_FIGURES`` the robust z-score is ``(value - median) / scale`` with
    ``scale = 1.4826 * MAD`` (the standard deviation for normal data), floored at ``max(1% of |median|,
    0.001)`` so a constant figure does not divide by zero. One row per (image, issue):

    - ``dark``: brightness z < -z; ``light``: brightness z > z (default z = 4);
    - ``blurry``: log10 sharpness z < -z (sharpness: variance of the 4-neighbour Laplacian; on a log scale
      because blur divides it);
    - ``low_information``: entropy z < -z (Shannon entropy in bits of a 32-bin intensity histogram);
    - ``odd_size``: source width * height more than ``area_factor`` (4) times off the typical area of the
      image's source, or its aspect ratio more than ``aspect_factor`` (2) times off the typical one;
    - ``outlier``: root-mean-square of the figures' z-scores above ``outlier_z`` (6). The root-mean-square
      (a diagonal robust Mahalanobis distance over sqrt(k)) catches images unusual in several figures at
      once, which no single rule reports; one figure alone makes an outlier only when very extreme.

    ``score`` is how far past the bound an image lies (bigger = worse), ``detail`` a sentence with the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

FINGERPRINT_SIZE = 16
HASH_TOLERANCE = 4 / 255
N_BANDS = 4
MAX_HAMMING = 3  # differing hash bits a near-duplicate may have (at most N_BANDS - 1 for the band lookup)
MAX_DISTANCE = 0.03  # mean absolute thumbnail difference, after removing the mean difference
BAND_COLUMNS = [f"band{k}" for k in range(N_BANDS)]
REFERENCE_FIGURES = ["brightness", "contrast", "log_sharpness", "entropy"]
ISSUES = ("dark", "light", "blurry", "low_information", "odd_size", "outlier")


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` weights averaging each output cell over its share of the input (box resampling)."""
    edges = np.linspace(0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def difference_hash(x: np.ndarray, tolerance: float = HASH_TOLERANCE) -> np.ndarray:
    """64-bit difference hashes of ``[N, H, W]`` images as int64 (the uint64 bits, signed)."""
    n, h, w = x.shape
    cells = np.einsum("rh,nhw,cw->nrc", _area_matrix(8, h), x.astype(np.float64), _area_matrix(9, w))
    bits = (cells[:, :, 1:] - cells[:, :, :-1]) > tolerance
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return (bits.reshape(n, 64).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64).view(np.int64)


def hash_bands(dhash: np.ndarray | pd.Series) -> np.ndarray:
    """``[N, 4]`` int64: the four 16-bit bands of each hash (band k = bits 16k .. 16k + 15)."""
    u = np.asarray(dhash, np.int64).view(np.uint64)
    shifts = np.arange(N_BANDS, dtype=np.uint64) * np.uint64(16)
    return ((u[:, None] >> shifts) & np.uint64(0xFFFF)).astype(np.int64)


def fingerprints(x: np.ndarray) -> pd.DataFrame:
    """Per image: ``dhash``, ``band0..band3``, ``thumb`` (uint8 bytes) and the quality figures."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    n, h, w = x.shape
    flat = x.reshape(n, h * w).astype(np.float64)
    dhash = difference_hash(x)
    lap = -4 * x[:, 1:-1, 1:-1] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]
    sharpness = lap.reshape(n, (h - 2) * (w - 2)).astype(np.float64).var(axis=1)
    bins = np.minimum((flat * 32).astype(np.int64), 31)
    counts = np.bincount((bins + 32 * np.arange(n)[:, None]).ravel(), minlength=32 * n).reshape(n, 32)
    p = counts / flat.shape[1]
    entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    thumbs = np.rint(flat * 255).astype(np.uint8)
    out = pd.DataFrame({"dhash": dhash})
    out[BAND_COLUMNS] = hash_bands(dhash)
    out["thumb"] = pd.Series([t.tobytes() for t in thumbs], dtype=object)
    out["brightness"] = flat.mean(axis=1)
    out["contrast"] = flat.std(axis=1)
    out["sharpness"] = sharpness
    out["log_sharpness"] = np.log10(sharpness + 1e-6)
    out["entropy"] = entropy + 0.0  # no -0.0
    return out


def band_keys(new: pd.DataFrame) -> dict[str, list[int]]:
    """The band values of ``new`` to look up, per band column: stored images equal in any band are the candidates."""
    bands = hash_bands(new["dhash"])
    return {col: sorted(set(bands[:, k].tolist())) for k, col in enumerate(BAND_COLUMNS)}


def near_duplicate_pairs(
    new: pd.DataFrame, candidates: pd.DataFrame, max_hamming: int = MAX_HAMMING, max_distance: float = MAX_DISTANCE
) -> pd.DataFrame:
    """Verified near-duplicate pairs among ``new`` and between ``new`` and ``candidates`` (both with sha256,
    dhash, thumb): ``sha256_a < sha256_b``, ``hamming``, ``distance``. Pairs among candidates alone are not
    searched. Candidate pairs come from band equality, so ``max_hamming`` may be at most 3."""
    if not 0 <= max_hamming < N_BANDS:
        raise ValueError(f"max_hamming must be in 0..{N_BANDS - 1} for the band lookup to find every pair")
    cols = ["sha256", "dhash", "thumb"]
    left = new[cols].drop_duplicates("sha256").reset_index(drop=True)
    right = pd.concat([left, candidates[cols]]).drop_duplicates("sha256").reset_index(drop=True)
    lb, rb = hash_bands(left["dhash"]), hash_bands(right["dhash"])
    found = []
    for k in range(N_BANDS):
        m = pd.DataFrame({"key": lb[:, k], "i": np.arange(len(left))}).merge(
            pd.DataFrame({"key": rb[:, k], "j": np.arange(len(right))}), on="key"
        )
        found.append(m[["i", "j"]].to_numpy())
    ij = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    a, b = left["sha256"].to_numpy()[ij[:, 0]], right["sha256"].to_numpy()[ij[:, 1]]
    keep = a != b
    ij, a, b = ij[keep], a[keep], b[keep]
    hd = np.bitwise_count(
        (left["dhash"].to_numpy(np.int64)[ij[:, 0]] ^ right["dhash"].to_numpy(np.int64)[ij[:, 1]]).view(np.uint64)
    ).astype(np.int64)
    ij, a, b, hd = ij[hd <= max_hamming], a[hd <= max_hamming], b[hd <= max_hamming], hd[hd <= max_hamming]
    lt = np.stack([np.frombuffer(t, np.uint8) for t in left["thumb"]]) if len(left) else np.zeros((0, 0), np.uint8)
    rt = np.stack([np.frombuffer(t, np.uint8) for t in right["thumb"]]) if len(right) else np.zeros((0, 0), np.uint8)
    diff = (lt[ij[:, 0]].astype(np.float64) - rt[ij[:, 1]]) / 255.0 if len(ij) else np.zeros((0, 1))
    dist = np.abs(diff - diff.mean(axis=1, keepdims=True)).mean(axis=1)  # a brightness shift is no difference
    pairs = pd.DataFrame({"sha256_a": np.minimum(a, b), "sha256_b": np.maximum(a, b), "hamming": hd, "distance": dist})
    pairs = pairs[pairs["distance"] <= max_distance].drop_duplicates(["sha256_a", "sha256_b"])
    return pairs.sort_values(["sha256_a", "sha256_b"]).reset_index(drop=True)


def components(pairs: pd.DataFrame) -> dict[str, str]:
    """Every sha256 in ``pairs`` mapped to its group anchor: the smallest sha256 of its connected component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if pairs.empty:
        return {}
    codes, shas = pd.factorize(pd.concat([pairs["sha256_a"], pairs["sha256_b"]]).to_numpy(), sort=True)
    n, m = len(shas), len(pairs)
    graph = coo_matrix((np.ones(m), (codes[:m], codes[m:])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    smallest = pd.Series(np.arange(n)).groupby(label).transform("min").to_numpy()  # codes sort like sha256s
    return dict(zip(shas.tolist(), shas[smallest].tolist()))


def near_duplicate_anchors(
    pairs: pd.DataFrame,
    known_anchor: dict[str, str],
    members_of: Callable[[set[str]], dict[str, str]] | None = None,
    arrival: dict[str, object] | None = None,
) -> dict[str, str]:
    """New or changed anchors after adding ``pairs`` to the existing groups.

    ``known_anchor`` maps already grouped sha256s (at least those in ``pairs``) to their current anchor;
    ``members_of(anchors)`` returns ``{sha256: anchor}`` for every current member of those anchors' groups
    (without it, ``known_anchor`` must hold them all); ``arrival`` orders images by when they arrived
    (missing: last; ties by sha256). The touched groups are rebuilt as the components of the new pairs plus
    one edge from each member to its old anchor. A group's anchor is its earliest-arrived image (an anchor is
    always the earliest of its group, so merged groups keep the older anchor): an image keeps its split when
    near-copies of it arrive, and a bridge between two groups moves only the younger group. Given the arrival
    times, groups and anchors do not depend on the order in which pairs are added. Only the sha256s whose
    anchor is new or different are returned."""
    if pairs.empty:
        return {}
    shas = set(pairs["sha256_a"]) | set(pairs["sha256_b"])
    touched = {known_anchor[s] for s in shas if s in known_anchor}
    if members_of is not None:
        members = dict(members_of(touched)) if touched else {}
    else:
        members = {s: a for s, a in known_anchor.items() if a in touched}
    members.update({s: known_anchor[s] for s in shas if s in known_anchor})
    old = pd.DataFrame({"sha256_a": list(members), "sha256_b": list(members.values())})
    edges = pd.concat([pairs[["sha256_a", "sha256_b"]], old[old["sha256_a"] != old["sha256_b"]]])
    groups: dict[str, list[str]] = {}
    for sha, component in components(edges).items():
        groups.setdefault(component, []).append(sha)
    order = arrival or {}

    def key(sha: str) -> tuple:
        return (0, order[sha], sha) if sha in order else (1, 0, sha)

    out: dict[str, str] = {}
    for images in groups.values():
        anchor = min(images, key=key)
        out.update({s: anchor for s in images if members.get(s) != anchor})
    return out


def robust_reference(figures: pd.DataFrame, names: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """``{figure: (median, scale)}`` with ``scale = 1.4826 * MAD``, unfloored (``robust_z`` floors it)."""
    out = {}
    for name in names or REFERENCE_FIGURES:
        v = figures[name].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        med = float(np.median(v)) if len(v) else 0.0
        out[name] = (med, float(1.4826 * np.median(np.abs(v - med))) if len(v) else 0.0)
    return out


def robust_z(values: pd.Series | np.ndarray, median: float, scale: float) -> np.ndarray:
    """``(values - median) / scale``, ``scale`` floored at ``max(1% of |median|, 0.001)``."""
    floor = max(0.01 * abs(median), 1e-3)
    return (np.asarray(values, np.float64) - median) / max(scale, floor)


def quality_issues(
    figures: pd.DataFrame,
    reference: dict[str, tuple[float, float]],
    sizes: pd.DataFrame | None = None,
    typical_size: dict[str, tuple[float, float]] | None = None,
    z: float = 4.0,
    outlier_z: float = 6.0,
    area_factor: float = 4.0,
    aspect_factor: float = 2.0,
) -> pd.DataFrame:
    """Rows ``sha256, issue, score, detail`` for the images of ``figures`` (sha256 and the figures) that break a
    rule of the module docstring; ``reference`` as ``robust_reference`` gives it (or median and 1.4826 * MAD
    from SQL). ``sizes`` (sha256, source, width, height) with ``typical_size`` (source -> median width,
    height) enable ``odd_size``."""
    sha = figures["sha256"].to_numpy()
    zs = {f: robust_z(figures[f], *reference[f]) for f in REFERENCE_FIGURES if f in reference}
    rows: list[pd.DataFrame] = []

    def emit(issue: str, mask: np.ndarray, score: np.ndarray, detail: list[str], shas: np.ndarray = sha) -> None:
        if mask.any():
            rows.append(pd.DataFrame({"sha256": shas[mask], "issue": issue, "score": score[mask], "detail": detail}))

    def by_figure(issue: str, fig: str, sign: int, words: str) -> None:
        if fig not in zs:
            return
        s = sign * zs[fig] - z
        mask = s > 0
        v = figures[fig].to_numpy(np.float64)[mask]
        med = reference[fig][0]
        detail = [f"{words}: {fig} {a:.3g} vs typical {med:.3g} (robust z {b:+.1f})" for a, b in zip(v, zs[fig][mask])]
        emit(issue, mask, s, detail)

    by_figure("dark", "brightness", -1, "much darker than usual")
    by_figure("light", "brightness", 1, "much lighter than usual")
    by_figure("blurry", "log_sharpness", -1, "much blurrier than usual")
    by_figure("low_information", "entropy", -1, "far less varied than usual")
    if zs:
        rms = np.sqrt(np.mean(np.stack(list(zs.values())) ** 2, axis=0))
        mask = rms > outlier_z
        worst = np.array(list(zs))[np.argmax(np.abs(np.stack(list(zs.values()))), axis=0)]
        detail = [
            f"unusual overall: rms robust z {r:.1f} > {outlier_z:g}, most of all {w}"
            for r, w in zip(rms[mask], worst[mask])
        ]
        emit("outlier", mask, rms - outlier_z, detail)
    if sizes is not None and typical_size:
        s = figures[["sha256"]].merge(sizes, on="sha256", how="inner")
        typ = s["source"].map(typical_size)
        ok = typ.notna().to_numpy()
        s, typ = s[ok], typ[ok]
        tw, th = np.array([t[0] for t in typ], np.float64), np.array([t[1] for t in typ], np.float64)
        w, h = (np.maximum(s[c].to_numpy(np.float64), 1.0) for c in ("width", "height"))
        area_off = np.abs(np.log((w * h) / (tw * th)))
        aspect_off = np.abs(np.log((w / h) / (tw / th)))
        score = np.maximum(area_off - np.log(area_factor), aspect_off - np.log(aspect_factor))
        mask = score > 0
        detail = [
            f"size {a:.0f}x{b:.0f} vs typical {c:.0f}x{d:.0f} for source {src}"
            for a, b, c, d, src in zip(w[mask], h[mask], tw[mask], th[mask], s["source"].to_numpy()[mask])
        ]
        emit("odd_size", mask, score, detail, s["sha256"].to_numpy())
    if not rows:
        return pd.DataFrame({"sha256": [], "issue": [], "score": [], "detail": []}).astype({"score": "float64"})
    return pd.concat(rows, ignore_index=True).sort_values(
        ["issue", "score"], ascending=[True, False], ignore_index=True
    )


def issue_preview_png(images: np.ndarray, titles: list[str], max_images: int = 16, columns: int = 4) -> bytes:
    """A small grid of up to ``max_images`` grayscale images in [0, 1] with their titles, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dc_pipeline.core.plots import figure_png

    n = min(len(images), max_images)
    cols = max(1, min(columns, n))
    n_rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.9 * cols, 2.1 * n_rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(np.asarray(images[k]), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(titles[k] if k < len(titles) else "", fontsize=7)
    return figure_png(fig)
