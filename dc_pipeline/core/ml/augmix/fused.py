"""AugMix chains fused into one compiled loop per image (the engine's CPU path).

The eager engine (``engine.py``) runs every op group of a batch as a handful of
tensor ops; on the CPU the per-call cost of those ops and the memory traffic
between them dominate at small image sizes. Here one Numba-compiled function runs
all chains of one image back to back in two image-sized buffers that stay in the
cache, and mixes them into the output: no intermediate leaves the core.

The ops follow the same conventions as the eager engine (see its docstring):
8-bit ops on ``round(x)`` bit-exact with ``PIL.ImageOps`` (integer arithmetic, as
PIL), affine warps bilinear with edge clamping and black outside the image, whole
pixel translations as copies, enhance ops as blends clamped to [0, 255]. Results
agree with the eager engine to float rounding (asserted by the tests).

The function is compiled without the GIL on first use (cached on disk by Numba)
and the batch is split into contiguous slices run on ``threads`` Python threads:
no Numba threading layer, so concurrent callers are safe and the result does not
depend on the number of threads.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Op keys, as the engine's ``_KEY`` (0 = identity; a test checks that they agree).
EQUALIZE, AUTOCONTRAST, POSTERIZE, SOLARIZE = 1, 2, 3, 4
ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y = 5, 6, 7, 8, 9
COLOR, CONTRAST, BRIGHTNESS, SHARPNESS = 10, 11, 12, 13

_KERNEL: Callable[..., int] | None = None
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, threads, pool)
_LOCK = threading.Lock()


def available() -> bool:
    """Whether Numba can be imported (the engine falls back to eager PyTorch otherwise)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _compile() -> Callable[..., int]:
    import numba

    njit = numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    @njit
    def lut_op(src, dst, key, pstep, thresh, levels, hist, lut):  # pragma: no cover - compiled
        """The 8-bit ops on round(src), per channel, with PIL's integer arithmetic."""
        c_n, h, w = src.shape
        plane = h * w
        s = src.ravel()
        o = dst.ravel()
        if key == POSTERIZE:  # PIL: v & ~(step - 1)
            mask = ~(pstep - 1)
            for k in range(c_n * plane):
                o[k] = np.int32(np.rint(s[k])) & mask
            return
        if key == SOLARIZE:
            for k in range(c_n * plane):
                v = np.rint(s[k])
                o[k] = v if v < thresh else 255.0 - v
            return
        for k in range(c_n * plane):
            levels[k] = np.int32(np.rint(s[k]))
        for c in range(c_n):
            base = c * plane
            if key == EQUALIZE:
                equalize_lut(levels[base : base + plane], hist, lut)
            else:
                autocontrast_lut(levels[base : base + plane], lut)
            for k in range(base, base + plane):
                o[k] = lut[levels[k]]

    @njit
    def equalize_lut(levels, hist, lut):  # pragma: no cover - compiled
        """PIL's equalize table for one channel's 8-bit levels."""
        # four interleaved histograms: runs of one level would otherwise wait on their own stores
        hist[:] = 0
        n = levels.size
        quads = n // 4
        for k in range(quads):
            hist[0, levels[4 * k]] += 1
            hist[1, levels[4 * k + 1]] += 1
            hist[2, levels[4 * k + 2]] += 1
            hist[3, levels[4 * k + 3]] += 1
        for k in range(4 * quads, n):
            hist[0, levels[k]] += 1
        top = 0  # pixels at the top level used
        for v in range(256):
            hist[0, v] += hist[1, v] + hist[2, v] + hist[3, v]
            if hist[0, v] > 0:
                top = hist[0, v]
        step = (n - top) // 255  # PIL: (pixels - pixels at the top level used) // 255
        if step == 0:
            for v in range(256):
                lut[v] = v
            return
        # PIL: (below + step // 2) // step, as a float division: exact for these integers
        below = np.float64(step // 2)
        divisor = np.float64(step)
        for v in range(256):
            lut[v] = min(math.floor(below / divisor), 255.0)
            below += hist[0, v]

    @njit
    def autocontrast_lut(levels, lut):  # pragma: no cover - compiled
        """PIL's autocontrast table (cutoff 0) for one channel's 8-bit levels: int(v * scale - lo * scale), clipped."""
        lo = levels.min()
        hi = levels.max()
        if hi <= lo:
            for v in range(256):
                lut[v] = v
            return
        scale = 255.0 / (hi - lo)
        offset = lo * scale
        for v in range(256):
            lut[v] = min(max(math.floor(v * scale - offset), 0.0), 255.0)

    @njit
    def rotate(src, dst, a, b, cc, d, e, f, corner, weights):  # pragma: no cover - compiled
        """Bilinear affine warp: every output pixel's top-left source and weights, then the channels."""
        c_n, h, w = src.shape
        plane = h * w
        for y in range(h):
            row_x = b * (y + 0.5) + cc + 0.5 * a  # source of the row's pixel centres: row + x (a, d)
            row_y = e * (y + 0.5) + f + 0.5 * d
            for x in range(w):
                k = y * w + x
                sx = row_x + a * x
                sy = row_y + d * x
                inside = 1.0 if (sx > 0.0) & (sx < w) & (sy > 0.0) & (sy < h) else 0.0
                ix = min(max(sx - 0.5, 0.0), w - 1.0)
                iy = min(max(sy - 0.5, 0.0), h - 1.0)
                x0 = min(np.int64(ix), w - 2)
                y0 = min(np.int64(iy), h - 2)
                wx = ix - x0
                wy = iy - y0
                corner[k] = y0 * w + x0
                weights[k, 0] = (1.0 - wx) * (1.0 - wy) * inside
                weights[k, 1] = wx * (1.0 - wy) * inside
                weights[k, 2] = (1.0 - wx) * wy * inside
                weights[k, 3] = wx * wy * inside
        s = src.ravel()
        o = dst.ravel()
        for c in range(c_n):
            base = c * plane
            for k in range(plane):
                q = base + corner[k]
                o[base + k] = (
                    s[q] * weights[k, 0]
                    + s[q + 1] * weights[k, 1]
                    + s[q + w] * weights[k, 2]
                    + s[q + w + 1] * weights[k, 3]
                )

    @njit
    def shear(src, dst, t, along_x, pair):  # pragma: no cover - compiled
        """Shear by ``t``: the source of (x, y) is (x + t (y + 1/2), y) along x, else (x, y + t (x + 1/2)).

        Every line (a row along x, a column along y) moves as a whole by ``t (line + 1/2)``,
        so the bilinear filter has two taps with the same weights along the line; the
        few pixels near the ends (black outside, clamped to the end pixel inside) are
        found with the same per-pixel tests as ``rotate`` (monotone along the line).
        """
        c_n, h, w = src.shape
        size = w if along_x else h  # pixels along a line
        lines = h if along_x else w
        step = 1 if along_x else w  # stride along a line
        stride = w if along_x else 1  # stride between lines
        plane = h * w
        s = src.ravel()
        o = dst.ravel()
        for line in range(lines):
            offset = t * (line + 0.5)
            whole = math.floor(offset)
            pair[0] = 1.0 - (offset - whole)  # the weights in the images' dtype
            pair[1] = offset - whole
            w0 = pair[0]
            w1 = pair[1]
            shift = np.int64(whole)
            lo = 0  # [0, lo): outside or clamped to the first pixel
            while lo < size and (lo + offset) + 0.5 <= 0.0:
                lo += 1
            zero_lo = lo
            while lo < size and lo + offset <= 0.0:
                lo += 1
            hi = size  # [hi, size): clamped to the last pixel or outside
            while hi > lo and (hi - 1 + offset) + 0.5 >= size:
                hi -= 1
            zero_hi = hi
            while hi > lo and hi - 1 + offset >= size - 1:
                hi -= 1
            for c in range(c_n):
                base = c * plane + line * stride
                first = s[base]
                last = s[base + (size - 1) * step]
                for i in range(zero_lo):
                    o[base + i * step] = 0.0
                for i in range(zero_lo, lo):
                    o[base + i * step] = first
                for i in range(lo, hi):
                    j = base + (i + shift) * step
                    o[base + i * step] = s[j] * w0 + s[j + step] * w1
                for i in range(hi, zero_hi):
                    o[base + i * step] = last
                for i in range(zero_hi, size):
                    o[base + i * step] = 0.0

    @njit
    def translate(src, dst, dx, dy):  # pragma: no cover - compiled
        c_n, h, w = src.shape
        for c in range(c_n):
            for y in range(h):
                sy = y + dy
                for x in range(w):
                    sx = x + dx
                    if 0 <= sx < w and 0 <= sy < h:
                        dst[c, y, x] = src[c, sy, sx]
                    else:
                        dst[c, y, x] = 0.0

    @njit
    def gray(src, y, x):  # pragma: no cover - compiled
        return 0.299 * src[0, y, x] + 0.587 * src[1, y, x] + 0.114 * src[2, y, x]

    @njit
    def blend(degenerate, value, factor):  # pragma: no cover - compiled
        return min(max(degenerate + factor * (value - degenerate), 0.0), 255.0)

    @njit
    def enhance(src, dst, key, factor):  # pragma: no cover - compiled
        c_n, h, w = src.shape
        if key == BRIGHTNESS:
            for c in range(c_n):
                for y in range(h):
                    for x in range(w):
                        dst[c, y, x] = min(max(src[c, y, x] * factor, 0.0), 255.0)
        elif key == COLOR:
            for y in range(h):
                for x in range(w):
                    g = gray(src, y, x) if c_n == 3 else src[0, y, x]
                    for c in range(c_n):
                        dst[c, y, x] = blend(g, src[c, y, x], factor) if c_n == 3 else src[c, y, x]
        elif key == CONTRAST:
            total = 0.0
            for y in range(h):
                for x in range(w):
                    total += gray(src, y, x) if c_n == 3 else src[0, y, x]
            mean = math.floor(total / (h * w) + 0.5)
            for c in range(c_n):
                for y in range(h):
                    for x in range(w):
                        dst[c, y, x] = blend(mean, src[c, y, x], factor)
        else:  # SHARPNESS: PIL's SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1) / 13, border unchanged
            for c in range(c_n):
                for y in range(h):
                    for x in range(w):
                        v = src[c, y, x]
                        if 0 < y < h - 1 and 0 < x < w - 1:
                            s = 4.0 * v
                            for yy in range(y - 1, y + 2):
                                for xx in range(x - 1, x + 2):
                                    s += src[c, yy, xx]
                            dst[c, y, x] = blend(s / 13.0, v, factor)
                        else:
                            dst[c, y, x] = v

    @njit
    def apply(src, dst, key, level, sign, cos_sin, scratch):  # pragma: no cover - compiled
        """One op with the reference's magnitudes; False (and ``dst`` untouched) when it is the identity.

        int_parameter(level, maxval) = int(level * maxval / 10) and float_parameter(level,
        maxval) = level * maxval / 10, in float64, as the eager engine's ``_op_tables``.
        """
        levels, hist, lut, corner, weights = scratch
        c_n, h, w = src.shape
        if key == ROTATE:
            degrees = np.int64(level * 30.0 / 10.0) * np.int64(sign)
            if degrees == 0:
                return False
            cos = cos_sin[degrees % 360, 0]
            sin = -cos_sin[degrees % 360, 1]  # PIL rotates counter-clockwise
            c = (1.0 - cos) * (w / 2.0) - sin * (h / 2.0)
            f = sin * (w / 2.0) + (1.0 - cos) * (h / 2.0)
            rotate(src, dst, cos, sin, c, -sin, cos, f, corner, weights)
        elif SHEAR_X <= key <= SHEAR_Y:
            shear(src, dst, level * 0.3 / 10.0 * sign, key == SHEAR_X, lut)
        elif TRANSLATE_X <= key <= TRANSLATE_Y:
            size = w if key == TRANSLATE_X else h
            pixels = min(np.int64(level * (size / 3.0) / 10.0), size) * np.int64(sign)
            if pixels == 0:
                return False
            if key == TRANSLATE_X:
                translate(src, dst, pixels, 0)
            else:
                translate(src, dst, 0, pixels)
        elif key <= SOLARIZE:
            bits = min(max(4 - np.int64(level * 4.0 / 10.0), 0), 8)
            threshold = min(max(256 - np.int64(level * 256.0 / 10.0), 0), 256)
            lut_op(src, dst, key, np.int32(1 << (8 - bits)), threshold, levels, hist, lut)
        else:
            enhance(src, dst, key, level * 1.8 / 10.0 + 0.1)
        return True

    @njit
    def augment_and_mix(
        x, keymap, ops, levels, signs, depths, weights, m, cos_sin, out, first, stop
    ):  # pragma: no cover
        width = depths.shape[0]
        c_n, h, w = x.shape[1:]
        size = c_n * h * w
        dtype = x.dtype
        clean = np.empty((c_n, h, w), dtype)  # the image in 0..255
        bufs = np.empty((2, c_n, h, w), dtype)
        acc = np.empty(size, dtype)
        scratch = (
            np.empty(size, np.int32),  # 8-bit levels
            np.empty((4, 256), np.int64),  # histograms
            np.empty(256, dtype),  # lookup table
            np.empty(h * w, np.int64),  # rotate: top-left source pixel
            np.empty((h * w, 4), dtype),  # rotate: bilinear weights
        )
        flat_clean = clean.ravel()
        non_finite = 0
        for b in range(first, stop):
            xb = x[b].ravel()
            keep = 1.0 - m[b]
            for k in range(size):
                v = xb[k] * 255.0
                if not (-1e300 < v < 1e300):  # NaN or infinite: counted (the caller refuses the batch), never indexed
                    non_finite += 1
                    v = 0.0
                v = min(max(v, 0.0), 255.0)
                flat_clean[k] = v
                acc[k] = keep * v
            for i in range(width):
                cur = -1  # -1: the clean image, else the buffer holding the chain
                for d in range(depths[i, b]):
                    nxt = 0 if cur != 0 else 1
                    src = clean if cur < 0 else bufs[cur]
                    key = keymap[ops[d, i, b]]
                    if apply(src, bufs[nxt], key, levels[d, i, b], signs[d, i, b], cos_sin, scratch):
                        cur = nxt
                chain = flat_clean if cur < 0 else bufs[cur].ravel()
                weight = m[b] * weights[b, i]
                for k in range(size):
                    acc[k] += weight * chain[k]
            ob = out[b].ravel()
            for k in range(size):
                ob[k] = min(max(acc[k] / 255.0, 0.0), 1.0)
        return non_finite

    return augment_and_mix


def augment_and_mix(
    x: np.ndarray,
    keymap: np.ndarray,
    ops: np.ndarray,
    levels: np.ndarray,
    signs: np.ndarray,
    depths: np.ndarray,
    weights: np.ndarray,
    m: np.ndarray,
    cos_sin: np.ndarray,
    threads: int,
) -> np.ndarray:
    """AugMix of every image: ``clip((1 - m) x + m sum_i weights[i] chain_i(x), 0, 1)``, chains on ``255 x``.

    ``x`` is ``[B, C, H, W]`` in [0, 1] (float32 or float64, C-contiguous, H and W
    at least 2). The draws are ``AugMixParams``' as numpy arrays: ``ops``,
    ``levels`` and ``signs`` ``[depth, width, B]``, ``depths`` ``[width, B]``,
    ``weights`` ``[B, width]``, ``m`` ``[B]``; ``keymap`` turns an op index into its
    key and ``cos_sin`` ``[360, 2]`` holds the cosines and sines of whole degrees.
    """
    if x.ndim != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"expected [B, C, H, W] images with H, W >= 2, got shape {x.shape}")
    kernel = _kernel()
    out = np.empty_like(x)
    args: tuple[Any, ...] = (x, keymap, ops, levels, signs, depths, weights, m, cos_sin, out)
    b = x.shape[0]
    threads = max(1, min(threads, b))
    if threads == 1:
        non_finite = kernel(*args, 0, b)
    else:
        bounds = [b * t // threads for t in range(threads + 1)]
        pool = _pool(threads)
        futures = [pool.submit(kernel, *args, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        non_finite = sum(future.result() for future in futures)
    if non_finite:
        raise ValueError(f"images contain {non_finite} NaN or infinite values; AugMix needs finite values in [0, 1]")
    return out


def _kernel() -> Callable[..., int]:
    global _KERNEL
    with _LOCK:
        if _KERNEL is None:
            _KERNEL = _compile()
        return _KERNEL


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's worker threads (a forked child starts its own)."""
    global _POOL
    with _LOCK:
        pid = os.getpid()
        if _POOL is None or _POOL[0] != pid or _POOL[1] < threads:
            _POOL = (pid, threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="augmix"))
        return _POOL[2]
