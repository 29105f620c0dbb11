"""Batch scoring: the champion's predictions for accepted images, routed to auto-accept or review."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd


def score(
    images: pd.DataFrame, probs: np.ndarray, classes: list[int], version_id: str, threshold: float
) -> pd.DataFrame:
    """One row per image: top class, confidence, probabilities, model version and routing decision.

    ``images`` has ``image_id, sha256, source, batch_id, label`` (the given label, may be null);
    ``threshold`` is the confidence at or above which a prediction is accepted without review.
    """
    top = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    out = images[["image_id", "sha256", "source", "batch_id", "label"]].copy()
    out["predicted_label"] = np.asarray(classes)[top].astype(int)
    out["confidence"] = confidence.astype(float)
    out["probabilities"] = [json.dumps([round(float(p), 6) for p in row]) for row in probs]
    out["model_version"] = version_id
    out["threshold"] = float(threshold)
    out["routing"] = np.where(confidence >= threshold, "auto_accept", "human_review")
    out["scored_at"] = datetime.now(UTC).replace(tzinfo=None)
    return out.reset_index(drop=True)


def batch_summary(scores: pd.DataFrame) -> dict:
    """Business figures of one scored batch: automation rate and review-queue size, plus model figures
    where the batch carries labels."""
    n = len(scores)
    accepted = scores["routing"] == "auto_accept"
    labelled = scores["label"].notna()
    correct = scores["predicted_label"] == scores["label"]
    return {
        "source": scores["source"].iloc[0] if n else None,
        "batch_id": scores["batch_id"].iloc[0] if n else None,
        "model_version": scores["model_version"].iloc[0] if n else None,
        "images": int(n),
        "automation_rate": float(accepted.mean()) if n else 0.0,
        "review_queue": int((~accepted).sum()),
        "mean_confidence": float(scores["confidence"].mean()) if n else 0.0,
        "labelled": int(labelled.sum()),
        "error": float(1 - correct[labelled].mean()) if labelled.any() else None,
        "accepted_error": float(1 - correct[labelled & accepted].mean()) if (labelled & accepted).any() else None,
        "scored_at": datetime.now(UTC).replace(tzinfo=None),
    }
