"""Evaluating a model: clean and corrupted error, calibration, automation rate, slices; and the plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dc_pipeline.core.ml import metrics as m
from dc_pipeline.core.ml.bootstrap import Outcomes
from dc_pipeline.core.ml.metrics import AUGMIX_OVERLAP

MAX_ACCEPTED_ERROR = 0.01  # the automation threshold keeps auto-accepted predictions at most 1% wrong


@dataclass
class Evaluation:
    summary: dict[str, float]
    corruption_errors: dict[tuple[str, int], float]
    per_class: pd.DataFrame
    per_source: pd.DataFrame
    confusion: np.ndarray
    reliability: dict[str, m.ReliabilityData] = field(default_factory=dict)
    outcomes: Outcomes | None = None  # per-image results, for intervals and paired comparisons

    def corruption_table(self) -> pd.DataFrame:
        rows = [{"corruption": n, "severity": s, "error": e} for (n, s), e in sorted(self.corruption_errors.items())]
        return pd.DataFrame(rows).pivot(index="corruption", columns="severity", values="error")


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    corrupted: dict[tuple[str, int], np.ndarray],
    sources: np.ndarray,
    n_classes: int,
    automation_images: np.ndarray | None = None,
) -> Evaluation:
    """Every figure on the ``evaluation`` images (and their ``corrupted`` copies, in the same order), which no
    model trained on; the automation threshold is chosen on ``val`` and the automation rate measured on the
    evaluation images flagged in ``automation_images`` (default all: those must not be ``val``'s).
    ``predict`` maps canonical images to probabilities; labels are class indices."""
    (xt, yt), (xv, yv) = evaluation, val
    p_test, p_val = predict(xt), predict(xv)
    conf_t, ok_t = m.confidence_and_correct(p_test, yt)
    conf_v, ok_v = m.confidence_and_correct(p_val, yv)
    threshold = m.choose_threshold(conf_v, ok_v, MAX_ACCEPTED_ERROR)
    auto = np.ones(len(yt), bool) if automation_images is None else np.asarray(automation_images, bool)
    errors, conf_c, ok_c = {}, [], []
    for key, xc in sorted(corrupted.items()):
        c, ok = m.confidence_and_correct(predict(xc), yt)
        errors[key] = float(1.0 - ok.mean())
        conf_c.append(c)
        ok_c.append(ok)
    outcomes = Outcomes(
        conf_t, ok_t, tuple(sorted(corrupted)), np.stack(conf_c), np.stack(ok_c), float(threshold), auto
    )
    auto_t, acc_err_t = m.automation_rate(conf_t[auto], ok_t[auto], threshold)
    auto_c, acc_err_c = m.automation_rate(
        outcomes.confidence_corrupted[:, auto].ravel(), outcomes.correct_corrupted[:, auto].ravel(), threshold
    )
    conf_c, ok_c = np.concatenate(conf_c), np.concatenate(ok_c)
    summary = {
        "clean_error": float(1.0 - ok_t.mean()),
        "mce": m.mean_corruption_error(errors),
        "mce_unseen_by_augmix": m.mean_corruption_error(
            {k: v for k, v in errors.items() if k[0] not in AUGMIX_OVERLAP}
        ),
        "ece_clean": m.expected_calibration_error(conf_t, ok_t),
        "rms_calibration_clean": m.rms_calibration_error(conf_t, ok_t),
        "ece_corrupted": m.expected_calibration_error(conf_c, ok_c),
        "rms_calibration_corrupted": m.rms_calibration_error(conf_c, ok_c),
        "automation_threshold": float(threshold),
        "automation_rate_clean": auto_t,
        "accepted_error_clean": acc_err_t,
        "automation_rate_corrupted": auto_c,
        "accepted_error_corrupted": acc_err_c,
        "n_test": int(len(yt)),
        "n_automation": int(auto.sum()),
        "n_corrupted": int(len(ok_c)),
    }
    frame = pd.DataFrame({"label": yt, "source": sources, "correct": ok_t})
    return Evaluation(
        summary=summary,
        corruption_errors=errors,
        per_class=m.slice_errors(frame, "label"),
        per_source=m.slice_errors(frame, "source"),
        confusion=m.confusion_matrix(yt, p_test.argmax(axis=1), n_classes),
        reliability={
            "clean": m.reliability_diagram_data(conf_t, ok_t, 10),
            "corrupted": m.reliability_diagram_data(conf_c, ok_c, 10),
        },
        outcomes=outcomes,
    )


def error_by_corruption_png(evaluations: dict[str, Evaluation]) -> bytes:
    """Error per corruption (mean over severities) and per severity (mean over corruptions), per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dc_pipeline.core.plots import figure_png

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    names = sorted({n for e in evaluations.values() for n, _ in e.corruption_errors})
    width = 0.8 / max(len(evaluations), 1)
    for i, (label, ev) in enumerate(evaluations.items()):
        table = ev.corruption_table()
        a.bar(np.arange(len(names)) + i * width, table.reindex(names).mean(axis=1), width, label=label)
        b.plot(table.columns, table.mean(axis=0), marker="o", label=label)
    a.set_xticks(np.arange(len(names)) + width * (len(evaluations) - 1) / 2, names, rotation=60, ha="right")
    a.set_ylabel("error (mean over severities)")
    b.set_xlabel("severity")
    b.set_ylabel("error (mean over corruptions)")
    a.legend()
    return figure_png(fig)


def reliability_png(evaluations: dict[str, Evaluation]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dc_pipeline.core.plots import figure_png

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, part in zip(axes, ("clean", "corrupted")):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        for label, ev in evaluations.items():
            r = ev.reliability[part]
            keep = r.counts > 0
            ax.plot(r.confidence[keep], r.accuracy[keep], marker="o", label=label)
        ax.set_title(f"reliability, {part} test data")
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    return figure_png(fig)
