"""A registered model ready to use: the same preprocessing as training, class ids in and out."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


def class_index(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Map class ids onto output indices 0..K-1 (the order of the project's classes)."""
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([lookup[int(v)] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"label {exc} is not one of the classes {classes}") from None


def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` at any size -> float32 ``[N, size, size]`` in [0, 1].

    Exactly the features stage's path (PIL grayscale conversion, bilinear resize), so a model sees
    the same input in production as in training.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"expected [N, H, W] or [N, H, W, C] with C in 1, 3, 4; got shape {images.shape}")
    from dc_pipeline.core.data.images import to_grayscale_array

    out = np.empty((len(images), size, size), np.float32)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(buf, format="PNG")
        out[i] = to_grayscale_array(buf.getvalue(), size)
    return out


@dataclass
class LoadedModel:
    """A registry model version with its weights verified."""

    version_id: str
    record: dict
    network: object  # dc_pipeline.core.ml.networks.SmallCNN in eval mode

    @property
    def classes(self) -> list[int]:
        return list(self.record["model_spec"]["classes"])

    @property
    def input_size(self) -> int:
        return int(self.record["model_spec"]["input_size"])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, K]`` (columns in the order of ``classes``) for uint8 images of any size."""
        return self.predict_canonical(preprocess(images, self.input_size))

    def predict_canonical(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for canonical inputs (float32 ``[N, size, size]`` in [0, 1])."""
        from dc_pipeline.core.ml.training import predict_proba

        return predict_proba(self.network, x)

    def embed_canonical(self, x: np.ndarray) -> np.ndarray:
        from dc_pipeline.core.ml.training import embed

        return embed(self.network, x)


def build_loaded(record: dict, state_dict: dict) -> LoadedModel:
    from dc_pipeline.core.ml.training import build_model

    spec = record["model_spec"]
    kwargs = {k: int(spec[k]) for k in ("in_channels", "n_classes", "width", "depth", "input_size")}
    return LoadedModel(version_id=record["version_id"], record=record, network=build_model(kwargs, state_dict))
