"""Per-image AugMix reference in the style of google-research/augmix (PIL + numpy).

The ops of the reference ``augmentations.py`` with the level and the sign passed in
rather than drawn inside each op, and the image's own size where the reference
hard-codes ``IMAGE_SIZE = 32``; the mixing of its ``cifar.py`` ``aug()``. The engine
(``engine.py``) is tested against these ops and benchmarked against ``augmix()``.

An op is ``op(image, level, sign)``: ``level`` is the severity level in [0.1, 10]
and ``sign`` (+1/-1) the direction of rotate, shear and translate. A chain is a
list of ``(name, level, sign)`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

if TYPE_CHECKING:
    from dc_pipeline.core.ml.augmix.engine import AugMixParams

__all__ = [
    "ALL_OPS", "LEVEL_FREE", "OPS", "SIGNED", "apply_op", "augment_and_mix", "augmix",
    "chains_from_params", "sample_chains", "to_float",
]  # fmt: skip

Chain = list[tuple[str, float, float]]


def _int_parameter(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _affine(img: Image.Image, data: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, data, resample=Image.BILINEAR)


def autocontrast(img: Image.Image, level: float, sign: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, level: float, sign: float) -> Image.Image:
    return ImageOps.equalize(img)


def posterize(img: Image.Image, level: float, sign: float) -> Image.Image:
    return ImageOps.posterize(img, 4 - _int_parameter(level, 4))


def rotate(img: Image.Image, level: float, sign: float) -> Image.Image:
    return img.rotate(_int_parameter(level, 30) * sign, resample=Image.BILINEAR)


def solarize(img: Image.Image, level: float, sign: float) -> Image.Image:
    return ImageOps.solarize(img, 256 - _int_parameter(level, 256))


def shear_x(img: Image.Image, level: float, sign: float) -> Image.Image:
    return _affine(img, (1, _float_parameter(level, 0.3) * sign, 0, 0, 1, 0))


def shear_y(img: Image.Image, level: float, sign: float) -> Image.Image:
    return _affine(img, (1, 0, 0, _float_parameter(level, 0.3) * sign, 1, 0))


def translate_x(img: Image.Image, level: float, sign: float) -> Image.Image:
    return _affine(img, (1, 0, _int_parameter(level, img.size[0] / 3) * sign, 0, 1, 0))


def translate_y(img: Image.Image, level: float, sign: float) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, _int_parameter(level, img.size[1] / 3) * sign))


def _enhance(enhancer: Callable[[Image.Image], Any]) -> Callable[[Image.Image, float, float], Image.Image]:
    def op(img: Image.Image, level: float, sign: float) -> Image.Image:
        return enhancer(img).enhance(_float_parameter(level, 1.8) + 0.1)

    return op


OPS: dict[str, Callable[[Image.Image, float, float], Image.Image]] = {
    "autocontrast": autocontrast, "equalize": equalize, "posterize": posterize, "rotate": rotate,
    "solarize": solarize, "shear_x": shear_x, "shear_y": shear_y,
    "translate_x": translate_x, "translate_y": translate_y,
}  # fmt: skip
"""The paper's nine ops (reference ``augmentations.augmentations``), in its order."""

ALL_OPS: dict[str, Callable[[Image.Image, float, float], Image.Image]] = {
    **OPS,
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
}
"""``OPS`` plus the four ops that overlap ImageNet-C (reference ``augmentations_all``)."""

LEVEL_FREE = frozenset({"autocontrast", "equalize"})
"""Ops that ignore the level (the reference draws none for them)."""

SIGNED = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
"""Ops whose direction the reference draws with probability 1/2 each."""


def apply_op(image: Image.Image, name: str, level: float, sign: float = 1) -> Image.Image:
    """The op ``name`` at severity ``level`` (direction ``sign``) on one PIL image."""
    return ALL_OPS[name](image, level, sign)


def to_float(image: Any) -> Any:
    """A PIL image as float32 in [0, 1] (``cifar.py``'s preprocess); arrays and tensors pass through."""
    return np.asarray(image, dtype=np.float32) / 255.0 if isinstance(image, Image.Image) else image


def augment_and_mix(
    image: Any, chains: Sequence[Chain], weights: Sequence[float], m: float, op: Callable[..., Any] = apply_op
) -> Any:
    """``(1 - m) x + m sum_i weights[i] chain_i(x)``, each chain applied step by step with ``op``.

    ``op(image, name, level, sign)`` defaults to the PIL ops; the engine's ``apply_op``
    on a one-image tensor gives the engine's ops in the same per-image loop.
    """
    mix: Any = 0.0
    for weight, chain in zip(weights, chains, strict=True):
        aug = image
        for name, level, sign in chain:
            aug = op(aug, name, level, sign)
        mix = mix + weight * to_float(aug)
    return (1 - m) * to_float(image) + m * mix


def sample_chains(
    rng: np.random.RandomState,
    ops: Sequence[str] = tuple(OPS),
    severity: float = 3,
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
) -> tuple[list[Chain], np.ndarray, np.float32]:
    """Draw one image's chains, Dirichlet chain weights and Beta skip weight ``m``.

    Draws from ``rng`` in the reference's order: weights, ``m``, then per chain its
    depth (uniform in 1..3 for ``depth = -1``) and per step the op, its level
    (uniform in [0.1, severity]) and its sign.
    """
    weights = np.float32(rng.dirichlet([alpha] * width))
    m = np.float32(rng.beta(alpha, alpha))
    chains = []
    for _ in range(width):
        chain = []
        for _ in range(depth if depth > 0 else rng.randint(1, 4)):
            name = ops[rng.randint(len(ops))]
            level = 0.0 if name in LEVEL_FREE else rng.uniform(0.1, severity)
            sign = -1 if name in SIGNED and rng.uniform() > 0.5 else 1
            chain.append((name, level, sign))
        chains.append(chain)
    return chains, weights, m


def augmix(
    image: Image.Image,
    rng: np.random.RandomState,
    severity: float = 3,
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
    all_ops: bool = False,
) -> np.ndarray:
    """Random AugMix of one PIL image, seeded by ``rng``: float32 ``[H, W(, C)]`` in [0, 1]."""
    ops = tuple(ALL_OPS if all_ops else OPS)
    return augment_and_mix(image, *sample_chains(rng, ops, severity, width, depth, alpha))


def chains_from_params(params: AugMixParams, ops: Sequence[str], index: int) -> tuple[list[Chain], list[float], float]:
    """Image ``index``'s chains, chain weights and ``m`` from the engine's drawn ``AugMixParams``."""
    chains = [
        [
            (ops[int(params.ops[d, i, index])], float(params.levels[d, i, index]), float(params.signs[d, i, index]))
            for d in range(int(params.depths[i, index]))
        ]
        for i in range(params.weights.shape[1])
    ]
    return chains, [float(w) for w in params.weights[index]], float(params.m[index])
