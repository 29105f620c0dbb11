"""Uncertainty of evaluation figures: bootstrap over evaluation images, per model and paired between two models.

A model's per-image results on one set of evaluation images (``Outcomes``: clean, and under every corruption and
severity) are resampled by image: a bootstrap sample draws N evaluation images with replacement, and every
corrupted copy of a drawn image comes with it (the copies of one image are not independent evidence).
Every figure of ``evaluation.evaluate`` is recomputed on each sample, vectorised over samples, with the
same definitions as ``metrics`` (the full sample reproduces the point estimates exactly). Two models
evaluated on the same images are compared on the *same* samples (a paired bootstrap), which removes
the share of the noise that comes from which images happen to be in the evaluation set. Intervals are
percentile intervals; the automation threshold, chosen on validation data, is held fixed.

Binned calibration errors are biased upwards on a finite sample, and more so on a resample (which repeats
images): their percentile intervals can lie above the estimate. Read them as the spread of the estimator;
the gate compares calibration through the paired difference, in which the two models' bias largely cancels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dc_pipeline.core.ml.metrics import AUGMIX_OVERLAP

#: Figures that get an interval; lower is better for all but the automation rates.
FIGURES = (
    "clean_error",
    "mce",
    "mce_unseen_by_augmix",
    "ece_clean",
    "rms_calibration_clean",
    "ece_corrupted",
    "rms_calibration_corrupted",
    "automation_rate_clean",
    "automation_rate_corrupted",
)
ECE_BINS = 15  # as metrics.expected_calibration_error
RMS_BIN_SIZE = 100  # as metrics.rms_calibration_error
_CHUNK_VALUES = 4_000_000  # resampled values per chunk: bounds memory, and small arrays are faster here


@dataclass(frozen=True)
class Interval:
    """A point estimate (on all evaluation images) and a percentile bootstrap interval around it."""

    estimate: float
    low: float
    high: float
    level: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def below(self, bound: float) -> bool:
        """The whole interval lies below ``bound``."""
        return self.high < bound

    def above(self, bound: float) -> bool:
        """The whole interval lies above ``bound``."""
        return self.low > bound

    def text(self, fmt: str = ".4f", signed: bool = False) -> str:
        f = ("+" if signed else "") + fmt
        return f"{self.estimate:{f}} [{self.low:{f}}, {self.high:{f}}]"

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


@dataclass(frozen=True)
class Outcomes:
    """One model's per-image results on one set of evaluation images, images in a fixed order."""

    confidence: np.ndarray  # [N] top-class probability on the clean image
    correct: np.ndarray  # [N] bool
    corruptions: tuple[tuple[str, int], ...]  # K (corruption, severity) pairs
    confidence_corrupted: np.ndarray  # [K, N]
    correct_corrupted: np.ndarray  # [K, N] bool
    threshold: float  # the automation threshold, chosen on validation data
    automation: np.ndarray | None = None  # [N] bool: the images the automation rate is measured on (None: all)

    def __post_init__(self) -> None:
        n, k = len(self.correct), len(self.corruptions)
        if self.automation is None:
            object.__setattr__(self, "automation", np.ones(n, bool))
        if self.automation.shape != (n,) or not self.automation.any():
            raise ValueError("the automation rate needs a flag per image, at least one of them set")
        if self.confidence.shape != (n,) or self.confidence_corrupted.shape != (k, n):
            raise ValueError(f"outcomes of {n} images under {k} corruptions have inconsistent shapes")
        if self.correct_corrupted.shape != (k, n):
            raise ValueError(f"outcomes of {n} images under {k} corruptions have inconsistent shapes")
        if n == 0 or k == 0:
            raise ValueError("outcomes need at least one test image and one corruption")

    @property
    def n(self) -> int:
        return len(self.correct)

    def to_frame(self) -> pd.DataFrame:
        """One row per corruption and severity (clean: both null), the per-image values as lists; the clean
        row also flags the images the automation rate is measured on."""
        rows = [{"corruption": None, "severity": None, "confidence": self.confidence, "correct": self.correct}]
        rows += [
            {"corruption": name, "severity": sev, "confidence": conf, "correct": ok}
            for (name, sev), conf, ok in zip(self.corruptions, self.confidence_corrupted, self.correct_corrupted)
        ]
        frame = pd.DataFrame(rows)
        frame["confidence"] = [np.asarray(v, np.float64).tolist() for v in frame.confidence]
        frame["correct"] = [np.asarray(v, bool).tolist() for v in frame.correct]
        frame["automation"] = [self.automation.tolist()] + [None] * len(self.corruptions)
        return frame.astype({"corruption": "string", "severity": "Int64"})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, threshold: float) -> Outcomes:
        clean = frame[frame.corruption.isna()]
        if len(clean) != 1:
            raise ValueError(f"expected one clean row of outcomes, found {len(clean)}")
        rest = frame[frame.corruption.notna()].sort_values(["corruption", "severity"])
        flags = clean.automation.iloc[0] if "automation" in frame else None
        return cls(
            confidence=np.asarray(clean.confidence.iloc[0], np.float64),
            correct=np.asarray(clean.correct.iloc[0], bool),
            corruptions=tuple((str(c), int(s)) for c, s in zip(rest.corruption, rest.severity)),
            confidence_corrupted=np.array([np.asarray(v, np.float64) for v in rest.confidence]),
            correct_corrupted=np.array([np.asarray(v, bool) for v in rest.correct]),
            threshold=float(threshold),
            automation=None if flags is None else np.asarray(flags, bool),
        )


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` image indices drawn with replacement (reproducible from ``seed``)."""
    if resamples < 1:
        raise ValueError("at least one bootstrap resample is needed")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _mce_weights(keys: Sequence[tuple[str, int]], skip: Sequence[str] = ()) -> np.ndarray:
    """Weights over the (corruption, severity) pairs such that ``weights @ errors`` is the mCE (mean over
    corruptions of the mean over severities), leaving out the corruptions in ``skip``."""
    per_name: dict[str, int] = defaultdict(int)
    for name, _ in keys:
        if name not in skip:
            per_name[name] += 1
    if not per_name:
        raise ValueError("no corruption left for the mCE")
    return np.array([0.0 if n in skip else 1.0 / (len(per_name) * per_name[n]) for n, _ in keys])


def _multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]``: how often each image is drawn in each resample."""
    b = idx.shape[0]
    flat = (idx + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _ece_terms(conf: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``[N, ECE_BINS]``: per image, the sum of (confidence - correct) of its values falling in each bin
    (``conf``/``ok`` are ``[N]`` or ``[K, N]``); a resample's ECE is ``|counts @ terms|.sum() / values``."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    conf2, ok2 = np.atleast_2d(conf), np.atleast_2d(ok).astype(np.float64)
    bins = np.clip(np.searchsorted(edges[1:-1], conf2, side="left"), 0, ECE_BINS - 1)
    n = conf2.shape[1]
    flat = (np.arange(n)[None, :] * ECE_BINS + bins).ravel()
    return np.bincount(flat, weights=(conf2 - ok2).ravel(), minlength=n * ECE_BINS).reshape(n, ECE_BINS)


class _SortedValues:
    """Every value of one kind (clean, or pooled over corruptions in ``[K, N]`` order) sorted once by
    confidence (stable), with the image it belongs to: a resample's values in sorted order are these, each
    repeated as often as its image was drawn, so the adaptive bins of the RMS calibration error follow from
    cumulative sums of the multiplicities, without sorting each resample."""

    def __init__(self, conf: np.ndarray, ok: np.ndarray) -> None:
        conf2, ok2 = np.atleast_2d(conf), np.atleast_2d(ok).astype(np.float64)
        self.per_image = conf2.shape[0]  # values per drawn image
        n = conf2.shape[1]
        flat_conf = conf2.ravel()
        order = np.argsort(flat_conf, kind="stable")
        self.image = (np.arange(flat_conf.size) % n)[order]
        self.gap = (flat_conf - ok2.ravel())[order]

    def rms_calibration(self, counts: np.ndarray) -> np.ndarray:
        """Row-wise ``metrics.rms_calibration_error`` of the resamples given by ``counts`` ``[B, N]``."""
        b = counts.shape[0]
        weight = counts[:, self.image]  # [B, M]: how often each sorted value occurs in each resample
        cum_w = np.cumsum(weight, axis=1)
        cum_g = np.cumsum(weight * self.gap, axis=1)
        total = int(round(cum_w[0, -1]))  # values per resample (the same for every resample)
        edges = np.r_[np.arange(1, max(total // RMS_BIN_SIZE, 1)) * RMS_BIN_SIZE, total]
        # the cumulative gap at position p of the expanded sequence: inside the value that covers p
        offsets = (total + 1) * np.arange(b)[:, None]  # rows side by side in one sorted array
        shifted = (cum_w + offsets).ravel()
        targets = (edges[None, :] + offsets).ravel()
        at = np.searchsorted(shifted, targets, side="left")
        g_at = cum_g.ravel()[at] - (shifted[at] - targets) * self.gap[at % weight.shape[1]]
        g_at = np.concatenate([np.zeros((b, 1)), g_at.reshape(b, -1)], axis=1)
        sums = np.diff(g_at, axis=1)
        sizes = np.diff(np.r_[0, edges])
        return np.sqrt(np.sum(sums**2 / sizes, axis=1) / total)


class _Prepared:
    """What every resample of one model's outcomes reads, computed once."""

    def __init__(self, o: Outcomes) -> None:
        self.o = o
        self.wrong = 1.0 - o.correct.astype(np.float64)  # [N]
        self.wrong_c = 1.0 - o.correct_corrupted.astype(np.float64)  # [K, N]
        self.ece = _ece_terms(o.confidence, o.correct)
        self.ece_c = _ece_terms(o.confidence_corrupted, o.correct_corrupted)
        self.sorted = _SortedValues(o.confidence, o.correct)
        self.sorted_c = _SortedValues(o.confidence_corrupted, o.correct_corrupted)
        auto = o.automation.astype(np.float64)
        self.auto = auto
        self.accepted = (o.confidence >= o.threshold) * auto
        self.accepted_c = ((o.confidence_corrupted >= o.threshold) * auto).sum(axis=0)  # [N]
        keys = o.corruptions
        self.mce = _mce_weights(keys)
        self.unseen = _mce_weights(keys, AUGMIX_OVERLAP) if any(k[0] not in AUGMIX_OVERLAP for k in keys) else None

    def figures(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        n, k = self.o.n, len(self.o.corruptions)
        errors = counts @ self.wrong_c.T / n  # [B, K]
        with np.errstate(invalid="ignore", divide="ignore"):
            drawn_auto = counts @ self.auto
            return {
                "clean_error": counts @ self.wrong / n,
                "mce": errors @ self.mce,
                "mce_unseen_by_augmix": errors @ self.unseen
                if self.unseen is not None
                else np.full(len(counts), np.nan),
                "ece_clean": np.abs(counts @ self.ece).sum(axis=1) / n,
                "rms_calibration_clean": self.sorted.rms_calibration(counts),
                "ece_corrupted": np.abs(counts @ self.ece_c).sum(axis=1) / (n * k),
                "rms_calibration_corrupted": self.sorted_c.rms_calibration(counts),
                "automation_rate_clean": counts @ self.accepted / drawn_auto,
                "automation_rate_corrupted": counts @ self.accepted_c / (drawn_auto * k),
            }


def figures(o: Outcomes, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every figure of ``FIGURES`` on each resample ``idx`` ``[B, N]``: arrays ``[B]``."""
    return _Prepared(o).figures(_multiplicities(idx, o.n))


def point_figures(o: Outcomes) -> dict[str, float]:
    """The figures on all evaluation images (the estimates the intervals are around)."""
    return {k: float(v[0]) for k, v in figures(o, np.arange(o.n)[None, :]).items()}


def resampled_figures(o: Outcomes, idx: np.ndarray) -> dict[str, np.ndarray]:
    """``figures`` over many resamples, in chunks that bound memory."""
    prepared = _Prepared(o)
    values = o.n * (len(o.corruptions) + 1)
    step = max(1, _CHUNK_VALUES // values)
    parts = [prepared.figures(_multiplicities(idx[i : i + step], o.n)) for i in range(0, len(idx), step)]
    return {k: np.concatenate([p[k] for p in parts]) for k in FIGURES}


def _interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must lie in (0, 1), got {level}")
    draws = draws[np.isfinite(draws)]
    if np.isnan(estimate) or draws.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high), level)


def intervals(o: Outcomes, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Each figure of one model with its bootstrap interval over evaluation images."""
    draws = resampled_figures(o, bootstrap_indices(o.n, resamples, seed))
    return {k: _interval(v, draws[k], level) for k, v in point_figures(o).items()}


@dataclass(frozen=True)
class Comparison:
    """Model ``a`` against model ``b`` on the same evaluation images: each model's figures, the paired differences
    ``a - b`` and the paired ratios ``a / b``, all with intervals."""

    a: dict[str, Interval]
    b: dict[str, Interval]
    difference: dict[str, Interval]
    ratio: dict[str, Interval]
    n: int
    resamples: int

    @property
    def relative_mce(self) -> Interval:
        """``mCE_a / mCE_b``: AugMix's relative mCE when ``b`` is the baseline."""
        return self.ratio["mce"]

    def table(self, names: tuple[str, str] = ("a", "b")) -> pd.DataFrame:
        """One row per figure: both models and the difference, each as ``estimate [low, high]``."""
        return pd.DataFrame(
            {
                names[0]: {k: v.text() for k, v in self.a.items()},
                names[1]: {k: v.text() for k, v in self.b.items()},
                f"{names[0]} - {names[1]}": {k: v.text(signed=True) for k, v in self.difference.items()},
            }
        ).rename_axis("figure")

    def as_dict(self, names: tuple[str, str] = ("a", "b")) -> dict:
        return {
            names[0]: {k: v.as_dict() for k, v in self.a.items()},
            names[1]: {k: v.as_dict() for k, v in self.b.items()},
            "difference": {k: v.as_dict() for k, v in self.difference.items()},
            "ratio": {k: v.as_dict() for k, v in self.ratio.items()},
            "test_images": self.n,
            "resamples": self.resamples,
        }


def compare(a: Outcomes, b: Outcomes, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Comparison:
    """Paired bootstrap: both models' figures on the same resamples of the same evaluation images."""
    if a.n != b.n or a.corruptions != b.corruptions:
        raise ValueError(
            f"a paired comparison needs the same evaluation images and corruptions: {a.n} images and "
            f"{len(a.corruptions)} corruptions vs {b.n} and {len(b.corruptions)}"
        )
    idx = bootstrap_indices(a.n, resamples, seed)
    da, db = resampled_figures(a, idx), resampled_figures(b, idx)
    pa, pb = point_figures(a), point_figures(b)
    return Comparison(
        a={k: _interval(pa[k], da[k], level) for k in FIGURES},
        b={k: _interval(pb[k], db[k], level) for k in FIGURES},
        difference={k: _interval(pa[k] - pb[k], da[k] - db[k], level) for k in FIGURES},
        ratio={k: ratio_interval(pa[k], pb[k], da[k], db[k], level) for k in FIGURES},
        n=a.n,
        resamples=resamples,
    )


def ratio_interval(a: float, b: float, draws_a: np.ndarray, draws_b: np.ndarray, level: float) -> Interval:
    """``a / b`` with the percentile interval of the paired draws' ratios (draws with ``b == 0`` left out)."""
    if not b > 0:
        return Interval(float("nan"), float("nan"), float("nan"), level)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = draws_a / draws_b
    return _interval(a / b, draws, level)


@dataclass(frozen=True)
class Spread:
    """The spread of one figure over training seeds."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    def text(self, fmt: str = ".3f") -> str:
        return f"{self.mean:{fmt}} ± {self.sd:{fmt}} (min {self.low:{fmt}}, max {self.high:{fmt}}, {self.n} seeds)"


def seed_spread(values: Sequence[float] | Mapping[int, float]) -> Spread:
    """Mean, sample standard deviation, minimum and maximum over seeds."""
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else list(values), np.float64)
    if v.size == 0:
        raise ValueError("no values to spread")
    return Spread(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, float(v.min()), float(v.max()), v.size)
