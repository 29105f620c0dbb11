"""Batched AugMix (Hendrycks et al., ICLR 2020) in pure PyTorch.

Every image of a batch gets its own ops, magnitudes, chain depths and mixing
weights, as in the reference code (google-research/augmix), but the work is done
for the whole batch at once. All ``width`` chains of all images are stacked;
each chain step sorts them by op (one sort for all steps) and runs

* rotate and shear with per-image affine matrices, one bilinear ``grid_sample``;
* translate_x and translate_y as copies of whole image rows or row windows
  (PIL's bilinear filter lands on pixel centres there), one ``index_select``
  each; rotations by 0 degrees and translations by 0 pixels are skipped;
* autocontrast and equalize as per-image lookup tables built from per-image
  min/max and histograms (``bincount``), applied with one ``index_select``;
* posterize and solarize as exact float arithmetic on the 8-bit levels;
* color, contrast, brightness and sharpness (``all_ops=True``) as blends.

Images are float tensors ``[B, C, H, W]`` in [0, 1], C = 1 or 3. Each op follows
PIL as the reference calls it:

* the 8-bit ops quantise their input to ``round(255 x)`` and are bit-exact with
  ``PIL.ImageOps`` (per channel for RGB);
* geometric ops use ``Image.transform`` / ``Image.rotate`` conventions (pixel
  centres at ``i + 0.5``, rotation about the image centre, counter-clockwise
  for positive degrees), bilinear with edge clamping inside the image and 0
  (black) outside; the result stays float where PIL truncates it to uint8;
* enhance ops blend with PIL's degenerate images (grayscale 0.299/0.587/0.114,
  the rounded mean gray, black, the 3x3 SMOOTH filter with untouched border)
  in float, clamped; color is the identity for one channel.

Randomness comes only from the ``torch.Generator`` given (or the default one).
Dirichlet and Beta weights are normalised Gamma variates, drawn from the
generator by Marsaglia-Tsang rejection (``-log U`` for alpha = 1), because
``torch._standard_gamma`` and ``torch.distributions`` take no generator.

Two backends run the same ops and draws. ``torch`` (this module, eager PyTorch)
works on any device; on the CPU it is bound by memory traffic (every op reads and
writes whole images) and by the per-call cost of some 500 small tensor ops per
batch, and it keeps its large scratch tensors between calls, one set per
``AugMix`` instance and thread (fresh multi-megabyte allocations fault their
pages in again on every batch). ``fused`` (``fused.py``, Numba) runs all chains
of an image in one compiled loop that stays in the cache, on ``torch.get_num_threads()``
threads; ``auto``, the default, takes it for CPU tensors. Both agree to float
rounding: an 8-bit op after a warp may round a value that sits on a half level
the other way, one level apart.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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

OPS: tuple[str, ...] = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
"""The nine ops of the paper (reference ``augmentations.augmentations``)."""

ALL_OPS: tuple[str, ...] = OPS + ("color", "contrast", "brightness", "sharpness")
"""``OPS`` plus the four ops that overlap ImageNet-C (reference ``--all-ops``)."""

# Internal op keys, grouped so that one sort of the keys puts the images of each
# group (identity, lookup-table ops, warps, translations, enhance ops) next to each other;
# equalize opens the lookup-table group (its histograms are counted from the block's start).
_ORDER: tuple[str, ...] = (
    "equalize",
    "autocontrast",
    "posterize",
    "solarize",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "color",
    "contrast",
    "brightness",
    "sharpness",
)
_KEY: dict[str, int] = {name: i + 1 for i, name in enumerate(_ORDER)}  # 0 = identity
_N_KEYS = len(_ORDER) + 1
_LUT_KEYS = range(_KEY["equalize"], _KEY["solarize"] + 1)
_WARP_KEYS = range(_KEY["rotate"], _KEY["shear_y"] + 1)
_SHIFT_KEYS = range(_KEY["translate_x"], _KEY["translate_y"] + 1)
_ENH_KEYS = range(_KEY["color"], _KEY["sharpness"] + 1)
_GROUPS = (_LUT_KEYS, _WARP_KEYS, _SHIFT_KEYS, _ENH_KEYS)

_GRAY = (0.299, 0.587, 0.114)  # PIL's ITU-R 601-2 luma weights (convert("L"))


# --------------------------------------------------------------------------- random


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float64)


def sample_gamma(
    concentration: float,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gamma(concentration, 1) variates (float64) drawn only from ``generator``.

    Marsaglia & Tsang (2000) rejection sampling, vectorised: each round redraws
    the still-rejected entries (acceptance is above 95 %). For a concentration
    below 1 it uses ``Gamma(a) = Gamma(a + 1) * U ** (1 / a)``; Gamma(1) is the
    exponential distribution, drawn directly as ``-log(1 - U)``.
    """
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    n = math.prod(shape)
    if concentration == 1.0:
        return -torch.log1p(-_rand(shape, generator, device))
    a = concentration + 1.0 if concentration < 1.0 else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        k = pending.numel()
        z = torch.randn(k, generator=generator, device=device, dtype=torch.float64)
        u = _rand((k,), generator, device)
        v = (1.0 + c * z) ** 3
        safe_v = torch.where(v > 0, v, torch.ones_like(v))
        accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * safe_v + d * torch.log(safe_v))
        out[pending[accept]] = d * v[accept]
        pending = pending[~accept]
    if concentration < 1.0:
        out = out * _rand((n,), generator, device) ** (1.0 / concentration)
    return out.view(tuple(shape))


def sample_dirichlet(
    alpha: float,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Symmetric Dirichlet(alpha) vectors along the last dim of ``shape`` (float64)."""
    g = sample_gamma(alpha, shape, generator, device)
    return g / g.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- op parameters
# Magnitudes follow the reference: int_parameter(level, maxval) = int(level * maxval / 10),
# float_parameter(level, maxval) = level * maxval / 10. They are computed in float64 on
# the small per-image parameter vectors so that the integer cut-offs match Python's.
# Rounding and trigonometric kernels (torch.floor, torch.cos, ...) go multi-threaded from
# 2048 elements, which costs more than it saves on these vectors and stalls for a whole
# time slice when another process holds a core; so integers come from truncating casts
# and the rotation's cosines and sines from a table of whole degrees.

_CACHE: dict[tuple[object, ...], Tensor] = {}


def _cached(key: tuple[object, ...], make: Callable[[], Tensor]) -> Tensor:
    """A constant tensor, made on first use (index tables, base grids)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _int_parameter(level: Tensor, maxval: float | Tensor) -> Tensor:
    return (level * maxval / 10.0).long()  # truncates, as Python's int()


def _float_parameter(level: Tensor, maxval: float) -> Tensor:
    return level * maxval / 10.0


def _cos_sin_table(device: torch.device) -> Tensor:
    """``[360, 2]`` float64: the cosine and sine of every whole degree."""

    def table() -> Tensor:
        radians = torch.deg2rad(torch.arange(360, dtype=torch.float64))
        return torch.stack([torch.cos(radians), torch.sin(radians)], dim=1).to(device)

    return _cached(("cos_sin", device), table)


def _cos_sin(degrees: Tensor) -> tuple[Tensor, Tensor]:
    """Cosines and sines (float64) of whole ``degrees`` (long), from a table of one turn."""
    cos_sin = _cos_sin_table(degrees.device).index_select(0, degrees.remainder(360))
    return cos_sin[:, 0], cos_sin[:, 1]


@dataclass(frozen=True)
class _OpTables:
    """Per-application op parameters, flattened over (chain step, chain image)."""

    keys: Tensor  # [S] long, 0 = identity
    theta: Tensor  # [S, 2, 3] rotate / shear as grid_sample(align_corners=False) affine matrices
    shift: Tensor  # [S] long translate_x / translate_y source offset in whole pixels
    step: Tensor  # [S] posterize quantisation step 2 ** (8 - bits)
    threshold: Tensor  # [S] solarize inverts values >= threshold
    factor: Tensor  # [S] enhance blend factor


def _op_tables(keys: Tensor, level: Tensor, sign: Tensor, height: int, width: int, dtype: torch.dtype) -> _OpTables:
    """Turn keys, levels (float64) and signs into the parameters every op needs."""
    level = level.double()
    sign = sign.double()
    # PIL Image.AFFINE data (a, b, c, d, e, f): output pixel (x, y) samples input
    # (a x + b y + c, d x + e y + f), pixel centres at i + 0.5; rotate turns about the centre.
    is_rot = keys == _KEY["rotate"]
    degrees = _int_parameter(level, 30.0) * sign.long()
    cos, sin = _cos_sin(degrees)
    sin = sin.neg_()  # PIL rotates counter-clockwise
    cos = torch.where(is_rot, cos, 1.0)
    sin = torch.where(is_rot, sin, 0.0)
    shear = _float_parameter(level, 0.3) * sign
    a, e = cos, cos
    b = torch.where(keys == _KEY["shear_x"], shear, sin)
    d = torch.where(keys == _KEY["shear_y"], shear, -sin)
    c = (1.0 - cos) * (width / 2.0) - sin * (height / 2.0)  # 0 for the shears
    f = sin * (width / 2.0) + (1.0 - cos) * (height / 2.0)
    # Same map in grid_sample's normalised coords g = 2 p / size - 1.
    r_hw, r_wh = height / width, width / height
    theta = torch.stack(
        [
            a,
            b * r_hw,
            a + b * r_hw + 2.0 * c / width - 1.0,
            d * r_wh,
            e,
            d * r_wh + e + 2.0 * f / height - 1.0,
        ],
        dim=-1,
    ).view(-1, 2, 3)
    # Beyond one image size a translation only leaves black, and the copy stays inside the buffer.
    is_tx = keys == _KEY["translate_x"]
    third = torch.where(is_tx, level.new_tensor(width / 3.0), level.new_tensor(height / 3.0))
    shift = torch.minimum(_int_parameter(level, third), torch.where(is_tx, width, height)) * sign.long()
    # Rotations by 0 degrees and translations by 0 pixels leave the image as it is: skip them.
    is_shift = is_tx | (keys == _KEY["translate_y"])
    keys = torch.where((is_rot & (degrees == 0)) | (is_shift & (shift == 0)), 0, keys)
    bits = (4 - _int_parameter(level, 4.0)).clamp_(0, 8)
    threshold = (256 - _int_parameter(level, 256.0)).clamp_(0, 256)
    factor = _float_parameter(level, 1.8) + 0.1
    return _OpTables(
        keys=keys,
        theta=theta.to(dtype),
        shift=shift,
        step=(1 << (8 - bits)).to(dtype),
        threshold=threshold.to(dtype),
        factor=factor.to(dtype),
    )


# --------------------------------------------------------------------------- op groups
# Inside the engine images are scaled to [0, 255], so the 8-bit ops only need to round.


def _base_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[3, H * W]``: normalised x, y (``(2 i + 1) / size - 1``) and 1 of every pixel centre."""

    def grid() -> Tensor:
        gy, gx = torch.meshgrid(
            (torch.arange(height, dtype=torch.float64) * 2 + 1) / height - 1,
            (torch.arange(width, dtype=torch.float64) * 2 + 1) / width - 1,
            indexing="ij",
        )
        ones = torch.ones(height * width, dtype=torch.float64)
        return torch.stack([gx.reshape(-1), gy.reshape(-1), ones]).to(dtype=dtype, device=device)

    return _cached(("base_grid", height, width, dtype, device), grid)


class _Workspace:
    """Named scratch buffers, reused from batch to batch (grown when too small)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


def _warp(xs: Tensor, theta: Tensor, out: Tensor, ws: _Workspace) -> None:
    """Rotate and shear: per-image bilinear affine warps (``theta`` in grid_sample coordinates).

    One bilinear ``grid_sample`` with border clamping (PIL clamps the neighbours inside
    the image), then a mask zeroes every pixel whose source lies outside the image.
    """
    n, c, h, w = xs.shape
    dtype, dev = xs.dtype, xs.device
    planes = ws.take("planes", (n, 2, h, w), dtype, dev)  # source x and y of every output pixel
    torch.mm(theta.reshape(2 * n, 3), _base_grid(h, w, dtype, dev), out=planes.view(2 * n, h * w))
    # aten.grid_sampler_2d(input, grid, interpolation, padding, align_corners) is F.grid_sample
    # without its checks: interpolation 0 = bilinear, padding 1 = border.
    warped = torch.ops.aten.grid_sampler_2d(xs, planes.permute(0, 2, 3, 1), 0, 1, False)
    absolute = planes.abs_()
    inside = torch.maximum(absolute[:, 0], absolute[:, 1], out=ws.take("inside", (n, h, w), dtype, dev)).lt_(1.0)
    torch.mul(warped, inside.unsqueeze(1), out=out)


def _shift_table(size: int, device: torch.device) -> Tensor:
    """``[2 size + 1, size]`` int64: row ``s + size`` maps ``i`` to ``i + s``, or to -2**40 outside [0, size)."""
    moved = torch.arange(size, device=device) + torch.arange(-size, size + 1, device=device).view(-1, 1)
    return torch.where((moved >= 0) & (moved < size), moved, -(2**40))


def _translate(rows: Tensor, src: Tensor, shift: Tensor, n_x: int, out: Tensor) -> None:
    """translate_x (the first ``n_x`` images) and translate_y by whole pixels, copied from ``rows``.

    PIL's bilinear filter lands on pixel centres there, so a translation is a copy:
    whole image rows (translate_y) or windows of the flattened rows (translate_x)
    gathered straight from ``rows``, 0 where the source is outside the image.
    ``rows[0]`` must be black and ``rows[-1]`` a spare image (windows may run into it).
    """
    _, c, h, w = rows.shape
    dev = rows.device
    if n_x > 0:
        tx = shift[:n_x]
        keep = _cached(("keep", w, rows.dtype, dev), lambda: (_shift_table(w, dev) >= 0).to(rows.dtype))
        line = _cached(("line", c * h, w, dev), lambda: torch.arange(c * h, device=dev) * w)
        starts = (src[:n_x] * (c * h * w) + tx).view(-1, 1) + line  # [n_x, C H]: start of each output row's window
        flat = rows.view(-1)
        windows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))  # windows[k] = flat[k : k + W]
        torch.index_select(windows, 0, starts.view(-1), out=out[:n_x].view(-1, w))
        out[:n_x].mul_(keep.index_select(0, tx + w).view(n_x, 1, 1, w))
    if n_x < src.numel():
        ty = shift[n_x:]
        moved = _cached(("moved", h, dev), lambda: _shift_table(h, dev))
        planes = _cached(("planes", c, h, dev), lambda: (torch.arange(c, device=dev) * h).view(1, c, 1))
        source = (src[n_x:] * (c * h)).view(-1, 1, 1) + planes + moved.index_select(0, ty + h).unsqueeze(1)
        # [n, C, H]: row of rows.view(-1, W) to copy, negative (then row 0, black) outside the image
        torch.index_select(rows.view(-1, w), 0, source.clamp_(min=0).view(-1), out=out[n_x:].view(-1, w))


def _ramp(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The identity table 0..255."""
    return _cached(("ramp", dtype, device), lambda: torch.arange(256, dtype=dtype, device=device))


def _lut_autocontrast(xs: Tensor, ramp: Tensor) -> Tensor:
    """PIL ``ImageOps.autocontrast`` tables from the quantised images ``[n, C, HW]``.

    PIL computes ``int(v * scale + offset)`` in double precision, which lands one below
    the exact quotient for some (lo, hi, v); the tables repeat its arithmetic.
    """
    lo = xs.amin(dim=-1, keepdim=True).double()
    hi = xs.amax(dim=-1, keepdim=True).double()
    # tensor / tensor: ``255.0 / t`` is computed as ``255.0 * (1 / t)`` and can miss PIL's LUT by one
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp_(min=1.0)
    lut = (_ramp(torch.float64, xs.device) * scale).sub_(lo * scale).floor_().clamp_(0.0, 255.0)
    return torch.lerp(ramp, lut.to(ramp.dtype), (hi > lo).to(ramp.dtype))  # identity for flat channels


def _lut_equalize(hist: Tensor, ramp: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize`` tables from per-image histograms ``[n, C, 256]`` (float).

    The integer divisions of PIL are ``floor`` of float divisions: all values are small
    integers, so the quotients are exact or at least ``1 / divisor`` from the next integer.
    """
    below = hist.cumsum(dim=2).sub_(hist)  # pixels below each level
    # (pixels - pixels at the top level) // 255; below the top level are the most pixels below any level used
    step = (below * hist.clamp(max=1.0)).amax(dim=2, keepdim=True).div_(255.0).floor_()
    lut = below.add_((step / 2.0).floor_()).div_(step.clamp(min=1.0)).floor_().clamp_(max=255.0)
    return torch.lerp(ramp, lut, (step > 0).to(ramp.dtype))  # identity where step is 0


def _eight_bit(
    xs: Tensor, spans: list[tuple[int, int, int]], step: Tensor, threshold: Tensor, out: Tensor, ws: _Workspace
) -> None:
    """The 8-bit ops of a block on ``round(xs)`` (``xs`` is scratch, rounded in place).

    Posterize and solarize are exact float arithmetic on the integer levels.
    Autocontrast and equalize build per-image lookup tables from min/max and
    histograms and apply them with one ``index_select``: an int32 index
    ``level + 256 (image, channel)`` into the stacked tables serves both the
    histograms (``bincount``) and the lookup, cheaper than ``scatter_add_`` and
    ``gather``, which need int64.
    """
    n, c, h, w = xs.shape
    xq = torch.round(xs, out=xs)
    span = {key: (s, e) for key, s, e in spans}
    if _KEY["posterize"] in span:  # PIL: v & ~(step - 1) = floor(v / step) * step
        s, e = span[_KEY["posterize"]]
        st = step[s:e].view(-1, 1, 1, 1)
        torch.mul(xq[s:e], 1.0 / st, out=out[s:e]).floor_().mul_(st)
    if _KEY["solarize"] in span:  # PIL: v if v < t else 255 - v, as 127.5 + sign(t - 1/2 - v) (v - 127.5)
        s, e = span[_KEY["solarize"]]
        centred = xq[s:e].sub_(127.5)
        torch.sub(threshold[s:e].view(-1, 1, 1, 1) - 128.0, centred, out=out[s:e]).sign_()
        out[s:e].mul_(centred).add_(127.5)
    n_eq = span.get(_KEY["equalize"], (0, 0))[1]  # equalize, then autocontrast, open the block
    n_lut = span.get(_KEY["autocontrast"], (n_eq, n_eq))[1]
    if n_lut == 0:
        return
    flat_q = xq[:n_lut].view(n_lut, c, h * w)
    index = ws.take("index", flat_q.shape, torch.int32, xs.device).copy_(flat_q)
    index += torch.arange(0, n_lut * c * 256, 256, dtype=torch.int32, device=xs.device).view(n_lut, c, 1)
    ramp = _ramp(xs.dtype, xs.device)
    luts = []
    if n_eq > 0:
        hist = torch.bincount(index[:n_eq].view(-1), minlength=n_eq * c * 256).view(n_eq, c, 256)
        luts.append(_lut_equalize(hist.to(xs.dtype), ramp))
    if n_lut > n_eq:
        luts.append(_lut_autocontrast(flat_q[n_eq:], ramp))
    torch.index_select(torch.cat(luts).view(-1), 0, index.view(-1), out=out[:n_lut].view(-1))


def _blend(degenerate: Tensor, xs: Tensor, factor: Tensor) -> Tensor:
    """PIL ``Image.blend(degenerate, image, factor)`` in float, clamped to [0, 255]."""
    return torch.lerp(degenerate.expand_as(xs), xs, factor.view(-1, 1, 1, 1)).clamp_(0.0, 255.0)


def _grayscale(xs: Tensor) -> Tensor:
    if xs.shape[1] == 1:
        return xs
    r, g, b = xs.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _enhance(key: int, xs: Tensor, factor: Tensor) -> Tensor:
    """One enhance op (color, contrast, brightness, sharpness) on a block."""
    if key == _KEY["color"]:
        return xs if xs.shape[1] == 1 else _blend(_grayscale(xs), xs, factor)
    if key == _KEY["contrast"]:
        mean = torch.floor(_grayscale(xs).mean(dim=(1, 2, 3), keepdim=True) + 0.5)  # PIL: int(mean + 0.5)
        return _blend(mean, xs, factor)
    if key == _KEY["brightness"]:
        return (xs * factor.view(-1, 1, 1, 1)).clamp_(0.0, 255.0)
    n, c, h, w = xs.shape  # sharpness: PIL's SMOOTH filter, border pixels unchanged
    if h < 3 or w < 3:
        return xs
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=xs.dtype, device=xs.device)
    smooth = F.conv2d(xs.reshape(n * c, 1, h, w), (kernel / 13.0).view(1, 1, 3, 3))
    degenerate = xs.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.view(n, c, h - 2, w - 2)
    return _blend(degenerate, xs, factor)


def _run_chains(clean: Tensor, start: Tensor, tables: _OpTables, n_steps: int, ws: _Workspace) -> tuple[Tensor, Tensor]:
    """Run ``n = start.numel()`` chains of ``n_steps`` steps; chain ``j`` starts from image ``start[j]``.

    ``clean`` is ``[B, C, H, W]`` in [0, 1] (clamped); ``tables`` is flattened over (step, chain).
    Returns ``(rows, loc)``: ``rows`` ``[B + 2 + n_steps * (n + 1), C, H, W]`` in 0..255
    holds a black image, the clean images and then one section of ``n`` images per step,
    each of these followed by a spare image (translate_x reads past its source rows);
    ``loc[j]`` is the row holding the end of chain ``j``. ``rows`` lives in ``ws``.

    Every step sorts its chains by op (one sort for all steps) and writes each op
    group into a contiguous slice of its own section, so a step only gathers its
    inputs (``index_select``); finished chains are never copied.
    """
    b, n = clean.shape[0], start.numel()
    image = tuple(clean.shape[1:])
    dtype, dev = clean.dtype, clean.device
    step_of = torch.arange(n_steps, device=dev).repeat_interleave(n)
    composite = tables.keys + _N_KEYS * step_of
    counts = torch.bincount(composite, minlength=_N_KEYS * n_steps).tolist()
    order = torch.argsort(composite, stable=True)
    theta, shift, step, threshold, factor = (
        t.index_select(0, order) for t in (tables.theta, tables.shift, tables.step, tables.threshold, tables.factor)
    )
    chain = order - step_of * n  # chain handled at each sorted position
    starts = [0]
    for cnt in counts:
        starts.append(starts[-1] + cnt)
    rows = ws.take("rows", (b + 2 + n_steps * (n + 1), *image), dtype, dev)
    rows[0].zero_()
    rows[b + 1 :: n + 1].zero_()  # the spares (translate_x multiplies what it reads there by 0)
    torch.mul(clean, 255.0, out=rows[1 : b + 1]).clamp_(0.0, 255.0)
    loc = start + 1
    for d in range(n_steps):
        base = d * _N_KEYS
        first = starts[base + 1]  # first active sorted position of step d
        last = starts[base + _N_KEYS]
        if last == first:
            continue
        active = chain[first:last]
        src = loc.index_select(0, active)
        section = b + 2 + d * (n + 1)  # rows before it hold every input of step d
        offset = section - first  # sorted position p -> row p + offset
        for group in _GROUPS:
            lo, hi = starts[base + group.start], starts[base + group.stop]
            if hi == lo:
                continue
            out = rows[lo + offset : hi + offset]
            inputs = src[lo - first : hi - first]
            if group is _SHIFT_KEYS:
                n_x = starts[base + _KEY["translate_y"]] - lo
                _translate(rows[:section], inputs, shift[lo:hi], n_x, out)
                continue
            xs = ws.take("xs", (hi - lo, *image), dtype, dev)
            torch.index_select(rows, 0, inputs, out=xs)
            if group is _WARP_KEYS:
                _warp(xs, theta[lo:hi], out, ws)
                continue
            spans = [(k, starts[base + k] - lo, starts[base + k + 1] - lo) for k in group if counts[base + k]]
            if group is _LUT_KEYS:
                _eight_bit(xs, spans, step[lo:hi], threshold[lo:hi], out, ws)
            else:
                for k, s, e in spans:
                    out[s:e] = _enhance(k, xs[s:e], factor[lo + s : lo + e])
        loc.index_copy_(0, active, torch.arange(first + offset, last + offset, device=dev))
    return rows, loc


Backend = Literal["auto", "torch", "fused"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "fused")


def _use_fused(backend: str, x: Tensor) -> bool:
    """Whether ``x`` goes through the compiled per-image loop (``fused``) or eager PyTorch.

    ``auto`` picks the loop for CPU tensors of at least 2x2 pixels when Numba is installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    from dc_pipeline.core.ml.augmix import fused

    usable = x.device.type == "cpu" and x.shape[2] >= 2 and x.shape[3] >= 2 and fused.available()
    if backend == "fused" and not usable:
        raise ValueError(
            f"backend='fused' needs Numba and CPU images of at least 2x2 pixels, got {x.device.type} {tuple(x.shape)}"
        )
    return usable


def _fused_apply(x: Tensor, keys: Tensor, params: AugMixParams) -> Tensor:
    """AugMix of ``x`` (CPU) by the compiled per-image loop; ``keys`` maps op indices to op keys."""
    from dc_pipeline.core.ml.augmix import fused

    def array(t: Tensor, dtype: torch.dtype) -> np.ndarray:
        return t.detach().to(dtype).contiguous().numpy()

    dtype = _work_dtype(x)
    out = fused.augment_and_mix(
        array(x, dtype),
        array(keys, torch.int64),
        array(params.ops, torch.int64),
        array(params.levels, torch.float64),
        array(params.signs, torch.float64),
        array(params.depths, torch.int64),
        array(params.weights, torch.float64),
        array(params.m, torch.float64),
        _cos_sin_table(torch.device("cpu")).numpy(),
        threads=torch.get_num_threads(),
    )
    return torch.from_numpy(out).to(x.dtype)


# --------------------------------------------------------------------------- public API


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a [B, C, H, W] tensor with C in (1, 3), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating point tensor in [0, 1], got {x.dtype}")


def _check_params(params: AugMixParams, n_ops: int, max_depth: int) -> None:
    """Draws given to ``apply`` from outside ``sample_params``: shapes, op indices, depths and finite values."""
    depth, width, b = params.ops.shape
    shapes = {
        "levels": (params.levels.shape, (depth, width, b)),
        "signs": (params.signs.shape, (depth, width, b)),
        "depths": (params.depths.shape, (width, b)),
        "m": (params.m.shape, (b,)),
    }
    for name, (got, want) in shapes.items():
        if tuple(got) != want:
            raise ValueError(f"params.{name} has shape {tuple(got)}, expected {want}")
    if params.ops.numel() and (int(params.ops.min()) < 0 or int(params.ops.max()) >= n_ops):
        raise ValueError(f"params.ops must index this AugMix's {n_ops} ops")
    if params.depths.numel() and (int(params.depths.min()) < 1 or int(params.depths.max()) > max_depth):
        raise ValueError(f"params.depths must be in 1..{max_depth}")
    for name in ("levels", "signs", "weights", "m"):
        if not bool(torch.isfinite(getattr(params, name)).all()):
            raise ValueError(f"params.{name} contains NaN or infinite values")


def _check_finite(x: Tensor) -> None:
    """The eager path's guard (the fused loop counts them itself): NaN or infinity would become bogus 8-bit levels."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or infinite values; AugMix needs finite values in [0, 1]")


def _work_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def apply_op(
    x: Tensor,
    name: str,
    level: Tensor | float,
    sign: Tensor | float | None = None,
    generator: torch.Generator | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Apply the op ``name`` to every image of ``x`` with per-image ``level`` ``[B]``.

    ``level`` is the reference's severity level in [0.1, severity] (a float or a
    ``[B]`` tensor); ``sign`` (+1/-1 per image) sets the direction of rotate, shear
    and translate and is drawn from ``generator`` (1/2 each) when not given.
    Uses the same code path as ``AugMix`` with the same ``backend``.
    """
    _check_images(x)
    if name not in _KEY:
        raise ValueError(f"unknown op {name!r}; expected one of {ALL_OPS}")
    b, _, h, w = x.shape
    dtype = _work_dtype(x)
    level_t = torch.as_tensor(level, dtype=torch.float64).to(x.device).expand(b)
    if sign is None:
        rng_device = generator.device if generator is not None else x.device
        sign_t = torch.where(_rand((b,), generator, rng_device) < 0.5, -1.0, 1.0).to(x.device)
    else:
        sign_t = torch.as_tensor(sign, dtype=torch.float64).to(x.device).expand(b)
    if not (bool(torch.isfinite(level_t).all()) and bool(torch.isfinite(sign_t).all())):
        raise ValueError("level and sign must be finite")
    keys = torch.full((b,), _KEY[name], dtype=torch.long, device=x.device)
    start = torch.arange(b, device=x.device)
    if _use_fused(backend, x):  # one chain of one step, weight 1, skip weight m = 1
        ones = torch.ones(b, dtype=torch.float64)
        one_op = AugMixParams(
            ops=torch.zeros(1, 1, b, dtype=torch.long),
            levels=level_t.cpu().view(1, 1, b),
            signs=sign_t.cpu().view(1, 1, b),
            depths=torch.ones(1, b, dtype=torch.long),
            weights=ones.view(b, 1),
            m=ones,
        )
        return _fused_apply(x, torch.tensor([_KEY[name]]), one_op)
    _check_finite(x)
    with torch.inference_mode():
        tables = _op_tables(keys, level_t, sign_t, h, w, dtype)
        rows, loc = _run_chains(x.to(dtype), start, tables, 1, _Workspace())
    return rows.index_select(0, loc).div_(255.0).to(x.dtype)


@dataclass(frozen=True)
class AugMixParams:
    """Everything AugMix draws for one batch of ``B`` images.

    ``ops[d, i, b]`` indexes ``AugMix.ops`` for step ``d`` of chain ``i`` of
    image ``b`` (with its ``levels`` and ``signs``); steps ``d >= depths[i, b]``
    are skipped. ``weights[b]`` are the Dirichlet chain weights and ``m[b]`` the
    Beta skip weight: ``out = (1 - m) x + m sum_i weights[i] chain_i(x)``.
    """

    ops: Tensor  # [max_depth, width, B] long
    levels: Tensor  # [max_depth, width, B] float64 in [0.1, severity]
    signs: Tensor  # [max_depth, width, B] float64, +1 or -1
    depths: Tensor  # [width, B] long in 1..max_depth
    weights: Tensor  # [B, width] float64, rows on the simplex
    m: Tensor  # [B] float64 in [0, 1]


class AugMix:
    """Batched AugMix: ``AugMix()(x, generator)`` on ``[B, C, H, W]`` floats in [0, 1].

    Defaults are the paper's (severity 3, width 3, depth -1 = uniform in 1..3,
    alpha 1, the nine ``OPS``). ``all_ops=True`` adds color, contrast,
    brightness and sharpness; ``ops=`` forces an explicit op set. ``backend``
    picks the implementation (``auto``: ``fused`` on the CPU, ``torch`` elsewhere).
    """

    def __init__(
        self,
        severity: float = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = False,
        ops: Sequence[str] | None = None,
        backend: Backend = "auto",
    ) -> None:
        if not 0.1 <= severity <= 10:
            raise ValueError(f"severity must be in [0.1, 10], got {severity}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if depth == 0 or depth < -1:
            raise ValueError(f"depth must be -1 (uniform in 1..3) or >= 1, got {depth}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        chosen = tuple(ops) if ops is not None else (ALL_OPS if all_ops else OPS)
        if not chosen or any(o not in _KEY for o in chosen):
            raise ValueError(f"ops must be a non-empty subset of {ALL_OPS}, got {chosen}")
        self.severity = float(severity)
        self.width = int(width)
        self.depth = int(depth)
        self.alpha = float(alpha)
        self.ops: tuple[str, ...] = chosen
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.max_depth = 3 if self.depth == -1 else self.depth
        self._keys = torch.tensor([_KEY[o] for o in chosen], dtype=torch.long)
        self._local = threading.local()

    def _workspace(self) -> _Workspace:
        """This thread's scratch buffers (an instance may be shared by threads)."""
        ws = getattr(self._local, "workspace", None)
        if ws is None:
            ws = self._local.workspace = _Workspace()
        return ws

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_local"]  # scratch buffers are neither picklable nor worth copying
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return (
            f"AugMix(severity={self.severity:g}, width={self.width}, depth={self.depth}, "
            f"alpha={self.alpha:g}, ops={self.ops})"
        )

    def sample_params(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> AugMixParams:
        """Draw ops, levels, signs, depths and weights for ``batch_size`` images.

        All draws come from ``generator`` (on its device; without one from the
        default generator of ``device``) and are returned on ``device``.
        """
        out_device = torch.device(device) if device is not None else torch.device("cpu")
        rng_device = generator.device if generator is not None else out_device
        shape = (self.max_depth, self.width, batch_size)
        if self.depth == -1:
            depths = torch.randint(1, 4, (self.width, batch_size), generator=generator, device=rng_device)
        else:
            depths = torch.full((self.width, batch_size), self.depth, dtype=torch.long, device=rng_device)
        ops = torch.randint(0, len(self.ops), shape, generator=generator, device=rng_device)
        levels = 0.1 + (self.severity - 0.1) * _rand(shape, generator, rng_device)
        signs = torch.where(_rand(shape, generator, rng_device) < 0.5, -1.0, 1.0).double()
        # Dirichlet chain weights and Beta(alpha, alpha) skip weight from one Gamma draw.
        g = sample_gamma(self.alpha, (batch_size, self.width + 2), generator, rng_device)
        weights = g[:, : self.width] / g[:, : self.width].sum(dim=1, keepdim=True)
        m = g[:, -2] / (g[:, -2] + g[:, -1])
        params = (ops, levels, signs, depths, weights, m)
        if out_device != rng_device:
            params = tuple(t.to(out_device) for t in params)
        return AugMixParams(*params)

    def apply(self, x: Tensor, params: AugMixParams) -> Tensor:
        """Deterministically augment and mix ``x`` with drawn ``params``."""
        _check_images(x)
        b, c, h, w = x.shape
        k, depth = self.width, self.max_depth
        if params.ops.shape != (depth, k, b) or params.weights.shape != (b, k):
            raise ValueError(
                f"params drawn for ops {tuple(params.ops.shape)}, weights {tuple(params.weights.shape)}; "
                f"this AugMix and batch need ops {(depth, k, b)}, weights {(b, k)}"
            )
        _check_params(params, len(self.ops), depth)
        if _use_fused(self.backend, x):
            return _fused_apply(x, self._keys, params)
        _check_finite(x)
        dtype, dev = _work_dtype(x), x.device
        # Applications in (step, image, chain) order; chain j = b * k + i starts from image b.
        start = torch.arange(b, device=dev).repeat_interleave(k)
        ops = params.ops.to(dev).permute(0, 2, 1).reshape(depth, b * k)
        active = params.depths.to(dev).t().reshape(1, b * k) > torch.arange(depth, device=dev).unsqueeze(1)
        keys = torch.where(active, self._keys.to(dev)[ops], 0).view(-1)
        levels = params.levels.to(dev).permute(0, 2, 1).reshape(-1)
        signs = params.signs.to(dev).permute(0, 2, 1).reshape(-1)
        with torch.inference_mode():  # no autograd bookkeeping on some 500 ops
            tables = _op_tables(keys, levels, signs, h, w, dtype)
            rows, loc = _run_chains(x.to(dtype), start, tables, depth, self._workspace())
        # out = (1 - m) x + m sum_i w_i chain_i: a weighted gather-sum of k + 1 rows per image,
        # outside inference mode, so that the result can go on into a training step.
        picks = torch.cat([torch.arange(1, b + 1, device=dev).unsqueeze(1), loc.view(b, k)], dim=1)
        m = params.m.to(dev).unsqueeze(1)
        coef = torch.cat([1.0 - m, m * params.weights.to(dev)], dim=1).div_(255.0).to(dtype)
        out = F.embedding_bag(picks, rows.view(rows.shape[0], -1), per_sample_weights=coef, mode="sum")
        return out.view(b, c, h, w).clamp_(0.0, 1.0).to(x.dtype)

    @overload
    def __call__(
        self, x: Tensor, generator: torch.Generator | None = ..., return_params: Literal[False] = ...
    ) -> Tensor: ...

    @overload
    def __call__(
        self, x: Tensor, generator: torch.Generator | None, return_params: Literal[True]
    ) -> tuple[Tensor, AugMixParams]: ...

    @overload
    def __call__(
        self, x: Tensor, generator: torch.Generator | None = ..., *, return_params: Literal[True]
    ) -> tuple[Tensor, AugMixParams]: ...

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        return_params: bool = False,
    ) -> Tensor | tuple[Tensor, AugMixParams]:
        """Augment ``x`` ``[B, C, H, W]``; with ``return_params`` also return the draws."""
        _check_images(x)
        params = self.sample_params(x.shape[0], generator, x.device)
        out = self.apply(x, params)
        return (out, params) if return_params else out


def jsd_loss(logits_clean: Tensor, logits_aug1: Tensor, logits_aug2: Tensor) -> Tensor:
    """Jensen-Shannon consistency term of the reference ``cifar.py`` (unweighted)."""
    p_clean = F.softmax(logits_clean, dim=1)
    p_aug1 = F.softmax(logits_aug1, dim=1)
    p_aug2 = F.softmax(logits_aug2, dim=1)
    p_mixture = torch.clamp((p_clean + p_aug1 + p_aug2) / 3.0, 1e-7, 1).log()
    return (
        F.kl_div(p_mixture, p_clean, reduction="batchmean")
        + F.kl_div(p_mixture, p_aug1, reduction="batchmean")
        + F.kl_div(p_mixture, p_aug2, reduction="batchmean")
    ) / 3.0


def augmix_views(x: Tensor, augmix: AugMix, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The JSD training triple ``(x, augmix(x), augmix(x))`` (two independent draws)."""
    return x, augmix(x, generator=generator), augmix(x, generator=generator)
