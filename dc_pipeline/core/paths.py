"""Paths stored in the warehouse and in metadata are relative to the data folder, so it can be moved."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PathOutsideDataFolder(ValueError):
    """A stored path that would leave the data folder."""


def to_relative(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (POSIX separators); refuses a path outside ``root``."""
    p, r = Path(path), Path(root).resolve()
    p = p if p.is_absolute() else r / p
    try:
        return PurePosixPath(Path(p).resolve().relative_to(r)).as_posix()
    except ValueError as exc:
        raise PathOutsideDataFolder(f"{path} is not inside the data folder {r}") from exc


def resolve_inside(stored: str, root: str | Path) -> Path:
    """The file a stored relative path names, contained in ``root`` (no ``..``, no absolute path, no link
    leading outside)."""
    r = Path(root).resolve()
    rel = PurePosixPath(stored)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise PathOutsideDataFolder(f"stored path {stored!r} is not a relative path inside the data folder")
    full = (r / Path(*rel.parts)).resolve()
    if full != r and r not in full.parents:
        raise PathOutsideDataFolder(f"stored path {stored!r} leads outside the data folder {r}")
    return full


LAYOUT_ANCHORS = ("artifacts", "datasets", "augmented", "reports")


def legacy_relative(path: str, root: str | Path) -> str | None:
    """An absolute path stored by release 0.1, relative to the data folder: directly when it is inside
    ``root``; otherwise (the folder was moved) from the data folder's own layout (``artifacts/...``,
    ``datasets/...``) on. None when it names nothing of the layout."""
    try:
        return to_relative(path, root)
    except PathOutsideDataFolder:
        pass
    parts = PurePosixPath(path).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in LAYOUT_ANCHORS and i < len(parts) - 1:
            return "/".join(parts[i:])
    return None


def stored_file(stored: str, root: str | Path) -> Path:
    """The file a stored path names, inside ``root``; a legacy absolute path is mapped by the layout."""
    if PurePosixPath(stored).is_absolute():
        rel = legacy_relative(stored, root)
        if rel is None:
            raise PathOutsideDataFolder(f"stored path {stored!r} is outside the data folder {root}")
        stored = rel
    return resolve_inside(stored, root)
