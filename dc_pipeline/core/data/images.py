"""Image bytes: the content-addressed store, and decoding with validation."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dc_pipeline.core.data.contracts import ProjectSpec

CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


class ObjectStore:
    """Image bytes named by their sha256 under ``root/ab/abcdef...``; an object is never overwritten."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                os.link(tmp, target)  # atomic and refuses to replace an existing object
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        return sha

    def get(self, sha256: str) -> bytes:
        data = self.path(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"object {sha256} is corrupt: its content no longer matches its name")
        return data


def read_image_file(batch_dir: Path, ref: str | None, max_bytes: int) -> tuple[bytes | None, str | None]:
    """Read an image a manifest refers to by relative path. Returns ``(bytes, None)`` or ``(None, reason)``."""
    if not ref:
        return None, "missing_image_reference"
    root = batch_dir.resolve()
    path = (root / ref).resolve()
    if root not in path.parents:
        return None, "image_path_outside_batch"
    if not path.is_file():
        return None, "missing_image_file"
    if path.stat().st_size > max_bytes:
        return None, "image_file_too_large"
    return path.read_bytes(), None


@dataclass(frozen=True)
class DecodedImage:
    width: int
    height: int
    channels: int
    mode: str
    format: str


class ImageRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def inspect_image(data: bytes, project: ProjectSpec) -> DecodedImage:
    """Decode fully and validate format, size and mode; raises ``ImageRejected`` with a reason code."""
    if len(data) > project.max_file_bytes:
        raise ImageRejected("image_file_too_large", f"{len(data)} bytes > {project.max_file_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image_too_large", str(exc)) from None
    except Exception as exc:
        raise ImageRejected("undecodable_image", f"not a readable image: {exc}") from None
    w, h = img.size
    if img.format not in project.image_formats:
        raise ImageRejected("unsupported_format", f"format {img.format} not in {list(project.image_formats)}")
    if w * h > project.max_pixels:  # checked before decoding: a decompression bomb never expands
        raise ImageRejected("image_too_large", f"{w}x{h} = {w * h} pixels > {project.max_pixels}")
    if min(w, h) < project.min_side or max(w, h) > project.max_side:
        raise ImageRejected(
            "image_dimensions_out_of_bounds", f"{w}x{h} outside [{project.min_side}, {project.max_side}]"
        )
    if img.mode not in project.image_modes:
        raise ImageRejected("unsupported_mode", f"mode {img.mode} not in {list(project.image_modes)}")
    try:
        img.load()  # decodes every pixel: a truncated file fails here
    except Exception as exc:
        raise ImageRejected("undecodable_image", f"decoding failed: {exc}") from None
    return DecodedImage(width=w, height=h, channels=CHANNELS.get(img.mode, len(img.getbands())),
                        mode=img.mode, format=img.format)


def to_grayscale_array(data: bytes, size: int) -> np.ndarray:
    """Canonical model input: grayscale, ``size`` x ``size``, float32 in [0, 1]."""
    img = Image.open(io.BytesIO(data)).convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0
