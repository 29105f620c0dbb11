"""Reading a delivery without ever leaving its batch folder.

Every file of a batch is opened relative to the batch folder, one path component at a time, without
following links (``O_NOFOLLOW`` with ``dir_fd``); only regular files are read, each up to a size bound
checked before and while reading. A folder, FIFO, device, socket or link where a file is expected is
refused without being opened, so nothing blocks and nothing outside the batch folder is ever read.
A file with several hard links is refused too: it may be content from elsewhere on the machine.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a relative path
_CHUNK = 1 << 20

# Why a file cannot be read; callers map these onto their own reason codes.
MISSING = "missing"
LINK = "link"
NOT_REGULAR = "not_regular_file"
TOO_LARGE = "too_large"
INVALID_PATH = "invalid_path"
OUTSIDE = "outside"
UNREADABLE = "unreadable"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class UnsafeFile(ValueError):
    """A delivered path that cannot be read safely; ``kind`` says why (one of the constants above)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def path_parts(ref: object) -> tuple[str, ...]:
    """The components of a relative path inside a folder, or ``UnsafeFile`` for a path string no file
    system accepts (NUL byte, not encodable, over-long) or one that leaves the folder (absolute, ``..``)."""
    if not isinstance(ref, str):
        raise UnsafeFile(INVALID_PATH, f"the path is a {type(ref).__name__}, not text")
    if not ref.strip():
        raise UnsafeFile(INVALID_PATH, "the path is empty")
    if "\x00" in ref:
        raise UnsafeFile(INVALID_PATH, "the path holds a NUL byte")
    try:
        encoded = os.fsencode(ref)
    except UnicodeEncodeError:
        raise UnsafeFile(INVALID_PATH, "the path is not valid text (lone surrogate)") from None
    if len(encoded) > PATH_MAX:
        raise UnsafeFile(INVALID_PATH, f"the path has {len(encoded)} bytes > {PATH_MAX}")
    if ref.startswith("/"):
        raise UnsafeFile(OUTSIDE, "the path is absolute")
    parts = tuple(p for p in ref.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeFile(OUTSIDE, "the path climbs out with '..'")
    if not parts:
        raise UnsafeFile(INVALID_PATH, "the path names no file")
    for part in parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UnsafeFile(INVALID_PATH, f"a path component has more than {NAME_MAX} bytes")
    return parts


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _lstat_at(dir_fd: int, name: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise UnsafeFile(MISSING, f"{name!r} does not exist") from None
    except OSError as exc:
        raise _os_error(name, exc) from None


def _os_error(name: str, exc: OSError) -> UnsafeFile:
    if exc.errno == errno.ENOENT:
        return UnsafeFile(MISSING, f"{name!r} does not exist")
    if exc.errno == errno.ELOOP:
        return UnsafeFile(LINK, f"{name!r} is a link (links are never followed)")
    if exc.errno == errno.ENOTDIR:
        return UnsafeFile(NOT_REGULAR, f"{name!r}: a path component is not a folder")
    if exc.errno == errno.ENAMETOOLONG:
        return UnsafeFile(INVALID_PATH, f"{name!r}: name too long")
    return UnsafeFile(UNREADABLE, f"{name!r} cannot be read: {exc.strerror or exc}")


def open_folder_at(dir_fd: int, name: str) -> int:
    """A sub-folder's descriptor; a link, or anything but a folder, is refused."""
    st = _lstat_at(dir_fd, name)
    if not stat.S_ISDIR(st.st_mode):
        kind = _kind_of(st.st_mode)
        raise UnsafeFile(LINK if kind == "link" else NOT_REGULAR, f"{name!r} is a {kind}, not a folder")
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _os_error(name, exc) from None


def entry_kind(dir_fd: int, name: str) -> str:
    """``missing``, ``file``, ``folder``, ``link``, ``FIFO``, ``socket``, ``device`` or ``unreadable entry``
    (never follows a link, never opens anything)."""
    try:
        return _kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable entry"


def _open_regular(dir_fd: int, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
    """Walk ``parts`` below ``dir_fd`` without following links; the last one must be a regular file with
    one link. Returns its descriptor and stat."""
    opened: list[int] = []
    try:
        current = dir_fd
        for part in parts[:-1]:
            current = open_folder_at(current, part)
            opened.append(current)
        name = parts[-1]
        st = _lstat_at(current, name)
        if not stat.S_ISREG(st.st_mode):  # refused before any open: a FIFO or a device is never opened
            kind = _kind_of(st.st_mode)
            raise UnsafeFile(LINK if kind == "link" else NOT_REGULAR, f"{'/'.join(parts)!r} is a {kind}")
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=current)
        except OSError as exc:
            raise _os_error("/".join(parts), exc) from None
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise UnsafeFile(NOT_REGULAR, f"{'/'.join(parts)!r} changed while it was opened")
        if fst.st_nlink > 1:
            os.close(fd)
            raise UnsafeFile(
                LINK, f"{'/'.join(parts)!r} has {fst.st_nlink} hard links: it may be a file from elsewhere"
            )
        return fd, fst
    finally:
        for fd in opened:
            os.close(fd)


def read_bytes_at(dir_fd: int, ref: object, max_bytes: int) -> bytes:
    """The bytes of the regular file ``ref`` (a relative path) below ``dir_fd``, at most ``max_bytes``."""
    parts = path_parts(ref)
    fd, st = _open_regular(dir_fd, parts)
    try:
        if st.st_size > max_bytes:
            raise UnsafeFile(TOO_LARGE, f"{'/'.join(parts)!r} has {st.st_size} bytes > {max_bytes}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # the file grew while it was read
                raise UnsafeFile(TOO_LARGE, f"{'/'.join(parts)!r} has more than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise _os_error("/".join(parts), exc) from None
    finally:
        os.close(fd)


def fingerprint_at(dir_fd: int, name: str, max_bytes: int) -> str:
    """sha256 of a file's bytes; for a file that will be refused (too large, a link, not a regular file,
    missing) a fingerprint of the refusal, so a batch is still looked at once, and again when it changes."""
    try:
        return hashlib.sha256(read_bytes_at(dir_fd, name, max_bytes)).hexdigest()
    except UnsafeFile as exc:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            seen = f"{st.st_mode}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        except OSError:
            seen = "absent"
        return hashlib.sha256(f"refused:{exc.kind}:{seen}".encode()).hexdigest()


class BatchFolder:
    """An open batch folder: every read is relative to it and never follows a link."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, landing: str | Path, source: str, batch_id: str) -> BatchFolder:
        """``landing/source/batch_id``; the source and batch folders must be real folders, not links."""
        for name in (source, batch_id):
            parts = path_parts(name)
            if len(parts) != 1 or parts[0] != name:
                raise UnsafeFile(INVALID_PATH, f"{name!r} is not a single folder name")
        root = os.open(str(landing), os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            source_fd = open_folder_at(root, source)
        finally:
            os.close(root)
        try:
            return cls(open_folder_at(source_fd, batch_id), Path(landing) / source / batch_id)
        finally:
            os.close(source_fd)

    @classmethod
    def open_path(cls, path: str | Path) -> BatchFolder:
        """A batch folder given by its path; the folder itself must not be a link."""
        path = Path(path)
        parent = os.open(str(path.parent), os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            return cls(open_folder_at(parent, path.name), path)
        finally:
            os.close(parent)

    def read(self, ref: object, max_bytes: int) -> bytes:
        return read_bytes_at(self.fd, ref, max_bytes)

    def kind(self, name: str) -> str:
        return entry_kind(self.fd, name)

    def fingerprint(self, name: str, max_bytes: int) -> str:
        return fingerprint_at(self.fd, name, max_bytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BatchFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
