"""AugMix: the batched engine (``engine``, eager PyTorch, and ``fused``, its compiled CPU loop) and the readable per-image reference (``reference``)."""

import importlib
from typing import Any

from dc_pipeline.core.ml.augmix.engine import (
    ALL_OPS,
    OPS,
    AugMix,
    AugMixParams,
    apply_op,
    augmix_views,
    jsd_loss,
    sample_dirichlet,
    sample_gamma,
)

__all__ = [
    "ALL_OPS",
    "OPS",
    "AugMix",
    "AugMixParams",
    "apply_op",
    "augmix_views",
    "jsd_loss",
    "sample_dirichlet",
    "sample_gamma",
]


def __getattr__(name: str) -> Any:
    """``reference`` (PIL) is imported on first use, so the engine alone does not load PIL."""
    if name == "reference":
        return importlib.import_module(f"{__name__}.reference")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
