"""What a scoring request may carry, decoded defensively: bounded bytes, pixels and shapes, known formats.

Every refusal is a ``BadRequest`` with the HTTP status it deserves (400, 413 or 415) and a message the
caller can act on; nothing a caller sends reaches the model without passing these checks.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
IMAGE_TYPES = {"image/png", "image/jpeg", "image/bmp", "image/gif", "image/tiff", "image/webp"}
ARRAY_TYPE = "application/json"


class BadRequest(ValueError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one request: body bytes, image side and pixels (decompression bombs), JSON nesting."""

    max_bytes: int = 2 * 1024 * 1024
    max_side: int = 4096
    max_pixels: int = 4096 * 4096


def decode_image_bytes(body: bytes, limits: RequestLimits) -> np.ndarray:
    """An encoded image (PNG, JPEG, ...) -> uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]``.

    The header is read first: a format outside ``IMAGE_FORMATS`` or a size beyond the limits is refused
    before any pixel is decoded, so a small file that expands to gigabytes never does.
    """
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadRequest(400, "empty body: send the image's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
            width, height = image.size
            if width < 1 or height < 1 or max(width, height) > limits.max_side or width * height > limits.max_pixels:
                raise BadRequest(
                    413, f"image of {width}x{height} pixels: at most {limits.max_side} per side and "
                    f"{limits.max_pixels} pixels"
                )  # fmt: skip
            image.seek(0)  # the first frame of an animation
            image.load()
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadRequest(413, f"image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(400, f"not a readable image ({', '.join(IMAGE_FORMATS)}): {exc}") from None
    converted = image.convert("L" if image.mode in ("1", "L", "I", "I;16", "F", "P", "LA") else "RGB")
    return np.asarray(converted, dtype=np.uint8)


def decode_pixel_array(body: bytes, limits: RequestLimits) -> np.ndarray:
    """JSON ``{"pixels": [[...]]}``: integers 0..255 as ``[H, W]`` or ``[H, W, C]`` (C = 1 or 3) -> uint8."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(400, f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadRequest(400, 'expected a JSON object {"pixels": [[...], ...]}')
    try:
        array = np.asarray(payload["pixels"])
    except (ValueError, TypeError) as exc:  # ragged rows
        raise BadRequest(400, f"pixels must be a rectangular array: {exc}") from None
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise BadRequest(400, f"pixels must be [H, W] or [H, W, C] with C = 1 or 3; got shape {list(array.shape)}")
    height, width = array.shape[:2]
    if min(height, width) < 1 or max(height, width) > limits.max_side or height * width > limits.max_pixels:
        raise BadRequest(413, f"array of {width}x{height} pixels: at most {limits.max_side} per side")
    whole = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and bool(np.all(np.isfinite(array))) and bool(np.all(np.mod(array, 1) == 0))
    )
    if not whole:
        raise BadRequest(400, f"pixels must be integers 0..255, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BadRequest(400, "pixels must be integers 0..255")
    return array.astype(np.uint8)


def decode_request(content_type: str | None, body: bytes, limits: RequestLimits) -> np.ndarray:
    """The image of one request by its content type: an encoded image, or a JSON pixel array."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if len(body) > limits.max_bytes:
        raise BadRequest(413, f"body of {len(body)} bytes: at most {limits.max_bytes}")
    if kind in IMAGE_TYPES or kind == "application/octet-stream":
        return decode_image_bytes(body, limits)
    if kind == ARRAY_TYPE:
        return decode_pixel_array(body, limits)
    raise BadRequest(
        415, f"content type {kind or 'missing'}: send an image ({', '.join(sorted(IMAGE_TYPES))}) or {ARRAY_TYPE}"
    )
