"""Evaluation metrics: error, calibration, corruption robustness, automation and slices.

Conventions: ``confidence`` is the top-class probability per sample (float array ``[N]``),
``correct`` whether the top class was the true label (bool or 0/1 array ``[N]``). Scalar metrics are
returned as plain Python ``float``/``int`` (safe for Dagster metadata); per-bin or per-class results
are numpy arrays.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "AUGMIX_OVERLAP",
    "NO_AUTOMATION_THRESHOLD",
    "ReliabilityData",
    "RelativeCorruptionError",
    "automation_rate",
    "choose_threshold",
    "confidence_and_correct",
    "confusion_matrix",
    "corruption_errors_by_name",
    "error_rate",
    "expected_calibration_error",
    "mean_corruption_error",
    "relative_corruption_error",
    "reliability_diagram_data",
    "rms_calibration_error",
    "slice_errors",
]

#: Corruptions whose transformation is also one of AugMix's own ops: the paper keeps its ops disjoint from
#: the test corruptions, so the mCE over the corruptions AugMix never trains on is reported too.
AUGMIX_OVERLAP = ("rotate", "shear", "translate")

#: Threshold meaning "accept nothing": the smallest float above 1.0, so no probability reaches it.
NO_AUTOMATION_THRESHOLD: float = float(np.nextafter(1.0, 2.0))


def _vectors(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.shape} vs {corr.shape}")
    return conf, corr


def confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-class probability ``[N]`` (float64) and whether the top class equals the label ``[N]`` (bool)."""
    p = np.asarray(probs)
    return p.max(axis=1).astype(np.float64), p.argmax(axis=1) == np.asarray(labels)


def error_rate(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose arg-max class differs from the label (``probs`` may be logits)."""
    p = np.asarray(probs)
    if p.shape[0] == 0:
        raise ValueError("error_rate of an empty set")
    return float(np.mean(p.argmax(axis=1) != np.asarray(labels)))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Standard ECE: equal-width bins ``(lo, hi]`` over [0, 1] (0 goes to the first bin),
    ``sum_b |B|/N * |mean_conf(B) - accuracy(B)|``."""
    data = reliability_diagram_data(confidence, correct, n_bins)
    n = data.counts.sum()
    if n == 0:
        raise ValueError("calibration error of an empty set")
    used = data.counts > 0
    gaps = np.abs(data.confidence[used] - data.accuracy[used])
    return float(np.sum(data.counts[used] / n * gaps))


def rms_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bin_size: int = 100, drop_last_bin: bool = False
) -> float:
    """RMS calibration error with adaptive bins, as Hendrycks' ``calib_err(confidence, correct, p='2')``.

    Samples are sorted by confidence and cut into ``len // bin_size`` bins of ``bin_size``; the last
    bin takes the remainder (``bins[-1] = [bins[-1][0], len]``), and fewer than ``bin_size`` samples
    make one bin. Returns ``sqrt(sum_b |B|/N * (mean_conf(B) - accuracy(B))**2)``.

    The reference loop runs over ``range(len(bins) - 1)`` and so leaves the last (most confident)
    bin out of the sum while still dividing by all N; ``drop_last_bin=True`` reproduces that exactly
    (and gives 0.0 whenever there is a single bin, i.e. N < 2 * bin_size).
    """
    conf, corr = _vectors(confidence, correct)
    n = conf.shape[0]
    if n == 0:
        raise ValueError("calibration error of an empty set")
    if bin_size < 1:
        raise ValueError("bin_size must be >= 1")
    order = np.argsort(conf, kind="stable")
    conf, corr = conf[order], corr[order]
    bins = [[i * bin_size, (i + 1) * bin_size] for i in range(n // bin_size)] or [[0, n]]
    bins[-1] = [bins[-1][0], n]
    if drop_last_bin:
        bins = bins[:-1]
    cerr = 0.0
    for lo, hi in bins:
        cerr += (hi - lo) / n * (np.mean(conf[lo:hi]) - np.mean(corr[lo:hi])) ** 2
    return float(np.sqrt(cerr))


class ReliabilityData(NamedTuple):
    """Per-bin data for a reliability diagram; empty bins have NaN accuracy and confidence."""

    centers: np.ndarray  # [n_bins] bin centres
    accuracy: np.ndarray  # [n_bins] mean of `correct` in the bin
    confidence: np.ndarray  # [n_bins] mean confidence in the bin
    counts: np.ndarray  # [n_bins] int64 samples per bin


def reliability_diagram_data(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> ReliabilityData:
    """Equal-width bins ``(lo, hi]`` over [0, 1] (confidence 0 falls in the first bin)."""
    conf, corr = _vectors(confidence, correct)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=corr, minlength=n_bins) / counts
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
    return ReliabilityData((edges[:-1] + edges[1:]) / 2, acc, mean_conf, counts)


def corruption_errors_by_name(errors: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Mean error over severities for each corruption name, from ``{(name, severity): error}``."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for (name, _severity), err in errors.items():
        grouped[name].append(float(err))
    return {name: float(np.mean(v)) for name, v in sorted(grouped.items())}


def mean_corruption_error(errors: Mapping[tuple[str, int], float]) -> float:
    """Unnormalised mCE: mean over corruptions of the mean error over severities (AugMix, CIFAR-C)."""
    per_name = corruption_errors_by_name(errors)
    if not per_name:
        raise ValueError("no corruption errors given")
    return float(np.mean(list(per_name.values())))


class RelativeCorruptionError(NamedTuple):
    """Model vs baseline on the same corruptions."""

    ratio: float  # mCE_model / mCE_baseline (unnormalised mCEs)
    per_corruption: dict[str, float]  # mean-over-severities error ratio per corruption
    normalized_mce: float  # ImageNet-C style: mean over corruptions of the per-corruption ratios


def relative_corruption_error(
    model_errors: Mapping[tuple[str, int], float], baseline_errors: Mapping[tuple[str, int], float]
) -> RelativeCorruptionError:
    """Compare two ``{(name, severity): error}`` maps over the same keys; ratios are NaN where the
    baseline error is 0."""
    if set(model_errors) != set(baseline_errors):
        raise ValueError("model and baseline errors must cover the same (corruption, severity) pairs")
    model = corruption_errors_by_name(model_errors)
    base = corruption_errors_by_name(baseline_errors)

    def _ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else float("nan")

    per = {name: _ratio(model[name], base[name]) for name in model}
    return RelativeCorruptionError(
        ratio=_ratio(mean_corruption_error(model_errors), mean_corruption_error(baseline_errors)),
        per_corruption=per,
        normalized_mce=float(np.mean(list(per.values()))),
    )


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, max_error: float = 0.01) -> float:
    """Lowest threshold ``t`` among the observed confidences such that the samples with
    ``confidence >= t`` have an error rate ``<= max_error``.

    Returns ``NO_AUTOMATION_THRESHOLD`` (the float just above 1.0, so nothing is accepted) when no
    threshold qualifies or the input is empty.
    """
    conf, corr = _vectors(confidence, correct)
    if conf.size == 0:
        return NO_AUTOMATION_THRESHOLD
    order = np.argsort(-conf, kind="stable")
    conf, wrong = conf[order], 1.0 - corr[order]
    cum_wrong = np.cumsum(wrong)
    # a threshold at a value accepts all its ties: evaluate only at the last index of each tie group
    last_of_group = np.r_[conf[1:] != conf[:-1], True]
    counts = np.arange(1, conf.size + 1)[last_of_group]
    errors = cum_wrong[last_of_group] / counts
    ok = np.flatnonzero(errors <= max_error + 1e-12)
    if ok.size == 0:
        return NO_AUTOMATION_THRESHOLD
    return float(conf[last_of_group][ok[-1]])


def automation_rate(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(rate, accepted_error)``: share of samples with ``confidence >= threshold`` and the error among
    them (0.0 when nothing is accepted)."""
    conf, corr = _vectors(confidence, correct)
    if conf.size == 0:
        return 0.0, 0.0
    accepted = conf >= threshold
    n_acc = int(accepted.sum())
    err = float(1.0 - corr[accepted].mean()) if n_acc else 0.0
    return float(n_acc / conf.size), err


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` int64 counts; rows are true labels, columns predictions."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(preds, dtype=np.int64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError("labels and preds differ in length")
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= n_classes):
        raise ValueError(f"labels and preds must lie in [0, {n_classes})")
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def slice_errors(df: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Error per slice: columns ``by``, ``count`` (int) and ``error`` (1 - mean of ``correct``), sorted
    by the slice values."""
    keys = [by] if isinstance(by, str) else list(by)
    out = (
        df.assign(_wrong=1.0 - df["correct"].astype(float))
        .groupby(keys, dropna=False, sort=True)["_wrong"]
        .agg(count="size", error="mean")
        .reset_index()
    )
    out["count"] = out["count"].astype(np.int64)
    return out[[*keys, "count", "error"]]
