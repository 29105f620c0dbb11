"""Folders that are either on the local disk or in S3-compatible object storage, behind one small API.

Dataset versions (Lance stores) and model artifacts live under a storage root: the data folder by default,
``s3://bucket/prefix`` in the multi-machine mode. A ``Location`` names a folder or file under such a root and
offers the few ``pathlib.Path`` operations the pipeline uses (``/``, ``name``, ``parent``, ``is_dir``,
``is_file``, ``exists``, ``mkdir``, ``iterdir``, ``read_bytes``), plus a whole-file write that never leaves a
half-written file and what Lance needs (``uri``, ``storage_options``). On S3 a PUT is atomic; locally the
file is written under a temporary name and renamed. A location is rebuilt from plain strings, so it
crosses process boundaries; S3 credentials come from the usual ``AWS_*`` variables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse


class OutsideStorageRoot(ValueError):
    """A stored relative path that would leave its storage root."""


@dataclass(frozen=True)
class Location:
    """A folder or file: ``base`` is a local folder or ``s3://bucket/prefix``; ``parts`` the path under it."""

    base: str
    endpoint: str | None = None
    parts: tuple[str, ...] = ()

    # -- naming --------------------------------------------------------------------------------------
    @property
    def is_s3(self) -> bool:
        return self.base.startswith("s3://")

    def __truediv__(self, part: str) -> Location:
        new = tuple(p for p in PurePosixPath(str(part)).parts if p not in ("", "."))
        if any(p == ".." for p in new) or PurePosixPath(str(part)).is_absolute():
            raise OutsideStorageRoot(f"{part!r} is not a relative path inside {self}")
        return Location(self.base, self.endpoint, self.parts + new)

    def joinpath(self, *parts: str) -> Location:
        loc = self
        for p in parts:
            loc = loc / p
        return loc

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else PurePosixPath(self.base.rstrip("/")).name

    @property
    def parent(self) -> Location:
        if not self.parts:
            raise ValueError(f"{self} is a storage root: it has no parent here")
        return Location(self.base, self.endpoint, self.parts[:-1])

    @property
    def uri(self) -> str:
        """What Lance and readers open: an absolute local path or ``s3://bucket/key``."""
        if self.is_s3:
            return "/".join([self.base.rstrip("/"), *self.parts])
        return str(Path(self.base).joinpath(*self.parts))

    def relative_to(self, root: Location) -> str:
        """This location's path under ``root`` (POSIX), what the warehouse stores."""
        if (self.base, self.parts[: len(root.parts)]) != (root.base, root.parts) or len(self.parts) <= len(root.parts):
            raise OutsideStorageRoot(f"{self.uri} is not inside {root.uri}")
        return "/".join(self.parts[len(root.parts) :])

    def local_path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.uri} is in object storage, not on the local disk")
        return Path(self.uri)

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:  # a local location works wherever a path does
        return str(self.local_path())

    # -- object storage --------------------------------------------------------------------------------
    def _s3_key(self) -> str:
        parsed = urlparse(self.base)
        return "/".join(p for p in [parsed.netloc, parsed.path.strip("/"), *self.parts] if p)

    def _fs(self):
        from pyarrow import fs

        if not self.is_s3:
            return fs.LocalFileSystem()
        kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if self.endpoint:
            ep = urlparse(self.endpoint)
            kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs.update(
                access_key=os.environ["AWS_ACCESS_KEY_ID"],
                secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                session_token=os.environ.get("AWS_SESSION_TOKEN"),
            )
        return fs.S3FileSystem(**kwargs)

    @property
    def storage_options(self) -> dict[str, str] | None:
        """Lance's ``storage_options`` for this location (None on the local disk)."""
        if not self.is_s3:
            return None
        opts = {"aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if self.endpoint:
            opts["aws_endpoint"] = self.endpoint
            if self.endpoint.startswith("http://"):
                opts["allow_http"] = "true"
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            opts["aws_access_key_id"] = os.environ["AWS_ACCESS_KEY_ID"]
            opts["aws_secret_access_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            if os.environ.get("AWS_SESSION_TOKEN"):
                opts["aws_session_token"] = os.environ["AWS_SESSION_TOKEN"]
        return opts

    # -- the Path operations the pipeline uses --------------------------------------------------------
    def _info(self):
        return self._fs().get_file_info(self._s3_key())

    def exists(self) -> bool:
        if not self.is_s3:
            return self.local_path().exists()
        from pyarrow import fs

        if self._info().type != fs.FileType.NotFound:
            return True
        return self.is_dir()

    def is_file(self) -> bool:
        if not self.is_s3:
            p = self.local_path()
            return p.is_file() and not p.is_symlink()
        from pyarrow import fs

        return self._info().type == fs.FileType.File

    def is_dir(self) -> bool:
        """A local folder (not a link); on S3, a prefix with at least one object under it."""
        if not self.is_s3:
            p = self.local_path()
            return p.is_dir() and not p.is_symlink()
        from pyarrow import fs

        selector = fs.FileSelector(self._s3_key(), allow_not_found=True, recursive=False)
        return len(self._fs().get_file_info(selector)) > 0

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        if not self.is_s3:  # object storage has no folders to make
            self.local_path().mkdir(parents=parents, exist_ok=exist_ok)

    def iterdir(self) -> Iterator[Location]:
        if not self.is_s3:
            for child in sorted(self.local_path().iterdir()) if self.is_dir() else []:
                yield self / child.name
            return
        from pyarrow import fs

        selector = fs.FileSelector(self._s3_key(), allow_not_found=True, recursive=False)
        for info in sorted(self._fs().get_file_info(selector), key=lambda i: i.path):
            yield self / PurePosixPath(info.path).name

    def read_bytes(self) -> bytes:
        if not self.is_s3:
            return self.local_path().read_bytes()
        with self._fs().open_input_stream(self._s3_key()) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """The whole file or nothing: a temporary file renamed into place locally, one PUT on S3."""
        if not self.is_s3:
            from dc_pipeline.core.atomic import write_bytes

            write_bytes(self.local_path(), data)
            return
        with self._fs().open_output_stream(self._s3_key()) as f:
            f.write(data)

    def total_bytes(self) -> int:
        """Bytes of every file under this folder (0 when it does not exist)."""
        from pyarrow import fs

        selector = fs.FileSelector(
            self._s3_key() if self.is_s3 else str(self.local_path()), allow_not_found=True, recursive=True
        )
        return sum(i.size or 0 for i in self._fs().get_file_info(selector) if i.type == fs.FileType.File)

    def remove_tree(self) -> None:
        if not self.is_s3:
            import shutil

            shutil.rmtree(self.local_path(), ignore_errors=True)
            return
        self._fs().delete_dir(self._s3_key())


def storage_root(data_dir: str | Path, object_store_url: str | None = None, endpoint: str | None = None) -> Location:
    """Where datasets and artifacts live: ``object_store_url`` when given, else the data folder."""
    if object_store_url:
        if not object_store_url.startswith("s3://"):
            raise ValueError(f"object store URL {object_store_url!r} is not s3://bucket/prefix")
        return Location(object_store_url.rstrip("/"), endpoint)
    return as_location(data_dir)


def as_location(value: str | Path | Location) -> Location:
    """A location from a local path (what callers passed before object storage), or itself."""
    if isinstance(value, Location):
        return value
    return Location("/", None, Path(value).resolve().parts[1:])
