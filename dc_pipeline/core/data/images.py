"""Image bytes: the content-addressed store, and decoding with validation."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dc_pipeline.core.data import safe_files
from dc_pipeline.core.data.contracts import ProjectSpec

CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


class ObjectStore:
    """Image bytes named by their sha256 under ``root/ab/abcdef...``; an object is never overwritten."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256: written to a temporary name of this process, then hard-linked
        into place (atomic, and never replaces an existing object), so a killed writer leaves no partial
        object under a real name."""
        sha = hashlib.sha256(data).hexdigest()
        folder = os.path.join(self.root, sha[:2])
        target = os.path.join(folder, sha)
        if os.path.lexists(target):
            return sha
        tmp = os.path.join(folder, f".tmp-{sha[:16]}-{os.getpid()}-{threading.get_ident()}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)
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


# Why a referenced image file was not read -> the reason code the record is quarantined with.
_FILE_REASONS = {
    safe_files.MISSING: "missing_image_file",
    safe_files.LINK: "image_is_link",
    safe_files.NOT_REGULAR: "image_not_regular_file",
    safe_files.TOO_LARGE: "image_file_too_large",
    safe_files.INVALID_PATH: "invalid_image_path",
    safe_files.OUTSIDE: "image_path_outside_batch",
    safe_files.UNREADABLE: "unreadable_image_file",
}


def read_image_file(
    batch: safe_files.BatchFolder | Path, ref: object, max_bytes: int
) -> tuple[bytes | None, str | None]:
    """Read an image a manifest refers to by a path relative to the batch folder, never following a link
    and only from a regular file. Returns ``(bytes, None)`` or ``(None, reason code)``."""
    if ref is None or (isinstance(ref, str) and not ref.strip()):
        return None, "missing_image_reference"
    if not isinstance(batch, safe_files.BatchFolder):
        with safe_files.BatchFolder.open_path(batch) as folder:
            return read_image_file(folder, ref, max_bytes)
    try:
        return batch.read(ref, max_bytes), None
    except safe_files.UnsafeFile as exc:
        return None, _FILE_REASONS[exc.kind]


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

    def __reduce__(self):  # pickled back from a decoding worker process
        return (ImageRejected, (self.reason, self.detail))


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
    return DecodedImage(
        width=w, height=h, channels=CHANNELS.get(img.mode, len(img.getbands())), mode=img.mode, format=img.format
    )


def to_grayscale_array(data: bytes, size: int) -> np.ndarray:
    """Canonical model input: grayscale, ``size`` x ``size``, float32 in [0, 1]."""
    img = Image.open(io.BytesIO(data)).convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def thumbnail_array(data: bytes, size: int) -> np.ndarray:
    """A grayscale ``size`` x ``size`` thumbnail in [0, 1] by area (box) resampling: the same picture at
    another resolution (an integer up- or downscale) gives the same thumbnail, which is what near-duplicate
    detection compares."""
    img = Image.open(io.BytesIO(data)).convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def thumbnails_stored(shas: Sequence[str], root: str, size: int) -> np.ndarray:
    """Thumbnails ``[n, size, size]`` of stored objects: a worker process's chunk of a batch."""
    store = ObjectStore(root)
    if not len(shas):
        return np.zeros((0, size, size), np.float32)
    return np.stack([thumbnail_array(store.get(s), size) for s in shas])


def inspect_stored(shas: Sequence[str], root: str, project: ProjectSpec) -> list[DecodedImage | ImageRejected]:
    """``inspect_image`` of stored objects (read from the store at ``root``), one result per sha256: what a
    worker process runs on its chunk of a batch."""
    store = ObjectStore(root)
    out: list[DecodedImage | ImageRejected] = []
    for sha in shas:
        try:
            out.append(inspect_image(store.get(sha), project))
        except ImageRejected as exc:
            out.append(exc)
    return out


def canonical_stored(shas: Sequence[str], root: str, size: int) -> np.ndarray:
    """Canonical arrays ``[n, size, size]`` of stored objects: a worker process's chunk of a batch."""
    store = ObjectStore(root)
    if not len(shas):
        return np.zeros((0, size, size), np.float32)
    return np.stack([to_grayscale_array(store.get(s), size) for s in shas])
