"""Procedural image corruptions for a robustness benchmark, in the spirit of MNIST-C and CIFAR-10-C.

Every corruption maps a batch of grayscale images ``[N, H, W]`` (float, values in [0, 1]) to a batch
of the same shape, float32, clipped to [0, 1]. Each has five severities with monotone parameters
(higher severity = stronger corruption) and draws all its randomness from the
``numpy.random.Generator`` it is given, so a seed fixes the output.

Spatial parameters (sigmas, radii, lengths, shifts) are given in pixels for 28x28 images and are
scaled by ``min(H, W) / 28`` for other sizes. Geometric transforms fill uncovered pixels with 0,
the background of MNIST-style digits (bright strokes on black).

Only numpy, scipy, torch and PIL are used: the published corruption packages rely on removed
NumPy / scikit-image APIs or ImageMagick.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

__all__ = [
    "CORRUPTIONS",
    "FAMILIES",
    "SEVERITIES",
    "Corruption",
    "corrupt",
    "corruption_table_markdown",
]

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = ("noise", "blur", "weather", "digital", "geometric")
_REFERENCE_SIZE = 28

Impl = Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """One corruption: metadata, the five per-severity parameters and the implementation.

    Calling it as ``corruption(images, severity, rng)`` validates the input, applies the parameter of
    that severity and returns float32 images clipped to [0, 1].
    """

    name: str
    family: str
    description: str
    param_label: str
    params: tuple[Any, ...]
    apply: Impl

    def __call__(self, images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        x = _as_batch(images)
        if x.shape[0] == 0:
            return x.copy()
        out = self.apply(x, self.params[severity - 1], rng)
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# helpers


def _as_batch(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 3:
        raise ValueError(f"images must have shape [N, H, W], got {x.shape}")
    return x.astype(np.float32, copy=False)


def _scale(x: np.ndarray) -> float:
    """Factor that converts a pixel parameter defined at 28x28 to this image size."""
    return min(x.shape[1], x.shape[2]) / _REFERENCE_SIZE


def _random_signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def _conv(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Correlate each image with a kernel (``[K, K]`` shared or ``[N, K, K]`` per image), edge-replicated."""
    n = x.shape[0]
    k = kernels.shape[-1]
    pad = k // 2
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]  # [1, N, H, W]
    t = F.pad(t, (pad, pad, pad, pad), mode="replicate")
    w = torch.from_numpy(np.ascontiguousarray(kernels, dtype=np.float32))
    w = w.expand(n, k, k) if w.ndim == 2 else w
    out = F.conv2d(t, w[:, None], groups=n)
    return out[0].numpy()


def _line_kernels(lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Anti-aliased centred line segments (one per entry), normalised to sum 1: ``[N, K, K]``."""
    k = int(2 * math.ceil(float(np.max(lengths)) / 2) + 1)
    r = np.arange(k, dtype=np.float64) - k // 2
    v, u = np.meshgrid(r, r, indexing="ij")  # v: rows (y), u: columns (x)
    c = np.cos(angles)[:, None, None]
    s = np.sin(angles)[:, None, None]
    half = (np.asarray(lengths, dtype=np.float64) - 1.0)[:, None, None] / 2.0
    t = np.clip(u * c + v * s, -half, half)
    d = np.hypot(u - t * c, v - t * s)
    w = np.clip(1.0 - d, 0.0, 1.0)
    return w / w.sum(axis=(1, 2), keepdims=True)


def _disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased disk (defocus) kernel normalised to sum 1."""
    k = int(2 * math.ceil(radius + 0.5) + 1)
    r = np.arange(k, dtype=np.float64) - k // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    w = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return w / w.sum()


def _affine(x: np.ndarray, matrices: np.ndarray, shifts: np.ndarray | None = None) -> np.ndarray:
    """Warp each image by ``p_out = A @ p_in + t`` about the image centre (pixel units), bilinear, fill 0.

    ``matrices`` is ``[N, 2, 2]`` in (x, y) pixel coordinates, ``shifts`` ``[N, 2]`` in pixels.
    """
    n, h, w = x.shape
    a_inv = np.linalg.inv(matrices)
    if shifts is None:
        shifts = np.zeros((n, 2))
    s = np.array([w / 2.0, h / 2.0])
    # normalised output coords q -> pixel p = S q; input pixel = A^-1 (p - t); normalised = S^-1 (...)
    theta = np.zeros((n, 2, 3))
    theta[:, :, :2] = a_inv * s[None, None, :] / s[None, :, None]
    theta[:, :, 2] = -np.einsum("nij,nj->ni", a_inv, shifts) / s[None, :]
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, h, w], align_corners=False)
    return _sample(x, grid)


def _sample(x: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].numpy()


def _plasma_fractal(rng: np.random.Generator, n: int, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Batched diamond-square plasma fractal in [0, 1], ``[n, mapsize, mapsize]`` (as in ImageNet-C)."""
    maps = np.zeros((n, mapsize, mapsize))
    stepsize = mapsize
    wibble = 100.0

    def wibbled_mean(arr: np.ndarray) -> np.ndarray:
        return arr / 4 + wibble * rng.uniform(-wibble, wibble, arr.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maps[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(square)
        dr = maps[:, half:mapsize:stepsize, half:mapsize:stepsize]
        ul = maps[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        maps[:, 0:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        maps[:, half:mapsize:stepsize, 0:mapsize:stepsize] = wibbled_mean(tt)
        stepsize = half
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------
# noise


def _gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape)


def _shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(np.clip(x, 0, 1) * photons) / photons


def _impulse_noise(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), x)


def _speckle_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.normal(0.0, sigma, x.shape)


# ----------------------------------------------------------------------------------------------
# blur


def _gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    s = sigma * _scale(x)
    return ndimage.gaussian_filter(x, sigma=(0.0, s, s), mode="nearest")


def _motion_blur(x: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    angles = rng.uniform(0.0, math.pi, n)
    lengths = np.full(n, max(length * _scale(x), 1.0))
    return _conv(x, _line_kernels(lengths, angles))


def _defocus_blur(x: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    return _conv(x, _disk_kernel(radius * _scale(x)))


def _zoom_blur(x: np.ndarray, max_zoom: float, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    zooms = np.linspace(1.0, max_zoom, 6)
    acc = x.astype(np.float64).copy()
    for z in zooms[1:]:
        acc += _affine(x, np.broadcast_to(np.eye(2) * z, (n, 2, 2)).copy())
    return acc / len(zooms)


# ----------------------------------------------------------------------------------------------
# weather


def _fog(x: np.ndarray, param: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    strength, decay = param
    n, h, w = x.shape
    mapsize = 1 << max(1, math.ceil(math.log2(max(h, w))))
    plasma = _plasma_fractal(rng, n, mapsize, decay)[:, :h, :w]
    max_val = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * plasma) * max_val / (max_val + strength)


def _snow(x: np.ndarray, param: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    density, length, brightness = param
    n = x.shape[0]
    flakes = (rng.random(x.shape) < density) * rng.uniform(0.6, 1.0, x.shape)
    angle = rng.uniform(math.pi / 3, 2 * math.pi / 3, n)  # roughly falling down
    streak_len = max(length * _scale(x), 1.0)
    streaks = _conv(flakes, _line_kernels(np.full(n, streak_len), angle)) * streak_len
    return np.maximum(x, brightness * np.clip(streaks, 0.0, 1.0))


# ----------------------------------------------------------------------------------------------
# digital


def _contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * factor + mean


def _brightness(x: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    return x + delta


def _pixelate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    n, h, w = x.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    small = F.interpolate(t, size=size, mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest-exact")[:, 0].numpy()


def _jpeg_compression(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    u8 = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(u8[i], mode="L").save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf), dtype=np.float32) / 255.0
    return out


def _elastic_transform(x: np.ndarray, rms: float, rng: np.random.Generator) -> np.ndarray:
    n, h, w = x.shape
    sc = _scale(x)
    sigma = 4.0 * sc
    field = rng.uniform(-1.0, 1.0, (2, n, h, w))
    field = ndimage.gaussian_filter(field, sigma=(0, 0, sigma, sigma), mode="reflect")
    norm = np.sqrt((field**2).sum(axis=0).mean(axis=(1, 2), keepdims=True))
    field = field / np.maximum(norm, 1e-12) * (rms * sc)  # [2, N, H, W] pixels (dx, dy)
    base = F.affine_grid(torch.eye(2, 3)[None].expand(n, 2, 3), [n, 1, h, w], align_corners=False)
    disp = np.stack([field[0] * 2.0 / w, field[1] * 2.0 / h], axis=-1)
    return _sample(x, base + torch.from_numpy(disp).float())


# ----------------------------------------------------------------------------------------------
# geometric (MNIST-C style)


def _rotate(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    a = np.deg2rad(degrees * rng.uniform(0.75, 1.0, n) * _random_signs(rng, n))
    c, s = np.cos(a), np.sin(a)
    return _affine(x, np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1))


def _shear(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    k = factor * rng.uniform(0.75, 1.0, n) * _random_signs(rng, n)
    m = np.zeros((n, 2, 2))
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, 0, 1] = k
    return _affine(x, m)


def _scale_down(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    f = factor + (1.0 - factor) * rng.uniform(0.0, 0.25, n)
    return _affine(x, np.eye(2)[None] * f[:, None, None])


def _translate(x: np.ndarray, pixels: float, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    d = pixels * _scale(x) * rng.uniform(0.75, 1.0, n)
    a = rng.uniform(0.0, 2 * math.pi, n)
    shifts = np.stack([d * np.cos(a), d * np.sin(a)], -1)
    return _affine(x, np.broadcast_to(np.eye(2), (n, 2, 2)).copy(), shifts)


# ----------------------------------------------------------------------------------------------
# registry


def _c(name: str, family: str, description: str, label: str, params: tuple[Any, ...], fn: Impl) -> Corruption:
    return Corruption(name, family, description, label, params, fn)


_ALL = (
    _c("gaussian_noise", "noise", "additive Gaussian noise", "sigma", (0.08, 0.12, 0.18, 0.26, 0.38), _gaussian_noise),
    _c(
        "shot_noise",
        "noise",
        "Poisson photon noise: Poisson(x*photons)/photons",
        "photons",
        (60, 25, 12, 5, 3),
        _shot_noise,
    ),
    _c(
        "impulse_noise",
        "noise",
        "salt-and-pepper noise on a fraction of pixels",
        "fraction",
        (0.03, 0.06, 0.09, 0.17, 0.27),
        _impulse_noise,
    ),
    _c(
        "speckle_noise",
        "noise",
        "multiplicative Gaussian noise x + x*N(0, sigma)",
        "sigma",
        (0.15, 0.2, 0.35, 0.45, 0.6),
        _speckle_noise,
    ),
    _c("gaussian_blur", "blur", "Gaussian blur", "sigma (px)", (0.5, 0.75, 1.0, 1.25, 1.5), _gaussian_blur),
    _c(
        "motion_blur",
        "blur",
        "blur along a line at a random angle per image",
        "length (px)",
        (3, 5, 7, 9, 11),
        _motion_blur,
    ),
    _c(
        "defocus_blur",
        "blur",
        "blur with an anti-aliased disk kernel",
        "radius (px)",
        (1.0, 1.5, 2.0, 2.5, 3.0),
        _defocus_blur,
    ),
    _c(
        "zoom_blur",
        "blur",
        "average of 6 centred zooms from 1 to the maximum",
        "max zoom",
        (1.08, 1.16, 1.24, 1.32, 1.40),
        _zoom_blur,
    ),
    _c(
        "fog",
        "weather",
        "plasma-fractal fog added, then renormalised",
        "(strength, wibble decay)",
        ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
        _fog,
    ),
    _c(
        "snow",
        "weather",
        "bright streaks from random flakes blurred along a falling direction",
        "(flake density, streak length px, brightness)",
        ((0.01, 3, 0.6), (0.02, 4, 0.7), (0.03, 5, 0.8), (0.045, 6, 0.9), (0.06, 7, 1.0)),
        _snow,
    ),
    _c(
        "contrast",
        "digital",
        "contrast reduced towards the image mean",
        "factor",
        (0.75, 0.5, 0.4, 0.3, 0.15),
        _contrast,
    ),
    _c("brightness", "digital", "constant added to every pixel", "delta", (0.1, 0.2, 0.3, 0.4, 0.5), _brightness),
    _c(
        "pixelate",
        "digital",
        "area downsampling to factor x size, nearest upsampling back",
        "size factor",
        (0.65, 0.5, 0.4, 0.3, 0.25),
        _pixelate,
    ),
    _c(
        "jpeg_compression",
        "digital",
        "8-bit grayscale JPEG round trip (PIL)",
        "quality",
        (25, 18, 15, 10, 7),
        _jpeg_compression,
    ),
    _c(
        "elastic_transform",
        "digital",
        "smooth random displacement field (Gaussian sigma 4 px)",
        "RMS displacement (px)",
        (0.5, 0.8, 1.1, 1.5, 2.0),
        _elastic_transform,
    ),
    _c(
        "rotate",
        "geometric",
        "rotation by a random sign times U(0.75, 1) x angle",
        "angle (deg)",
        (10, 20, 30, 40, 50),
        _rotate,
    ),
    _c(
        "shear",
        "geometric",
        "horizontal shear by a random sign times U(0.75, 1) x factor",
        "factor",
        (0.1, 0.2, 0.3, 0.45, 0.6),
        _shear,
    ),
    _c(
        "scale",
        "geometric",
        "shrink about the centre by factor + (1-factor) x U(0, 0.25)",
        "factor",
        (0.9, 0.8, 0.7, 0.6, 0.5),
        _scale_down,
    ),
    _c(
        "translate",
        "geometric",
        "shift in a random direction by U(0.75, 1) x distance",
        "distance (px)",
        (2, 3, 4, 5, 6),
        _translate,
    ),
)

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in _ALL}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) with a generator seeded by ``seed``."""
    try:
        corruption = CORRUPTIONS[name]
    except KeyError:
        raise KeyError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}") from None
    return corruption(images, severity, np.random.default_rng(seed))


def _fmt(p: Any) -> str:
    if isinstance(p, tuple):
        return "(" + ", ".join(_fmt(v) for v in p) + ")"
    return f"{p:g}" if isinstance(p, float) else str(p)


def corruption_table_markdown() -> str:
    """Markdown table: name | family | what it does | parameter | severities 1..5."""
    head = "| name | family | what it does | parameter | " + " | ".join(f"s{s}" for s in SEVERITIES) + " |"
    sep = "|" + "---|" * (4 + len(SEVERITIES))
    rows = [
        f"| {c.name} | {c.family} | {c.description} | {c.param_label} | " + " | ".join(_fmt(p) for p in c.params) + " |"
        for c in _ALL
    ]
    note = (
        "\n\nSpatial parameters (px) are for 28x28 images and scale with min(H, W) / 28. "
        "Outputs are float32 clipped to [0, 1]."
    )
    return "\n".join([head, sep, *rows]) + note
