"""Quality control of augmented data: does a simple classifier still recognise the labels?"""

from __future__ import annotations

import numpy as np


def label_preservation_score(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    views: np.ndarray,
    labels: np.ndarray,
    sampled: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of a logistic regression (fit on clean train) on clean val and on augmented views.

    ``views`` is ``[N, V, H, W]`` with one label per sample in ``labels``; ``sampled`` are the training
    positions the views were made from, left out of the fit so the classifier has not seen them.
    """
    from sklearn.linear_model import LogisticRegression

    (x_train, y_train), (x_val, y_val) = train, val
    if sampled is not None:
        keep = np.ones(len(y_train), bool)
        keep[sampled] = False
        x_train, y_train = np.asarray(x_train)[keep], np.asarray(y_train)[keep]
    model = LogisticRegression(max_iter=300, C=0.5, random_state=seed)
    model.fit(np.asarray(x_train).reshape(len(x_train), -1), y_train)
    clean = float(model.score(np.asarray(x_val).reshape(len(x_val), -1), y_val))
    n, v = views.shape[:2]
    augmented = float(model.score(views.reshape(n * v, -1), np.repeat(labels, v)))
    return {
        "clean_val_accuracy": round(clean, 4),
        "augmented_accuracy": round(augmented, 4),
        "augmented_images": int(n * v),
        "classifier": "logistic regression on raw pixels (scikit-learn)",
    }
