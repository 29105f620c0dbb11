"""Batched AugMix for training batches (see ``dc_pipeline.core.ml.augmix``)."""

from dc_pipeline.core.ml.augmix import ALL_OPS, OPS, AugMix, augmix_views, jsd_loss

__all__ = ["ALL_OPS", "OPS", "AugMix", "augmix_views", "jsd_loss"]
